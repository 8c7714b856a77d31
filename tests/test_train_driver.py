"""The training driver end to end on tiny data: kill and resume, reports from disk, bad input."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from facenet_jax import checkpointing
from facenet_jax import report
from facenet_jax import train
from input_pipeline import pipeline
from tests.tiny import SHORT_SGD_RUN
from tests.tiny import subprocess_env
from tests.tiny import tiny_config
from tests.tiny import tiny_flags

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_driver_stops_with_a_clear_message_on_a_non_finite_loss(tiny_synthetic_root, tmp_path,
                                                                   monkeypatch):
  config = tiny_config(tiny_synthetic_root, **SHORT_SGD_RUN)
  real_stream = pipeline.make_train_stream

  def poisoned_stream(*args, **kwargs):
    for batch in real_stream(*args, **kwargs):
      batch = dict(batch)
      batch['ti'] = np.full_like(batch['ti'], np.inf)
      yield batch

  monkeypatch.setattr(pipeline, 'make_train_stream', poisoned_stream)
  with pytest.raises(train.NonFiniteLossError, match='Non-finite loss at step 1'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def _train_script(root: str, workdir: pathlib.Path, max_steps: int) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, 'scripts/train.py', *tiny_flags(root, workdir, train__max_steps=max_steps)],
      cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True)


def _finish(process: subprocess.Popen) -> None:
  try:
    _, stderr = process.communicate(timeout=600)
  finally:
    process.kill()
  assert process.returncode == 0, stderr[-3000:]


@pytest.fixture(scope='module')
def runs(tiny_synthetic_root, tmp_path_factory):
  """`scripts/train.py` run straight for 6 steps, and the same run SIGKILLed and restarted."""
  root = tmp_path_factory.mktemp('runs')
  _finish(_train_script(tiny_synthetic_root, root / 'straight', 6))
  killed = _train_script(tiny_synthetic_root, root / 'killed', 6)
  deadline = time.time() + 600
  while not (root / 'killed' / 'checkpoints' / '2').is_dir() and killed.poll() is None:
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)   # whatever it is doing: stepping, saving, logging
  killed.communicate(timeout=60)
  _finish(_train_script(tiny_synthetic_root, root / 'killed', 6))
  config = tiny_config(tiny_synthetic_root)
  config.train.max_steps = 6
  return config, root


def _metric_lines(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _final_test_metrics(workdir: pathlib.Path) -> dict[str, float]:
  return [l for l in _metric_lines(workdir) if 'test/mAP' in l][-1]


def test_a_run_killed_at_any_moment_resumes_with_the_losses_of_an_uninterrupted_run(runs):
  _, root = runs
  straight = {l['step']: l['train/loss'] for l in _metric_lines(root / 'straight')
              if 'train/loss' in l}
  assert sorted(straight) == [1, 2, 3, 4, 5, 6]
  resumed = [(l['step'], l['train/loss']) for l in _metric_lines(root / 'killed')
             if 'train/loss' in l]
  assert {step for step, _ in resumed} == set(straight)
  # Steps logged before the kill and again after the restart agree too.
  for step, loss in resumed:
    np.testing.assert_allclose(loss, straight[step], rtol=1e-5, err_msg=f'step {step}')
  assert {'val/mAP', 'test/mAP', 'test/R1'} <= set(_final_test_metrics(root / 'killed'))
  assert (root / 'killed' / 'config.json').is_file()


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
  np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
  table = report.format_metric_table(metrics, 'tiny')
  assert 'mAP' in table and 'R-10' in table
  best = report.evaluate_checkpoint(config, str(root / 'killed'), best=True,
                                    out_dir=str(tmp_path / 'report_best'))
  assert best['step'] == 6   # the only evaluation, at the end, is the best by definition


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
  exp = train.build_experiment(tiny_config(tiny_synthetic_root))
  with pytest.raises(ValueError, match='query split is empty'):
    train.evaluate_retrieval(None, None, [], exp.gallery, exp.config, exp.mesh)
