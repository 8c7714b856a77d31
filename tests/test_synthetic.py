"""The synthetic glare dataset: layout, query/gallery rule, local glare and its masks, rates, realism."""

import filecmp
import os

import numpy as np
import pytest

from input_pipeline import realism
from input_pipeline import records
from input_pipeline import synthetic


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('syn') / 'synthetic')
  synthetic.generate_synthetic_dataset(root, num_ids=24, triplets_per_id=5, image_size=(48, 24),
                                       flare_fraction=0.35, seed=3)
  return root


def test_layout_is_exactly_wmveid863(tree):
  assert sorted(os.listdir(tree)) == ['query', 'test', 'train']
  for split in os.listdir(tree):
    for pid in os.listdir(os.path.join(tree, split)):
      assert len(pid) == 4 and pid.isdigit()
      assert sorted(os.listdir(os.path.join(tree, split, pid))) == ['ni', 'th', 'vis']
  assert os.path.isdir(tree + '_masks')
  splits = records.load_splits('wmveid863', tree)   # the real dataset's reader
  assert records.num_classes(splits.train) == 16
  assert len({r.pid for r in splits.gallery}) == 8
  assert len({r.pid for r in splits.query}) == round(0.7 * 8)
  assert len(splits.train) == 16 * 5 and len(splits.gallery) == 8 * 5
  name = os.path.basename(splits.train[0].rgb_path)
  assert name[0] == 'v' and name[2:4] == '_n' and name[5:7] == '_s' and name.endswith('.png')
  assert {r.camid for r in splits.train} <= set(range(8))


def test_queries_are_gallery_copies_with_cross_camera_matches(tree):
  splits = records.load_splits('wmveid863', tree)
  gallery = {(r.pid, os.path.basename(r.rgb_path)): r for r in splits.gallery}
  for q in splits.query:
    g = gallery[(q.pid, os.path.basename(q.rgb_path))]
    for a, b in ((q.rgb_path, g.rgb_path), (q.ni_path, g.ni_path), (q.ti_path, g.ti_path)):
      assert filecmp.cmp(a, b, shallow=False)
    assert any(r.pid == q.pid and r.camid != q.camid for r in splits.gallery)


def test_glare_masks_mark_exactly_the_images_with_glare(tree):
  """A mask exists for a glared RGB/NI image only; TI never has one; re-renders match the files."""
  splits = records.load_splits('wmveid863', tree)
  settings = synthetic.read_settings(tree)
  plan = {(c.pid, c.stem): c for c in synthetic.plan_captures(settings)}
  for r in splits.train + splits.gallery:
    pid = int(os.path.basename(os.path.dirname(os.path.dirname(r.rgb_path))))
    t = synthetic.render_capture(settings, plan[(pid, os.path.basename(r.rgb_path)[:-4])])
    rgb, ni, ti = records.load_triplet(r)
    np.testing.assert_array_equal(rgb, t.rgb)
    np.testing.assert_array_equal(ni, t.ni)
    assert synthetic.glare_mask_path(r.ti_path) is None
    for image, clean, truth, path in ((rgb, t.clean_rgb, t.glare_rgb, r.rgb_path),
                                      (ni, t.clean_ni, t.glare_ni, r.ni_path)):
      mask = synthetic.load_glare_mask(path)
      if truth is None:
        assert mask is None
        np.testing.assert_array_equal(image, clean)
      else:
        np.testing.assert_array_equal(mask, truth)


def test_glare_is_local_it_changes_the_masked_region_only():
  """Glared vs glare-free render of the same capture: equal far outside the mask, lost inside."""
  settings = synthetic.GeneratorSettings(num_ids=30, triplets_per_id=4, image_size=(64, 32),
                                         flare_fraction=0.5, seed=1)
  outside, inside = [], []
  for c in [c for c in synthetic.plan_captures(settings) if c.glared][:20]:
    t = synthetic.render_capture(settings, c)
    for image, clean, mask in ((t.rgb, t.clean_rgb, t.glare_rgb), (t.ni, t.clean_ni, t.glare_ni)):
      if mask is None:
        continue
      diff = np.abs(image.astype(float) - clean).mean(-1)
      outside.append(diff[~mask].mean())
      inside.append(diff[mask].mean())
  assert len(inside) >= 10
  assert np.mean(outside) < 2.0 and np.mean(inside) > 40.0


