"""Readers, relabelling, validation split and the bad-input error messages of records.py."""

import collections
import os

import numpy as np
import pytest
from PIL import Image

from input_pipeline import records
from tests import fake_trees


# ------------------------------------------------------------------------------- WMVeID863


def test_wmveid863_reader(tmp_path):
  root = fake_trees.simple_wmveid863(str(tmp_path / 'wmv'))
  splits = records.load_splits('wmveid863', root)
  assert len(splits.train) == 8 and len(splits.query) == 2 and len(splits.gallery) == 4
  # Train pids relabelled in sorted raw order: 3 -> 0, 7 -> 1, 12 -> 2, 20 -> 3.
  raw = {r.rgb_path.split(os.sep)[-3]: r.pid for r in splits.train}
  assert raw == {'0003': 0, '0007': 1, '0012': 2, '0020': 3}
  assert records.num_classes(splits.train) == 4
  # Query / gallery keep raw pids; `test` is the gallery.
  assert sorted({r.pid for r in splits.gallery}) == [30, 31]
  assert all('/test/' in r.rgb_path for r in splits.gallery)
  for r in splits.train + splits.query + splits.gallery:
    names = {os.path.basename(p) for p in (r.rgb_path, r.ni_path, r.ti_path)}
    assert len(names) == 1
    assert r.rgb_path.split(os.sep)[-2:-1] == ['vis'] and r.ti_path.split(os.sep)[-2] == 'th'
    name = os.path.basename(r.rgb_path)
    assert r.camid == int(name[1]) and r.scene == int(name[7:10]) and not r.montage
  assert {r.split for r in splits.query} == {'query'}
  assert {r.split for r in splits.gallery} == {'gallery'}


def test_wmveid863_pairs_by_name_not_listing_order(tmp_path):
  root = str(tmp_path / 'wmv')
  names = ['v0_n0_a.png', 'v1_n0_b.png', 'v2_n0_c.png']
  fake_trees.make_wmveid863(root, {'train': {1: names}, 'query': {2: names[:1]},
                                   'test': {2: names[:2]}})
  # Rewrite the NI files in reverse creation order with contents that encode the name.
  for i, name in enumerate(reversed(names)):
    fake_trees.write_image(os.path.join(root, 'train', '0001', 'ni', name), value=10 * (2 - i))
  splits = records.load_splits('wmveid863', root)
  for r in splits.train:
    ni = records.load_image(r.ni_path)
    assert ni[0, 0, 0] == 10 * names.index(os.path.basename(r.rgb_path))


def test_wmveid863_scene_is_optional(tmp_path):
  assert records.parse_wmveid863_name('/x/v3_n1_017.jpg') == (3, -1)
  assert records.parse_wmveid863_name('/x/v7_n0_s012_004.jpg') == (7, 12)


# -------------------------------------------------------------------------------- RGBNT100


def test_rgbnt100_reader_and_montage(tmp_path):
  parent = fake_trees.make_rgbnt100(str(tmp_path), {
      'bounding_box_train': ['0539_c0001_009.jpg', '0012_c0008_001.jpg', '0012_c0003_002.jpg'],
      'query': ['0600_c0002_000.jpg'],
      'bounding_box_test': ['0600_c0004_001.jpg', '0601_c0005_001.jpg']})
  splits = records.load_splits('rgbnt100', parent)
  assert [(r.pid, r.camid) for r in splits.train] == [(0, 2), (0, 7), (1, 0)]
  assert [(r.pid, r.camid) for r in splits.gallery] == [(600, 3), (601, 4)]
  r = splits.train[0]
  assert r.montage and r.rgb_path == r.ni_path == r.ti_path and r.scene == -1
  montage = np.asarray(Image.open(r.rgb_path).convert('RGB'))
  tiles = records.load_triplet(r)
  for i, tile in enumerate(tiles):
    assert tile.shape == (128, 256, 3)
    np.testing.assert_array_equal(tile, montage[:, 256 * i:256 * (i + 1)])
  # The dataset folder itself is accepted as root too.
  assert len(records.load_splits('rgbnt100', str(tmp_path / 'RGBNT100')).train) == 3


def test_rgbnt100_narrow_montage_names_path(tmp_path):
  parent = fake_trees.make_rgbnt100(str(tmp_path), {'bounding_box_train': ['0001_c0001_000.jpg'],
                                                   'query': ['0002_c0001_000.jpg'],
                                                   'bounding_box_test': ['0002_c0002_000.jpg']},
                                    width=700)
  r = records.load_splits('rgbnt100', parent).train[0]
  with pytest.raises(records.DatasetError, match=r'0001_c0001_000\.jpg.*700x128.*768'):
    records.load_triplet(r)


