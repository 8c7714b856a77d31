"""Test-wide setup: JAX runs on the CPU with one simulated device, unless a test module asks for more.

The flags must be set before JAX is imported anywhere, which is why they live here at the top
of conftest (pytest imports it before any test module).

One device, because a program sharded over four simulated devices of a 2-core machine steps ~6x
slower and nothing but sharding depends on the count. A module about sharding says
`pytestmark = pytest.mark.devices(4)`: in a process with fewer devices its tests run once, all
together, in a child pytest with that many (`FACENET_TEST_DEVICES`), and each reports the child's
outcome for it (`pytest_pyfunc_call` below).
"""

import os
import re

NUM_SIMULATED_DEVICES = int(os.environ.get('FACENET_TEST_DEVICES', '1'))

os.environ['JAX_PLATFORMS'] = 'cpu'
# The device count is a JAX setting, not the XLA flag `--xla_force_host_platform_device_count`:
# XLA_FLAGS is part of every persistent-cache key, so with the flag a one-device program compiled
# in a process that simulates four devices (the sharding child) or in this one (which would set
# the flag to 1) could never be shared with the same program compiled by a script the tests start.
os.environ['JAX_NUM_CPU_DEVICES'] = str(NUM_SIMULATED_DEVICES)
os.environ['XLA_FLAGS'] = ' '.join(
    f for f in os.environ.get('XLA_FLAGS', '').split()
    if 'xla_force_host_platform_device_count' not in f)
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
import subprocess
import sys

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


@pytest.fixture(scope='session')
def tiny_sysu_root(tmp_path_factory) -> str:
  """A small synthetic cross-modality tree (SYSU-MM01 layout) shared by the AGW / DEEN tests."""
  from input_pipeline import synthetic_cross_modal  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp('tiny_sysu') / 'sysu')
  return synthetic_cross_modal.generate_sysu_like(root, num_ids=18, images_per_camera=2,
                                                  image_size=(32, 16))


# Files with the most `slow` tests start first, so that with two xdist workers (`--dist loadfile`)
# the short files fill the gaps at the end instead of one long file running alone after the rest.
def pytest_collection_modifyitems(session, config, items):
  del session, config
  slow = {}
  for item in items:
    slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker('slow') is not None)
  items.sort(key=lambda item: -slow[item.path])   # stable: the order inside each file is kept


# Files whose tests compile the same programs (the same model at the same shapes and settings)
# form one unit of work: one xdist worker runs them one after the other, so the later ones load
# the first one's programs from the persistent cache. Scheduled apart, the two workers would
# compile the same programs at the same time, each missing the cache the other is about to fill.
SHARED_PROGRAM_GROUPS = {
    # The tiny FACENet short SGD run (tests/tiny.py SHORT_SGD_RUN): its train, evaluation and
    # initialisation programs, in this process, in the scripts they start and in the sharding
    # child's one-device step.
    'facenet_short_sgd_run': ('test_train_driver.py', 'test_multihost.py', 'test_train_step.py',
                              'test_inference.py', 'test_sharding.py', 'test_workdir.py'),
    # Every registered model's tiny initialisation (tests/tiny.py initial_variables).
    'tiny_models': ('test_models.py', 'test_initializers.py'),
    # The tiny GAN's initialisation and step, and the stage-1 generators TSME loads.
    'dsgan': ('test_dsgan_training.py', 'test_tsme.py'),
}
_GROUP_OF_FILE = {name: group for group, names in SHARED_PROGRAM_GROUPS.items() for name in names}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """`--dist loadfile`, with the files of a SHARED_PROGRAM_GROUPS group as one unit."""
  if config.getvalue('dist') != 'loadfile':
    return None
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=g-import-not-at-top

  class SharedProgramScheduling(LoadFileScheduling):

    def _split_scope(self, nodeid: str) -> str:
      path = super()._split_scope(nodeid)    # the test's file
      return _GROUP_OF_FILE.get(path.rsplit('/', 1)[-1], path)

  return SharedProgramScheduling(config, log)