def test_glare_alpha_has_compact_support_and_saturates():
  src = [synthetic.GlareSource(cy=8.0, cx=8.0, radius=4.0, strength=3.0)]
  a = synthetic.glare_alpha(src, (16, 16))
  yy, xx = np.mgrid[0:16, 0:16] + 0.5
  far = (yy - 8) ** 2 + (xx - 8) ** 2 >= 16
  assert np.all(a[far] == 0.0)
  assert a.max() == 1.0 and np.all((a >= 0) & (a <= 1))
  # Two sources combine as veils: 1 - (1 - a1)(1 - a2).
  one = synthetic.glare_alpha([synthetic.GlareSource(8, 8, 6, 0.5)], (16, 16))
  two = synthetic.glare_alpha([synthetic.GlareSource(8, 8, 6, 0.5)] * 2, (16, 16))
  np.testing.assert_allclose(two, 1 - (1 - one) ** 2)


def test_rates_and_test_ids_are_as_planned():
  settings = synthetic.GeneratorSettings(num_ids=300, triplets_per_id=8, flare_fraction=0.22,
                                         night_fraction=0.3, seed=2)
  plan = synthetic.plan_captures(settings)
  glared = np.asarray([c.glared for c in plan])
  night = np.asarray([c.night for c in plan])
  assert 0.19 < glared.mean() < 0.26
  assert glared[night].mean() > 1.5 * glared[~night].mean()
  day, nite = settings.rates()
  assert nite == pytest.approx(2 * day)
  assert (1 - 0.3) * day + 0.3 * nite == pytest.approx(0.22)
  for pid in {c.pid for c in plan if c.split == 'test'}:
    mine = [c for c in plan if c.pid == pid]
    assert any(a.glared and not b.glared and a.camera != b.camera for a in mine for b in mine)


def test_realism_checks_pass_on_a_fresh_tree(tmp_path):
  """Every property of input_pipeline.realism on a small fresh tree (64x32, 60 ids)."""
  root = synthetic.generate_synthetic_dataset(str(tmp_path / 'syn'), num_ids=60,
                                              triplets_per_id=6, image_size=(64, 32), seed=0)
  figures = realism.measure(root)
  failed = [(path, text) for path, text, ok in realism.checks(figures) if not ok]
  assert not failed, '\n'.join(realism.format_report(figures))
  assert 0 < figures['pseudo_label']['paper_rgb_precision'] < 0.97
  assert figures['rgb_vs_ni']['mask_iou'] < 0.8


def test_deterministic_for_a_seed(tmp_path):
  kw = dict(num_ids=3, triplets_per_id=2, image_size=(16, 8), flare_fraction=0.5)
  a = synthetic.generate_synthetic_dataset(str(tmp_path / 'a'), seed=5, **kw)
  b = synthetic.generate_synthetic_dataset(str(tmp_path / 'b'), seed=5, **kw)
  c = synthetic.generate_synthetic_dataset(str(tmp_path / 'c'), seed=6, **kw)
  files = lambda root: sorted(os.path.relpath(os.path.join(d, f), root)
                              for d, _, fs in os.walk(root) for f in fs)
  assert files(a) == files(b)
  assert files(a + '_masks') == files(b + '_masks')
  for f in files(a):
    assert filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False)
  assert files(a) != files(c) or any(
      not filecmp.cmp(os.path.join(a, f), os.path.join(c, f), shallow=False) for f in files(a))


def test_bad_arguments_name_the_field(tmp_path):
  with pytest.raises(ValueError, match='triplets_per_id'):
    synthetic.generate_synthetic_dataset(str(tmp_path / 'x'), triplets_per_id=1)
  with pytest.raises(ValueError, match='num_query_ids'):
    synthetic.generate_synthetic_dataset(str(tmp_path / 'x'), num_ids=6, num_query_ids=3)
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'file').write_text('x')
  with pytest.raises(ValueError, match='full: output folder exists'):
    synthetic.generate_synthetic_dataset(str(tmp_path / 'full'))
