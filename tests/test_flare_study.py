"""The synthetic flare study: its measures by hand, and the script end to end on two tiny rows."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import flare_study as study
from tests.tiny import subprocess_env

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_mask_quality_by_hand():
  truth = np.array([[[1, 1], [0, 0]], [[0, 1], [0, 0]]], bool)       # 3 true cells
  predicted = np.array([[[1, 0], [1, 0]], [[0, 1], [0, 0]]], bool)   # 2 hits, 1 false alarm
  q = study.mask_quality(predicted, truth)
  assert q['iou'] == pytest.approx(2 / 4)        # tp / (tp + fp + fn) = 2 / (2 + 1 + 1)
  assert q['precision'] == pytest.approx(2 / 3)
  assert q['recall'] == pytest.approx(2 / 3)
  assert q['all_flared_iou'] == pytest.approx(3 / 8)
  empty = study.mask_quality(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), bool))
  assert np.isnan(empty['iou']) and np.isnan(empty['precision'])
  with pytest.raises(ValueError, match='differ in shape'):
    study.mask_quality(predicted[:1], truth)


def test_truth_cells_are_flared_when_half_their_pixels_are_glare():
  mask = np.zeros((4, 4), bool)
  mask[:2, :2] = True          # cell (0, 0): all glare
  mask[2, 2:] = True           # cell (1, 1): half glare
  mask[0, 2] = True            # cell (0, 1): a quarter
  np.testing.assert_array_equal(study.downsample_truth(mask, (2, 2)), [[True, False],
                                                                      [False, True]])
  with pytest.raises(ValueError, match='not a multiple'):
    study.downsample_truth(mask, (3, 2))


def test_predicted_cells_threshold_the_channel_mean():
  mask = np.zeros((1, 1, 2, 4), np.float32)
  mask[0, 0, 0] = [1, 1, 0, 0]          # mean 0.5: flared
  mask[0, 0, 1] = [1, 0.9, 0, 0]        # mean 0.475: not
  np.testing.assert_array_equal(study.predicted_cells(mask), [[[True, False]]])


def test_rows_expand_from_table_names_without_duplicates():
  assert study.expand_rows('table2')[0] == 'table2_baseline'
  assert study.expand_rows('table4,table4_layer4,table2_full') == [
      'table4_layer1', 'table4_layer2', 'table4_layer3', 'table4_layer4', 'table2_full']
  with pytest.raises(ValueError, match='unknown row'):
    study.expand_rows('table9')


def test_aggregate_gives_mean_and_sample_std_over_seeds():
  runs = [{'row': 'r', 'seed': s, 'all': {'mAP': m, 'R1': 0, 'R5': 0, 'R10': 0}}
          for s, m in enumerate((10.0, 20.0, 30.0))]
  table = study.aggregate(runs)
  assert table['r']['mAP'] == pytest.approx((20.0, 10.0, 3))
  assert 'flare_mAP' not in table['r']


def _study(out: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-m', 'experiments.run_flare_study',
       '--rows', 'table2_baseline,table2_mfmp_nofmi_fce',
       '--seeds', '1', '--out', str(out), '--num_ids', '15', '--triplets_per_id', '4',
       '--image_size', '32,16', '--batch', '4,2', '--max_steps', '2', *extra],
      cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)


def test_the_study_script_on_two_tiny_rows_writes_tables_and_resumes(tmp_path):
  out = tmp_path / 'study'
  first = _study(out)
  assert first.returncode == 0, first.stderr[-3000:]
  results = json.loads((out / 'results.json').read_text())
  assert [r['row'] for r in results['runs']] == ['table2_baseline', 'table2_mfmp_nofmi_fce']
  for run in results['runs']:
    assert run['step'] == 2
    # Flared and flare-free queries split the whole query set.
    assert run['flare']['num_queries'] + run['flare_free']['num_queries'] == \
        run['all']['num_queries']
  baseline, smp_fce = results['runs']
  assert baseline['masks'] == {}                    # no MFMP, no masks to score
  for modality in ('rgb', 'ni'):
    quality = smp_fce['masks'][modality]
    assert quality['grid'] == [2, 1]                # 32x16 at stride 16
    assert 0.0 <= quality['recall'] <= 1.0
  markdown = (out / 'results.md').read_text()
  assert '| Baseline (3 streams) |' in markdown and '| + MFMP w/o FMI + FCE |' in markdown
  assert 'RGB IoU' in markdown and 'python -m experiments.run_flare_study --rows' in markdown
  assert (out / 'results.png').stat().st_size > 0

  # Started again: nothing is trained again; --diagnose adds its measures to the finished runs.
  second = _study(out, '--diagnose')
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stdout.count('done before, skipped') == 2
  again = json.loads((out / 'results.json').read_text())['runs']
  assert [{k: v for k, v in r.items() if k != 'diagnosis'} for r in again] == results['runs']
  baseline, smp_fce = again
  assert set(baseline['diagnosis']) == {'branch_mAP'}     # no FCE to switch off
  assert set(smp_fce['diagnosis']['branch_mAP']) == {'rgb', 'ni', 'ti'}
  assert set(smp_fce['diagnosis']['no_test_fce']) == {'all', 'flare', 'flare_free'}
  assert 'no test-time FCE' in (out / 'results.md').read_text()
  # Other settings in the same folder are refused instead of mixed in.
  with pytest.raises(ValueError, match='other study settings'):
    study.run_study(str(out), ['table2_baseline'], [0],
                    study.StudySettings(num_ids=15, triplets_per_id=4, image_size=(32, 16),
                                        num_ids_per_batch=4, num_instances=2, max_steps=2,
                                        num_epochs=3))
