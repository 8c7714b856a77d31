"""Augmentations against direct NumPy / Pillow computations."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from input_pipeline import augment


def _config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      hflip_prob=0.5, pad_pixels=3, random_erasing_prob=0.0, shared_augmentation=True,
      mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.2)))
  cfg.update(overrides)
  return cfg


def _image(shape=(12, 6, 3), seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize('flip', [False, True])
def test_flip_pad_crop_matches_padded_crop(flip):
  x = _image()
  pad = 3
  padded = np.pad(x[:, ::-1] if flip else x, ((pad, pad), (pad, pad), (0, 0)))
  for cy in range(2 * pad + 1):
    for cx in range(2 * pad + 1):
      params = augment.AugmentParams(flip, cy, cx, None, 0)
      out = augment.flip_pad_crop(x, params, pad)
      np.testing.assert_array_equal(out, padded[cy:cy + 12, cx:cx + 6])


def test_flip_pad_crop_large_pad_is_all_padding():
  x = _image((4, 3, 3))
  out = augment.flip_pad_crop(x, augment.AugmentParams(False, 0, 0, None, 0), 10)
  assert not out.any()


@pytest.mark.parametrize('method,pil', [('bicubic', Image.Resampling.BICUBIC),
                                        ('bilinear', Image.Resampling.BILINEAR)])
def test_resize_is_pil(method, pil):
  x = _image((37, 19, 3))
  out = augment.resize(x, (16, 8), method)
  np.testing.assert_array_equal(out, np.asarray(Image.fromarray(x).resize((8, 16), pil)))
  assert augment.resize(x, (37, 19), method) is x


def test_draw_params_ranges_and_determinism():
  flips, ys = [], []
  for row in range(400):
    p = augment.draw_params(augment.row_rng(0, 5, row), (12, 6), 0.5, 3, 0.0)
    flips.append(p.flip)
    ys.append(p.crop_y)
    assert 0 <= p.crop_x <= 6 and p.erase_box is None
  assert 0.4 < np.mean(flips) < 0.6 and set(ys) == set(range(7))
  a = augment.draw_params(augment.row_rng(1, 2, 3), (12, 6), 0.5, 3, 1.0)
  b = augment.draw_params(augment.row_rng(1, 2, 3), (12, 6), 0.5, 3, 1.0)
  assert a == b


def test_erasing_box_and_fill():
  x = np.zeros((40, 20, 3), np.float32)
  p = augment.draw_params(augment.row_rng(0, 0, 0), (40, 20), 0.0, 0, 1.0)
  y0, x0, eh, ew = p.erase_box
  assert 0.02 * 800 * 0.5 <= eh * ew <= 800 / 3 * 1.5
  out = augment.erase(x.copy(), p)
  outside = np.ones((40, 20), bool)
  outside[y0:y0 + eh, x0:x0 + ew] = False
  assert not out[outside].any() and out[~outside].std() > 0.5


def test_shared_augmentation_keeps_modalities_aligned():
  x = _image()
  triplets = [(x, x.copy(), x.copy()) for _ in range(16)]
  rngs = lambda: [augment.row_rng(0, 0, r) for r in range(16)]
  cfg = _config(random_erasing_prob=0.5)
  (rgb, ni, ti), params = augment.crop_batch(triplets, rngs(), cfg)
  np.testing.assert_array_equal(rgb, ni)
  np.testing.assert_array_equal(rgb, ti)
  assert params[0] == params[1] == params[2]     # erasing boxes too
  cfg.shared_augmentation = False
  (rgb, ni, ti), _ = augment.crop_batch(triplets, rngs(), cfg)
  assert rgb.shape == (16, 12, 6, 3) and rgb.dtype == np.uint8
  assert not np.array_equal(rgb, ni) and not np.array_equal(ni, ti)


def test_crop_batch_matches_row_by_row():
  triplets = [tuple(_image(seed=3 * r + m) for m in range(3)) for r in range(4)]
  cfg = _config(shared_augmentation=False)
  out, _ = augment.crop_batch(triplets, [augment.row_rng(9, 1, r) for r in range(4)], cfg)
  for r, images in enumerate(triplets):
    rng = augment.row_rng(9, 1, r)
    for m, image in enumerate(images):
      p = augment.draw_params(rng, (12, 6), cfg.hflip_prob, cfg.pad_pixels, 0.0)
      np.testing.assert_array_equal(out[m][r], augment.flip_pad_crop(image, p, 3))


def test_normalize_maps_the_uint8_range_through_mean_and_std():
  x = np.array([[[0, 255, 51]]], np.uint8)
  out = augment.normalize(x, (0.5, 0.5, 0.2), (0.5, 0.25, 0.2))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [[[-1.0, 2.0, 0.0]]], atol=1e-6)


def test_gray_conversion_is_pils():
  from PIL import Image
  image = np.random.default_rng(4).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  expected = np.asarray(Image.fromarray(image).convert('L'))
  gray = augment.to_gray3(image)
  assert gray.shape == (5, 7, 3)
  for c in range(3):
    np.testing.assert_array_equal(gray[..., c], expected)
  draws = [augment.grayscale_draw(0, 3, row, 0.5) for row in range(400)]
  assert 0.4 < np.mean(draws) < 0.6 and draws == [augment.grayscale_draw(0, 3, r, 0.5)
                                                  for r in range(400)]
  assert not any(augment.grayscale_draw(0, 3, row, 0.0) for row in range(50))
