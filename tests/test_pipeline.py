"""tf.data train / eval streams: contents, ordering, resumability, sharding, padding."""

import os

import numpy as np
import pytest
import tensorflow as tf

from configs import default
from input_pipeline import augment
from input_pipeline import flare_label
from input_pipeline import pipeline
from input_pipeline import records
from tests import fake_trees

KEYS = {'rgb', 'ni', 'ti', 'pid', 'camid', 'scene', 'flare'}


@pytest.fixture(scope='module')
def splits(tmp_path_factory):
  return fake_trees.small_synthetic_splits(str(tmp_path_factory.mktemp('syn') / 'synthetic'))


def _config(**overrides):
  cfg = default.get_config().data
  cfg.image_size = (24, 12)
  cfg.num_ids_per_batch = 4
  cfg.num_instances = 2
  cfg.pad_pixels = 2
  cfg.num_parallel_calls = 2
  # The host-normalised form (float32 images, NumPy erasing fills); the default uint8 form and
  # its device end are specified in tests/test_device_input.py.
  cfg.normalize_on_device = False
  cfg.update(overrides)
  return cfg


def test_train_batch_layout(splits):
  cfg = _config()
  batch = next(pipeline.make_train_stream(splits.train, cfg))
  assert set(batch) == KEYS
  for m in ('rgb', 'ni', 'ti'):
    assert batch[m].shape == (8, 24, 12, 3) and batch[m].dtype == np.float32
    assert -1.0 <= batch[m].min() and batch[m].max() <= 1.0
  for k in ('pid', 'camid', 'scene'):
    assert batch[k].shape == (8,) and batch[k].dtype == np.int32
  assert batch['flare'].shape == (8, 2) and batch['flare'].dtype == np.int32
  pids = batch['pid'].reshape(4, 2)
  assert (pids == pids[:, :1]).all() and len(set(pids[:, 0])) == 4


def test_batches_follow_the_sampler(splits):
  cfg = _config()
  from input_pipeline import sampler as sampler_lib
  s = sampler_lib.IdentitySampler([r.pid for r in splits.train], 4, 2, cfg.seed)
  it = pipeline.make_train_stream(splits.train, cfg)
  for step in range(3):
    batch = next(it)
    idx = s.batch_indices_for_step(step)
    assert batch['pid'].tolist() == [splits.train[i].pid for i in idx]
    assert batch['camid'].tolist() == [splits.train[i].camid for i in idx]
    assert batch['scene'].tolist() == [splits.train[i].scene for i in idx]


def test_resume_and_process_shards_reproduce_the_global_batch(splits):
  cfg = _config(random_erasing_prob=0.5, shared_augmentation=False)
  it = pipeline.make_train_stream(splits.train, cfg)
  full = [next(it) for _ in range(5)]
  resumed = pipeline.make_train_stream(splits.train, cfg, start_step=3)
  shards = [pipeline.make_train_stream(splits.train, cfg, start_step=3, process_index=p,
                                       process_count=2) for p in range(2)]
  for step in (3, 4):
    r = next(resumed)
    parts = [next(s) for s in shards]
    for k in KEYS:
      np.testing.assert_array_equal(r[k], full[step][k])
      assert parts[0][k].shape[0] == 4
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[step][k])
  assert not np.array_equal(full[0]['rgb'], full[1]['rgb'])


def test_train_images_without_random_ops_are_resized_originals(splits):
  cfg = _config(hflip_prob=0.0, pad_pixels=0, flare_rule='official')
  batch_fn = pipeline.make_train_batch_fn(splits.train, cfg)
  from input_pipeline import sampler as sampler_lib
  idx = sampler_lib.IdentitySampler([r.pid for r in splits.train], 4, 2, cfg.seed) \
      .batch_indices_for_step(7)
  batch = batch_fn(7)
  for row, i in enumerate(idx):
    originals = records.load_triplet(splits.train[i])
    for m, x in zip(('rgb', 'ni', 'ti'), originals):
      expected = fake_trees.reference_normalize(augment.resize(x, (24, 12), 'bicubic'),
                                                cfg.mean, cfg.std)
      np.testing.assert_allclose(batch[m][row], expected, atol=1e-5)
    np.testing.assert_array_equal(batch['flare'][row],
                                  flare_label.flare_bits(originals[0], originals[1], 'official'))


