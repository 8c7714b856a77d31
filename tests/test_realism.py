"""input_pipeline.realism: its measures against brute force and hand-worked cases."""

import itertools

import numpy as np
import pytest

from input_pipeline import realism


def test_best_constant_mask_matches_brute_force():
  rng = np.random.default_rng(0)
  truth = rng.random((12, 2, 3)) < rng.random((1, 2, 3))   # cells glared at different rates
  best = realism.best_constant_mask(truth)
  brute = max((np.asarray(bits, bool).reshape(2, 3) for bits in
               itertools.product([0, 1], repeat=6) if any(bits)),
              key=lambda m: realism.iou(np.broadcast_to(m, truth.shape), truth))
  assert realism.iou(np.broadcast_to(best, truth.shape), truth) == pytest.approx(
      realism.iou(np.broadcast_to(brute, truth.shape), truth))


def test_cells_mark_blocks_at_least_half_glared():
  mask = np.zeros((4, 4), bool)
  mask[:2, :1] = True            # half of the top-left 2x2 block
  mask[2:, 2:] = True            # all of the bottom-right block
  np.testing.assert_array_equal(realism.cells(mask, (2, 2)), [[True, False], [False, True]])
  with pytest.raises(ValueError, match='multiple'):
    realism.cells(mask, (3, 2))


def test_average_precision_hand_case():
  # Query 0 (id 1): gallery sorted by distance is ids [1, 2, 1] -> AP = (1/1 + 2/3) / 2.
  dist = np.asarray([[0.1, 0.2, 0.3, 0.0]])
  valid = np.asarray([[True, True, True, False]])   # the last item is excluded
  ap = realism.average_precision(dist, np.asarray([1]), np.asarray([1, 2, 1, 1]), valid)
  assert ap == pytest.approx((1 + 2 / 3) / 2)


def test_pixel_descriptor_ignores_brightness_offset_and_is_unit_norm():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 200, (32, 16, 3)).astype(np.uint8)
  a = realism.pixel_descriptor(img, gray=False)
  b = realism.pixel_descriptor(img + np.uint8(20), gray=False)
  np.testing.assert_allclose(a, b, atol=1e-12)
  assert np.linalg.norm(a) == pytest.approx(1.0)
  assert realism.pixel_descriptor(img, gray=True).shape == (16 * 8,)
