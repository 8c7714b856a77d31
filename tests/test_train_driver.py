"""The training driver end to end on tiny data: kill and resume, reports from disk, bad input."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from facenet_jax import checkpointing
from facenet_jax import console
from facenet_jax import experiment
from facenet_jax import train
from facenet_jax.eval import evaluator
from facenet_jax.eval import report
from input_pipeline import pipeline
from tests.tiny import SHORT_SGD_RUN
from tests.tiny import subprocess_env
from tests.tiny import tiny_config
from tests.tiny import tiny_flags

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_driver_stops_with_a_clear_message_on_a_non_finite_loss(tiny_synthetic_root, tmp_path,
                                                                   monkeypatch):
  config = tiny_config(tiny_synthetic_root, **SHORT_SGD_RUN)
  real_stream = pipeline.make_train_stream

  def poisoned_stream(*args, **kwargs):
    for batch in real_stream(*args, **kwargs):
      batch = dict(batch)
      batch['ti'] = np.full(batch['ti'].shape, np.inf, np.float32)   # float images pass as they are
      yield batch

  monkeypatch.setattr(pipeline, 'make_train_stream', poisoned_stream)
  with pytest.raises(train.NonFiniteLossError, match='Non-finite loss at step 1') as info:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  # The last finite state is on disk, where the message says, and it is finite.
  saved = pathlib.Path(str(info.value).rsplit('saved in ', 1)[1].rstrip('.'))
  assert saved.parent == tmp_path / 'run' / 'checkpoints' and saved.is_dir()
  exp = experiment.build_eval_experiment(config)
  ckpt = checkpointing.Checkpointer(tmp_path / 'run', 1, read_only=True)
  variables, _, _ = ckpt.restore_variables(exp.variable_template)
  ckpt.close()
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(variables))
  assert not (tmp_path / 'run' / '.lock').exists()      # released on the way out


def _train_script(root: str, workdir: pathlib.Path, max_steps: int) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, 'scripts/train.py',
       *tiny_flags(root, workdir, **{**SHORT_SGD_RUN, 'train__max_steps': max_steps})],
      cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def _finish(process: subprocess.Popen) -> tuple[str, str]:
  try:
    stdout, stderr = process.communicate(timeout=600)
  finally:
    process.kill()
  assert process.returncode == 0, stderr[-3000:]
  return stdout, stderr


@pytest.fixture(scope='module')
def runs(tiny_synthetic_root, tmp_path_factory):
  """`scripts/train.py` run straight for 6 steps, and the same run SIGKILLed and restarted in
  this process (the short SGD run: the programs the other tests of this file and of
  tests/test_multihost.py use)."""
  root = tmp_path_factory.mktemp('runs')
  console_output = _finish(_train_script(tiny_synthetic_root, root / 'straight', 6))
  (root / 'straight_stdout.txt').write_text(console_output[0])
  (root / 'straight_stderr.txt').write_text(console_output[1])
  killed = _train_script(tiny_synthetic_root, root / 'killed', 6)
  deadline = time.time() + 600
  while not (root / 'killed' / 'checkpoints' / '2').is_dir() and killed.poll() is None:
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)   # whatever it is doing: stepping, saving, logging
  killed.communicate(timeout=60)
  # The restart in this process: what it resumes from is the killed script's workdir on disk.
  config = tiny_config(tiny_synthetic_root, **{**SHORT_SGD_RUN, 'train__max_steps': 6})
  train.train_and_evaluate(config, str(root / 'killed'))
  return config, root


def _metric_lines(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _final_test_metrics(workdir: pathlib.Path) -> dict[str, float]:
  return [l for l in _metric_lines(workdir) if 'test/mAP' in l][-1]


@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_with_the_losses_of_an_uninterrupted_run(runs):
  _, root = runs
  straight = {l['step']: l['train/loss'] for l in _metric_lines(root / 'straight')
              if 'train/loss' in l}
  assert sorted(straight) == [1, 2, 3, 4, 5, 6]
  resumed = [(l['step'], l['train/loss']) for l in _metric_lines(root / 'killed')
             if 'train/loss' in l]
  # One row per step: the rows of steps replayed after the restart are not duplicated.
  assert sorted(step for step, _ in resumed) == sorted(straight)
  # Steps logged before the kill and again after the restart agree too.
  for step, loss in resumed:
    np.testing.assert_allclose(loss, straight[step], rtol=1e-5, err_msg=f'step {step}')
  assert {'val/mAP', 'test/mAP', 'test/R1'} <= set(_final_test_metrics(root / 'killed'))
  assert (root / 'killed' / 'config.json').is_file()


@pytest.mark.slow
def test_the_console_has_a_startup_block_a_line_per_log_step_and_checkpoint_and_one_table(runs):
  """6 steps logged every step, checkpoints every 2 steps, one evaluation at the end."""
  _, root = runs
  lines = (root / 'straight_stdout.txt').read_text().splitlines()
  assert lines[0].startswith('facenet on synthetic')
  assert 'steps/epoch, 6 steps' in lines[1] and 'starting at step 0' in lines[1]
  assert lines[2].startswith('config: ') and lines[2].split()[1].endswith('config.json')
  progress = [l for l in lines if l.startswith('step ')]
  assert [l.split()[1] for l in progress] == [f'{i}/6' for i in range(1, 7)]
  assert all(' | loss ' in l and ' id ' in l and ' tri ' in l and ' flare ' in l and ' ic ' in l
             and ' it/s | ETA ' in l for l in progress), progress[0]
  saved = [int(l.split()[2]) for l in lines if l.startswith('checkpoint: ')]
  assert {2, 4, 6} <= set(saved) and saved == sorted(set(saved))   # + epoch ends
  assert sum(l.startswith('Evaluation at step 6') for l in lines) == 1
  assert sum(l.startswith(('val ', 'test ')) for l in lines) == 2
  assert sum(l.startswith('best checkpoint: step 6') for l in lines) == 1
  assert len(lines) == 3 + 6 + len(saved) + 4 + 1
  # Library chatter stays off the console: nothing at INFO level on stderr either.
  stderr = (root / 'straight_stderr.txt').read_text()
  assert not [l for l in stderr.splitlines() if l.startswith('I')], stderr[:2000]


@pytest.mark.slow
def test_checkpoints_evaluate_from_disk_with_report_pictures_and_features(runs, tmp_path):
  config, root = runs
  final = _final_test_metrics(root / 'killed')
  out = report.evaluate_checkpoint(config, str(root / 'killed'), step=6,
                                   out_dir=str(tmp_path / 'report'), export_features=True)
  metrics = out['metrics']
  # The same weights on the same split give the metrics the run logged at its end.
  np.testing.assert_allclose(metrics['mAP'], final['test/mAP'], rtol=1e-4)
  assert len(metrics['cmc']) == config.eval.max_rank
  for name in ('metrics', 'cmc', 'rank_list', 'flare_masks', 'query_features'):
    assert pathlib.Path(out['files'][name]).is_file(), name
  features = np.load(out['files']['query_features'])
  assert features.shape[0] == len(pipeline.load_splits_for_config(config.data).query)
  assert np.all(np.isfinite(features)) and np.all(np.linalg.norm(features, axis=1) > 0)
  table = console.format_metric_table({'test': metrics}, 'tiny').splitlines()
  assert table[0] == 'tiny  [CMC: standard]' and table[1].split()[:5] == ['mAP', 'mINP', 'R-1', 'R-5', 'R-10']
  assert table[2].split()[:3] == ['test', f'{100 * metrics["mAP"]:.2f}',
                                  f'{100 * metrics["mINP"]:.2f}']
  best = report.evaluate_checkpoint(config, str(root / 'killed'), best=True,
                                    out_dir=str(tmp_path / 'report_best'))
  assert best['step'] == 6   # the only evaluation, at the end, is the best by definition


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused_with_the_differing_shapes(runs):
  config, root = runs
  config = config.copy_and_resolve_references()
  config.model.fmi_hidden_ratio = 0.5
  with pytest.raises(checkpointing.CheckpointError, match='shape params/mfmp/fmi'):
    report.evaluate_checkpoint(config, str(root / 'straight'))


def test_a_missing_dataset_root_names_the_config_field(tmp_path):
  config = tiny_config(str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='config.data.root'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_an_empty_query_split_is_a_clear_error(tiny_synthetic_root, tmp_path):
  exp = experiment.build_eval_experiment(tiny_config(tiny_synthetic_root))
  ev = evaluator.Evaluator(exp.model, exp.spec, exp.mesh, exp.config)
  with pytest.raises(ValueError, match='query split is empty'):
    ev.evaluate(None, [], exp.gallery)


@pytest.mark.slow
def test_a_run_killed_before_its_evaluation_evaluates_that_step_on_resume(tiny_synthetic_root,
                                                                         tmp_path, monkeypatch):
  """Killed after the last step's checkpoint but before its evaluation: the restart does it."""
  config = tiny_config(tiny_synthetic_root, **SHORT_SGD_RUN)
  config.train.max_steps = 2
  work = tmp_path / 'run'

  def killed(self):
    raise KeyboardInterrupt('killed during the evaluation')

  with monkeypatch.context() as patch:
    patch.setattr(train._Trainer, 'evaluate', killed)  # pylint: disable=protected-access
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, str(work))
  assert (work / 'checkpoints' / '2').is_dir()
  assert not (work / 'best').exists() or not any((work / 'best').iterdir())
  assert not any('test/mAP' in l for l in _metric_lines(work))
  scalars = train.train_and_evaluate(config, str(work))
  evaluated = [l for l in _metric_lines(work) if 'test/mAP' in l]
  assert [l['step'] for l in evaluated] == [2] and 'test/mAP' in scalars
  assert (work / 'best' / '2').is_dir()
