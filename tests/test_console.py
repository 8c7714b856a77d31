"""What the console shows: library logs stay off it whatever the import order and the CPU."""

import os
import subprocess
import sys

import pytest

from facenet_jax import console
from tests.tiny import subprocess_env

# jax defaults TF_CPP_MIN_LOG_LEVEL to '1' when imported (INFO lines of TensorFlow then pass);
# a config file that imports the library imports jax before the flags are parsed.
IMPORT_ORDERS = {
    'jax, console, tensorflow': ['import jax', 'from facenet_jax import console',
                                 'console.quiet_library_logs()',
                                 'from input_pipeline import pipeline'],
    'console, jax, tensorflow': ['from facenet_jax import console',
                                 'console.quiet_library_logs()', 'import jax',
                                 'from input_pipeline import pipeline'],
    'jax, tensorflow, console': ['import jax', 'from input_pipeline import pipeline',
                                 'from facenet_jax import console',
                                 'console.quiet_library_logs()'],
}


@pytest.mark.parametrize('order', IMPORT_ORDERS)
def test_library_logs_stay_off_stderr_whatever_the_import_order(order, repo_root):
  """A child with neither variable set, as a user's shell has: its stderr stays empty.

  On a CPU with AVX512_VNNI TensorFlow would print its oneDNN INFO line here; on any CPU the
  variables that keep it and TensorFlow's INFO logs off must be set, which the last line checks.
  """
  code = '\n'.join(IMPORT_ORDERS[order] + [
      'import tensorflow as tf', 'tf.constant([1.0]) + 1.0', 'import jax.numpy as jnp',
      'jnp.ones(3).sum().block_until_ready()', 'import os',
      "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], os.environ['TF_ENABLE_ONEDNN_OPTS'])"])
  env = subprocess_env()
  assert 'TF_CPP_MIN_LOG_LEVEL' not in env and 'TF_ENABLE_ONEDNN_OPTS' not in env
  done = subprocess.run([sys.executable, '-c', code], cwd=repo_root, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split() == ['2', '0']
  assert done.stderr == '', done.stderr[:2000]


@pytest.mark.parametrize('before, verbose, after', [
    (None, False, '2'), ('1', False, '2'), ('0', False, '2'), ('3', False, '3'),
    ('junk', False, '2'), ('3', True, '0'), (None, True, '0')])
def test_the_tensorflow_log_level_is_set_not_defaulted(monkeypatch, before, verbose, after):
  if before is None:
    monkeypatch.delenv('TF_CPP_MIN_LOG_LEVEL', raising=False)
  else:
    monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', before)
  console.quiet_library_logs(verbose)
  assert os.environ['TF_CPP_MIN_LOG_LEVEL'] == after
  console.quiet_library_logs(False)   # the rest of the test process stays quiet
