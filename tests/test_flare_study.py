"""The synthetic flare study: its measures by hand, and the script end to end on two tiny rows."""

import json
import pathlib
import subprocess
import sys
import types

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


def test_masked_retrieval_equals_the_reference_under_the_camera_rule():
  """With valid = not (same pid and camera), it is the official protocol (loop reference)."""
  from facenet_jax.eval import metrics
  rng = np.random.default_rng(0)
  q_pid, g_pid = rng.integers(0, 5, 12), rng.integers(0, 5, 40)
  q_cam, g_cam = rng.integers(0, 3, 12), rng.integers(0, 3, 40)
  dist = np.round(rng.random((12, 40)), 1)          # rounded: ties occur
  valid = ~((q_pid[:, None] == g_pid[None]) & (q_cam[:, None] == g_cam[None]))
  ours = study.masked_retrieval(dist, q_pid, g_pid, valid)
  ref = metrics.rank_metrics_loop_reference(dist, q_pid, g_pid, q_cam, g_cam)
  assert ours['mAP'] == pytest.approx(100 * ref['mAP'])
  assert ours['mINP'] == pytest.approx(100 * ref['mINP'])
  assert ours['R1'] == pytest.approx(100 * ref['cmc'][0])
  assert ours['num_queries'] == ref['num_valid_queries']


def test_state_split_by_hand():
  """One glared query of id 1; its matches: a glared one at rank 2 and a clean one at rank 3."""
  rec = lambda pid, cam: types.SimpleNamespace(pid=pid, camid=cam)
  query = [rec(1, 0)]
  gallery = [rec(2, 1), rec(1, 1), rec(1, 2), rec(1, 0)]   # the last: same camera, junk
  dist = np.asarray([[0.1, 0.2, 0.3, 0.0]])
  g_glared = np.asarray([False, True, False, True])
  out = study.state_split(dist, query, gallery, np.asarray([True]), g_glared)
  # Same state: the clean match is junk -> [id 2, match]: AP 1/2. Cross: [id 2, match]: 1/2.
  assert out['glared_query_same_state']['mAP'] == pytest.approx(50.0)
  assert out['glared_query_cross_state']['mAP'] == pytest.approx(50.0)
  assert out['clean_query_same_state']['num_queries'] == 0
  g_glared = np.asarray([False, False, True, True])
  out = study.state_split(dist, query, gallery, np.asarray([True]), g_glared)
  # Now the clean match is at 0.2 and the glared one at 0.3: each ranks 2nd in its own split.
  assert out['glared_query_cross_state']['mAP'] == pytest.approx(50.0)
  assert out['glared_query_same_state']['R1'] == 0.0


def test_predicted_cells_threshold_the_channel_mean():
  mask = np.zeros((1, 1, 2, 4), np.float32)
  mask[0, 0, 0] = [1, 1, 0, 0]          # mean 0.5: flared
  mask[0, 0, 1] = [1, 0.9, 0, 0]        # mean 0.475: not
  np.testing.assert_array_equal(study.predicted_cells(mask), [[[True, False]]])


def test_single_stream_and_control_rows_configure_their_models():
  settings = study.StudySettings()
  single = study.run_config('single_ti', 1, settings, '/data')
  assert single.model.name == 'single_stream' and single.model.modality == 'ti'
  assert single.model.width_multiplier == 0.25 and single.data.image_size == (128, 64)
  control = study.run_config('table2_fce_all', 0, settings, '/data')
  assert control.model.fce_gate == 'all' and control.model.mask_similarity == 'signed'
  assert study.expand_rows('single') == ['single_rgb', 'single_ni', 'single_ti']


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


