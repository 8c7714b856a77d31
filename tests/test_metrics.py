"""Retrieval metrics against hand-worked cases and a plain Python reference written here.

The reference below follows the official `eval_func` semantics query by query with Python lists
(junk removal, skip queries without a match, CMC / AP as in eval_func, INP as in AGW) and the
module's documented tie rule: at equal distance, non-matches rank before matches (pessimistic).
It shares no code with `facenet_jax.evaluation`.
"""

import collections
import math

import numpy as np
import pytest

from facenet_jax.eval import metrics as evaluation
from facenet_jax.eval import protocols


# ---------------------------------------------------------------------------------- references
def reference_metrics(distmat, q_pids, g_pids, q_keys, g_keys, max_rank):
  """Per-query Python loop; q_keys/g_keys are cameras, or scenes for the MSVR310 protocol."""
  cmc_sum = [0.0] * max_rank
  aps, inps, skipped = [], [], 0
  for i in range(len(q_pids)):
    items = []
    for j in range(len(g_pids)):
      if g_pids[j] == q_pids[i] and g_keys[j] == q_keys[i]:
        continue  # junk: same identity seen by the same camera (scene)
      # Tuples sort by distance, then False (non-match) before True (match): pessimistic ties.
      # Python floats compare -0.0 == 0.0, so both zeros tie.
      items.append((float(distmat[i][j]), bool(g_pids[j] == q_pids[i])))
    items.sort()
    ranks = [k + 1 for k, (_, is_match) in enumerate(items) if is_match]
    if not ranks:
      skipped += 1
      continue
    aps.append(sum((n + 1) / rank for n, rank in enumerate(ranks)) / len(ranks))
    inps.append(len(ranks) / ranks[-1])
    for k in range(max_rank):
      cmc_sum[k] += 1.0 if ranks[0] <= k + 1 else 0.0
  n = len(aps)
  return {'cmc': np.array(cmc_sum) / n, 'mAP': sum(aps) / n, 'mINP': sum(inps) / n,
          'num_valid_queries': n, 'num_skipped_queries': skipped}


def assert_metrics_equal(actual, expected):
  np.testing.assert_allclose(actual['cmc'], expected['cmc'], rtol=0, atol=1e-6)
  assert actual['cmc'].shape == np.asarray(expected['cmc']).shape
  assert actual['mAP'] == pytest.approx(expected['mAP'], rel=1e-12, abs=1e-12)
  assert actual['mINP'] == pytest.approx(expected['mINP'], rel=1e-12, abs=1e-12)
  assert actual['num_valid_queries'] == expected['num_valid_queries']
  assert actual['num_skipped_queries'] == expected['num_skipped_queries']


def random_problem(seed, num_query=37, num_gallery=53, ties=True, negatives=False):
  rng = np.random.default_rng(seed)
  # Query pids 0..9, gallery pids 0..7: queries of pids 8, 9 have no match and are skipped;
  # 3 cameras make junk (same pid, same camera) frequent, so some queries lose every match.
  q_pids = rng.integers(0, 10, num_query)
  g_pids = rng.integers(0, 8, num_gallery)
  q_cams = rng.integers(0, 3, num_query)
  g_cams = rng.integers(0, 3, num_gallery)
  q_scenes = rng.integers(0, 4, num_query)
  g_scenes = rng.integers(0, 4, num_gallery)
  dist = rng.random((num_query, num_gallery)).astype(np.float32)
  if ties:
    dist = np.round(dist * 5).astype(np.float32) / 5  # 6 levels: many exact ties
  if negatives:
    dist -= np.float32(0.3)
  return dist, q_pids, g_pids, q_cams, g_cams, q_scenes, g_scenes


# ---------------------------------------------------------------------------------- hand cases
# Gallery of 5: (pid, cam) per item.
HAND_G_PIDS = np.array([1, 2, 1, 2, 1])
HAND_G_CAMS = np.array([0, 1, 1, 0, 2])
# Query 0: pid 1, cam 0.  Query 1: pid 2, cam 1.  Query 2: pid 3 (not in the gallery).
HAND_Q_PIDS = np.array([1, 2, 3])
HAND_Q_CAMS = np.array([0, 1, 0])
HAND_DIST = np.array([[0.1, 0.4, 0.2, 0.3, 0.5],
                      [0.3, 0.05, 0.5, 0.2, 0.1],
                      [0.1, 0.2, 0.3, 0.4, 0.5]], np.float32)
