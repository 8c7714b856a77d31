"""Multi-process training on loopback: two processes x two CPU devices behave as one process.

Two `scripts/train.py` processes join through `jax.distributed` on 127.0.0.1 (gloo collectives
on CPU), each reading half of every P x K batch (whole identities) and half of every eval batch.
The single-process reference is the same run on one device in this pytest process, on the same
batches (that one device and four compute the same step: tests/test_sharding.py); it is the
trainer tests' short SGD run, so its programs come from the persistent cache. This process also
evaluates the pair's checkpoint. Every wait has a deadline: a process that dies fails the test with its log
instead of leaving its peer hanging.
"""

import json
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from facenet_jax import checkpointing
from facenet_jax import distributed
from facenet_jax import experiment
from facenet_jax import train
from facenet_jax.eval import evaluator
from facenet_jax.eval import protocols
from facenet_jax.train_state import to_variables
from tests.tiny import SHORT_SGD_RUN
from tests.tiny import subprocess_env
from tests.tiny import tiny_config
from tests.tiny import tiny_flags

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEADLINE_S = 480
RUN = SHORT_SGD_RUN


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(root: str, workdir: pathlib.Path, rank: int, num_processes: int, port: int,
            log: pathlib.Path, **overrides) -> subprocess.Popen:
  flags = tiny_flags(root, workdir, **RUN, train__distributed=True,
                     train__coordinator_address=f'127.0.0.1:{port}',
                     train__num_processes=num_processes, train__process_id=rank, **overrides)
  return _train_script(flags, 2, log)


def _train_script(flags: list[str], num_devices: int, log: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, 'scripts/train.py', *flags], cwd=REPO_ROOT,
                          env={**subprocess_env(num_devices), 'PYTHONUNBUFFERED': '1'},
                          stdout=subprocess.DEVNULL, stderr=log.open('w'))


def _wait_all(processes: list[subprocess.Popen], logs: list[pathlib.Path], deadline_s: float
              ) -> list[int]:
  """Wait for every process; past the deadline, or as soon as one fails, kill the rest."""
  end = time.time() + deadline_s
  try:
    while any(p.poll() is None for p in processes):
      if time.time() > end:
        pytest.fail(f'multi-process run still going after {deadline_s} s; logs:\n' +
                    '\n'.join(l.read_text()[-2000:] for l in logs))
      if any(p.returncode not in (None, 0) for p in processes):
        # A dead peer: give the others a moment to report it, then stop them.
        time.sleep(2)
        break
      time.sleep(0.2)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
      p.wait(timeout=30)
  return [p.returncode for p in processes]


