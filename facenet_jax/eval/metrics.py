"""Retrieval metrics: distances, CMC, mAP and mINP (re-ranking: `rerank`; junk rules: `protocols`).

Protocol (Market-1501, as the paper states and the official `eval_func` implements):
  * every query is ranked against the whole gallery by ascending distance;
  * gallery items with the query's pid AND the query's camera are junk and removed from its list
    (MSVR310: same pid AND same scene, when scene ids are given);
  * a query whose remaining list holds no item of its pid is skipped (and counted as skipped);
  * CMC_q[k] = 1 if a match is within the first k+1 remaining items; AP_q = (1/R) sum over the
    matches of (#matches up to it) / (its rank); INP_q = R / (rank of the hardest match) (AGW,
    Ye et al., TPAMI 2021); CMC, mAP and mINP are means over the valid queries, in [0, 1].
  * A remaining list shorter than `max_rank` is padded with its last CMC value (the official code
    crashes there on ragged rows); so the CMC always has `max_rank` entries.

Tie rule (deterministic, pessimistic): among gallery items at exactly the same distance from a
query, the non-matches are ranked before the matches. Only that order changes a metric (matches
are interchangeable, so are non-matches), so the metrics are fully defined, and they are the worst
case over all tie orders: a collapsed embedding (all distances equal) cannot score by luck of the
gallery order. The official code uses `np.argsort` (quicksort), whose tie order is unspecified.
-0.0 and +0.0 count as equal; NaN distances are rejected.

Speed and memory. `rank_metrics` and `evaluate_features` have no Python loop over queries: they
work on blocks of `chunk_size` queries (distances from features come from one jitted JAX call per
block). Per (query, gallery item) NumPy forms one integer sort key: the distance's float32 bits
as an order-preserving unsigned integer, shifted left by one, with is_match in the lowest bit
(junk items get the largest even key, so they sort last). The same-pid pairs that set the flags
and the junk keys are found through the gallery grouped by pid, in O(#pairs), not with [c, G]
masks. NumPy then sorts the keys row-wise (a SIMD integer sort, several times faster than an
argsort, and uint32 when no distance is negative); the sorted position of every flagged key is
that match's rank among the non-junk items, so no gather is needed. CMC, AP and INP follow from
the match positions alone (O(#matches) work). Peak memory is about `chunk_size x G x 13` bytes
(distances 4, keys 4 or 8, flags 1, plus the next block's distances 4 while it is computed) plus
the features and the same-pid pairs of the block, never the full Q x G matrix (measured: 2.4 GiB
peak RSS for 100k x 100k, dim 256, chunk_size 1024, in 400 s on 2 busy CPU cores, mostly the
matmul; `python -m benchmarks.benchmark eval`).

Cross-modality protocols (AGW family, `protocols`) change two things, both options of every
function here: `same_key_junk=False` turns the same-pid-same-camera rule off (RegDB and the
day/night sets remove nothing), `junk_camera_pairs` removes every gallery item of camera b from
the ranking of a query of camera a, whatever the identities (SYSU-MM01: (3, 2)); and
`cmc_mode='distinct_ids'` is the official `eval_sysu`/`eval_llcm` CMC: after junk removal only the
first gallery item of each identity is kept, so rank-k counts distinct identities. Rank-1 is the
same in both modes; mAP and mINP never deduplicate. The distinct-id rank of a query is the number
of distinct pids ranked before its first match, found from the unsorted keys of its block.

`rank_metrics_loop_reference` is the plain per-query loop (the official `eval_func` semantics with
the tie rule above); it exists for the benchmark and as a readable definition.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from facenet_jax.eval.rerank import check_positive as _check_positive
from facenet_jax.eval.rerank import rerank_distances
from facenet_jax.linalg import l2_normalize

METRICS = ('euclidean_normalized', 'euclidean', 'cosine', 'dot')
CMC_MODES = ('standard', 'distinct_ids')

_SIGN_BIT = np.uint32(0x80000000)
_LITTLE_ENDIAN = sys.byteorder == 'little'   # where the flag byte of a sort key sits


# ---------------------------------------------------------------------------------- validation
def _as_features(x: Any, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f'{name} must be 2-D [N, D], got shape {x.shape}.')
  if not np.issubdtype(x.dtype, np.number):
    raise ValueError(f'{name} must be numeric, got dtype {x.dtype}.')
  x = x.astype(np.float32, copy=False)
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} contains non-finite values (NaN or inf).')
  return x


def _check_feature_pair(query_feats: Any, gallery_feats: Any) -> tuple[np.ndarray, np.ndarray]:
  q = _as_features(query_feats, 'query_feats')
  g = _as_features(gallery_feats, 'gallery_feats')
  if q.shape[0] == 0:
    raise ValueError('Empty query set: query_feats has 0 rows.')
  if g.shape[0] == 0:
    raise ValueError('Empty gallery: gallery_feats has 0 rows.')
  if q.shape[1] != g.shape[1]:
    raise ValueError(f'query_feats has dimension {q.shape[1]} but gallery_feats has dimension '
                     f'{g.shape[1]}.')
  return q, g


def _check_metric(metric: str) -> None:
  if metric not in METRICS:
    raise ValueError(f'metric must be one of {METRICS}, got {metric!r}.')


def _labels(x: Any, name: str, expected: int, side: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 1:
    raise ValueError(f'{name} must be 1-D, got shape {x.shape}.')
  if x.shape[0] != expected:
    raise ValueError(f'{name} has {x.shape[0]} entries but there are {expected} {side} items.')
  return x


def _encode_pair(q: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Query and gallery labels of any dtype -> dense int32 codes (one shared vocabulary)."""
  _, inverse = np.unique(np.concatenate([q, g]), return_inverse=True)
  inverse = inverse.astype(np.int32).reshape(-1)
  return inverse[:q.shape[0]], inverse[q.shape[0]:]


