"""k-reciprocal re-ranking of query-gallery distances (Zhong et al., CVPR 2017)."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_positive(value: int, name: str) -> int:
  if int(value) != value or value < 1:
    raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  return int(value)


def rerank_distances(q_g_dist: Any, q_q_dist: Any, g_g_dist: Any, k1: int = 20, k2: int = 6,
                     lambda_value: float = 0.3) -> np.ndarray:
  """k-reciprocal re-ranking (Zhong et al., CVPR 2017) -> new query-gallery distances [Q, G].

  (Long because the docstring spells out the seven steps the body follows in order.)

  MEMORY: O((Q+G)^2). It builds the full (Q+G) x (Q+G) distance matrix, its argsort and dense
  (Q+G) x (Q+G) neighbour-weight matrices, about 50 (Q+G)^2 bytes at the peak (0.25 GB at the
  WMVeID863 test size, 5 GB at Q+G = 10k), so it is only for galleries of a few thousand.

  Steps (paper Sec. 3-4):
    1. D = [[q_q, q_g], [q_g^T, g_g]], each row divided by its maximum (as the authors' release;
       the distances are used as given: our default metric is already a squared distance).
    2. N(p, k): the k+1 nearest items of p (p itself included), stable order.
       R(p, k) = {x in N(p, k) : p in N(x, k)}, the k-reciprocal set.
    3. R*(p) = R(p, k1) united with every R(x, round(k1/2)), x in R(p, k1), that shares more than
       2/3 of its items with R(p, k1) (round half to even).
    4. V[p, x] = exp(-D[p, x]) on R*(p), 0 elsewhere, normalised to sum 1 per row.
    5. Local query expansion: V[p] <- mean of V over N(p, k2 - 1) (k2 nearest; skipped if k2 = 1).
    6. Jaccard distance d_J(p, g) = 1 - sum_x min(V[p,x], V[g,x]) / sum_x max(V[p,x], V[g,x]).
    7. d* = (1 - lambda) d_J + lambda D, on the query-gallery block.

  Args:
    q_g_dist: [Q, G]; q_q_dist: [Q, Q]; g_g_dist: [G, G] distances (non-negative).
    k1, k2: neighbourhood sizes (config.eval.rerank_k1 / rerank_k2).
    lambda_value: weight of the original distance (config.eval.rerank_lambda).
  """
  q_g = np.asarray(q_g_dist, np.float64)
  q_q = np.asarray(q_q_dist, np.float64)
  g_g = np.asarray(g_g_dist, np.float64)
  if q_g.ndim != 2:
    raise ValueError(f'q_g_dist must be 2-D [Q, G], got shape {q_g.shape}.')
  num_query, num_gallery = q_g.shape
  if num_query == 0 or num_gallery == 0:
    raise ValueError(f'q_g_dist is empty (shape {q_g.shape}): empty query set or gallery.')
  if q_q.shape != (num_query, num_query):
    raise ValueError(f'q_q_dist must have shape {(num_query, num_query)}, got {q_q.shape}.')
  if g_g.shape != (num_gallery, num_gallery):
    raise ValueError(f'g_g_dist must have shape {(num_gallery, num_gallery)}, got {g_g.shape}.')
  k1 = check_positive(k1, 'k1')
  k2 = check_positive(k2, 'k2')
  if not 0.0 <= lambda_value <= 1.0:
    raise ValueError(f'lambda_value must be in [0, 1], got {lambda_value!r}.')
  n = num_query + num_gallery
  dist = np.block([[q_q, q_g], [q_g.T, g_g]])
  if not np.all(np.isfinite(dist)):
    raise ValueError('Re-ranking needs finite distances.')
  row_max = dist.max(axis=1, keepdims=True)
  dist = dist / np.where(row_max > 0, row_max, 1.0)

  k1 = min(k1, n - 1)
  k2 = min(k2, n)
  ranking = np.argsort(dist, axis=1, kind='stable')
  r_members, r_mask = _reciprocal_sets(ranking, k1)
  h_members, h_mask = _reciprocal_sets(ranking, int(np.around(k1 / 2)))
  expanded = _expand(r_members, r_mask, h_members, h_mask)   # [n, n] bool

  weights = np.where(expanded, np.exp(-dist), 0.0)
  weights /= weights.sum(axis=1, keepdims=True)   # each row holds at least p itself
  if k2 > 1:
    neighbours = ranking[:, :k2]
    expanded_qe = np.empty_like(weights)
    block = max(1, int(2**24 // (k2 * n)))
    for start in range(0, n, block):
      expanded_qe[start:start + block] = weights[neighbours[start:start + block]].mean(axis=1)
    weights = expanded_qe

  v_query, v_gallery = weights[:num_query], weights[num_query:]
  jaccard = np.empty((num_query, num_gallery))
  # Blocks of queries: sum_x min(...) over the columns some query of the block uses.
  block = max(1, int(2**24 // (num_gallery * n)))
  for start in range(0, num_query, block):
    vq = v_query[start:start + block]
    cols = np.flatnonzero(vq.any(axis=0))
    mins = np.minimum(vq[:, None, cols], v_gallery[None, :, cols]).sum(-1)
    # Rows sum to 1, so sum of max = 2 - sum of min.
    jaccard[start:start + block] = 1.0 - mins / (2.0 - mins)
  final = (1.0 - lambda_value) * jaccard + lambda_value * dist[:num_query, num_query:]
  return final.astype(np.float32)


def _reciprocal_sets(ranking: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """R(p, k) for all p: members [n, k+1] (N(p, k) in rank order) and a keep mask [n, k+1]."""
  n = ranking.shape[0]
  members = ranking[:, :k + 1]                            # N(p, k)
  in_neighbourhood = np.zeros((n, n), bool)
  in_neighbourhood[np.arange(n)[:, None], members] = True
  # x in N(p, k) is kept when p in N(x, k).
  mask = in_neighbourhood[members, np.arange(n)[:, None]]
  return members, mask


def _expand(r_members: np.ndarray, r_mask: np.ndarray, h_members: np.ndarray,
            h_mask: np.ndarray) -> np.ndarray:
  """R*(p) as [n, n] bool: R(p, k1) plus R(x, k1/2) for each x in R(p, k1) that shares more
  than 2/3 of its members with R(p, k1)."""
  n = r_members.shape[0]
  rows = np.broadcast_to(np.arange(n)[:, None], r_members.shape)
  reciprocal = np.zeros((n, n), bool)
  reciprocal[rows[r_mask], r_members[r_mask]] = True
  p, x = rows[r_mask], r_members[r_mask]                  # candidate pairs (p, x in R(p, k1))
  shared = reciprocal[p[:, None], h_members[x]] & h_mask[x]   # [pairs, k1/2 + 1]
  accept = shared.sum(axis=1) > (2.0 / 3.0) * h_mask[x].sum(axis=1)
  p, x = p[accept], x[accept]
  members, mask = h_members[x], h_mask[x]
  expanded = reciprocal.copy()
  expanded[np.broadcast_to(p[:, None], members.shape)[mask], members[mask]] = True
  return expanded
