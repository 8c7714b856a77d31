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
# TensorFlow (tf.data) must never take an accelerator, and should not spam the test log.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope='session')
def repo_root() -> pathlib.Path:
  return REPO_ROOT