# Query 0: item 0 is junk (pid 1, cam 0). Remaining by distance: 2 (M, 0.2), 3 (N), 1 (N),
#   4 (M, 0.5) -> matches at ranks 1 and 4. CMC = [1, 1, 1, 1, ...];
#   AP = (1/1 + 2/4) / 2 = 0.75; INP = 2 / 4 = 0.5.
# Query 1: item 1 is junk (pid 2, cam 1). Remaining: 4 (N, 0.1), 3 (M, 0.2), 0 (N), 2 (N)
#   -> one match at rank 2. CMC = [0, 1, 1, 1, ...]; AP = 1/2; INP = 1/2.
# Query 2: no gallery item of pid 3 -> skipped.
# Means over the 2 valid queries: CMC = [0.5, 1, 1, 1], mAP = 0.625, mINP = 0.5.


def test_hand_worked_case():
  result = evaluation.rank_metrics(HAND_DIST, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS,
                                   HAND_G_CAMS, max_rank=4)
  np.testing.assert_array_equal(result['cmc'], [0.5, 1.0, 1.0, 1.0])
  assert result['mAP'] == pytest.approx(0.625, abs=1e-12)
  assert result['mINP'] == pytest.approx(0.5, abs=1e-12)
  assert result['num_valid_queries'] == 2
  assert result['num_skipped_queries'] == 1


def test_gallery_shorter_than_max_rank_pads_with_the_last_value():
  # Same case, max_rank 8 > 5 gallery items (> 4 left after junk): the official code would
  # fail building ragged CMC rows; here the CMC keeps its length with the last value repeated.
  result = evaluation.rank_metrics(HAND_DIST, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS,
                                   HAND_G_CAMS, max_rank=8)
  np.testing.assert_array_equal(result['cmc'], [0.5] + [1.0] * 7)
  assert result['mAP'] == pytest.approx(0.625, abs=1e-12)
  loop = evaluation.rank_metrics_loop_reference(HAND_DIST, HAND_Q_PIDS, HAND_G_PIDS,
                                                HAND_Q_CAMS, HAND_G_CAMS, max_rank=8)
  assert_metrics_equal(loop, result)


def test_scene_protocol_replaces_the_camera_rule():
  # Scenes: query 0 shares scene 5 with gallery item 4 (a match) -> item 4 becomes junk, and
  # item 0 (pid 1, same camera but scene 6) is no longer junk.
  q_scenes = np.array([5, 7, 7])
  g_scenes = np.array([6, 7, 6, 6, 5])
  # Query 0 remaining: 0 (M, 0.1), 2 (M, 0.2), 3 (N), 1 (N) -> ranks 1, 2:
  #   AP = (1/1 + 2/2) / 2 = 1, INP = 2/2 = 1, CMC = [1, ...].
  # Query 1 (pid 2, scene 7): item 1 (pid 2, scene 7) junk; item 3 (pid 2, scene 6) kept.
  #   Remaining: 4 (N, 0.1), 3 (M, 0.2), 0, 2 -> AP = 1/2, INP = 1/2, CMC = [0, 1, ...].
  result = evaluation.rank_metrics(HAND_DIST, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS,
                                   HAND_G_CAMS, max_rank=3, q_sceneids=q_scenes,
                                   g_sceneids=g_scenes)
  np.testing.assert_array_equal(result['cmc'], [0.5, 1.0, 1.0])
  assert result['mAP'] == pytest.approx(0.75, abs=1e-12)
  assert result['mINP'] == pytest.approx(0.75, abs=1e-12)


def test_exact_ties_rank_non_matches_first():
  # Query pid 1, camera 0; gallery cameras 1 (no junk). Distances and pids:
  #   item 0: 0.2 M   item 1: 0.2 N   item 2: 0.1 N   item 3: 0.3 M
  # Order: 2 (N), then the tie at 0.2 with the non-match first: 1 (N), 0 (M); then 3 (M).
  # Matches at ranks 3, 4: AP = (1/3 + 2/4) / 2 = 5/12; INP = 2/4; CMC = [0, 0, 1, 1].
  # (Breaking the tie by gallery index would give ranks 2, 4 and AP 1/2.)
  dist = np.array([[0.2, 0.2, 0.1, 0.3]], np.float32)
  args = (np.array([1]), np.array([1, 2, 2, 1]), np.array([0]), np.array([1, 1, 1, 1]))
  result = evaluation.rank_metrics(dist, *args, max_rank=4)
  np.testing.assert_array_equal(result['cmc'], [0.0, 0.0, 1.0, 1.0])
  assert result['mAP'] == pytest.approx(5 / 12, abs=1e-12)
  assert result['mINP'] == pytest.approx(0.5, abs=1e-12)
  loop = evaluation.rank_metrics_loop_reference(dist, *args, max_rank=4)
  assert_metrics_equal(loop, result)


