"""TFDS builders: prepare the synthetic set offline in a temp dir and read it back."""

import numpy as np
import pytest

from configs import default
from input_pipeline import flare_label
from input_pipeline import pipeline
from input_pipeline import records
from input_pipeline import synthetic
from input_pipeline import tfds_builders


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  base = tmp_path_factory.mktemp('tfds')
  root = synthetic.generate_synthetic_dataset(str(base / 'synthetic'), num_ids=6,
                                              triplets_per_id=3, image_size=(32, 16),
                                              flare_fraction=0.5, seed=2)
  data_dir = str(base / 'prepared')
  tfds_builders.prepare('synthetic', root, data_dir)
  return root, data_dir


def _config(data_dir):
  cfg = default.get_config().data
  cfg.dataset = 'synthetic'
  cfg.source = 'tfds'
  cfg.tfds_data_dir = data_dir
  cfg.image_size = (32, 16)
  cfg.num_ids_per_batch = 2
  cfg.num_instances = 2
  return cfg


def test_prepared_examples_equal_the_folder_tree(prepared):
  root, data_dir = prepared
  folder = records.load_splits('synthetic', root)
  builder = tfds_builders.SyntheticFlareVehicles(data_dir=data_dir)
  assert builder.is_prepared()
  for split in records.SPLITS:
    recs = getattr(folder, split)
    examples = list(builder.as_dataset(split=split).as_numpy_iterator())
    assert len(examples) == len(recs)
    for ex, r in zip(examples, recs):   # same order as the folder reader
      assert ex['path'].decode() == r.rgb_path
      assert (ex['pid'], ex['camid'], ex['scene']) == (r.pid, r.camid, r.scene)
      rgb, ni, ti = records.load_triplet(r)
      np.testing.assert_array_equal(ex['rgb'], rgb)
      np.testing.assert_array_equal(ex['ni'], ni)
      np.testing.assert_array_equal(ex['ti'], ti)
      for rule in ('paper', 'official'):
        np.testing.assert_array_equal(ex[f'flare_{rule}'], flare_label.flare_bits(rgb, ni, rule))


def test_streams_from_tfds_equal_streams_from_folder(prepared):
  root, data_dir = prepared
  cfg = _config(data_dir)
  tf_splits = pipeline.load_splits_for_config(cfg)
  cfg_folder = _config(data_dir)
  cfg_folder.source = 'folder'
  cfg_folder.root = root
  folder_splits = pipeline.load_splits_for_config(cfg_folder)
  assert [r.pid for r in tf_splits.train] == [r.pid for r in folder_splits.train]
  assert tf_splits.train[0].rgb_path.startswith(pipeline.TFDS_PREFIX)
  a = next(pipeline.make_train_stream(tf_splits.train, cfg, start_step=1))
  b = next(pipeline.make_train_stream(folder_splits.train, cfg_folder, start_step=1))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  cfg.flare_rule = cfg_folder.flare_rule = 'official'
  a = next(pipeline.make_eval_stream(tf_splits.gallery, cfg, batch_size=64))
  b = next(pipeline.make_eval_stream(folder_splits.gallery, cfg_folder, batch_size=64))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_unprepared_dataset_names_the_field(tmp_path):
  cfg = _config(str(tmp_path / 'empty'))
  with pytest.raises(records.DatasetError, match='data.tfds_data_dir'):
    pipeline.load_splits_for_config(cfg)


def test_unknown_dataset_names_the_field(tmp_path):
  with pytest.raises(records.DatasetError, match='data.dataset'):
    tfds_builders.prepare('veri776', str(tmp_path), str(tmp_path))


def test_load_record_triplet_reads_both_sources(prepared):
  root, data_dir = prepared
  tf_rec = pipeline.load_splits_for_config(_config(data_dir)).gallery[1]
  folder_rec = records.load_splits('synthetic', root).gallery[1]
  for a, b in zip(pipeline.load_record_triplet(tf_rec), records.load_triplet(folder_rec)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(records.DatasetError, match=r'tfds://synthetic_flare_vehicles/gallery/1'):
    records.load_triplet(tf_rec)
