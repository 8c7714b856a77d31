"""P x K identity sampler invariants."""

import collections

import numpy as np
import pytest

from input_pipeline import sampler as sampler_lib


def _pids(sizes, seed=0):
  """Record labels for ids with `sizes` triplets, shuffled so records of an id are not adjacent."""
  pids = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)])
  return np.random.default_rng(seed).permutation(pids)


SIZES = [1, 2, 3, 4, 5, 8, 9, 13, 4, 4, 6, 1, 7, 30]


def _brute_force_steps(sizes, p, k):
  """Largest S <= ceil(C / P) with S == ceil(sum_i min(c_i, S) / P), by exhaustive search."""
  chunks = [max(n // k, 1) for n in sizes]
  top = -(-sum(chunks) // p)
  return max(s for s in range(1, top + 1) if -(-sum(min(c, s) for c in chunks) // p) == s)


@pytest.mark.parametrize('p,k', [(4, 4), (3, 2), (14, 1), (2, 5)])
def test_batches_have_p_ids_with_k_each(p, k):
  pids = _pids(SIZES)
  s = sampler_lib.IdentitySampler(pids, p, k, seed=3)
  assert s.steps_per_epoch == _brute_force_steps(SIZES, p, k)
  for epoch in range(3):
    batches = s.epoch_batches(epoch)
    assert batches.shape == (s.steps_per_epoch, p * k)
    seen = set()
    for batch in batches:
      labels = pids[batch].reshape(p, k)
      assert (labels == labels[:, :1]).all(), 'K consecutive rows per identity'
      assert len(set(labels[:, 0])) == p, 'P distinct identities'
      seen |= set(labels[:, 0])
    assert seen == set(range(len(SIZES))), 'every id visited in every epoch'


def test_chunks_use_distinct_triplets_when_possible():
  pids = _pids(SIZES)
  s = sampler_lib.IdentitySampler(pids, 4, 4, seed=0)
  for batch in s.epoch_batches(0):
    for chunk in batch.reshape(4, 4):
      n = SIZES[pids[chunk[0]]]
      assert len(set(chunk)) == min(n, 4)   # small ids: every triplet, topped up with repeats


def test_single_image_id_is_sampled_with_replacement():
  pids = _pids([1, 5, 5, 5])
  s = sampler_lib.IdentitySampler(pids, 2, 3, seed=0)
  single = int(np.flatnonzero(pids == 0)[0])
  found = [b for b in s.epoch_batches(0) if single in b]
  assert found
  assert all(list(b).count(single) == 3 for b in found)


def test_large_ids_are_spread_over_the_epoch():
  # The 30-triplet id would need 7 chunks of 4; it is capped at one chunk per batch.
  pids = _pids(SIZES)
  s = sampler_lib.IdentitySampler(pids, 4, 4, seed=1)
  counts = collections.Counter(int(pids[b[0]]) for batch in s.epoch_batches(0)
                               for b in batch.reshape(4, 4))
  assert max(counts.values()) <= s.steps_per_epoch
  assert counts[13] >= counts[0]


def test_deterministic_per_seed_and_step():
  pids = _pids(SIZES)
  a = sampler_lib.IdentitySampler(pids, 4, 2, seed=7)
  b = sampler_lib.IdentitySampler(pids, 4, 2, seed=7)
  c = sampler_lib.IdentitySampler(pids, 4, 2, seed=8)
  steps = [0, 5, a.steps_per_epoch, 3 * a.steps_per_epoch + 2, 1]
  for step in steps:   # any order: no hidden state
    np.testing.assert_array_equal(a.batch_indices_for_step(step), b.batch_indices_for_step(step))
  assert any(not np.array_equal(a.batch_indices_for_step(t), c.batch_indices_for_step(t))
             for t in range(3))
  assert not np.array_equal(a.epoch_batches(0), a.epoch_batches(1))


def test_a_step_is_a_pure_function_of_seed_and_step():
  """A fresh sampler (a resumed run) gives the batches of a running one, across epochs."""
  pids = _pids(SIZES)
  s = sampler_lib.IdentitySampler(pids, 4, 2, seed=0)
  full = [s.batch_indices_for_step(t) for t in range(2 * s.steps_per_epoch + 3)]
  resumed = sampler_lib.IdentitySampler(pids, 4, 2, seed=0)
  for t in range(len(full) - 1, s.steps_per_epoch, -1):   # any order: no hidden state
    np.testing.assert_array_equal(resumed.batch_indices_for_step(t), full[t])
  np.testing.assert_array_equal(np.stack(full[:s.steps_per_epoch]), s.epoch_batches(0))


def test_steps_per_epoch_formula():
  assert sampler_lib.compute_steps_per_epoch([4] * 8, 4, 4) == 2
  assert sampler_lib.compute_steps_per_epoch([4] * 9, 4, 4) == 3      # 9 ids: one extra batch
  assert sampler_lib.compute_steps_per_epoch([16, 1, 1, 1], 2, 4) == 4  # the big id: one per batch
  rng = np.random.default_rng(0)
  for _ in range(50):
    sizes = list(rng.integers(1, 40, rng.integers(6, 30)))
    p, k = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    assert sampler_lib.compute_steps_per_epoch(sizes, p, k) == _brute_force_steps(sizes, p, k)


def test_too_few_ids_names_field():
  with pytest.raises(ValueError, match='data.num_ids_per_batch'):
    sampler_lib.IdentitySampler([0, 0, 1, 1], 3, 2, seed=0)
  with pytest.raises(ValueError, match='data.num_instances'):
    sampler_lib.compute_steps_per_epoch([3, 3], 2, 0)


# ------------------------------------------------------------------ cross-modality sampler
def _cross_modal_pools():
  rng = np.random.default_rng(5)
  pids0 = rng.permutation(np.repeat(np.arange(6), [5, 3, 1, 4, 6, 2]))   # unequal pools
  pids1 = rng.permutation(np.repeat(np.arange(7), [2, 4, 3, 1, 2, 5, 3]))  # id 6: one pool only
  return pids0, pids1


@pytest.mark.parametrize('replacement', [True, False])
def test_cross_modal_batches_are_aligned_id_major(replacement):
  pids0, pids1 = _cross_modal_pools()
  sampler = sampler_lib.CrossModalSampler(pids0, pids1, 3, 4, seed=1, replacement=replacement)
  assert sampler.ids == [0, 1, 2, 3, 4, 5] and sampler.one_pool_ids == [6]
  assert sampler.steps_per_epoch == max(len(pids0), len(pids1)) // 12 + 1
  for step in range(20):
    idx0, idx1 = sampler.batch_indices_for_step(step)
    labels0, labels1 = pids0[idx0], pids1[idx1]
    np.testing.assert_array_equal(labels0, labels1)          # label1 == label2 element-wise
    blocks = labels0.reshape(3, 4)
    assert (blocks == blocks[:, :1]).all()                    # K consecutive rows per id
    assert len(set(blocks[:, 0])) == 3                        # P distinct ids
    np.testing.assert_array_equal(blocks[:, 0], sampler.batch_ids_for_step(step))
    if not replacement:  # distinct images wherever the id has K of them
      for idx, pids in ((idx0, pids0), (idx1, pids1)):
        for block in idx.reshape(3, 4):
          available = np.sum(pids == pids[block[0]])
          assert len(set(block)) == min(4, available)


def test_cross_modal_sampler_is_a_pure_function_of_seed_and_step():
  pids0, pids1 = _cross_modal_pools()
  a = sampler_lib.CrossModalSampler(pids0, pids1, 2, 3, seed=7)
  b = sampler_lib.CrossModalSampler(pids0, pids1, 2, 3, seed=7)
  for step in (0, 5, 1000, 5):   # any order: resume at any step gives the same batch
    for x, y in zip(a.batch_indices_for_step(step), b.batch_indices_for_step(step)):
      np.testing.assert_array_equal(x, y)
  other = sampler_lib.CrossModalSampler(pids0, pids1, 2, 3, seed=8)
  assert any(not np.array_equal(a.batch_indices_for_step(s)[0], other.batch_indices_for_step(s)[0])
             for s in range(5))
  # Over many steps every shared id is drawn, and ids are drawn about equally often.
  counts = np.bincount(np.concatenate([a.batch_ids_for_step(s) for s in range(600)]), minlength=6)
  assert counts.min() > 0.8 * counts.mean()


def test_cross_modal_sampler_rejects_too_few_shared_ids():
  with pytest.raises(ValueError, match=r'data.num_ids_per_batch: 3 ids per batch but only 2'):
    sampler_lib.CrossModalSampler([0, 1, 2], [0, 1, 1], 3, 2, seed=0)