def _check_cmc_mode(cmc_mode: str) -> None:
  if cmc_mode not in CMC_MODES:
    raise ValueError(f'cmc_mode must be one of {CMC_MODES}, got {cmc_mode!r}.')


def _pair_junk(q_camids: np.ndarray, g_camids: np.ndarray,
               junk_camera_pairs) -> tuple[np.ndarray, np.ndarray] | None:
  """(query camera is a [Q, n], gallery camera is b [n, G]) for each junk pair (a, b), or None."""
  pairs = [tuple(p) for p in (junk_camera_pairs or ())]
  if any(len(p) != 2 for p in pairs):
    raise ValueError(f'junk_camera_pairs must hold (query camera, gallery camera) pairs, got '
                     f'{junk_camera_pairs!r}.')
  if not pairs:
    return None
  q_is = np.stack([q_camids == a for a, _ in pairs], axis=1)
  g_is = np.stack([g_camids == b for _, b in pairs], axis=0)
  return q_is, g_is


def _protocol_labels(num_query: int, num_gallery: int, q_pids, g_pids, q_camids, g_camids,
                     q_sceneids, g_sceneids, same_key_junk: bool = True
                     ) -> tuple[np.ndarray, ...]:
  """Checked labels -> (q_pid, g_pid, q_junk_key, g_junk_key) int32 codes.

  The junk key is the camera (Market-1501) or, when scene ids are given, the scene (MSVR310).
  Without `same_key_junk` query and gallery keys never agree, so nothing is junk by identity.
  """
  q_pids = _labels(q_pids, 'q_pids', num_query, 'query')
  g_pids = _labels(g_pids, 'g_pids', num_gallery, 'gallery')
  q_camids = _labels(q_camids, 'q_camids', num_query, 'query')
  g_camids = _labels(g_camids, 'g_camids', num_gallery, 'gallery')
  if (q_sceneids is None) != (g_sceneids is None):
    missing = 'g_sceneids' if g_sceneids is None else 'q_sceneids'
    raise ValueError(f'Scene protocol needs both q_sceneids and g_sceneids; {missing} is None.')
  if q_sceneids is not None:
    q_key = _labels(q_sceneids, 'q_sceneids', num_query, 'query')
    g_key = _labels(g_sceneids, 'g_sceneids', num_gallery, 'gallery')
  else:
    q_key, g_key = q_camids, g_camids
  q_pid, g_pid = _encode_pair(q_pids, g_pids)
  if not same_key_junk:
    return q_pid, g_pid, np.zeros(num_query, np.int32), np.ones(num_gallery, np.int32)
  q_junk, g_junk = _encode_pair(q_key, g_key)
  return q_pid, g_pid, q_junk, g_junk