def test_paired_differences_subtract_the_baseline_of_the_same_seed():
  def run(row, seed, m, glared=None):
    return {'row': row, 'seed': seed, 'all': {'mAP': m},
            **({'flare': {'mAP': glared}} if glared is not None else {})}
  runs = [run('table2_baseline', 0, 70.0, 50.0), run('table2_baseline', 1, 60.0, 40.0),
          run('table2_baseline', 2, 80.0),
          run('fce', 0, 65.0, 52.0), run('fce', 1, 61.0, 44.0), run('fce', 3, 99.0, 99.0),
          run('other', 7, 50.0), run('single_rgb', 0, 60.0)]
  paired = study.paired_differences(runs)
  # Seeds 0 and 1 pair up (seed 3 has no baseline): differences -5 and +1; glared +2 and +4.
  assert paired['fce']['mAP'] == pytest.approx((-2.0, np.std([-5.0, 1.0], ddof=1), 2, 1))
  assert paired['fce']['flare_mAP'] == pytest.approx((3.0, np.std([2.0, 4.0], ddof=1), 2, 2))
  assert 'flare_free_mAP' not in paired['fce']
  # No pair for 'other', none for the baseline itself or a single-stream model.
  assert set(paired) == {'fce'}
  report = study.markdown_report(runs, study.StudySettings(), 'cmd')
  assert ('| fce (n=2) | -2.0 ± 4.2 (1 of 2 above) | +3.0 ± 1.4 (2 of 2 above) | n/a | n/a | n/a | '
          'n/a | n/a |') in report


def _study(out: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-m', 'experiments.run_flare_study',
       '--rows', 'table2_baseline,table2_mfmp_nofmi_fce',
       '--seeds', '1', '--out', str(out), '--num_ids', '15', '--triplets_per_id', '4',
       '--image_size', '32,16', '--width_multiplier', '0.25', '--batch', '4,2',
       '--max_steps', '2', *extra],
      cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_study_script_on_two_tiny_rows_writes_tables_and_resumes(tmp_path):
  out = tmp_path / 'study'
  first = _study(out)
  assert first.returncode == 0, first.stderr[-3000:]
  results = json.loads((out / 'results.json').read_text())
  assert [r['row'] for r in results['runs']] == ['table2_baseline', 'table2_mfmp_nofmi_fce']
  for run in results['runs']:
    assert run['step'] == 2
    # Glared and clean queries split the whole query set.
    assert run['flare']['num_queries'] + run['flare_free']['num_queries'] == \
        run['all']['num_queries']
    assert set(run['by_state']) == set(study.STATE_SPLITS)
  baseline, smp_fce = results['runs']
  assert baseline['masks'] == {} and 'no_test_fce' not in baseline
  assert set(baseline['branches']) == {'rgb', 'ni', 'ti'}
  for modality in ('rgb', 'ni'):
    quality = smp_fce['masks'][modality]
    assert quality['grid'] == [2, 1]                # 32x16 at stride 16
    # (A 2x1 grid may hold no cell that is half glared: then recall is undefined.)
    assert np.isnan(quality['recall']) or 0.0 <= quality['recall'] <= 1.0
    assert 'constant_mask_iou' in quality
  assert 0.0 <= smp_fce['flare_classifier']['rgb_vs_truth'] <= 100.0
  assert set(smp_fce['no_test_fce']) == {'all', 'flare', 'flare_free', 'by_state'}
  markdown = (out / 'results.md').read_text()
  assert '| Baseline (3 streams) (n=1) |' in markdown and '| + MFMP w/o FMI + FCE (n=1) |' in markdown
  assert 'Modality ordering' in markdown
  assert 'RGB IoU' in markdown and 'python -m experiments.run_flare_study --rows' in markdown
  assert 'without the test-time replacement' in markdown
  assert (out / 'results.png').stat().st_size > 0

  # Started again: nothing is trained again.
  second = _study(out)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stdout.count('done before, skipped') == 2
  assert json.loads((out / 'results.json').read_text())['runs'] == results['runs']
  # Other settings in the same folder are refused instead of mixed in.
  with pytest.raises(ValueError, match='other study settings'):
    study.run_study(str(out), ['table2_baseline'], [0],
                    study.StudySettings(num_ids=15, triplets_per_id=4, image_size=(32, 16),
                                        num_ids_per_batch=4, num_instances=2, max_steps=2,
                                        num_epochs=3))