def test_all_distances_equal_gives_the_worst_case():
  # A collapsed embedding: every distance 0. Gallery pids [2, 1, 2, 1] for a pid-1 query:
  # pessimistic order N, N, M, M -> ranks 3, 4: AP = (1/3 + 2/4) / 2 = 5/12, CMC = [0, 0, 1, 1].
  dist = np.zeros((1, 4), np.float32)
  result = evaluation.rank_metrics(dist, [1], [2, 1, 2, 1], [0], [1, 1, 1, 1], max_rank=4)
  assert result['mAP'] == pytest.approx(5 / 12, abs=1e-12)
  np.testing.assert_array_equal(result['cmc'], [0.0, 0.0, 1.0, 1.0])


def test_signed_zeros_tie_and_negative_distances_sort_first():
  args = ([1], [1, 2, 2, 1], [0], [1, 1, 1, 1])
  # All non-negative (-0.0 counts as >= 0): items 0 (-0.0, M) and 1 (0.0, N) tie at zero,
  # the non-match goes first: 1 N, 0 M, 2 N (0.5), 3 M (1.0) -> ranks 2, 4:
  # AP = (1/2 + 2/4) / 2 = 1/2, INP = 2/4.
  dist = np.array([[-0.0, 0.0, 0.5, 1.0]], np.float32)
  result = evaluation.rank_metrics(dist, *args, max_rank=4)
  assert result['mAP'] == pytest.approx(0.5, abs=1e-12)
  np.testing.assert_array_equal(result['cmc'], [0.0, 1.0, 1.0, 1.0])
  # With a negative distance (rounding in 1 - cos): item 2 at -1e-7 comes first, then the zero
  # tie 1 N, 0 M, then 3 M -> ranks 3, 4: AP = (1/3 + 2/4) / 2 = 5/12.
  dist = np.array([[-0.0, 0.0, -1e-7, 1.0]], np.float32)
  result = evaluation.rank_metrics(dist, *args, max_rank=4)
  assert result['mAP'] == pytest.approx(5 / 12, abs=1e-12)
  # Negatives below -1 and +inf keep their order: -2 M, -1 N, 3 N, inf M -> ranks 1, 4.
  dist = np.array([[-2.0, -1.0, 3.0, np.inf]], np.float32)
  result = evaluation.rank_metrics(dist, *args, max_rank=4)
  assert result['mAP'] == pytest.approx((1 / 1 + 2 / 4) / 2, abs=1e-12)
  assert result['mINP'] == pytest.approx(2 / 4, abs=1e-12)


def test_junk_at_infinite_distance_is_still_removed():
  # Item 0 is junk (pid 1, camera 0 like the query) even at +inf; item 1 (inf, M) must rank
  # after item 2 (N, 1.0) and the junk must not count: ranks 2 -> AP = 1/2, INP = 1/2.
  result = evaluation.rank_metrics(np.array([[np.inf, np.inf, 1.0]], np.float32), [1], [1, 1, 2],
                                   [0], [0, 1, 1], max_rank=3)
  assert result['mAP'] == pytest.approx(0.5, abs=1e-12)
  np.testing.assert_array_equal(result['cmc'], [0.0, 1.0, 1.0])


# ---------------------------------------------------------------------------------- random cases
@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('scenes', [False, True])
def test_random_problems_match_the_reference(seed, scenes):
  dist, q_pids, g_pids, q_cams, g_cams, q_scenes, g_scenes = random_problem(
      seed, ties=seed % 2 == 0, negatives=seed >= 2)
  keys = (q_scenes, g_scenes) if scenes else (q_cams, g_cams)
  scene_kwargs = dict(q_sceneids=q_scenes, g_sceneids=g_scenes) if scenes else {}
  expected = reference_metrics(dist, q_pids, g_pids, *keys, max_rank=10)
  assert expected['num_skipped_queries'] > 0  # the problem does exercise skipping
  for chunk_size in (1, 5, 1024):
    result = evaluation.rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10,
                                     chunk_size=chunk_size, **scene_kwargs)
    assert_metrics_equal(result, expected)
  loop = evaluation.rank_metrics_loop_reference(dist, q_pids, g_pids, q_cams, g_cams,
                                                max_rank=10, **scene_kwargs)
  assert_metrics_equal(loop, expected)


def test_labels_of_any_dtype_are_accepted():
  dist, q_pids, g_pids, q_cams, g_cams, _, _ = random_problem(7)
  expected = evaluation.rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
  as_text = lambda x: np.array([f'id{v:03d}' for v in x])
  result = evaluation.rank_metrics(dist, as_text(q_pids), as_text(g_pids), q_cams - 7,
                                   (g_cams - 7).astype(np.int8), max_rank=5)
  assert_metrics_equal(result, expected)


