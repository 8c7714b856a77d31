"""The uint8 input path: streams ship uint8 images and erasing boxes, the step finishes them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from facenet_jax import device_input
from input_pipeline import augment
from input_pipeline import pipeline
from tests import fake_trees

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.fixture(scope='module')
def splits(tmp_path_factory):
  return fake_trees.small_synthetic_splits(str(tmp_path_factory.mktemp('syn') / 'synthetic'))


def _config(**overrides):
  cfg = default.get_config().data
  cfg.update(image_size=(24, 12), num_ids_per_batch=4, num_instances=2, pad_pixels=2,
             num_parallel_calls=2, mean=MEAN, std=STD)
  cfg.update(overrides)
  return cfg


def _prepare(batch):
  return jax.device_get(jax.jit(device_input.make_prepare(_config()))(batch))


def test_normalisation_matches_the_float64_reference():
  images = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
  out = _prepare({'rgb': images, 'pid': np.array([3, 4], np.int32)})
  assert out['rgb'].dtype == np.float32
  np.testing.assert_allclose(out['rgb'], fake_trees.reference_normalize(images, MEAN, STD),
                             atol=2e-6)
  np.testing.assert_array_equal(out['pid'], [3, 4])


def test_float_images_and_other_entries_pass_through():
  batch = {'image': np.full((2, 4, 4, 3), 0.25, np.float32), 'glare': np.ones((2, 4, 4), np.float32),
           'modality': np.array([0, 1], np.int32)}
  out = _prepare(batch)
  assert set(out) == set(batch)
  for k in batch:
    np.testing.assert_array_equal(out[k], batch[k])


def test_erasing_fills_the_box_with_the_seeded_normal_field_and_nothing_else():
  images = np.full((3, 6, 5, 3), 128, np.uint8)
  boxes = np.array([[1, 2, 3, 2, 77],     # rows 1-3, columns 2-3
                    [0, 0, 0, 0, 0],      # no box
                    [2, 1, 4, 4, 5]], np.int32)   # rows 2-5, columns 1-4: the largest box
  out = _prepare({'ni': images, 'ni_erase': boxes})
  assert set(out) == {'ni'}
  plain = fake_trees.reference_normalize(images[0], MEAN, STD)
  # Boxes of at most a third of 6 x 5 pixels (sides rounded) have at most 10 + 5 + 1 pixels:
  # every row draws 16.
  assert device_input.max_erase_area((6, 5), 1 / 3) == 16
  for row, (y, x, h, w, seed) in zip((0, 2), boxes[[0, 2]]):
    draws = np.asarray(jax.random.normal(jax.random.key(seed), (16, 3), jnp.float32))
    expected = plain.copy()
    expected[y:y + h, x:x + w] = draws[:h * w].reshape(h, w, 3)   # row-major over the box
    np.testing.assert_allclose(out['ni'][row], expected, atol=2e-6)
  np.testing.assert_allclose(out['ni'][1], plain, atol=2e-6)


def test_the_drawn_noise_bound_covers_every_box_the_stream_draws():
  rng = np.random.default_rng(0)
  for size in ((24, 12), (256, 128), (7, 3)):
    bound = device_input.max_erase_area(size, augment.ERASE_AREA[1])
    for _ in range(2000):
      box = augment.draw_params(rng, size, 0.5, 0, 1.0).erase_box
      if box is not None:
        assert box[2] * box[3] <= bound, (size, box, bound)


def test_erase_boxes_encode_the_drawn_params():
  params = [augment.AugmentParams(False, 0, 0, (2, 3, 4, 5), 1234),
            augment.AugmentParams(True, 1, 1, None, 99)]
  np.testing.assert_array_equal(augment.erase_boxes(params), [[2, 3, 4, 5, 1234], [0] * 5])


def test_default_train_stream_ships_uint8_and_boxes(splits):
  cfg = _config(random_erasing_prob=0.7)
  batch = next(pipeline.make_train_stream(splits.train, cfg))
  for m in ('rgb', 'ni', 'ti'):
    assert batch[m].dtype == np.uint8 and batch[m].shape == (8, 24, 12, 3)
    assert batch[f'{m}_erase'].dtype == np.int32 and batch[f'{m}_erase'].shape == (8, 5)
  assert (batch['rgb_erase'][:, 2] > 0).any()
  ev = next(pipeline.make_eval_stream(splits.query, cfg, batch_size=4))
  assert ev['rgb'].dtype == np.uint8 and 'rgb_erase' not in ev


def _box_mask(boxes: np.ndarray, size=(24, 12)) -> np.ndarray:
  """bool [B, H, W, 1]: inside each row's (y, x, h, w, seed) box."""
  iy, ix = np.arange(size[0])[:, None], np.arange(size[1])[None, :]
  return np.stack([(iy >= y) & (iy < y + h) & (ix >= x) & (ix < x + w)
                   for y, x, h, w, _ in boxes])[..., None]


@pytest.mark.parametrize('erasing', [0.0, 0.7])
def test_device_finish_equals_the_host_normalised_stream(splits, erasing):
  """Same pixels as data.normalize_on_device=False, the same boxes erased (other noise)."""
  on_device = _config(random_erasing_prob=erasing)
  on_host = _config(random_erasing_prob=erasing, normalize_on_device=False)
  stream = pipeline.make_train_stream(splits.train, on_device, start_step=4)
  device_fn = pipeline.make_train_batch_fn(splits.train, on_device)
  host_raw_fn, _ = pipeline._train_source(splits.train, on_host, 0, 1)  # pylint: disable=protected-access
  host_fn = pipeline.make_train_batch_fn(splits.train, on_host)
  for step in (4, 5):
    raw, host, host_raw = next(stream), host_fn(step), host_raw_fn(step)
    for k, v in device_fn(step).items():   # the stream equals its NumPy reference
      np.testing.assert_array_equal(raw[k], v)
    keys = device_input.transfer_keys(('rgb', 'ni', 'ti', 'flare', 'pid'), raw)
    assert len(keys) == (8 if erasing else 5)
    finished = _prepare({k: raw[k] for k in keys})
    for m in ('rgb', 'ni', 'ti'):
      inside = np.zeros_like(host[m], bool)
      if erasing:   # the boxes are the host fills' boxes
        inside = _box_mask(raw[f'{m}_erase'])
        np.testing.assert_array_equal(np.broadcast_to(inside, host[m].shape),
                                      ~np.isnan(host_raw[f'{m}_erase']))
        assert inside.any() and not inside.all()
        assert np.abs(finished[m][np.broadcast_to(inside, host[m].shape)]).max() > 1.0
      # Outside the boxes the device normalisation equals the host's; inside, the host noise
      # (NumPy's generator) and the device noise share only the distribution.
      np.testing.assert_allclose(np.where(inside, 0, finished[m]), np.where(inside, 0, host[m]),
                                 atol=2e-6)
