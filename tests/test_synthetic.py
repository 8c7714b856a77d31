"""The synthetic flare dataset: layout, query/gallery rule, glare masks, determinism, learnability."""

import filecmp
import os

import numpy as np
import pytest

from input_pipeline import flare_label
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


def test_glare_masks_match_pseudo_labels(tree):
  splits = records.load_splits('wmveid863', tree)
  flared = 0
  for r in splits.train + splits.gallery + splits.query:
    rgb, ni, ti = records.load_triplet(r)
    mask = synthetic.load_glare_mask(r.rgb_path)
    ni_mask = synthetic.load_glare_mask(r.ni_path)
    assert synthetic.glare_mask_path(r.ti_path) is None   # TI never flared
    for rule in ('paper', 'official'):
      expected = [1, 1] if mask is not None else [0, 0]
      assert flare_label.flare_bits(rgb, ni, rule).tolist() == expected, (r.rgb_path, rule)
    assert flare_label.paper_flare_fraction(ti) < 0.02
    if mask is None:
      assert ni_mask is None and rgb.max() < 250 and ni.max() < 250
      continue
    flared += 1
    assert mask.shape == rgb.shape[:2] and mask.dtype == bool
    np.testing.assert_array_equal(mask, ni_mask)
    # The glare mask covers the saturated pixels.
    saturated = (rgb >= 250).all(-1)
    assert mask[saturated].mean() > 0.99 and mask.mean() > 0.1
  assert 0.2 < flared / len(splits.train + splits.gallery + splits.query) < 0.5


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


def _mean_ap(query, gallery, feats_q, feats_g):
  """Camera-protocol mAP (same pid and camera are junk) with a loop, and the chance level."""
  aps, chance = [], []
  d = ((feats_q[:, None] - feats_g[None]) ** 2).sum(-1)
  for i, q in enumerate(query):
    keep = np.asarray([not (g.pid == q.pid and g.camid == q.camid) for g in gallery])
    match = np.asarray([g.pid == q.pid for g in gallery])[keep][np.argsort(d[i][keep],
                                                                           kind='stable')]
    if match.any():
      hits = np.cumsum(match)
      aps.append(np.mean(hits[match] / (np.flatnonzero(match) + 1)))
      chance.append(match.mean())
  return np.mean(aps), np.mean(chance)


def test_identity_is_recoverable_from_thermal_even_with_flare(tree):
  """A fixed descriptor (per-image standardised 8x4 thumbnails) ranks far above chance."""
  splits = records.load_splits('wmveid863', tree)

  def feats(recs, modality):
    out = []
    for r in recs:
      x = records.load_triplet(r)[modality].astype(np.float64)
      x = x.reshape(8, x.shape[0] // 8, 4, x.shape[1] // 4, 3).mean((1, 3))
      out.append(((x - x.mean()) / (x.std() + 1e-6)).ravel())
    return np.stack(out)

  ap_ti, chance = _mean_ap(splits.query, splits.gallery, feats(splits.query, 2),
                           feats(splits.gallery, 2))
  assert ap_ti > 1.5 * chance
  # A flared RGB query loses identity cues that its TI keeps.
  flared = [q for q in splits.query if synthetic.glare_mask_path(q.rgb_path)]
  if flared:
    ap_rgb, _ = _mean_ap(flared, splits.gallery, feats(flared, 0), feats(splits.gallery, 0))
    ap_ti_f, _ = _mean_ap(flared, splits.gallery, feats(flared, 2), feats(splits.gallery, 2))
    assert ap_ti_f > ap_rgb


def test_bad_arguments_name_the_field(tmp_path):
  with pytest.raises(ValueError, match='triplets_per_id'):
    synthetic.generate_synthetic_dataset(str(tmp_path / 'x'), triplets_per_id=1)
  with pytest.raises(ValueError, match='num_query_ids'):
    synthetic.generate_synthetic_dataset(str(tmp_path / 'x'), num_ids=6, num_query_ids=3)
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'file').write_text('x')
  with pytest.raises(ValueError, match='full: output folder exists'):
    synthetic.generate_synthetic_dataset(str(tmp_path / 'full'))
