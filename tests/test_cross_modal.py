"""Cross-modality readers on tiny fake trees in the real layouts, including bad input."""

import os

import numpy as np
import pytest

from input_pipeline import cross_modal
from input_pipeline.records import DatasetError
from tests import fake_trees


# -------------------------------------------------------------------------------- SYSU-MM01
@pytest.fixture
def sysu_root(tmp_path):
  images = {}
  for pid in (1, 2, 5):              # training ids (train 1, 2; val 5)
    for cam in (1, 3, 4):
      images[cam, pid] = 2
  for pid in (7, 9):                 # test ids
    for cam in (1, 2, 3, 5, 6):
      images[cam, pid] = 2 if cam != 2 else 3
  images.pop((5, 9))                 # not every id is seen by every camera
  return fake_trees.make_sysu(str(tmp_path / 'SYSU-MM01'), images, [2, 1], [5], [9, 7])


def test_sysu_splits_follow_the_protocol(sysu_root):
  splits = cross_modal.load_cross_modal('sysu_mm01', sysu_root)
  assert splits.direction == 'infrared_to_visible'
  # Training: train + val ids, visible cams 1 and 4, infrared cam 3; one shared 0..N-1 labelling.
  assert sorted({r.pid for r in splits.train}) == [0, 1, 2]
  assert {(r.camid, r.modality) for r in splits.train} == {(1, 0), (4, 0), (3, 1)}
  assert len(splits.pool(0)) == 12 and len(splits.pool(1)) == 6
  # Query: every infrared image of the test ids, id-major, camera, then file name.
  assert [(q.pid, q.camid) for q in splits.query] == [(7, 3)] * 2 + [(7, 6)] * 2 + \
      [(9, 3)] * 2 + [(9, 6)] * 2
  assert all(q.modality == 1 and q.split == 'query' for q in splits.query)
  # Gallery candidates of 'all' search: visible cams 1, 2, 4, 5 of the test ids.
  assert [(g.pid, g.camid) for g in splits.gallery] == (
      [(7, 1)] * 2 + [(7, 2)] * 3 + [(7, 5)] * 2 + [(9, 1)] * 2 + [(9, 2)] * 3)
  indoor = cross_modal.load_cross_modal('sysu_mm01', sysu_root, search_mode='indoor')
  assert {g.camid for g in indoor.gallery} == {1, 2}
  assert indoor.query == splits.query
  assert cross_modal.prescan(splits) == []


def test_sysu_npy_cache_replaces_training_images(sysu_root):
  rng = np.random.default_rng(0)
  for tag, n in (('rgb', 3), ('ir', 2)):
    np.save(os.path.join(sysu_root, f'train_{tag}_resized_img.npy'),
            rng.integers(0, 255, (n, 8, 4, 3), dtype=np.uint8))
    np.save(os.path.join(sysu_root, f'train_{tag}_resized_label.npy'), np.arange(n) % 2)
  splits = cross_modal.load_cross_modal('sysu_mm01', sysu_root, use_npy_cache=True)
  assert [(r.modality, r.pid, r.cache_index) for r in splits.train] == [
      (0, 0, 0), (0, 1, 1), (0, 0, 2), (1, 0, 0), (1, 1, 1)]
  image = cross_modal.load_image(splits.train[2])
  expected = np.load(os.path.join(sysu_root, 'train_rgb_resized_img.npy'))[2]
  np.testing.assert_array_equal(image, expected)
  os.remove(os.path.join(sysu_root, 'train_ir_resized_label.npy'))
  with pytest.raises(DatasetError, match='train_ir_resized_label.npy: missing'):
    cross_modal.load_cross_modal('sysu_mm01', sysu_root, use_npy_cache=True)


