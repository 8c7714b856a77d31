"""Seeded P x K identity sampler in NumPy.

Every batch holds P distinct training identities with K triplets each, rows grouped by identity
(K consecutive rows per id). An epoch follows the re-id libraries' identity sampler: each id's
triplets are shuffled and cut into chunks of K (an id with fewer than K triplets gives one chunk
that holds every triplet once, topped up with triplets drawn with replacement), and every id is
visited at least once per epoch.

Where we differ, and why: the official `RandomIdentitySampler` draws P ids greedily until fewer
than P ids have chunks left, so its epoch length varies between epochs and the leftover ids are
skipped. Here the number of steps per epoch S depends on the dataset only, so the batch at
global step s is a function of (seed, s) alone (epoch = s // S) and a resumed run continues the
same data stream. The chunks of an epoch are laid out id by id in a random id order and dealt
column-wise into S batches, which puts the chunks of one id into distinct batches; an id never
has more than S chunks per epoch, and ids with the fewest chunks get one more chunk each until
the S x P slots are full.
"""

from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np


def _chunk_counts(sizes: np.ndarray, num_instances: int) -> np.ndarray:
  """Natural chunks per id: floor(n / K), at least 1 (ids with n < K are topped up)."""
  return np.maximum(sizes // num_instances, 1)


def compute_steps_per_epoch(sizes: Sequence[int], num_ids_per_batch: int,
                            num_instances: int) -> int:
  """Steps S of one epoch for ids with `sizes` triplets each.

  With c_i = max(1, n_i // K) natural chunks per id and C = sum_i c_i, S is the largest fixed
  point of S = ceil(sum_i min(c_i, S) / P) not above ceil(C / P): every natural chunk is used
  once, except that an id contributes at most S chunks (one per batch), and the S x P slots are
  then just enough for them. Iterating from ceil(C / P) reaches it, since the map is monotone.
  """
  sizes = np.asarray(sizes, dtype=np.int64)
  if num_ids_per_batch <= 0 or num_instances <= 0:
    raise ValueError(f'data.num_ids_per_batch ({num_ids_per_batch}) and data.num_instances '
                     f'({num_instances}) must be positive')
  if len(sizes) < num_ids_per_batch:
    raise ValueError(f'data.num_ids_per_batch: {num_ids_per_batch} ids per batch but the '
                     f'training set has only {len(sizes)} identities')
  chunks = _chunk_counts(sizes, num_instances)
  steps = math.ceil(chunks.sum() / num_ids_per_batch)
  while True:  # the capped total only shrinks as S shrinks, so this decreases to a fixed point
    new = math.ceil(np.minimum(chunks, steps).sum() / num_ids_per_batch)
    if new == steps:
      return steps
    steps = new


class IdentitySampler:
  """P x K batches of record indices, a pure function of (seed, step).

  Args:
    pids: [N] training label of each record (any ints; grouping is by value).
    num_ids_per_batch: P.
    num_instances: K.
    seed: sampler seed (data.seed).
  """

  def __init__(self, pids: Sequence[int], num_ids_per_batch: int, num_instances: int,
               seed: int):
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for i, p in enumerate(pids):
      groups[int(p)].append(i)
    self.ids = sorted(groups)
    self._members = [np.asarray(groups[p], dtype=np.int64) for p in self.ids]
    self.num_ids_per_batch = num_ids_per_batch
    self.num_instances = num_instances
    self.seed = seed
    self.steps_per_epoch = compute_steps_per_epoch(
        [len(m) for m in self._members], num_ids_per_batch, num_instances)
    self._cached_epoch: tuple[int, np.ndarray] | None = None

  @property
  def batch_size(self) -> int:
    return self.num_ids_per_batch * self.num_instances

  def _id_chunks(self, rng: np.random.Generator, members: np.ndarray,
                 num_chunks: int) -> np.ndarray:
    """[num_chunks, K] indices of one id: fresh permutations cut into whole chunks."""
    k = self.num_instances
    n = len(members)
    if n < k:
      # Every triplet once, the rest drawn with replacement, then shuffled.
      rows = [rng.permutation(np.concatenate([members, rng.choice(members, k - n)]))
              for _ in range(num_chunks)]
      return np.stack(rows)
    per_perm = n // k  # leftover n % k triplets of a permutation are skipped, as in re-id libs
    rows = []
    while len(rows) < num_chunks:
      perm = rng.permutation(members)
      rows.extend(perm[: per_perm * k].reshape(per_perm, k))
    return np.stack(rows[:num_chunks])

  def epoch_batches(self, epoch: int) -> np.ndarray:
    """All batches of `epoch` as int64 [S, P * K] record indices."""
    if self._cached_epoch is not None and self._cached_epoch[0] == epoch:
      return self._cached_epoch[1]
    s, p, k = self.steps_per_epoch, self.num_ids_per_batch, self.num_instances
    rng = np.random.default_rng([self.seed, epoch, 0x5A4])
    sizes = np.asarray([len(m) for m in self._members])
    counts = np.minimum(_chunk_counts(sizes, k), s)
    # Fill the S * P slots: one more chunk to an id with the fewest, random tie-break; the
    # average is S * P / num_ids <= S, so no id exceeds S.
    for _ in range(s * p - int(counts.sum())):
      fewest = np.flatnonzero(counts == counts.min())
      counts[rng.choice(fewest)] += 1
    order = rng.permutation(len(self._members))
    chunks = np.concatenate([self._id_chunks(rng, self._members[i], counts[i]) for i in order])
    # Column-wise deal: slot t of batch j is chunk j + t * S. An id's chunks are consecutive and
    # at most S, so they land in distinct batches.
    batches = chunks.reshape(p, s, k).transpose(1, 0, 2)        # [S, P, K]
    batches = batches[rng.permutation(s)]
    slot_perm = np.argsort(rng.random((s, p)), axis=1)           # shuffle id order in a batch
    batches = np.take_along_axis(batches, slot_perm[:, :, None], axis=1)
    out = batches.reshape(s, p * k)
    self._cached_epoch = (epoch, out)
    return out

  def batch_indices_for_step(self, step: int) -> np.ndarray:
    """int64 [P * K] record indices of global step `step` (rows grouped by id, K per id)."""
    epoch, offset = divmod(int(step), self.steps_per_epoch)
    return self.epoch_batches(epoch)[offset]


class CrossModalSampler:
  """P ids x K images per modality from two unpaired pools, a pure function of (seed, step).

  The cross-modality identity sampler of the AGW family (`IdentitySampler` of the official AGW,
  DEEN, DNDM and FSC-Net code): every batch draws P distinct identities, then for each of them K
  images from the modality-0 pool and K from the modality-1 pool, in the same id order, so the two
  halves of a batch have element-wise equal labels (CPM, HC and the aligned losses rely on it).
  With `replacement` (AGW default) the K images are drawn with replacement; without it (TSME) they
  are distinct where the id has K images, else all of them topped up with replacement.
  An epoch is floor(N / (P K)) + 1 steps with N the larger pool, as the official loader runs.

  Where we differ, and why: the official draws from NumPy's global RNG, so a resumed run sees a
  different stream; here batch s comes from a generator seeded by (seed, s), so a resumed run
  continues the same stream. Only ids with images in both pools are drawn (the official code
  would fail on an id missing from one pool); `one_pool_ids` lists any left out.

  Args:
    pids0, pids1: [N0], [N1] training labels of the two pools.
    num_ids_per_batch: P; num_instances: K (per modality).
    seed: sampler seed (data.seed).
    replacement: draw the K images of an id with replacement.
  """

  def __init__(self, pids0: Sequence[int], pids1: Sequence[int], num_ids_per_batch: int,
               num_instances: int, seed: int, replacement: bool = True):
    if num_ids_per_batch <= 0 or num_instances <= 0:
      raise ValueError(f'data.num_ids_per_batch ({num_ids_per_batch}) and data.num_instances '
                       f'({num_instances}) must be positive')
    pools = []
    for pids in (pids0, pids1):
      groups: dict[int, list[int]] = collections.defaultdict(list)
      for i, p in enumerate(pids):
        groups[int(p)].append(i)
      pools.append(groups)
    self.ids = sorted(set(pools[0]) & set(pools[1]))
    self.one_pool_ids = sorted(set(pools[0]) ^ set(pools[1]))
    if len(self.ids) < num_ids_per_batch:
      raise ValueError(f'data.num_ids_per_batch: {num_ids_per_batch} ids per batch but only '
                       f'{len(self.ids)} identities have images in both modalities')
    self._members = [[np.asarray(pool[p], np.int64) for p in self.ids] for pool in pools]
    self.num_ids_per_batch, self.num_instances = num_ids_per_batch, num_instances
    self.seed, self.replacement = seed, replacement
    self.steps_per_epoch = max(len(pids0), len(pids1)) // (num_ids_per_batch * num_instances) + 1

  @property
  def batch_size(self) -> int:
    """Images per modality in a batch (P * K); a step sees twice as many."""
    return self.num_ids_per_batch * self.num_instances

  def _draw(self, rng: np.random.Generator, members: np.ndarray) -> np.ndarray:
    k = self.num_instances
    if self.replacement:
      return rng.choice(members, k, replace=True)
    if len(members) >= k:
      return rng.choice(members, k, replace=False)
    return rng.permutation(np.concatenate([members, rng.choice(members, k - len(members))]))

  def _step_draw(self, step: int) -> tuple[np.random.Generator, np.ndarray]:
    """The step's generator after drawing its P distinct ids, and their positions in `ids`."""
    rng = np.random.default_rng([self.seed, int(step), 0xC405])
    return rng, rng.choice(len(self.ids), self.num_ids_per_batch, replace=False)

  def batch_indices_for_step(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool-0 indices [P * K], pool-1 indices [P * K]) of global step `step`, id-major, aligned."""
    rng, chosen = self._step_draw(step)
    halves = [np.concatenate([self._draw(rng, members[i]) for i in chosen])
              for members in self._members]
    return halves[0], halves[1]

  def batch_ids_for_step(self, step: int) -> np.ndarray:
    """[P] training labels of the ids of step `step`, in batch order."""
    return np.asarray(self.ids)[self._step_draw(step)[1]]