# ---------------------------------------------------------------------------------- distances
def _prepare(feats: jax.Array, metric: str) -> tuple[jax.Array, jax.Array]:
  """[N, D] features -> (features as compared [N, D], squared norms [N])."""
  x = feats.astype(jnp.float32)
  if metric in ('euclidean_normalized', 'cosine'):
    # Official evaluator: one L2 normalisation of the whole (concatenated) vector.
    x = l2_normalize(x)
  return x, jnp.sum(x * x, axis=-1)


def _pairwise(q: jax.Array, q_sq: jax.Array, g: jax.Array, g_sq: jax.Array,
              metric: str) -> jax.Array:
  """Prepared [c, D] x [G, D] -> distances [c, G] float32."""
  dot = jnp.matmul(q, g.T, precision=jax.lax.Precision.HIGHEST)
  if metric == 'cosine':
    return 1.0 - dot
  if metric == 'dot':
    return -dot
  squared = q_sq[:, None] + g_sq[None, :] - 2.0 * dot
  if metric == 'euclidean_normalized':
    # Squared, unclamped, as the official evaluator (||q||^2 + ||g||^2 - 2 q.g = 2 - 2 cos).
    return squared
  return jnp.sqrt(jnp.maximum(squared, 0.0))


@functools.partial(jax.jit, static_argnames=('metric',))
def _prepare_jit(feats: jax.Array, metric: str) -> tuple[jax.Array, jax.Array]:
  return _prepare(feats, metric)


@functools.partial(jax.jit, static_argnames=('metric',))
def _distance_chunk(q_feats: jax.Array, g: jax.Array, g_sq: jax.Array, metric: str) -> jax.Array:
  q, q_sq = _prepare(q_feats, metric)
  return _pairwise(q, q_sq, g, g_sq, metric)


def _pad_rows(x: np.ndarray, rows: int, value=0) -> np.ndarray:
  if x.shape[0] == rows:
    return x
  pad = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return np.pad(x, pad, constant_values=value)


def compute_distance_matrix(query_feats: Any, gallery_feats: Any, metric: str,
                            chunk_size: int = 1024) -> np.ndarray:
  """Query-gallery distances [Q, G] float32, computed in JAX `chunk_size` queries at a time.

  Args:
    query_feats: [Q, D] query embeddings.
    gallery_feats: [G, D] gallery embeddings.
    metric: 'euclidean_normalized' (official: L2-normalise each whole vector, then squared
      Euclidean, = 2 - 2 cos), 'euclidean' (plain, sqrt of the squared distance clamped at 0),
      'cosine' (1 - cos) or 'dot' (-q.g of the vectors as they are: the AGW family's scripts,
      which rank sums of normalised features, e.g. with the test-time flip).
    chunk_size: queries per jitted call (the last chunk is padded so one shape compiles).
  """
  _check_metric(metric)
  chunk_size = _check_positive(chunk_size, 'chunk_size')
  q, g = _check_feature_pair(query_feats, gallery_feats)
  g_dev, g_sq = _prepare_jit(jnp.asarray(g), metric)
  rows = min(chunk_size, q.shape[0])
  out = np.empty((q.shape[0], g.shape[0]), np.float32)
  for start in range(0, q.shape[0], rows):
    block = q[start:start + rows]
    dist = _distance_chunk(jnp.asarray(_pad_rows(block, rows)), g_dev, g_sq, metric)
    out[start:start + block.shape[0]] = np.asarray(dist)[:block.shape[0]]
  return out