def test_rgbnt100_bad_camera_names_path(tmp_path):
  with pytest.raises(records.DatasetError, match=r'0001_c0009_000\.jpg'):
    records.parse_rgbnt100_name('/d/0001_c0009_000.jpg')


# --------------------------------------------------------------------------------- MSVR310


def test_msvr310_reader_keeps_scene(tmp_path):
  parent = fake_trees.make_msvr310(str(tmp_path), {
      'bounding_box_train': {268: ['0268_s000_v0_000.jpg', '0268_s004_v6_001.jpg'],
                             100: ['0100_s017_v2_000.jpg']},
      'query3': {5: ['0005_s021_v1_000.jpg']},
      'bounding_box_test': {5: ['0005_s022_v3_000.jpg']}})
  splits = records.load_splits('msvr310', parent)
  assert [(r.pid, r.scene, r.camid) for r in splits.train] == [(0, 17, 2), (1, 0, 0), (1, 4, 6)]
  assert [(r.pid, r.scene, r.camid) for r in splits.query] == [(5, 21, 1)]
  assert all('/query3/' in r.rgb_path for r in splits.query)


def test_msvr310_pid_mismatch_names_path(tmp_path):
  parent = fake_trees.make_msvr310(str(tmp_path), {
      'bounding_box_train': {268: ['0267_s000_v0_000.jpg']},
      'query3': {5: ['0005_s021_v1_000.jpg']},
      'bounding_box_test': {5: ['0005_s022_v3_000.jpg']}})
  with pytest.raises(records.DatasetError, match=r'0268/vis/0267_s000_v0_000\.jpg.*folder pid'):
    records.load_splits('msvr310', parent)


# ------------------------------------------------------------------------------ bad input


def test_missing_split_folder_names_path(tmp_path):
  root = str(tmp_path / 'wmv')
  fake_trees.make_wmveid863(root, {'train': {1: ['v0_n0_a.png']}, 'test': {2: ['v0_n0_a.png']}})
  with pytest.raises(records.DatasetError, match=rf'{root}/query: missing split folder'):
    records.load_splits('wmveid863', root)


def test_vis_without_partner_names_path(tmp_path):
  root = fake_trees.simple_wmveid863(str(tmp_path / 'wmv'))
  os.remove(os.path.join(root, 'train', '0007', 'th', 'v5_n0_s007_001.png'))
  with pytest.raises(records.DatasetError,
                     match=r'train/0007/vis/v5_n0_s007_001\.png: no partner.*0007/th'):
    records.load_splits('wmveid863', root)


def test_ni_without_vis_partner_names_path(tmp_path):
  root = fake_trees.simple_wmveid863(str(tmp_path / 'wmv'))
  fake_trees.write_image(os.path.join(root, 'train', '0007', 'ni', 'v5_n0_extra.png'))
  with pytest.raises(records.DatasetError, match=r'0007/ni/v5_n0_extra\.png: no partner'):
    records.load_splits('wmveid863', root)


def test_unparseable_name_names_path(tmp_path):
  root = fake_trees.simple_wmveid863(str(tmp_path / 'wmv'))
  fake_trees.make_wmveid863(root, {'train': {7: ['cam3_day.png']}})
  with pytest.raises(records.DatasetError, match=r'0007/vis/cam3_day\.png: cannot parse'):
    records.load_splits('wmveid863', root)


def test_non_integer_pid_folder_names_path(tmp_path):
  root = fake_trees.simple_wmveid863(str(tmp_path / 'wmv'))
  fake_trees.write_image(os.path.join(root, 'train', 'car7', 'vis', 'v0_n0_a.png'))
  with pytest.raises(records.DatasetError, match=r'train/car7: vehicle folder name'):
    records.load_splits('wmveid863', root)


def test_empty_split_names_folder(tmp_path):
  root = fake_trees.simple_wmveid863(str(tmp_path / 'wmv'))
  os.makedirs(os.path.join(tmp_path, 'wmv2', 'query'))
  fake_trees.make_wmveid863(str(tmp_path / 'wmv2'), {'train': {1: ['v0_n0_a.png']},
                                                      'test': {2: ['v0_n0_a.png']}})
  with pytest.raises(records.DatasetError, match=r"wmv2/query: empty split 'query'"):
    records.load_splits('wmveid863', str(tmp_path / 'wmv2'))
  assert records.load_splits('wmveid863', root)  # the complete tree is fine


def test_scan_collects_every_problem(tmp_path):
  root = fake_trees.simple_wmveid863(str(tmp_path / 'wmv'))
  os.remove(os.path.join(root, 'train', '0007', 'th', 'v5_n0_s007_001.png'))
  fake_trees.make_wmveid863(root, {'train': {3: ['bad.png']}})
  splits, problems = records.scan_splits('wmveid863', root)
  assert len(problems) == 2
  assert any('v5_n0_s007_001.png' in p for p in problems)
  assert any('bad.png' in p for p in problems)
  assert len(splits.train) == 7  # the good triplets are still read
  with pytest.raises(records.DatasetError, match=r'and 1 more problems'):
    records.load_splits('wmveid863', root)


