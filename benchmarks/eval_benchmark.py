"""Timing of the retrieval evaluation: vectorised chunked path vs the per-query loop.

Behind `python -m benchmarks.benchmark eval`. Synthetic features (one Gaussian centre per identity
plus noise) stand in for embeddings; the ranking cost does not depend on their values.

Cases (`CASES`): the WMVeID863 test split size (928 queries x 1309 gallery), 10k x 10k, and
100k x 100k. Where the full Q x G matrix fits in `max_matrix_gib`, the benchmark times
  * `compute_distance_matrix` (JAX, chunked),
  * `rank_metrics` on that matrix (the vectorised path),
  * `rank_metrics_loop_reference` on the same matrix (the per-query loop; optional),
  * `evaluate_features` (features -> metrics, chunked, never holding the Q x G matrix),
and checks that both rankers agree. Larger cases time `evaluate_features` only. The peak resident
memory (`resource.getrusage`) is the process's lifetime peak, so run a large case in its own
process to read it as that case's peak.
"""

from __future__ import annotations

import platform
import resource
import time
from typing import Any, Callable

import jax
import numpy as np

from facenet_jax.eval import metrics as evaluation

# name -> (num_query, num_gallery, dim). WMVeID863 uses the paper's ResNet50 embedding width
# (3 x 2048); the larger cases use 256 so the CPU matmul does not dominate the ranking time.
CASES = {
    'wmveid863': (928, 1309, 6144),
    '10k': (10_000, 10_000, 256),
    '100k': (100_000, 100_000, 256),
}


def synthetic_problem(num_query: int, num_gallery: int, dim: int, num_ids: int, num_cams: int,
                      seed: int = 0) -> dict[str, np.ndarray]:
  """Features [N, dim] float32 around one centre per identity, with pids and camera ids."""
  rng = np.random.default_rng(seed)
  # Centre spread ~ dim^-1/4 against unit noise keeps the task neither trivial nor hopeless at
  # any width (mAP around 0.3 at the WMVeID863 size), so matches sit at realistic depths.
  centres = rng.standard_normal((num_ids, dim), dtype=np.float32) * (1.5 / dim**0.25)

  def side(n):
    pids = rng.integers(0, num_ids, n)
    feats = centres[pids] + rng.standard_normal((n, dim), dtype=np.float32)
    return feats, pids, rng.integers(0, num_cams, n)

  q, q_pids, q_cams = side(num_query)
  g, g_pids, g_cams = side(num_gallery)
  return {'query_feats': q, 'gallery_feats': g, 'q_pids': q_pids, 'g_pids': g_pids,
          'q_camids': q_cams, 'g_camids': g_cams}


def _best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
  best, result = float('inf'), None
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return best, result


def peak_rss_gib() -> float:
  """Peak resident set size of this process so far, GiB (Linux reports KiB, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  scale = 1 if platform.system() == 'Darwin' else 1024
  return peak * scale / 2**30


def benchmark_rank_metrics(num_query: int, num_gallery: int, dim: int = 256,
                           num_ids: int | None = None, num_cams: int = 8,
                           metric: str = 'euclidean_normalized', max_rank: int = 50,
                           chunk_size: int = 1024, run_loop_reference: bool = True,
                           repeats: int = 3, max_matrix_gib: float = 2.0,
                           seed: int = 0) -> dict[str, Any]:
  """Times the evaluation of one synthetic problem; returns a flat dict of numbers.

  Args:
    num_query, num_gallery, dim: problem size.
    num_ids: identities (default: one per 10 gallery items).
    num_cams: cameras (junk = same pid and same camera).
    metric, max_rank, chunk_size: as in `evaluation.evaluate_features`.
    run_loop_reference: also time the per-query loop (only when the matrix is materialised).
    repeats: each timing is the best of this many runs (the loop reference runs once if slow).
    max_matrix_gib: materialise the Q x G float32 matrix only up to this size.
    seed: data seed.
  """
  num_ids = num_ids or max(2, num_gallery // 10)
  data = synthetic_problem(num_query, num_gallery, dim, num_ids, num_cams, seed)
  labels = (data['q_pids'], data['g_pids'], data['q_camids'], data['g_camids'])
  result: dict[str, Any] = {
      'num_query': num_query, 'num_gallery': num_gallery, 'dim': dim, 'num_ids': num_ids,
      'num_cams': num_cams, 'metric': metric, 'chunk_size': chunk_size,
      'backend': jax.default_backend(), 'numpy': np.__version__}

  # Warm-up compiles the jitted distance function for this chunk shape.
  warm = min(num_query, chunk_size)
  evaluation.evaluate_features(data['query_feats'][:warm], data['gallery_feats'],
                               data['q_pids'][:warm], data['g_pids'], data['q_camids'][:warm],
                               data['g_camids'], metric=metric, max_rank=max_rank,
                               chunk_size=chunk_size)
  seconds, metrics = _best_time(lambda: evaluation.evaluate_features(
      data['query_feats'], data['gallery_feats'], *labels, metric=metric, max_rank=max_rank,
      chunk_size=chunk_size), repeats)
  result['features_to_metrics_s'] = seconds
  result['mAP'] = metrics['mAP']
  result['rank1'] = float(metrics['cmc'][0])

  if num_query * num_gallery * 4 / 2**30 <= max_matrix_gib:
    seconds, distmat = _best_time(lambda: evaluation.compute_distance_matrix(
        data['query_feats'], data['gallery_feats'], metric, chunk_size), repeats)
    result['distance_matrix_s'] = seconds
    seconds, fast = _best_time(lambda: evaluation.rank_metrics(
        distmat, *labels, max_rank=max_rank, chunk_size=chunk_size), repeats)
    result['rank_vectorised_s'] = seconds
    if run_loop_reference:
      loop_repeats = repeats if num_query <= 2000 else 1
      seconds, loop = _best_time(lambda: evaluation.rank_metrics_loop_reference(
          distmat, *labels, max_rank=max_rank), loop_repeats)
      result['rank_loop_reference_s'] = seconds
      result['speedup_vs_loop'] = seconds / result['rank_vectorised_s']
      result['agree_with_loop'] = bool(
          abs(loop['mAP'] - fast['mAP']) < 1e-9 and abs(loop['mINP'] - fast['mINP']) < 1e-9
          and np.allclose(loop['cmc'], fast['cmc'], atol=1e-6))
    del distmat
  result['peak_rss_gib'] = peak_rss_gib()
  return result


def format_result(result: dict[str, Any]) -> str:
  """One readable line per case."""
  parts = [f"{result['num_query']} x {result['num_gallery']} (dim {result['dim']})"]
  for key, label in (('rank_vectorised_s', 'rank vectorised'),
                     ('rank_loop_reference_s', 'rank loop'),
                     ('speedup_vs_loop', 'speed-up'),
                     ('distance_matrix_s', 'distances'),
                     ('features_to_metrics_s', 'features->metrics chunked'),
                     ('peak_rss_gib', 'peak RSS GiB')):
    if key in result:
      value = result[key]
      parts.append(f'{label} {value:.1f}x' if key == 'speedup_vs_loop' else
                   f'{label} {value:.3f}' + ('' if key == 'peak_rss_gib' else ' s'))
  return ', '.join(parts)
