"""The cross-modality path end to end: synthetic sets, streams, AGW steps, protocol evaluation."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from facenet_jax import train
from input_pipeline import cross_modal
from input_pipeline import cross_modal_pipeline
from input_pipeline import pipeline
from input_pipeline import synthetic_cross_modal
from tests.tiny import tiny_agw_config

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def sysu_root(tiny_sysu_root):
  return tiny_sysu_root


def test_synthetic_layouts_read_with_the_real_readers(sysu_root, tmp_path):
  splits = cross_modal.load_cross_modal('sysu_mm01', sysu_root)
  assert {r.camid for r in splits.pool(0)} <= {1, 2, 4, 5} and splits.pool(1)
  assert {q.camid for q in splits.query} <= {3, 6}
  assert cross_modal.prescan(splits) == []
  dn = synthetic_cross_modal.generate_dn_like(str(tmp_path / 'dn'), num_ids=9, images_per_state=2)
  day_night = cross_modal.load_cross_modal('dn348', dn)
  assert {r.modality for r in day_night.train} == {0, 1}
  assert {q.pid for q in day_night.query} == {g.pid for g in day_night.gallery}
  with pytest.raises(ValueError, match='not empty'):
    synthetic_cross_modal.generate_dn_like(dn, num_ids=9)


def test_train_batches_are_aligned_halves_and_the_stream_is_the_batch_function(sysu_root):
  config = tiny_agw_config(sysu_root, data__random_erasing_prob=0.5, data__grayscale_prob=0.5)
  splits = cross_modal_pipeline.load_splits(config.data)
  batch_fn = pipeline.make_train_batch_fn(splits.train, config.data)
  stream = pipeline.make_train_stream(splits.train, config.data, start_step=5)
  for step in (5, 6):
    batch, streamed = batch_fn(step), next(stream)
    assert batch['image'].shape == (16, 32, 16, 3) and batch['image'].dtype == np.uint8
    assert batch['image_erase'].shape == (16, 5)
    np.testing.assert_array_equal(batch['modality'], [0] * 8 + [1] * 8)
    np.testing.assert_array_equal(batch['pid'][:8], batch['pid'][8:])
    for key in batch:
      np.testing.assert_allclose(streamed[key], batch[key], atol=1e-6)
  # Two processes: each holds half of each modality's rows; together the global batch's rows.
  shares = [pipeline.make_train_batch_fn(splits.train, config.data, p, 2)(5) for p in (0, 1)]
  whole = batch_fn(5)
  for m in (0, 1):
    rows = np.concatenate([s['image'][s['modality'] == m] for s in shares])
    np.testing.assert_allclose(rows, whole['image'][whole['modality'] == m], atol=1e-6)


def test_eval_stream_yields_every_record_once(sysu_root):
  config = tiny_agw_config(sysu_root)
  splits = cross_modal_pipeline.load_splits(config.data)
  seen = []
  for batch in pipeline.make_eval_stream(splits.gallery, config.data, batch_size=16):
    seen += batch['index'][batch['mask']].tolist()
    assert np.all(batch['modality'][batch['mask']] == 0)
    assert not batch['image'][~batch['mask']].any()
  assert seen == list(range(len(splits.gallery)))


@pytest.mark.slow
def test_agw_trains_and_evaluates_under_the_sysu_protocol(sysu_root, tmp_path, capsys):
  config = tiny_agw_config(sysu_root, train__max_steps=4)
  final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  out = capsys.readouterr().out
  assert 'agw on sysu_mm01' in out
  assert '[CMC: standard, mean of 10 gallery trials]' in out
  assert np.isfinite(final['test/mAP']) and 0 < final['test/mAP'] <= 1
  losses = [float(line.split('loss ')[1].split()[0]) for line in out.splitlines()
            if line.startswith('step ')]
  assert len(losses) == 4 and losses[-1] < losses[0]
  # The fold average of RegDB's protocol reads each run's metrics at its best checkpoint.
  proc = subprocess.run([sys.executable, 'scripts/average_folds.py', str(tmp_path / 'run'),
                         str(tmp_path / 'run'), '--json', str(tmp_path / 'folds.json')],
                        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
  assert proc.returncode == 0, proc.stderr
  folds = json.loads((tmp_path / 'folds.json').read_text())
  assert folds['mean']['mAP'] == pytest.approx(final['test/mAP']) and folds['std']['mAP'] == 0
  assert f'{100 * final["test/mAP"]:.2f}' in proc.stdout.splitlines()[-2]


@pytest.mark.slow
def test_deen_trains_a_few_steps_and_evaluates(sysu_root, tmp_path, capsys):
  from configs import _deen_recipe  # pylint: disable=g-import-not-at-top
  config = _deen_recipe.get_deen_config('sysu_mm01', 'sysu_single')
  small = tiny_agw_config(sysu_root)
  for group in ('data', 'train'):
    config[group].update(small[group].to_dict())
  config.model.depth, config.model.width_multiplier = 18, 0.125
  config.train.max_steps = 2
  final = train.train_and_evaluate(config, str(tmp_path / 'deen'))
  out = capsys.readouterr().out
  assert 'deen on sysu_mm01' in out and 'cpm' in out
  assert 0 < final['test/mAP'] <= 1