# ---------------------------------------------------------------------------------- distances
def numpy_distances(q, g, metric):
  q = q.astype(np.float64)
  g = g.astype(np.float64)
  if metric in ('euclidean_normalized', 'cosine'):
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
  if metric == 'cosine':
    return 1.0 - q @ g.T
  if metric == 'dot':
    return -(q @ g.T)
  squared = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
  return squared if metric == 'euclidean_normalized' else np.sqrt(squared)


@pytest.mark.parametrize('metric', evaluation.METRICS)
def test_distance_matrix_matches_numpy(metric):
  rng = np.random.default_rng(3)
  q = rng.normal(size=(7, 5)).astype(np.float32)
  g = rng.normal(size=(11, 5)).astype(np.float32) * 3
  g[0] = 0.0  # a zero vector normalises to zero (eps), not NaN
  got = evaluation.compute_distance_matrix(q, g, metric, chunk_size=3)
  assert got.shape == (7, 11) and got.dtype == np.float32
  np.testing.assert_allclose(got, numpy_distances(q, g, metric), rtol=1e-5, atol=1e-5)


def test_normalized_euclidean_is_two_minus_two_cosine():
  rng = np.random.default_rng(4)
  q, g = rng.normal(size=(4, 6)), rng.normal(size=(5, 6))
  d = evaluation.compute_distance_matrix(q, g, 'euclidean_normalized')
  c = evaluation.compute_distance_matrix(q, g, 'cosine')
  np.testing.assert_allclose(d, 2.0 * c, atol=1e-5)


@pytest.mark.parametrize('metric', evaluation.METRICS)
@pytest.mark.parametrize('scenes', [False, True])
def test_evaluate_features_equals_distances_then_ranking(metric, scenes):
  _, q_pids, g_pids, q_cams, g_cams, q_scenes, g_scenes = random_problem(5)
  rng = np.random.default_rng(5)
  centres = rng.normal(size=(10, 6))
  q = centres[q_pids] + rng.normal(size=(q_pids.size, 6))
  g = centres[g_pids] + rng.normal(size=(g_pids.size, 6))
  scene_kwargs = dict(q_sceneids=q_scenes, g_sceneids=g_scenes) if scenes else {}
  keys = (q_scenes, g_scenes) if scenes else (q_cams, g_cams)
  dist = evaluation.compute_distance_matrix(q, g, metric, chunk_size=8)
  expected = reference_metrics(dist, q_pids, g_pids, *keys, max_rank=12)
  result = evaluation.evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, metric=metric,
                                        max_rank=12, chunk_size=8, **scene_kwargs)
  assert_metrics_equal(result, expected)
  assert expected['mAP'] > 0.3  # the clustered features do retrieve their identities


# ---------------------------------------------------------------------------------- errors
def test_empty_query_or_gallery_is_an_error():
  with pytest.raises(ValueError, match='Empty query set'):
    evaluation.rank_metrics(np.zeros((0, 3)), [], [1, 2, 3], [], [0, 0, 0])
  with pytest.raises(ValueError, match='Empty gallery'):
    evaluation.rank_metrics(np.zeros((2, 0)), [1, 2], [], [0, 0], [])
  with pytest.raises(ValueError, match='Empty query set'):
    evaluation.evaluate_features(np.zeros((0, 4)), np.ones((3, 4)), [], [1, 2, 3], [], [0, 0, 0])
  with pytest.raises(ValueError, match='Empty gallery'):
    evaluation.evaluate_features(np.ones((2, 4)), np.zeros((0, 4)), [1, 2], [], [0, 0], [])


@pytest.mark.parametrize('bad, name', [
    (dict(q_pids=[1, 2]), 'q_pids'), (dict(g_pids=[1]), 'g_pids'),
    (dict(q_camids=[0]), 'q_camids'), (dict(g_camids=[0, 0, 0, 0]), 'g_camids'),
    (dict(q_sceneids=[0, 0, 0], g_sceneids=[0, 0]), 'g_sceneids'),
])
def test_label_length_mismatch_names_the_argument(bad, name):
  kwargs = dict(q_pids=[1, 2, 3], g_pids=[1, 2, 3, 1, 2], q_camids=[0, 0, 0],
                g_camids=[1, 1, 1, 1, 1])
  kwargs.update(bad)
  with pytest.raises(ValueError, match=name):
    evaluation.rank_metrics(HAND_DIST, **kwargs)