def test_sysu_bad_input_names_the_file(sysu_root):
  with open(os.path.join(sysu_root, 'exp', 'test_id.txt'), 'w') as f:
    f.write('7,x9\n')
  with pytest.raises(DatasetError, match=r"test_id.txt: 'x9' is not an integer id"):
    cross_modal.load_cross_modal('sysu_mm01', sysu_root)
  os.remove(os.path.join(sysu_root, 'exp', 'val_id.txt'))
  _, problems = cross_modal.scan_cross_modal('sysu_mm01', sysu_root)
  assert any(p.endswith('val_id.txt: missing id list') for p in problems)
  with pytest.raises(DatasetError, match='data.search_mode'):
    cross_modal.load_cross_modal('sysu_mm01', sysu_root, search_mode='outdoor')
  with pytest.raises(DatasetError, match='data.direction'):
    cross_modal.load_cross_modal('sysu_mm01', sysu_root, direction='visible_to_infrared')


# ------------------------------------------------------------------------------------ RegDB
def test_regdb_trial_lists_and_both_directions(tmp_path):
  root = fake_trees.make_regdb(str(tmp_path / 'RegDB'), 3, train_ids=[10, 11], test_ids=[20, 21])
  splits = cross_modal.load_cross_modal('regdb', root, trial=3)
  assert splits.direction == 'visible_to_thermal'
  assert sorted({r.pid for r in splits.train}) == [0, 1]
  assert {(r.modality, r.camid) for r in splits.train} == {(0, 1), (1, 2)}
  assert {q.modality for q in splits.query} == {0} and {g.modality for g in splits.gallery} == {1}
  assert [q.pid for q in splits.query] == [20, 20, 21, 21]
  back = cross_modal.load_cross_modal('regdb', root, trial=3, direction='thermal_to_visible')
  assert [q.path for q in back.query] == [g.path for g in splits.gallery]
  with pytest.raises(DatasetError, match=r'train_visible_1.txt: missing list file'):
    cross_modal.load_cross_modal('regdb', root, trial=1)
  with pytest.raises(DatasetError, match='data.trial'):
    cross_modal.load_cross_modal('regdb', root, trial=0)


def test_regdb_missing_image_and_bad_line_are_named(tmp_path):
  root = fake_trees.make_regdb(str(tmp_path / 'RegDB'), 1, train_ids=[10], test_ids=[20])
  os.remove(os.path.join(root, 'Thermal', '20', 'T_20_1.png'))
  with open(os.path.join(root, 'idx', 'train_visible_1.txt'), 'a') as f:
    f.write('Visible/10/extra.png\n')
  _, problems = cross_modal.scan_cross_modal('regdb', root, trial=1)
  assert any('T_20_1.png: listed in' in p and 'test_thermal_1.txt' in p for p in problems)
  assert any('train_visible_1.txt:3: expected "relative/path label"' in p for p in problems)


# ------------------------------------------------------------------------------------- LLCM
def test_llcm_reads_cameras_from_folders_under_the_root(tmp_path):
  # A root whose own path contains 'cam' would break the official parser.
  root = fake_trees.make_llcm(str(tmp_path / 'camera_data' / 'LLCM'), {0: 2, 1: 2},
                              {('vis', 1, 30): 1, ('vis', 3, 30): 2, ('nir', 2, 30): 1,
                               ('nir', 4, 31): 1, ('vis', 9, 31): 1})
  splits = cross_modal.load_cross_modal('llcm', root)
  assert splits.direction == 'infrared_to_visible'
  assert [(q.pid, q.camid, q.modality) for q in splits.query] == [(30, 2, 1), (31, 4, 1)]
  assert [(g.pid, g.camid) for g in splits.gallery] == [(30, 1), (30, 3), (30, 3), (31, 9)]
  assert {r.camid for r in splits.train} == {1, 2}
  other = cross_modal.load_cross_modal('llcm', root, direction='visible_to_infrared')
  assert {q.modality for q in other.query} == {0} and len(other.gallery) == 2