def _metric_lines(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def pair_and_single(tiny_synthetic_root, tmp_path_factory):
  """The tiny run in this process (one device), then as 2 processes x 2 devices."""
  root = tmp_path_factory.mktemp('multihost')
  config = tiny_config(tiny_synthetic_root, **RUN)
  train.train_and_evaluate(config, str(root / 'single'))
  port = _free_port()
  logs = [root / f'rank{r}.log' for r in range(2)]
  processes = [_launch(tiny_synthetic_root, root / 'pair', r, 2, port, logs[r]) for r in range(2)]
  codes = _wait_all(processes, logs, DEADLINE_S)
  assert codes == [0, 0], '\n'.join(f'rank {r} exit {c}:\n{logs[r].read_text()[-3000:]}'
                                    for r, c in enumerate(codes))
  return config, root


@pytest.mark.slow
def test_two_processes_give_the_losses_of_one_process(pair_and_single):
  _, root = pair_and_single
  pair = {l['step']: l for l in _metric_lines(root / 'pair') if 'train/loss' in l}
  single = {l['step']: l for l in _metric_lines(root / 'single') if 'train/loss' in l}
  assert sorted(pair) == sorted(single) == [1, 2, 3]
  # rtol 1e-3: the gradient all-reduce sums in another order across processes (float noise).
  terms = ('train/loss', 'train/id', 'train/triplet', 'train/flare', 'train/ic',
           'train/grad_norm')
  for step in single:
    for term in terms:
      np.testing.assert_allclose(pair[step][term], single[step][term], rtol=1e-3, atol=1e-5,
                                 err_msg=f'{term} at step {step}')


@pytest.mark.slow
def test_only_process_zero_writes_logs_and_metric_files(pair_and_single):
  _, root = pair_and_single
  lines = _metric_lines(root / 'pair')
  # One line per log point and one evaluation: a second writer would duplicate them.
  assert [l['step'] for l in lines if 'train/loss' in l] == [1, 2, 3]
  assert len([l for l in lines if 'test/mAP' in l]) == 1
  assert len(list((root / 'pair').glob('events.out.tfevents.*'))) == 1
  assert json.loads((root / 'pair' / 'config.json').read_text())['train']['process_id'] == 0


@pytest.mark.slow
def test_evaluation_gathers_every_image_once_and_matches_one_process(pair_and_single):
  """The pair's checkpoint, evaluated in this one process, gives the metrics the pair logged.

  Same weights on both sides, so any image embedded twice, dropped or misplaced by the
  multi-process gather would show; the two trainings' own weights differ by float noise.
  """
  config, root = pair_and_single
  exp = experiment.build_experiment(config)
  ckpt = checkpointing.Checkpointer(root / 'pair', config.train.keep_checkpoints)
  state, meta = ckpt.restore(experiment.abstract_state(exp))
  ckpt.close()
  assert int(jax.device_get(state.step)) == 3 and meta['step'] == 3
  ev = evaluator.Evaluator(exp.model, exp.spec, exp.mesh, config)
  variables = to_variables(state)
  logged = [l for l in _metric_lines(root / 'pair') if 'test/mAP' in l][-1]
  for split, query, gallery in (('val', exp.val_query, exp.val_gallery),
                                ('test', exp.query, exp.gallery)):
    summary = protocols.rank_summary(ev.evaluate(variables, query, gallery).metrics)
    for key, value in summary.items():
      np.testing.assert_allclose(value, logged[f'{split}/{key}'], rtol=1e-4, atol=1e-6,
                                 err_msg=f'{split}/{key}')


@pytest.mark.slow
def test_a_peer_that_never_starts_is_a_clear_error_not_a_hang(tiny_synthetic_root, tmp_path):
  log = tmp_path / 'rank0.log'
  start = time.time()
  lonely = _launch(tiny_synthetic_root, tmp_path / 'run', 0, 2, _free_port(), log,
                   train__distributed_timeout_s=3)
  code, = _wait_all([lonely], [log], 120)
  text = log.read_text()
  assert code != 0
  assert time.time() - start < 120
  assert 'jax.distributed: joining' in text and "'num_processes': 2" in text
  assert 'another task died' in text or 'DistributedInitError' in text, text[-2000:]


def test_cluster_parameters_come_from_config_then_environment():
  config = tiny_config('unused').train
  config.distributed = True
  env = {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '4',
         'JAX_PROCESS_ID': '3'}
  assert distributed.cluster_parameters(config, env) == {
      'coordinator_address': '10.0.0.1:1234', 'num_processes': 4, 'process_id': 3}
  config.coordinator_address, config.num_processes, config.process_id = 'head:99', 2, 1
  assert distributed.cluster_parameters(config, env) == {
      'coordinator_address': 'head:99', 'num_processes': 2, 'process_id': 1}
  # Nothing given: every parameter is left to JAX's cluster detection (SLURM, Open MPI, TPU).
  config.coordinator_address, config.num_processes, config.process_id = '', 0, -1
  assert distributed.cluster_parameters(config, {}) == {
      'coordinator_address': None, 'num_processes': None, 'process_id': None}
  config.num_processes, config.process_id = 2, 2
  with pytest.raises(ValueError, match='config.train.process_id=2'):
    distributed.cluster_parameters(config, {})