def test_other_errors_name_their_argument():
  args = (HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS)
  with pytest.raises(ValueError, match='g_sceneids is None'):
    evaluation.rank_metrics(HAND_DIST, *args, q_sceneids=[0, 0, 0])
  with pytest.raises(ValueError, match='distmat must be 2-D'):
    evaluation.rank_metrics(HAND_DIST[0], *args)
  with pytest.raises(ValueError, match='NaN'):
    evaluation.rank_metrics(np.where(HAND_DIST > 0.45, np.nan, HAND_DIST), *args)
  with pytest.raises(ValueError, match='max_rank'):
    evaluation.rank_metrics(HAND_DIST, *args, max_rank=0)
  with pytest.raises(ValueError, match='chunk_size'):
    evaluation.rank_metrics(HAND_DIST, *args, chunk_size=0)
  with pytest.raises(ValueError, match='metric'):
    evaluation.compute_distance_matrix(np.ones((2, 3)), np.ones((2, 3)), 'manhattan')
  with pytest.raises(ValueError, match='query_feats has dimension 3 but gallery_feats'):
    evaluation.compute_distance_matrix(np.ones((2, 3)), np.ones((2, 4)), 'cosine')
  with pytest.raises(ValueError, match='gallery_feats contains non-finite'):
    evaluation.evaluate_features(np.ones((2, 3)), np.full((2, 3), np.nan), [1, 2], [1, 2],
                                 [0, 0], [1, 1])
  with pytest.raises(ValueError, match='query_feats must be 2-D'):
    evaluation.compute_distance_matrix(np.ones(3), np.ones((2, 3)), 'cosine')


def test_no_valid_query_is_an_error():
  # Every match is junk (same camera): nothing can be scored.
  with pytest.raises(ValueError, match='No valid query.*same camera'):
    evaluation.rank_metrics(np.ones((2, 2)), [1, 2], [1, 2], [0, 0], [0, 0])
  with pytest.raises(ValueError, match='No valid query.*same scene'):
    evaluation.rank_metrics(np.ones((2, 2)), [1, 2], [1, 2], [0, 0], [1, 1],
                            q_sceneids=[3, 4], g_sceneids=[3, 4])


# ---------------------------------------------------------------------------------- re-ranking
def reference_rerank(q_g, q_q, g_g, k1, k2, lambda_value):
  """Zhong et al. (CVPR 2017) with Python sets, straight from the definitions."""
  num_query = q_g.shape[0]
  dist = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
  dist = dist / dist.max(axis=1, keepdims=True)
  n = dist.shape[0]
  ranking = [sorted(range(n), key=lambda x, p=p: (dist[p, x], x)) for p in range(n)]
  neighbours = lambda p, k: set(ranking[p][:k + 1])
  reciprocal = lambda p, k: {x for x in neighbours(p, k) if p in neighbours(x, k)}
  half = round(k1 / 2)
  weights = np.zeros((n, n))
  for p in range(n):
    r_p = reciprocal(p, k1)
    expanded = set(r_p)
    for x in r_p:
      r_x = reciprocal(x, half)
      if len(r_x & r_p) > 2 / 3 * len(r_x):
        expanded |= r_x
    for x in expanded:
      weights[p, x] = math.exp(-dist[p, x])
    weights[p] /= weights[p].sum()
  if k2 > 1:
    weights = np.array([weights[ranking[p][:k2]].mean(axis=0) for p in range(n)])
  jaccard = np.zeros(q_g.shape)
  for i in range(num_query):
    for j in range(q_g.shape[1]):
      a, b = weights[i], weights[num_query + j]
      jaccard[i, j] = 1.0 - np.minimum(a, b).sum() / np.maximum(a, b).sum()
  return (1 - lambda_value) * jaccard + lambda_value * dist[:num_query, num_query:]


def _rerank_inputs(seed, num_query=6, num_gallery=13):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(4, 5)) * 2
  q = centres[rng.integers(0, 4, num_query)] + rng.normal(size=(num_query, 5))
  g = centres[rng.integers(0, 4, num_gallery)] + rng.normal(size=(num_gallery, 5))
  d = lambda a, b: numpy_distances(a, b, 'euclidean_normalized')
  return d(q, g), d(q, q), d(g, g)


