"""Realism figures of a synthetic tree: does it pose the problem FACENet claims to solve?

`measure(root)` reads a tree written by `input_pipeline.synthetic` (images and true masks), re-renders
every triplet from its `dataset.json` (with and without glare) and measures the properties the
generator promises; `checks(figures)` compares each with its acceptance bound. Behind
`python scripts/check_dataset.py --dataset synthetic --root DIR --realism`.

Figures (all fractions in [0, 1]; "glared" = the generator drew glare into that image):
  rates         glared triplets overall / by day / at night; RGB-only and NI-only shares;
                mean true-mask coverage of a glared image
  locality      mean |glared - clean| outside and inside the true mask (uint8 levels), the share
                of saturated values inside, the texture kept inside (regression slope of the
                glared image's high-pass on the clean one's)
  position      at the 4x2, 8x4 and 16x8 grids: IoU of the best image-independent mask (fitted on
                train, scored on test) against the IoU of marking every cell (the floor)
  rgb_vs_ni     IoU of the two masks of triplets glared in both
  pseudo_label  precision / recall of the paper rule per modality and of the official rule
                against the true glare
  cues          share of glared images whose glare hides >= half of the plate / lamps / a decal
  ordering      cross-camera mAP of a training-free pixel descriptor per modality on clean test
                triplets (a proxy; the study measures trained single-modality models)
  test_ids      test ids with a glared and a clean triplet on different cameras
  determinism   written images equal their re-render (PNG trees)
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np
from PIL import Image

from input_pipeline import flare_label
from input_pipeline import records
from input_pipeline import synthetic

GRIDS = ((4, 2), (8, 4), (16, 8))
TRUTH_CELL_FRACTION = 0.5     # a cell is glared when >= half of its pixels are
DESCRIPTOR_SIZE = (16, 8)     # (H, W) of the pixel descriptor of the ordering proxy


def cells(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """bool [H, W] pixel mask -> bool [h, w] cells (>= TRUTH_CELL_FRACTION of a cell's pixels)."""
  H, W = mask.shape
  h, w = grid
  if H % h or W % w:
    raise ValueError(f'mask {H}x{W} is not a multiple of the grid {h}x{w}')
  return mask.reshape(h, H // h, w, W // w).mean(axis=(1, 3)) >= TRUTH_CELL_FRACTION


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
  """Pooled IoU of bool arrays of equal shape (NaN when both are empty)."""
  union = np.sum(pred | truth)
  return float(np.sum(pred & truth) / union) if union else float('nan')


def best_constant_mask(train_truth: np.ndarray) -> np.ndarray:
  """bool [h, w]: the image-independent cell set with the best pooled IoU on `[N, h, w]` truth.

  Pooled IoU of a constant set S is sum_{c in S} n_c / (N |S| + T - sum_{c in S} n_c) with n_c
  the glared count of cell c and T the total; for a fixed |S| the best S holds the most-glared
  cells, so scanning |S| over the cells sorted by n_c finds the optimum exactly.
  """
  n, h, w = train_truth.shape
  counts = train_truth.reshape(n, -1).sum(axis=0).astype(np.float64)
  order = np.argsort(-counts, kind='stable')
  total = counts.sum()
  hits = np.cumsum(counts[order])
  size = np.arange(1, h * w + 1)
  scores = hits / (n * size + total - hits)
  best = np.zeros(h * w, bool)
  best[order[:int(np.argmax(scores)) + 1]] = True
  return best.reshape(h, w)


def average_precision(dist: np.ndarray, q_ids: np.ndarray, g_ids: np.ndarray,
                      valid: np.ndarray) -> float:
  """mAP of `[Q, G]` distances; `valid[q, g]` False excludes a gallery item for that query."""
  aps = []
  for i in range(dist.shape[0]):
    keep = valid[i]
    order = np.argsort(dist[i][keep], kind='stable')
    match = (g_ids[keep] == q_ids[i])[order]
    if not match.any():
      continue
    ranks = np.nonzero(match)[0]
    aps.append(np.mean(np.arange(1, len(ranks) + 1) / (ranks + 1)))
  return float(np.mean(aps)) if aps else float('nan')


def pixel_descriptor(image: np.ndarray, gray: bool) -> np.ndarray:
  """uint8 [H, W, 3] -> L2-normalised float vector of the mean-removed DESCRIPTOR_SIZE image."""
  h, w = DESCRIPTOR_SIZE
  x = np.asarray(Image.fromarray(image).resize((w, h), Image.BOX), np.float64)
  if gray:
    x = x[..., :1]
  x = x - x.mean()
  return (x / max(np.linalg.norm(x), 1e-9)).ravel()


def _precision_recall(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
  tp = np.sum(pred & truth)
  return (float(tp / max(1, np.sum(pred))), float(tp / max(1, np.sum(truth))))


def measure(root: str, max_triplets: int | None = None) -> dict[str, Any]:
  """The realism figures of the synthetic tree at `root` (see the module docstring)."""
  settings = synthetic.read_settings(root)
  splits = records.load_splits('synthetic', root)
  captures = {(c.split, c.pid, c.stem): c for c in synthetic.plan_captures(settings)}
  cameras = synthetic._cameras(settings)  # pylint: disable=protected-access
  rows = []
  recs = [('train', r) for r in splits.train] + [('test', r) for r in splits.gallery]
  if max_triplets:
    recs = recs[:max_triplets]
  mismatched = 0
  for split, r in recs:
    stem = os.path.splitext(os.path.basename(r.rgb_path))[0]
    pid = int(os.path.basename(os.path.dirname(os.path.dirname(r.rgb_path))))   # folder name
    cap = captures.get((split, pid, stem))
    if cap is None:
      raise ValueError(f'{r.rgb_path}: not a triplet the generator settings of {root} describe')
    t = synthetic.render_capture(settings, cap, cameras)
    rgb, ni, ti = records.load_triplet(r)
    if settings.image_format == 'png' and not (np.array_equal(rgb, t.rgb) and
                                               np.array_equal(ni, t.ni) and
                                               np.array_equal(ti, t.ti)):
      mismatched += 1
    rows.append(dict(split=split, pid=pid, cam=r.camid, night=cap.night, t=t, rgb=rgb, ni=ni,
                     ti=ti, true_rgb=synthetic.load_glare_mask(r.rgb_path),
                     true_ni=synthetic.load_glare_mask(r.ni_path)))
  return {
      'num_triplets': len(rows),
      'rates': _rates(rows),
      'locality': _locality(rows),
      'position': _position(rows),
      'rgb_vs_ni': _rgb_vs_ni(rows),
      'pseudo_label': _pseudo_label(rows),
      'cues': _cues(rows),
      'ordering': _ordering(rows),
      'test_ids': _test_ids(rows),
      'determinism': {'mismatched_triplets': mismatched},
  }


def _glared(row, mod):
  return row[f'true_{mod}'] is not None


def _rates(rows) -> dict[str, float]:
  any_glare = np.asarray([_glared(r, 'rgb') or _glared(r, 'ni') for r in rows])
  both = np.asarray([_glared(r, 'rgb') and _glared(r, 'ni') for r in rows])
  night = np.asarray([r['night'] for r in rows])
  cover = [r[f'true_{m}'].mean() for r in rows for m in ('rgb', 'ni') if _glared(r, m)]
  return {'glared': float(any_glare.mean()),
          'glared_day': float(any_glare[~night].mean()) if (~night).any() else float('nan'),
          'glared_night': float(any_glare[night].mean()) if night.any() else float('nan'),
          'one_modality_only': float((any_glare & ~both).sum() / max(1, any_glare.sum())),
          'coverage': float(np.mean(cover)) if cover else float('nan')}


def _locality(rows) -> dict[str, float]:
  out_d, in_d, sat, grad_kept = [], [], [], []
  for r in rows:
    for mod, clean in (('rgb', r['t'].clean_rgb), ('ni', r['t'].clean_ni)):
      mask = r[f'true_{mod}']
      if mask is None:
        continue
      img = r[mod].astype(np.float64)
      ref = clean.astype(np.float64)
      diff = np.abs(img - ref).mean(axis=-1)
      if (~mask).any():
        out_d.append(diff[~mask].mean())
      in_d.append(diff[mask].mean())
      sat.append((r[mod][mask] >= flare_label.PAPER_LOW_VALUE).mean())
      hp_img, hp_ref = _high_pass(img)[mask], _high_pass(ref)[mask]
      # The regression slope of the glared texture on the clean one: 1 kept, 0 gone.
      grad_kept.append(float(hp_img @ hp_ref / max(hp_ref @ hp_ref, 1e-9)))
  f = lambda v: float(np.mean(v)) if v else float('nan')
  return {'outside_abs_diff': f(out_d), 'inside_abs_diff': f(in_d),
          'inside_saturated': f(sat), 'inside_texture_kept': f(grad_kept)}


def _high_pass(x: np.ndarray) -> np.ndarray:
  """float [H, W, 3] -> [H, W]: the grey image minus its 3x3 box mean (edge-replicated)."""
  g = x.mean(axis=-1)
  p = np.pad(g, 1, mode='edge')
  h, w = g.shape
  box = sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
  return g - box


def _position(rows) -> dict[str, dict[str, float]]:
  out = {}
  h, w = rows[0]['rgb'].shape[:2]
  for grid in GRIDS:
    if h % grid[0] or w % grid[1]:
      continue
    truth = {s: [cells(r[f'true_{m}'], grid) for r in rows for m in ('rgb', 'ni')
                 if _glared(r, m) and r['split'] == s] for s in ('train', 'test')}
    if not truth['train'] or not truth['test']:
      continue
    train, test = np.stack(truth['train']), np.stack(truth['test'])
    const = best_constant_mask(train)
    out[f'{grid[0]}x{grid[1]}'] = {
        'constant_iou': iou(np.broadcast_to(const, test.shape), test),
        'all_cells_iou': float(test.mean()),
        'constant_cells': float(const.mean())}
  return out


def _rgb_vs_ni(rows) -> dict[str, float]:
  both = [iou(r['true_rgb'], r['true_ni']) for r in rows if _glared(r, 'rgb') and _glared(r, 'ni')]
  return {'mask_iou': float(np.nanmean(both)) if both else float('nan'),
          'triplets_glared_in_both': len(both)}


def _pseudo_label(rows) -> dict[str, float]:
  out = {}
  for mod in ('rgb', 'ni'):
    pred = np.asarray([flare_label.paper_flare_bit(r[mod]) for r in rows], bool)
    truth = np.asarray([_glared(r, mod) for r in rows])
    out[f'paper_{mod}_precision'], out[f'paper_{mod}_recall'] = _precision_recall(pred, truth)
  pred = np.asarray([flare_label.flare_bits(r['rgb'], r['ni'], 'official')[0] for r in rows], bool)
  truth = np.asarray([_glared(r, 'rgb') or _glared(r, 'ni') for r in rows])
  out['official_precision'], out['official_recall'] = _precision_recall(pred, truth)
  return out


def _cues(rows) -> dict[str, float]:
  hidden = collections.defaultdict(list)
  for r in rows:
    for mod in ('rgb', 'ni'):
      mask = r[f'true_{mod}']
      if mask is None:
        continue
      any_cue = False
      for part in synthetic.CUE_PARTS:
        cue = r['t'].cues[part]
        if not cue.any():
          continue
        covered = bool(mask[cue].mean() >= 0.5)
        hidden[part].append(covered)
        any_cue |= covered
      hidden['any'].append(any_cue)
  return {k: float(np.mean(v)) for k, v in hidden.items()}


def _ordering(rows) -> dict[str, float]:
  test = [r for r in rows if r['split'] == 'test' and not _glared(r, 'rgb') and
          not _glared(r, 'ni')]
  if len(test) < 2:
    return {}
  ids = np.asarray([r['pid'] for r in test])
  cams = np.asarray([r['cam'] for r in test])
  valid = (cams[:, None] != cams[None, :])   # cross-camera; drops self and same-camera matches
  out = {}
  for mod, gray in (('rgb', False), ('ni', True), ('ti', True)):
    d = np.stack([pixel_descriptor(r[mod], gray) for r in test])
    out[f'{mod}_mAP'] = average_precision(-d @ d.T, ids, ids, valid)
  return out


def _test_ids(rows) -> dict[str, float]:
  by_id = collections.defaultdict(list)
  for r in rows:
    if r['split'] == 'test':
      by_id[r['pid']].append((_glared(r, 'rgb') or _glared(r, 'ni'), r['cam']))
  ok = [any(g1 and not g2 and c1 != c2 for g1, c1 in v for g2, c2 in v) for v in by_id.values()]
  return {'with_glared_and_clean_on_two_cameras': float(np.mean(ok)) if ok else float('nan'),
          'num_test_ids': len(ok)}


# (figure path, description, test) -- the acceptance bounds of a realistic tree.
CHECKS = (
    ('rates.glared', 'glared triplets in 15-30%', lambda v: 0.15 <= v <= 0.30),
    ('rates.glared_night', 'glare more likely at night', None),
    ('rates.one_modality_only', 'some triplets glared in RGB or NI only (>= 15%)',
     lambda v: v >= 0.15),
    ('locality.outside_abs_diff', 'outside the mask glared ~ clean (mean diff < 2 levels, '
     'below the sensor noise)', lambda v: v < 2.0),
    ('locality.inside_abs_diff', 'inside the mask content is lost (> 40 levels)',
     lambda v: v > 40.0),
    ('locality.inside_texture_kept', 'inside the mask < 50% of the texture is left',
     lambda v: v < 0.5),
    *((f'position.{h}x{w}', f'{h}x{w}: an image-independent mask at most 0.12 IoU above marking '
       'every cell', None) for h, w in GRIDS),
    ('rgb_vs_ni.mask_iou', 'RGB and NI glare differ (mask IoU < 0.8)', lambda v: v < 0.8),
    *((f'pseudo_label.paper_{m}_{k}', f'paper rule on {m.upper()}: {k} < 0.97', lambda v: v < 0.97)
      for m in ('rgb', 'ni') for k in ('precision', 'recall')),
    ('cues.any', 'glare hides an identity cue in >= 30% of glared images', lambda v: v >= 0.3),
    ('ordering', 'pixel-descriptor mAP: RGB > NI > TI, each >= 1.15x the next', None),
    ('test_ids.with_glared_and_clean_on_two_cameras', 'every test id glared and clean',
     lambda v: v == 1.0),
    ('determinism.mismatched_triplets', 'written images equal their re-render', lambda v: v == 0),
)


def _lookup(figures: dict[str, Any], path: str) -> Any:
  value: Any = figures
  for key in path.split('.'):
    value = value[key]
  return value


def checks(figures: dict[str, Any]) -> list[tuple[str, str, bool]]:
  """[(figure path, description, passed)] for CHECKS on `measure`'s figures."""
  out = []
  for path, text, test in CHECKS:
    if path == 'rates.glared_night':
      r = figures['rates']
      ok = r['glared_night'] > r['glared_day']
    elif path.startswith('position.'):
      p = figures['position'].get(path.split('.')[1])
      ok = p is not None and p['constant_iou'] <= p['all_cells_iou'] + 0.12
    elif path == 'ordering':
      o = figures['ordering']
      # A ratio, not a difference: the training-free proxy scores low in absolute terms.
      ok = bool(o) and o['rgb_mAP'] >= 1.15 * o['ni_mAP'] and o['ni_mAP'] >= 1.15 * o['ti_mAP']
    else:
      ok = bool(test(_lookup(figures, path)))
    out.append((path, text, ok))
  return out


def format_report(figures: dict[str, Any]) -> list[str]:
  """Human-readable lines: every figure, then every check with PASS / FAIL."""
  lines = [f'realism of {figures["num_triplets"]} triplets (train + gallery):']
  for group in ('rates', 'locality', 'rgb_vs_ni', 'pseudo_label', 'cues', 'ordering', 'test_ids',
                'determinism'):
    items = ', '.join(f'{k} {v:.3f}' if isinstance(v, float) else f'{k} {v}'
                      for k, v in figures[group].items())
    lines.append(f'  {group:<13} {items}')
  for grid, p in figures['position'].items():
    lines.append(f'  position {grid:<5} best image-independent mask IoU {p["constant_iou"]:.3f} '
                 f'vs every cell {p["all_cells_iou"]:.3f} ({p["constant_cells"]:.0%} of cells)')
  for path, text, ok in checks(figures):
    lines.append(f'  {"PASS" if ok else "FAIL"}  {text}  [{path}]')
  return lines