@pytest.mark.parametrize('rule', ['paper', 'official'])
def test_flare_is_computed_on_originals(splits, rule):
  cfg = _config(flare_rule=rule)
  batch = next(pipeline.make_eval_stream(splits.gallery, cfg, batch_size=len(splits.gallery)))
  expected = np.stack([flare_label.flare_bits(*records.load_triplet(r)[:2], rule)
                       for r in splits.gallery])
  np.testing.assert_array_equal(batch['flare'], expected)
  assert expected[:, 0].any() and not expected[:, 0].all()


def test_cache_does_not_change_batches(splits):
  pipeline.clear_cache()
  a = next(pipeline.make_train_stream(splits.train, _config(cache_images=True), start_step=2))
  b = next(pipeline.make_train_stream(splits.train, _config(cache_images=False), start_step=2))
  for k in KEYS:
    np.testing.assert_array_equal(a[k], b[k])


def test_eval_stream_covers_every_record_once(splits):
  cfg = _config()
  recs = splits.query + splits.gallery
  batches = list(pipeline.make_eval_stream(recs, cfg, batch_size=5))
  assert len(batches) == -(-len(recs) // 5)
  index = np.concatenate([b['index'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  assert index[mask].tolist() == list(range(len(recs)))
  assert (index[~mask] == -1).all() and mask.sum() == len(recs)
  assert mask[:len(recs)].all() and not mask[len(recs):].any()
  last = batches[-1]
  n = int(last['mask'].sum())
  assert (last['pid'][n:] == -1).all() and not last['rgb'][n:].any()
  for b in batches:
    assert set(b) == KEYS | {'mask', 'index'}
    for row in np.flatnonzero(b['mask']):
      r = recs[b['index'][row]]
      assert (b['pid'][row], b['camid'][row], b['scene'][row]) == (r.pid, r.camid, r.scene)
  # Test-time images: bilinear resize + normalise, no augmentation.
  r = recs[6]
  row = 6 % 5
  ti = augment.resize(records.load_triplet(r)[2], (24, 12), 'bilinear')
  expected = fake_trees.reference_normalize(ti, cfg.mean, cfg.std)
  np.testing.assert_allclose(batches[1]['ti'][row], expected, atol=1e-5)


def test_eval_stream_shards_side_by_side_are_the_single_process_batches(splits):
  cfg = _config()
  recs = splits.query + splits.gallery
  whole = list(pipeline.make_eval_stream(recs, cfg, batch_size=6))
  shards = [list(pipeline.make_eval_stream(recs, cfg, batch_size=6, process_index=p,
                                           process_count=3)) for p in range(3)]
  # Every process yields the same number of batches (collectives need it), 2 rows each.
  assert [len(s) for s in shards] == [len(whole)] * 3
  for b, batch in enumerate(whole):
    for k in batch:
      np.testing.assert_array_equal(np.concatenate([s[b][k] for s in shards]), batch[k], err_msg=k)
  with pytest.raises(ValueError, match='eval_batch_size: 6 does not split evenly over 4'):
    pipeline.make_eval_stream(recs, cfg, batch_size=6, process_index=0, process_count=4)


def test_eval_stream_default_batch_size(splits):
  cfg = _config(eval_batch_size=7)
  batches = list(pipeline.make_eval_stream(splits.gallery, cfg))
  assert all(b['rgb'].shape[0] == 7 for b in batches)


def test_montage_records_stream(tmp_path):
  parent = fake_trees.make_rgbnt100(str(tmp_path), {
      'bounding_box_train': ['0001_c0001_000.jpg', '0001_c0002_000.jpg', '0002_c0001_000.jpg',
                             '0002_c0003_000.jpg'],
      'query': ['0005_c0001_000.jpg'], 'bounding_box_test': ['0005_c0002_000.jpg']})
  splits = records.load_splits('rgbnt100', parent)
  cfg = _config(num_ids_per_batch=2, image_size=(16, 32))
  batch = next(pipeline.make_train_stream(splits.train, cfg))
  assert batch['rgb'].shape == (4, 16, 32, 3)
  ev = next(pipeline.make_eval_stream(splits.query, cfg, batch_size=2))
  tiles = records.load_triplet(splits.query[0])
  for m, tile in zip(('rgb', 'ni', 'ti'), tiles):
    expected = fake_trees.reference_normalize(augment.resize(tile, (16, 32), 'bilinear'),
                                              cfg.mean, cfg.std)
    np.testing.assert_allclose(ev[m][0], expected, atol=1e-5)


def test_steps_per_epoch(splits):
  cfg = _config()
  from input_pipeline import sampler as sampler_lib
  s = sampler_lib.IdentitySampler([r.pid for r in splits.train], 4, 2, 0)
  assert pipeline.train_steps_per_epoch(splits.train, cfg) == s.steps_per_epoch


def test_tensorflow_sees_no_gpu():
  assert tf.config.get_visible_devices('GPU') == []


def test_errors_name_the_field(splits):
  with pytest.raises(ValueError, match='data.num_ids_per_batch'):
    pipeline.make_train_stream(splits.train, _config(num_ids_per_batch=3), process_count=2)
  with pytest.raises(ValueError, match='data.flare_rule'):
    next(pipeline.make_train_stream(splits.train, _config(flare_rule='max')))
  with pytest.raises(ValueError, match='data.source'):
    pipeline.load_splits_for_config(_config(source='s3'))
  with pytest.raises(ValueError, match='data.eval_batch_size'):
    pipeline.make_eval_stream(splits.query, _config(eval_batch_size=-1))


def test_bad_image_error_names_path(tmp_path):
  root = fake_trees.simple_wmveid863(str(tmp_path / 'wmv'))
  bad = os.path.join(root, 'query', '0030', 'th', 'v0_n0_s010_000.png')
  with open(bad, 'wb') as f:
    f.write(b'broken')
  splits = records.load_splits('wmveid863', root)
  with pytest.raises(Exception, match='v0_n0_s010_000.png'):
    list(pipeline.make_eval_stream(splits.query, _config(), batch_size=2))


@pytest.mark.parametrize('erasing', [0.0, 0.7])
def test_streams_equal_the_numpy_batch_functions(splits, erasing):
  """tf.data normalises in the graph; the *_batch_fn functions are the NumPy reference."""
  cfg = _config(random_erasing_prob=erasing, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
  stream = pipeline.make_train_stream(splits.train, cfg, start_step=4)
  batch_fn = pipeline.make_train_batch_fn(splits.train, cfg)
  for step in (4, 5):
    a, b = next(stream), batch_fn(step)
    assert set(a) == set(b) == KEYS
    for k in KEYS:
      np.testing.assert_allclose(a[k], b[k], atol=1e-5)
  if erasing:  # erased boxes hold N(0, 1) noise, NaN-free
    assert np.isfinite(b['rgb']).all() and not np.array_equal(
        a['rgb'], pipeline.make_train_batch_fn(splits.train, _config(
            mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)))(5)['rgb'])
  ev = list(pipeline.make_eval_stream(splits.query, cfg, batch_size=4))
  ev_fn = pipeline.make_eval_batch_fn(splits.query, cfg, 4)
  for i, a in enumerate(ev):
    b = ev_fn(i)
    for k in a:
      np.testing.assert_allclose(a[k], b[k], atol=1e-5)