@pytest.mark.parametrize('seed, k1, k2, lam', [(0, 4, 3, 0.3), (1, 5, 1, 0.0), (2, 7, 4, 0.5)])
def test_rerank_matches_the_set_reference(seed, k1, k2, lam):
  q_g, q_q, g_g = _rerank_inputs(seed)
  got = evaluation.rerank_distances(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
  expected = reference_rerank(q_g, q_q, g_g, k1, k2, lam)
  assert got.shape == q_g.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_rerank_with_lambda_one_is_the_row_normalised_distance():
  q_g, q_q, g_g = _rerank_inputs(3)
  got = evaluation.rerank_distances(q_g, q_q, g_g, k1=4, k2=2, lambda_value=1.0)
  row_max = np.maximum(np.concatenate([q_q, q_g], axis=1).max(axis=1, keepdims=True), 0)
  np.testing.assert_allclose(got, q_g / row_max, rtol=1e-6)
  # A positive scale per row: every query's ranking is unchanged.
  np.testing.assert_array_equal(np.argsort(got, axis=1, kind='stable'),
                                np.argsort(q_g, axis=1, kind='stable'))


def test_rerank_jaccard_part_is_a_distance_in_unit_interval():
  q_g, q_q, g_g = _rerank_inputs(4)
  got = evaluation.rerank_distances(q_g, q_q, g_g, k1=4, k2=3, lambda_value=0.0)
  assert np.all(got >= -1e-6) and np.all(got <= 1 + 1e-6)


def test_evaluate_features_with_rerank():
  _, q_pids, g_pids, q_cams, g_cams, _, _ = random_problem(6, num_query=9, num_gallery=15)
  rng = np.random.default_rng(6)
  q, g = rng.normal(size=(9, 4)), rng.normal(size=(15, 4))
  params = dict(k1=5, k2=3, lambda_value=0.3)
  dist = evaluation.rerank_distances(
      evaluation.compute_distance_matrix(q, g, 'cosine'),
      evaluation.compute_distance_matrix(q, q, 'cosine'),
      evaluation.compute_distance_matrix(g, g, 'cosine'), **params)
  expected = reference_metrics(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
  result = evaluation.evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, metric='cosine',
                                        max_rank=5, rerank=params)
  assert_metrics_equal(result, expected)


def test_rerank_errors_name_the_argument():
  q_g, q_q, g_g = _rerank_inputs(0)
  with pytest.raises(ValueError, match='q_q_dist'):
    evaluation.rerank_distances(q_g, q_q[:-1], g_g)
  with pytest.raises(ValueError, match='g_g_dist'):
    evaluation.rerank_distances(q_g, q_q, g_g[:, :-1])
  with pytest.raises(ValueError, match='lambda_value'):
    evaluation.rerank_distances(q_g, q_q, g_g, lambda_value=1.5)
  with pytest.raises(ValueError, match='k1'):
    evaluation.rerank_distances(q_g, q_q, g_g, k1=0)


# ---------------------------------------------------------------------------------- benchmark
def test_benchmark_runs_and_both_rankers_agree():
  from benchmarks import eval_benchmark  # pylint: disable=g-import-not-at-top
  result = eval_benchmark.benchmark_rank_metrics(40, 60, dim=8, num_ids=6, num_cams=3,
                                                 chunk_size=16, repeats=1)
  assert result['agree_with_loop']
  for key in ('rank_vectorised_s', 'rank_loop_reference_s', 'features_to_metrics_s',
              'distance_matrix_s', 'peak_rss_gib'):
    assert result[key] > 0
  assert '40 x 60' in eval_benchmark.format_result(result)
  # Above max_matrix_gib only the chunked path runs.
  chunked = eval_benchmark.benchmark_rank_metrics(40, 60, dim=8, num_ids=6, num_cams=3,
                                                  repeats=1, max_matrix_gib=0.0)
  assert 'rank_vectorised_s' not in chunked and chunked['features_to_metrics_s'] > 0


# ------------------------------------------------------------------------------ protocols
_Record = collections.namedtuple('_Record', 'pid camid scene')
# One query (pid 1, camera 0, scene 0); gallery at distances 0, 0.4, 2 (euclidean_normalized).
PROTOCOL_QUERY = [_Record(1, 0, 0)]
PROTOCOL_GALLERY = [_Record(1, 0, 1), _Record(2, 1, 0), _Record(1, 1, 0)]
PROTOCOL_Q = np.array([[1.0, 0.0]], np.float32)
PROTOCOL_G = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], np.float32)


def test_camera_protocol_drops_the_same_camera_match():
  """Gallery item 0 (pid 1, camera 0) is junk; the match left is item 2, at rank 2."""
  result = protocols.get_protocol('camera').score(
      PROTOCOL_Q, PROTOCOL_G, PROTOCOL_QUERY, PROTOCOL_GALLERY,
      protocols.ScoringSettings(max_rank=3))
  assert result['mAP'] == pytest.approx(0.5) and result['mINP'] == pytest.approx(0.5)
  np.testing.assert_allclose(result['cmc'], [0.0, 1.0, 1.0])


def test_scene_protocol_drops_the_same_scene_match_instead():
  """Item 2 (pid 1, scene 0) is junk; item 0 (another scene, same camera) matches at rank 1."""
  result = protocols.get_protocol('scene').score(
      PROTOCOL_Q, PROTOCOL_G, PROTOCOL_QUERY, PROTOCOL_GALLERY,
      protocols.ScoringSettings(max_rank=3))
  assert result['mAP'] == pytest.approx(1.0)
  np.testing.assert_allclose(result['cmc'], [1.0, 1.0, 1.0])


