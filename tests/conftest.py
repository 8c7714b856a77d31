"""Test-wide setup: JAX runs on the CPU with several simulated devices.

The flags must be set before JAX is imported anywhere, which is why they live here at the top
of conftest (pytest imports it before any test module).
"""

import os

NUM_SIMULATED_DEVICES = 4

os.environ['JAX_PLATFORMS'] = 'cpu'
_flag = f'--xla_force_host_platform_device_count={NUM_SIMULATED_DEVICES}'
if _flag not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _flag).strip()
# Identical programs compiled by different tests (and by the scripts the tests start as
# subprocesses, which inherit this environment) are compiled once per run.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    __import__('tempfile').gettempdir(), f'facenet_jax_test_cache_{os.getuid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# TensorFlow (tf.data) should not spam the test log, and computes as `input_pipeline` makes it
# compute (oneDNN off) even in a test module that imports TensorFlow before `input_pipeline`.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope='session')
def repo_root() -> pathlib.Path:
  return REPO_ROOT


@pytest.fixture(scope='session')
def tiny_synthetic_root(tmp_path_factory) -> str:
  """A small synthetic tree (WMVeID863 layout) shared by the training and evaluation tests."""
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp('tiny_synthetic') / 'synthetic')
  synthetic.generate_synthetic_dataset(root, num_ids=15, triplets_per_id=4, image_size=(32, 16),
                                       flare_fraction=0.4, seed=3)
  return root


# The longest test files start first, so that with two xdist workers (`--dist loadfile`) the
# short files fill the gaps at the end instead of one long file running alone after the rest.
LONGEST_FIRST = ('test_multihost.py', 'test_train_driver.py', 'test_flare_study.py',
                 'test_tsme.py', 'test_dndm.py', 'test_dsgan_training.py',
                 'test_cross_modal_training.py', 'test_benchmark.py', 'test_train_step.py',
                 'test_fscnet.py', 'test_vit.py', 'test_facenet.py', 'test_deen.py', 'test_agw.py')


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = lambda item: (LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
                       else len(LONGEST_FIRST))
  items.sort(key=rank)   # stable: the order inside each file is kept