# ---------------------------------------------------------------------------------- sort keys
def _gallery_groups(g_pid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Gallery indices grouped by pid: (order [G], pid codes in that order [G])."""
  order = np.argsort(g_pid, kind='stable')
  return order, g_pid[order]


def _same_pid_pairs(q_pid: np.ndarray, groups: tuple[np.ndarray, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
  """All (query row, gallery index) pairs with equal pid, in O(#pairs) (no [c, G] mask)."""
  order, sorted_pid = groups
  lo = np.searchsorted(sorted_pid, q_pid, side='left')
  counts = np.searchsorted(sorted_pid, q_pid, side='right') - lo
  rows = np.repeat(np.arange(q_pid.shape[0]), counts)
  within = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
  return rows, order[np.repeat(lo, counts) + within]


def _sorted_keys(dist: np.ndarray, q_pid: np.ndarray, q_junk: np.ndarray, g_junk: np.ndarray,
                 groups: tuple[np.ndarray, np.ndarray],
                 pair_junk: tuple[np.ndarray, np.ndarray] | None = None,
                 distinct_ids: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
  """Distances [c, G] float32 -> (row-sorted integer keys [c, G] whose lowest bit is is_match,
  the distinct-id rank [c] of each row's first match when `distinct_ids`, else None).

  `pair_junk` is this block's slice of `_pair_junk` ([c, n] and [n, G]): those items are junk
  too, whatever their pid.

  Key = (distance bits as an order-preserving unsigned integer << 1) | is_match. Sorting the keys
  sorts by distance and, at exactly equal distances, puts non-matches before matches: the
  pessimistic tie rule. Junk items get the largest even key, so they sort after every distance
  (inf included) and carry no flag. The flag rides along in the lowest bit, so the sorted keys
  alone give the match positions.

  Non-negative distances (the usual case) fit in uint32: the float32 bits of x >= 0 are already
  ordered as unsigned integers and their top bit is 0, so the shift loses nothing (-0.0 becomes
  the key of +0.0). A block with a negative distance (rounding in 1 - cos or in the unclamped
  squared distance) uses uint64: negatives get all bits flipped, non-negatives the sign bit set.
  """
  smallest = dist.min()
  if np.isnan(smallest):
    raise ValueError('distmat contains NaN.')
  if smallest >= 0:
    keys = np.left_shift(dist.view(np.uint32), 1)
  else:
    bits = dist.view(np.uint32)
    # -0.0 < 0 is False, so -0.0 takes the second branch and gets the key of +0.0.
    ordered = np.where(dist < 0, ~bits, bits | _SIGN_BIT)
    keys = np.left_shift(ordered.astype(np.uint64), 1)
  rows, cols = _same_pid_pairs(q_pid, groups)
  junk = q_junk[rows] == g_junk[cols]
  good_rows, good_cols = rows[~junk], cols[~junk]
  keys[good_rows, good_cols] |= 1
  junk_key = np.iinfo(keys.dtype).max - 1
  keys[rows[junk], cols[junk]] = junk_key
  if pair_junk is not None:
    q_is, g_is = pair_junk
    for i in range(q_is.shape[1]):
      keys[np.outer(q_is[:, i], g_is[i])] = junk_key
  first_ranks = _distinct_id_ranks(keys, groups) if distinct_ids else None
  keys.sort(axis=1)
  return keys, first_ranks


def _distinct_id_ranks(keys: np.ndarray, groups: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  """Unsorted keys [c, G] -> [c] number of distinct gallery pids ranked before the first match.

  Junk keys are larger than every match key, so they never count; a row without a match gets a
  meaningless value (it is skipped as a query).
  """
  flagged = (keys & 1).astype(bool)
  first_key = np.where(flagged, keys, np.iinfo(keys.dtype).max).min(axis=1)
  before = keys < first_key[:, None]
  order, sorted_pid = groups
  starts = np.flatnonzero(np.r_[True, sorted_pid[1:] != sorted_pid[:-1]])
  return np.logical_or.reduceat(before[:, order], starts, axis=1).sum(axis=1)


# ---------------------------------------------------------------------------------- ranking
def _empty_stats(max_rank: int) -> dict[str, Any]:
  return {'cmc_hits': np.zeros(max_rank, np.int64), 'ap_sum': 0.0, 'inp_sum': 0.0,
          'num_valid': 0, 'num_skipped': 0}


def _accumulate(stats: dict[str, Any], keys: np.ndarray, max_rank: int,
                first_ranks: np.ndarray | None = None) -> None:
  """Adds the metrics of one block of queries, given their row-sorted keys [c, G].

  `first_ranks` [c] replaces the first match's position for the CMC (distinct-id mode).
  """
  num_rows, num_gallery = keys.shape
  size = keys.dtype.itemsize
  flag_byte = 0 if _LITTLE_ENDIAN else size - 1
  flags = keys.view(np.uint8).reshape(num_rows, num_gallery, size)[:, :, flag_byte] & 1
  rows, pos = np.divmod(np.flatnonzero(flags.view(bool)), num_gallery)
  # Row-major order: per row, the match positions (= ranks among non-junk items) ascending.
  num_matches = np.bincount(rows, minlength=num_rows)
  starts = np.cumsum(num_matches) - num_matches
  # 1-based index of each match among its row's matches = #matches up to and including it.
  nth = np.arange(rows.size) - starts[rows] + 1
  ap = np.bincount(rows, weights=nth / (pos + 1.0), minlength=num_rows)
  valid = num_matches > 0
  first = pos[starts[valid]] if first_ranks is None else first_ranks[valid]
  hardest = pos[starts[valid] + num_matches[valid] - 1]
  hits = np.bincount(np.minimum(first, max_rank), minlength=max_rank + 1)[:max_rank]
  stats['cmc_hits'] += np.cumsum(hits)
  stats['ap_sum'] += float(np.sum(ap[valid] / num_matches[valid]))
  stats['inp_sum'] += float(np.sum(num_matches[valid] / (hardest + 1.0)))
  stats['num_valid'] += int(valid.sum())
  stats['num_skipped'] += int(num_rows - valid.sum())


def _finalize(stats: dict[str, Any], num_query: int, junk_rule: str) -> dict[str, Any]:
  if stats['num_valid'] == 0:
    raise ValueError(f'No valid query: none of the {num_query} queries has a gallery item of its '
                     f'pid left after removing junk ({junk_rule}).')
  n = stats['num_valid']
  return {'cmc': (stats['cmc_hits'] / n).astype(np.float32), 'mAP': stats['ap_sum'] / n,
          'mINP': stats['inp_sum'] / n, 'num_valid_queries': n,
          'num_skipped_queries': stats['num_skipped']}


def _junk_rule_name(q_sceneids, same_key_junk: bool, junk_camera_pairs) -> str:
  parts = []
  if same_key_junk:
    parts.append('same pid and same ' + ('scene' if q_sceneids is not None else 'camera'))
  parts += [f'query camera {a} vs gallery camera {b}' for a, b in (junk_camera_pairs or ())]
  return '; '.join(parts) or 'nothing'


def rank_metrics(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
                 max_rank: int = 50, q_sceneids: Any = None, g_sceneids: Any = None,
                 chunk_size: int = 1024, same_key_junk: bool = True,
                 junk_camera_pairs: Any = (), cmc_mode: str = 'standard') -> dict[str, Any]:
  """CMC, mAP and mINP of a query-gallery distance matrix (module docstring: protocol, ties).

  Args:
    distmat: [Q, G] distances (smaller = more similar), compared as float32; NaN is rejected.
    q_pids, g_pids: [Q], [G] identity labels (any dtype).
    q_camids, g_camids: [Q], [G] camera labels.
    max_rank: CMC length.
    q_sceneids, g_sceneids: [Q], [G] scene labels; when given, junk = same pid AND same scene
      (MSVR310 protocol) and the cameras are not used.
    chunk_size: queries ranked per block (memory ~ chunk_size x G x 24 bytes).
    same_key_junk: remove same-pid items of the query's camera (scene); False removes none.
    junk_camera_pairs: (a, b) pairs: gallery camera b is junk for queries of camera a.
    cmc_mode: 'standard' or 'distinct_ids' (official SYSU-MM01 / LLCM CMC; module docstring).

  Returns:
    {'cmc': [max_rank] float32, 'mAP': float, 'mINP': float, 'num_valid_queries': int,
     'num_skipped_queries': int}.
  """
  distmat = np.asarray(distmat)
  if distmat.ndim != 2:
    raise ValueError(f'distmat must be 2-D [Q, G], got shape {distmat.shape}.')
  num_query, num_gallery = distmat.shape
  if num_query == 0:
    raise ValueError('Empty query set: distmat has 0 rows (queries).')
  if num_gallery == 0:
    raise ValueError('Empty gallery: distmat has 0 columns (gallery items).')
  if num_gallery >= 2**31:
    raise ValueError(f'distmat has {num_gallery} gallery columns; at most 2**31 - 1 supported.')
  max_rank = _check_positive(max_rank, 'max_rank')
  chunk_size = _check_positive(chunk_size, 'chunk_size')
  _check_cmc_mode(cmc_mode)
  distmat = distmat.astype(np.float32, copy=False)
  q_pid, g_pid, q_junk, g_junk = _protocol_labels(num_query, num_gallery, q_pids, g_pids,
                                                  q_camids, g_camids, q_sceneids, g_sceneids,
                                                  same_key_junk)
  pair_junk = _pair_junk(np.asarray(q_camids), np.asarray(g_camids), junk_camera_pairs)
  groups = _gallery_groups(g_pid)
  stats = _empty_stats(max_rank)
  for start in range(0, num_query, chunk_size):
    block = slice(start, start + chunk_size)
    block_pairs = None if pair_junk is None else (pair_junk[0][block], pair_junk[1])
    keys, first_ranks = _sorted_keys(distmat[block], q_pid[block], q_junk[block], g_junk, groups,
                                     block_pairs, cmc_mode == 'distinct_ids')
    _accumulate(stats, keys, max_rank, first_ranks)
  return _finalize(stats, num_query,
                   _junk_rule_name(q_sceneids, same_key_junk, junk_camera_pairs))


def evaluate_features(query_feats: Any, gallery_feats: Any, q_pids: Any, g_pids: Any,
                      q_camids: Any, g_camids: Any, metric: str = 'euclidean_normalized',
                      max_rank: int = 50, chunk_size: int = 1024, q_sceneids: Any = None,
                      g_sceneids: Any = None,
                      rerank: Mapping[str, Any] | None = None, same_key_junk: bool = True,
                      junk_camera_pairs: Any = (), cmc_mode: str = 'standard') -> dict[str, Any]:
  """Distances and rank metrics from features, `chunk_size` queries at a time.

  Without re-ranking the Q x G matrix is never materialised: the distances of each block of
  queries come from one jitted call and are reduced to running sums; the next block is
  dispatched before the current one is sorted, so JAX and NumPy overlap.

  Args:
    query_feats: [Q, D]; gallery_feats: [G, D].
    q_pids, g_pids, q_camids, g_camids, q_sceneids, g_sceneids: as in `rank_metrics`.
    metric: one of METRICS (see `compute_distance_matrix`).
    max_rank: CMC length.
    chunk_size: queries per block.
    rerank: None, or {'k1', 'k2', 'lambda_value'} for k-reciprocal re-ranking
      (`rerank_distances`; it needs the full (Q+G) x (Q+G) matrix in memory).
    same_key_junk, junk_camera_pairs, cmc_mode: as in `rank_metrics`.

  Returns:
    The dict of `rank_metrics`.
  """
  _check_metric(metric)
  max_rank = _check_positive(max_rank, 'max_rank')
  chunk_size = _check_positive(chunk_size, 'chunk_size')
  q, g = _check_feature_pair(query_feats, gallery_feats)
  num_query, num_gallery = q.shape[0], g.shape[0]
  if num_gallery >= 2**31:
    raise ValueError(f'gallery_feats has {num_gallery} rows; at most 2**31 - 1 supported.')
  _check_cmc_mode(cmc_mode)
  q_pid, g_pid, q_junk, g_junk = _protocol_labels(num_query, num_gallery, q_pids, g_pids,
                                                  q_camids, g_camids, q_sceneids, g_sceneids,
                                                  same_key_junk)
  pair_junk = _pair_junk(np.asarray(q_camids), np.asarray(g_camids), junk_camera_pairs)
  if rerank is not None:
    q_g = compute_distance_matrix(q, g, metric, chunk_size)
    q_q = compute_distance_matrix(q, q, metric, chunk_size)
    g_g = compute_distance_matrix(g, g, metric, chunk_size)
    distmat = rerank_distances(q_g, q_q, g_g, **dict(rerank))
    return rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
                        q_sceneids, g_sceneids, chunk_size, same_key_junk, junk_camera_pairs,
                        cmc_mode)

  g_dev, g_sq = _prepare_jit(jnp.asarray(g), metric)
  groups = _gallery_groups(g_pid)
  rows = min(chunk_size, num_query)

  def dispatch(start: int) -> jax.Array:
    block = q[start:start + rows]
    return _distance_chunk(jnp.asarray(_pad_rows(block, rows)), g_dev, g_sq, metric)

  stats = _empty_stats(max_rank)
  starts = list(range(0, num_query, rows))
  pending = dispatch(starts[0])
  for i, start in enumerate(starts):
    current = pending
    if i + 1 < len(starts):
      pending = dispatch(starts[i + 1])  # asynchronous: runs while NumPy sorts `current`
    stop = min(start + rows, num_query)
    dist = np.asarray(current)[:stop - start]
    block_pairs = None if pair_junk is None else (pair_junk[0][start:stop], pair_junk[1])
    keys, first_ranks = _sorted_keys(dist, q_pid[start:stop], q_junk[start:stop], g_junk, groups,
                                     block_pairs, cmc_mode == 'distinct_ids')
    del current, dist
    _accumulate(stats, keys, max_rank, first_ranks)
  return _finalize(stats, num_query,
                   _junk_rule_name(q_sceneids, same_key_junk, junk_camera_pairs))


def rank_metrics_loop_reference(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any,
                                g_camids: Any, max_rank: int = 50, q_sceneids: Any = None,
                                g_sceneids: Any = None, same_key_junk: bool = True,
                                junk_camera_pairs: Any = (),
                                cmc_mode: str = 'standard') -> dict[str, Any]:
  """`rank_metrics` as a plain loop over queries (official `eval_func`, `eval_sysu`, `eval_llcm`
  and `eval_regdb` by the options; pessimistic ties, padding).

  Slow on purpose: it is the readable definition the fast path is tested and measured against.
  """
  distmat = np.asarray(distmat, np.float32)
  q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
  q_cams, g_cams = np.asarray(q_camids), np.asarray(g_camids)
  scene = q_sceneids is not None
  q_keys = np.asarray(q_sceneids if scene else q_camids)
  g_keys = np.asarray(g_sceneids if scene else g_camids)
  cmcs, aps, inps = [], [], []
  for i in range(distmat.shape[0]):
    same_pid = g_pids == q_pids[i]
    junk = same_pid & (g_keys == q_keys[i]) if same_key_junk else np.zeros_like(same_pid)
    for a, b in junk_camera_pairs:
      junk = junk | ((q_cams[i] == a) & (g_cams == b))
    order = np.argsort(distmat[i], kind='stable')
    if np.any(np.diff(distmat[i][order]) == 0):  # exact ties: non-matches first (pessimistic)
      order = np.lexsort((same_pid & ~junk, distmat[i]))
    keep = ~junk[order]
    matches = same_pid[order][keep].astype(np.float64)
    if not matches.any():
      continue
    cumulative = np.cumsum(matches)
    hardest = np.flatnonzero(matches)[-1]
    inps.append(cumulative[hardest] / (hardest + 1.0))
    cmc = np.minimum(cumulative, 1.0)[:max_rank]
    if cmc_mode == 'distinct_ids':  # first occurrence of each gallery pid, in ranked order
      ranked_pids = g_pids[order][keep]
      _, first_index = np.unique(ranked_pids, return_index=True)
      distinct = ranked_pids[np.sort(first_index)]
      cmc = np.cumsum(distinct == q_pids[i]).astype(np.float64)[:max_rank]
    cmcs.append(np.pad(cmc, (0, max_rank - cmc.size), mode='edge'))
    precision = cumulative / np.arange(1.0, matches.size + 1.0)
    aps.append(float(np.sum(precision * matches) / matches.sum()))
  if not aps:
    raise ValueError('No valid query: no query has a gallery item of its pid after junk removal.')
  return {'cmc': np.mean(cmcs, axis=0).astype(np.float32), 'mAP': float(np.mean(aps)),
          'mINP': float(np.mean(inps)), 'num_valid_queries': len(aps),
          'num_skipped_queries': distmat.shape[0] - len(aps)}