def test_unknown_protocol_and_mismatched_records_are_clear_errors():
  with pytest.raises(ValueError, match='config.eval.protocol'):
    protocols.get_protocol('sysu')
  with pytest.raises(ValueError, match='3 gallery embeddings for 1 / 2 records'):
    protocols.get_protocol('camera').score(PROTOCOL_Q, PROTOCOL_G, PROTOCOL_QUERY,
                                           PROTOCOL_GALLERY[:2], protocols.ScoringSettings())


def test_rank_summary_reads_r1_r5_r10_and_clamps_a_short_cmc():
  summary = protocols.rank_summary({'mAP': 0.5, 'mINP': 0.25, 'cmc': np.array([0.1, 0.2, 0.3])})
  assert summary == pytest.approx({'mAP': 0.5, 'mINP': 0.25, 'R1': 0.1, 'R5': 0.3, 'R10': 0.3})


def test_plain_euclidean_sees_the_feature_scale_the_normalised_distances_do_not():
  """The model's embedding is not normalised, so the paper's plain Euclidean distance is a real
  choice: scaling a gallery vector changes its ranks under 'euclidean' only."""
  q = np.array([[1.0, 0.0]], np.float32)
  g = np.array([[3.0, 0.3], [0.9, 0.5]], np.float32)   # item 0: 3x the scale, closer in angle
  for metric, nearest in (('euclidean', 1), ('euclidean_normalized', 0), ('cosine', 0)):
    dist = evaluation.compute_distance_matrix(q, g, metric)
    assert int(np.argmin(dist[0])) == nearest, metric


# ------------------------------------------------------------------ cross-modality junk and CMC
def reference_cross_modal(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, junk_pairs,
                          same_camera, distinct_ids):
  """The official `eval_sysu` / `eval_llcm` / `eval_regdb` loops in plain Python (pessimistic ties).

  distinct_ids: after junk removal keep the first item of every gallery pid; the CMC then counts
  distinct identities. AP and INP are taken on the junk-free list without deduplication.
  """
  cmc_sum = [0.0] * max_rank
  aps, inps = [], []
  for i in range(len(q_pids)):
    items = []
    for j in range(len(g_pids)):
      if same_camera and g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]:
        continue
      if (int(q_cams[i]), int(g_cams[j])) in junk_pairs:
        continue
      items.append((float(distmat[i][j]), bool(g_pids[j] == q_pids[i]), int(g_pids[j])))
    items.sort(key=lambda t: (t[0], t[1]))
    matches = [m for _, m, _ in items]
    if not any(matches):
      continue
    found, precisions = 0, []
    for rank, m in enumerate(matches, 1):
      if m:
        found += 1
        precisions.append(found / rank)
    aps.append(sum(precisions) / found)
    inps.append(found / (max(k for k, m in enumerate(matches) if m) + 1))
    ranked = matches
    if distinct_ids:
      seen, ranked = set(), []
      for _, m, pid in items:
        if pid not in seen:
          seen.add(pid)
          ranked.append(m)
    first = ranked.index(True)
    for k in range(max_rank):
      cmc_sum[k] += 1.0 if k >= first else 0.0
  n = len(aps)
  return {'cmc': np.array([c / n for c in cmc_sum], np.float32), 'mAP': sum(aps) / n,
          'mINP': sum(inps) / n, 'num_valid_queries': n,
          'num_skipped_queries': len(q_pids) - n}


# Query 0: pid 1 from camera 3 (SYSU IR); query 1: pid 2 from camera 6.
SYSU_Q_PIDS, SYSU_Q_CAMS = np.array([1, 2]), np.array([3, 6])
SYSU_G_PIDS = np.array([2, 2, 2, 3, 1, 1])
SYSU_G_CAMS = np.array([2, 1, 4, 1, 1, 2])
SYSU_DIST = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.05],
                      [0.1, 0.2, 0.3, 0.4, 0.5, 0.05]], np.float32)