_CHILD_OUTCOMES: dict[str, tuple[dict[str, str], str]] = {}
_OUTCOME_LINE = re.compile(r'^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)(?: - (.*))?$')


def _child_outcomes(path: pathlib.Path, num_devices: int) -> tuple[dict[str, str], str]:
  """{test id: outcome} of the module at `path` run in a child pytest, and the child's output."""
  key = str(path)
  if key not in _CHILD_OUTCOMES:
    env = {**os.environ, 'FACENET_TEST_DEVICES': str(num_devices)}
    done = subprocess.run(
        [sys.executable, '-m', 'pytest', str(path.relative_to(REPO_ROOT)), '-q', '-rA',
         '-p', 'no:cacheprovider', '-p', 'no:xdist'],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False)
    outcomes = {}
    for line in done.stdout.splitlines():
      match = _OUTCOME_LINE.match(line.strip())
      if match:
        outcomes[match.group(2)] = match.group(1)
    _CHILD_OUTCOMES[key] = outcomes, done.stdout[-6000:] + done.stderr[-3000:]
  return _CHILD_OUTCOMES[key]


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
  marker = pyfuncitem.get_closest_marker('devices')
  if marker is None or marker.args[0] <= NUM_SIMULATED_DEVICES:
    return None
  outcomes, output = _child_outcomes(pyfuncitem.path, marker.args[0])
  outcome = outcomes.get(pyfuncitem.nodeid, 'not run')
  if outcome == 'SKIPPED':
    pytest.skip(f'skipped in the child pytest with {marker.args[0]} devices')
  if outcome != 'PASSED':
    pytest.fail(f'{outcome} in the child pytest with {marker.args[0]} devices:\n{output}',
                pytrace=False)
  return True


# `FACENET_TEST_COMPILE_REPORT=N` prints, at the end, the N tests that spent the most time in XLA
# compilation in this process (children started by a test are not counted), with the number of
# programs compiled and the persistent-cache hits: where the suite's time goes. Run it with
# `-p no:xdist`: under xdist the summary is printed by the controller, which compiles nothing.
_COMPILE_REPORT = int(os.environ.get('FACENET_TEST_COMPILE_REPORT', '0'))
_COMPILES: dict[str, list[float]] = {}
_CURRENT_TEST = ['(collection)']


def _on_duration(event: str, seconds: float, **kwargs) -> None:
  del kwargs
  entry = _COMPILES.setdefault(_CURRENT_TEST[0], [0.0, 0, 0])
  if event == '/jax/core/compile/backend_compile_duration':
    entry[0] += seconds
    entry[1] += 1


def _on_event(event: str, **kwargs) -> None:
  del kwargs
  if event == '/jax/compilation_cache/cache_hits':
    _COMPILES.setdefault(_CURRENT_TEST[0], [0.0, 0, 0])[2] += 1


if _COMPILE_REPORT:
  import jax.monitoring  # pylint: disable=g-import-not-at-top
  jax.monitoring.register_event_duration_secs_listener(_on_duration)
  jax.monitoring.register_event_listener(_on_event)

  @pytest.hookimpl(wrapper=True)
  def pytest_runtest_protocol(item, nextitem):
    del nextitem
    _CURRENT_TEST[0] = item.nodeid
    try:
      return (yield)
    finally:
      _CURRENT_TEST[0] = '(between tests)'

  def pytest_terminal_summary(terminalreporter):
    rows = sorted(_COMPILES.items(), key=lambda kv: -kv[1][0])[:_COMPILE_REPORT]
    terminalreporter.write_line(f'XLA compilation by test (worker pid {os.getpid()}): '
                                'seconds, programs compiled, persistent-cache hits')
    for name, (seconds, count, hits) in rows:
      terminalreporter.write_line(f'{seconds:8.1f}s {count:5d} {hits:5d}  {name}')