def test_llcm_unknown_camera_folder_is_a_problem(tmp_path):
  root = fake_trees.make_llcm(str(tmp_path / 'LLCM'), {0: 1}, {('nir', 3, 30): 1,
                                                              ('vis', 1, 30): 1})
  _, problems = cross_modal.scan_cross_modal('llcm', root)
  assert any("test_nir: unexpected camera folders ['cam3']" in p for p in problems)


# ------------------------------------------------------------------------- DN-348 / DNWild
def test_dn348_one_sorted_labelling_over_day_and_night(tmp_path):
  root = fake_trees.make_dn(str(tmp_path / 'data' / 'dn348'), {
      'train_list_day.txt': {40: 2, 12: 1}, 'train_list_night.txt': {12: 1, 40: 1, 3: 1},
      'test_list_day.txt': {100: 2, 101: 1}, 'test_list_night.txt': {100: 1, 101: 2}})
  splits = cross_modal.load_cross_modal('dn348', str(tmp_path / 'data'))  # the parent works too
  assert splits.direction == 'day_to_night'
  labels = {(r.modality, os.path.basename(os.path.dirname(r.path))): r.pid for r in splits.train}
  assert labels[0, '00012'] == labels[1, '00012'] == 1 and labels[1, '00003'] == 0
  assert labels[0, '00040'] == labels[1, '00040'] == 2
  assert [q.pid for q in splits.query] == [100, 100, 101]
  assert {q.modality for q in splits.query} == {0} and {g.modality for g in splits.gallery} == {1}
  night = cross_modal.load_cross_modal('dn348', root, direction='night_to_day')
  assert [q.pid for q in night.query] == [100, 101, 101]


def test_dnwild_protocol_lists_and_alternative_names(tmp_path):
  root = fake_trees.make_dn(str(tmp_path / 'dnwild'), {
      'train_list_day.txt': {1: 1}, 'train_list_night.txt': {1: 1},
      'test_list_day.txt': {7: 2}, 'test_list_night.txt': {7: 3},
      'day_query.txt': {7: 1}, 'query_list_night.txt': {7: 1}})
  day = cross_modal.load_cross_modal('dnwild', root)
  assert len(day.query) == 1 and len(day.gallery) == 3           # query_list_day vs test night
  night = cross_modal.load_cross_modal('dnwild', root, direction='night_to_day')
  assert len(night.query) == 1 and len(night.gallery) == 2


def test_dn_bad_list_line_and_unknown_dataset(tmp_path):
  root = fake_trees.make_dn(str(tmp_path / 'dn348'), {
      'train_list_day.txt': {1: 1}, 'train_list_night.txt': {1: 1},
      'test_list_day.txt': {7: 1}, 'test_list_night.txt': {7: 1}})
  with open(os.path.join(root, 'train_test_split', 'test_list_night.txt'), 'a') as f:
    f.write('night_7.jpg\n')
  with pytest.raises(DatasetError, match=r'test_list_night.txt:2: expected "<pid>/<file>"'):
    cross_modal.load_cross_modal('dn348', root)
  with pytest.raises(DatasetError, match='data.dataset'):
    cross_modal.load_cross_modal('sysu', root)
  with pytest.raises(DatasetError, match='data.root'):
    cross_modal.load_cross_modal('dn348', str(tmp_path / 'absent'))


def test_prescan_names_an_unreadable_image_and_unscorable_ids(tmp_path):
  root = fake_trees.make_dn(str(tmp_path / 'dn348'), {
      'train_list_day.txt': {1: 1}, 'train_list_night.txt': {1: 1},
      'test_list_day.txt': {7: 1, 8: 1}, 'test_list_night.txt': {7: 1}})
  bad = os.path.join(root, 'night', '00001', 'train_list_night_000.png')
  with open(bad, 'wb') as f:
    f.write(b'not an image')
  problems = cross_modal.prescan(cross_modal.load_cross_modal('dn348', root))
  assert any(bad in p for p in problems)
  assert any('1 query ids have no gallery images' in p and p.endswith(': 8') for p in problems)