def test_sysu_camera_pair_junk_and_distinct_id_cmc_hand_case():
  """Query 0 (cam 3) loses both camera-2 items, its best and its nearest match among them.

  Left: pid 2, 2, 3, 1 -> first match at 4 (standard) but at 3 among distinct ids (2, 3, 1);
  AP = INP = 1/4. Query 1 (cam 6) keeps all: pid 1, 2, 2, 2, 3, 1 -> matches at 2, 3, 4;
  AP = (1/2 + 2/3 + 3/4) / 3, INP = 3/4; distinct ids (1, 2, 3): first match at 2.
  """
  args = (SYSU_DIST, SYSU_Q_PIDS, SYSU_G_PIDS, SYSU_Q_CAMS, SYSU_G_CAMS)
  kwargs = dict(max_rank=5, same_key_junk=False, junk_camera_pairs=[(3, 2)])
  standard = evaluation.rank_metrics(*args, **kwargs)
  distinct = evaluation.rank_metrics(*args, cmc_mode='distinct_ids', **kwargs)
  np.testing.assert_allclose(standard['cmc'], [0, 0.5, 0.5, 1, 1])
  np.testing.assert_allclose(distinct['cmc'], [0, 0.5, 1, 1, 1])
  ap = (0.25 + (1 / 2 + 2 / 3 + 3 / 4) / 3) / 2
  for result in (standard, distinct):
    assert result['mAP'] == pytest.approx(ap)
    assert result['mINP'] == pytest.approx((0.25 + 0.75) / 2)
  # Without the pair rule query 0's nearest item (pid 1, cam 2) is a match at rank 1.
  plain = evaluation.rank_metrics(*args, max_rank=5, same_key_junk=False)
  assert plain['cmc'][0] == 0.5


def test_no_junk_keeps_same_camera_matches():
  """RegDB / day-night: nothing is removed, so a same-camera match counts."""
  dist = np.array([[0.1, 0.2, 0.3]], np.float32)
  args = (dist, [1], [1, 2, 1], [0], [0, 0, 1])
  assert evaluation.rank_metrics(*args, max_rank=2, same_key_junk=False)['cmc'][0] == 1
  assert evaluation.rank_metrics(*args, max_rank=2)['cmc'][0] == 0  # Market rule: junk


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('rule', ['sysu', 'llcm', 'none'])
def test_cross_modal_rules_match_the_reference(seed, rule):
  dist, q_pids, g_pids, q_cams, g_cams, _, _ = random_problem(seed, ties=seed % 2 == 0,
                                                              negatives=seed >= 2)
  pairs = [(1, 2), (0, 0)] if rule == 'sysu' else []
  same_camera = rule == 'llcm'
  for cmc_mode in evaluation.CMC_MODES:
    expected = reference_cross_modal(dist, q_pids, g_pids, q_cams, g_cams, 10, set(pairs),
                                     same_camera, cmc_mode == 'distinct_ids')
    kwargs = dict(max_rank=10, same_key_junk=same_camera, junk_camera_pairs=pairs,
                  cmc_mode=cmc_mode)
    for chunk_size in (1, 7, 1024):
      result = evaluation.rank_metrics(dist, q_pids, g_pids, q_cams, g_cams,
                                       chunk_size=chunk_size, **kwargs)
      assert_metrics_equal(result, expected)
    loop = evaluation.rank_metrics_loop_reference(dist, q_pids, g_pids, q_cams, g_cams, **kwargs)
    assert_metrics_equal(loop, expected)
    if cmc_mode == 'distinct_ids':  # rank-1 is the same in both modes, higher ranks never lower
      standard = reference_cross_modal(dist, q_pids, g_pids, q_cams, g_cams, 10, set(pairs),
                                       same_camera, False)
      assert result['cmc'][0] == pytest.approx(standard['cmc'][0])
      assert np.all(result['cmc'] >= standard['cmc'] - 1e-7)


def test_features_path_applies_the_cross_modal_rules():
  rng = np.random.default_rng(3)
  q, g = rng.normal(size=(9, 4)), rng.normal(size=(14, 4))
  q_pids, g_pids = rng.integers(0, 4, 9), rng.integers(0, 4, 14)
  q_cams, g_cams = rng.integers(0, 3, 9), rng.integers(0, 3, 14)
  kwargs = dict(max_rank=6, same_key_junk=False, junk_camera_pairs=[(1, 2)],
                cmc_mode='distinct_ids')
  dist = evaluation.compute_distance_matrix(q, g, 'euclidean')
  expected = evaluation.rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, **kwargs)
  result = evaluation.evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, metric='euclidean',
                                        chunk_size=4, **kwargs)
  assert_metrics_equal(result, expected)


def test_bad_cross_modal_options_name_the_field():
  args = (SYSU_DIST, SYSU_Q_PIDS, SYSU_G_PIDS, SYSU_Q_CAMS, SYSU_G_CAMS)
  with pytest.raises(ValueError, match='cmc_mode'):
    evaluation.rank_metrics(*args, cmc_mode='dedup')
  with pytest.raises(ValueError, match='junk_camera_pairs'):
    evaluation.rank_metrics(*args, junk_camera_pairs=[(3,)])
  with pytest.raises(ValueError, match=r'query camera 3 vs gallery camera 1'):
    evaluation.rank_metrics(SYSU_DIST[:1, 4:5], [1], [1], [3], [1], same_key_junk=False,
                            junk_camera_pairs=[(3, 1)])
