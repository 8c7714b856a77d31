"""Cross-modality protocols: the official trial galleries, junk rules, trial averages, tables."""

import dataclasses
import random

import numpy as np
import pytest

from facenet_jax import console
from facenet_jax.eval import metrics
from facenet_jax.eval import protocols


@dataclasses.dataclass(frozen=True)
class Rec:
  path: str
  pid: int
  camid: int


def _sysu_candidates():
  """Visible candidates of test ids 3, 12, 40 over cameras 1, 2, 4, 5 (some folders absent),
  listed in a shuffled order: the draw must not depend on the order records come in."""
  rng = np.random.default_rng(0)
  records = []
  for pid in (40, 3, 12):
    for cam in (5, 1, 4, 2):
      if (pid, cam) in ((3, 4), (12, 1)):
        continue
      for n in rng.permutation(int(rng.integers(1, 6))):
        records.append(Rec(f'SYSU/cam{cam}/{pid:04d}/{n + 1:04d}.jpg', pid, cam))
  order = rng.permutation(len(records))
  return [records[i] for i in order]


def official_gallery_paths(records, trial, cameras):
  """The AGW `process_gallery_sysu` loop, literally: the global `random`, seeded per trial."""
  folders = {}
  for r in records:
    folders.setdefault((f'{r.pid:04d}', f'cam{r.camid}'), []).append(r.path)
  ids = sorted({f'{r.pid:04d}' for r in records})
  random.seed(trial)
  files = []
  for pid in sorted(ids):
    for cam in cameras:
      if (pid, cam) in folders:
        files.append(random.choice(sorted(folders[pid, cam])))
  return files


@pytest.mark.parametrize('trial', range(10))
def test_single_shot_draw_is_the_official_one(trial):
  candidates = _sysu_candidates()
  chosen = protocols.draw_trial_gallery(candidates, trial, shots=1)
  expected = official_gallery_paths(candidates, trial, ['cam1', 'cam2', 'cam4', 'cam5'])
  assert [candidates[i].path for i in chosen] == expected


def test_multi_shot_draw_takes_up_to_ten_distinct_images_per_folder():
  candidates = [Rec(f'cam1/0001/{n:04d}.jpg', 1, 1) for n in range(14)] + \
      [Rec(f'cam2/0001/{n:04d}.jpg', 1, 2) for n in range(3)]
  chosen = protocols.draw_trial_gallery(candidates, 0, shots=10)
  assert len(chosen) == len(set(chosen)) == 13
  assert sum(candidates[i].camid == 1 for i in chosen) == 10
  assert chosen != protocols.draw_trial_gallery(candidates, 1, shots=10)
  assert chosen == protocols.draw_trial_gallery(candidates, 0, shots=10)


def _embedded_problem(seed=0):
  rng = np.random.default_rng(seed)
  gallery = _sysu_candidates()
  query = [Rec(f'q{i}', pid, cam) for i, (pid, cam) in
           enumerate(zip(rng.choice([3, 12, 40, 41], 11), rng.choice([3, 6], 11)))]
  q = rng.normal(size=(len(query), 5)).astype(np.float32)
  g = rng.normal(size=(len(gallery), 5)).astype(np.float32)
  return q, g, query, gallery


@pytest.mark.parametrize('cmc_mode', metrics.CMC_MODES)
def test_sysu_protocol_is_the_mean_over_ten_official_trials(cmc_mode):
  q, g, query, gallery = _embedded_problem()
  settings = protocols.ScoringSettings(distance='euclidean', max_rank=5, cmc_mode=cmc_mode)
  result = protocols.get_protocol('sysu_single').score(q, g, query, gallery, settings)
  per_trial = []
  index = {r.path: i for i, r in enumerate(gallery)}
  for trial in range(10):
    chosen = [index[p] for p in official_gallery_paths(gallery, trial,
                                                       ['cam1', 'cam2', 'cam4', 'cam5'])]
    dist = metrics.compute_distance_matrix(q, g[chosen], 'euclidean')
    per_trial.append(metrics.rank_metrics_loop_reference(
        dist, [r.pid for r in query], [gallery[i].pid for i in chosen],
        [r.camid for r in query], [gallery[i].camid for i in chosen], max_rank=5,
        same_key_junk=False, junk_camera_pairs=[(3, 2)], cmc_mode=cmc_mode))
  np.testing.assert_allclose(result['cmc'], np.mean([t['cmc'] for t in per_trial], axis=0),
                             atol=1e-6)
  assert result['mAP'] == pytest.approx(np.mean([t['mAP'] for t in per_trial]))
  assert result['mINP'] == pytest.approx(np.mean([t['mINP'] for t in per_trial]))
  assert result['num_trials'] == 10 and len(result['trials']) == 10
  # One image per (pid, camera) folder of the candidates: 3 ids x 4 cameras minus 2 absent.
  assert result['gallery_size'] == 10
  assert result['num_skipped_queries'] > 0           # pid 41 has no gallery images
  assert result['std']['mAP'] > 0                     # the trials do differ
  assert result['cmc_mode'] == cmc_mode


def test_llcm_junk_is_same_pid_and_camera_and_regdb_removes_nothing():
  query = [Rec('q', 1, 2)]
  gallery = [Rec('a', 1, 2), Rec('b', 2, 1), Rec('c', 1, 3)]
  q = np.zeros((1, 2), np.float32)
  g = np.array([[0.0, 0.1], [0.0, 0.2], [0.0, 0.3]], np.float32)
  settings = protocols.ScoringSettings(distance='euclidean', max_rank=3)
  llcm = protocols.get_protocol('llcm').score(q, g, query, gallery, settings)
  assert llcm['mAP'] == pytest.approx(0.5)           # item a is junk, c matches at rank 2
  for name in ('regdb', 'day_night'):
    whole = protocols.get_protocol(name).score(q, g, query, gallery, settings)
    assert whole['mAP'] == pytest.approx((1 + 2 / 3) / 2) and whole['num_trials'] == 1


def test_cmc_mode_is_checked_and_printed():
  config = type('Eval', (), dict(rerank=False, distance='cosine', max_rank=5,
                                 query_chunk_size=8, cmc_mode='dedup'))
  with pytest.raises(ValueError, match='config.eval.cmc_mode'):
    protocols.ScoringSettings.from_config(config)
  q, g, query, gallery = _embedded_problem()
  settings = protocols.ScoringSettings(max_rank=5, cmc_mode='distinct_ids')
  result = protocols.get_protocol('sysu_single').score(q, g, query, gallery, settings)
  title = console.format_metric_table({'test': result}, 'SYSU-MM01').splitlines()[0]
  assert title == 'SYSU-MM01  [CMC: distinct ids, mean of 10 gallery trials]'