def test_unknown_dataset_and_root_name_field(tmp_path):
  with pytest.raises(records.DatasetError, match='data.dataset'):
    records.load_splits('market1501', str(tmp_path))
  with pytest.raises(records.DatasetError, match='data.root'):
    records.load_splits('wmveid863', str(tmp_path / 'nope'))


def test_truncated_and_unreadable_images_name_path(tmp_path):
  good = str(tmp_path / 'good.jpg')
  fake_trees.write_image(good, (64, 64, 3))
  data = open(good, 'rb').read()
  truncated = str(tmp_path / 'truncated.jpg')
  with open(truncated, 'wb') as f:
    f.write(data[:len(data) // 2])
  garbage = str(tmp_path / 'garbage.png')
  with open(garbage, 'wb') as f:
    f.write(b'not an image at all')
  for path in (truncated, garbage):
    with pytest.raises(records.DatasetError, match=rf'{path}: unreadable or truncated'):
      records.load_image(path)


def test_one_channel_image_is_converted(tmp_path):
  path = str(tmp_path / 'gray.png')
  arr = fake_trees.write_image(path, (6, 5), mode='L')
  img = records.load_image(path)
  assert img.shape == (6, 5, 3) and img.dtype == np.uint8
  for c in range(3):
    np.testing.assert_array_equal(img[..., c], arr)


def test_sixteen_bit_image_is_rejected_with_path(tmp_path):
  path = str(tmp_path / 'deep.png')
  Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(path)
  with pytest.raises(records.DatasetError, match=rf'{path}: unsupported image mode'):
    records.load_image(path)


def test_single_image_training_id_is_kept(tmp_path):
  root = fake_trees.simple_wmveid863(str(tmp_path / 'wmv'))
  splits = records.load_splits('wmveid863', root)
  assert records.single_image_ids(splits.train) == [3]   # raw id 20 -> label 3
  assert sum(r.pid == 3 for r in splits.train) == 1


# ------------------------------------------------------------------------- validation split


def _train_records(num_ids, rng):
  out = []
  for pid in range(num_ids):
    n = int(rng.integers(1, 7))
    cams = rng.integers(0, 3 if pid % 3 else 1, n)   # every third id seen by one camera only
    for k in range(n):
      out.append(records.Record(f'{pid}_{k}', f'{pid}_{k}', f'{pid}_{k}', pid, int(cams[k]), -1,
                                'train'))
  return out


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_split_validation_invariants(seed):
  train = _train_records(30, np.random.default_rng(seed))
  new_train, vq, vg = records.split_validation(train, 8, seed)
  held = {r.pid for r in vq} | {r.pid for r in vg}
  assert len(held) == 8
  # Every triplet lands in exactly one place.
  assert sorted(r.rgb_path for r in new_train + vq + vg) == sorted(r.rgb_path for r in train)
  assert not held & {int(r.rgb_path.split('_')[0]) for r in new_train}
  assert sorted({r.pid for r in new_train}) == list(range(30 - 8))
  counts = collections.Counter(r.pid for r in train)
  multi_cam_ids = {p for p in counts if len({r.camid for r in train if r.pid == p}) > 1}
  for q in vq:
    assert q.split == 'query'
    same_id = [g for g in vg if g.pid == q.pid]
    assert same_id, 'every validation query has a gallery entry of its id'
    if q.pid in multi_cam_ids:
      assert any(g.camid != q.camid for g in same_id)
  assert {r.split for r in vg} == {'gallery'}
  assert all(counts[p] >= 2 for p in held)
  assert records.split_validation(train, 8, seed) == (new_train, vq, vg)


def test_split_validation_prefers_multi_camera_ids():
  train = _train_records(30, np.random.default_rng(5))
  multi = {p for p in {r.pid for r in train}
           if len({r.camid for r in train if r.pid == p}) > 1}
  _, vq, vg = records.split_validation(train, 3, 0)
  assert {r.pid for r in vq + vg} <= multi


def test_split_validation_too_many_ids_names_field():
  train = _train_records(5, np.random.default_rng(0))
  with pytest.raises(records.DatasetError, match='data.num_val_ids'):
    records.split_validation(train, 5, 0)
  assert records.split_validation(train, 0, 0) == (train, [], [])


def test_numpy_modules_do_not_import_tensorflow():
  """records, flare_label, sampler, augment and synthetic must run where TF is not installed."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ('import sys; from input_pipeline import records, flare_label, sampler, augment, '
          'synthetic; assert "tensorflow" not in sys.modules, "tensorflow imported"')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
