"""Pictures as PNG files: CMC curves, rank lists and flare-mask overlays (paper Fig. 5).

Everything renders off-screen with matplotlib's Agg canvas (no pyplot, no global backend state).
Rank lists and mask overlays are composed as pixel arrays first, so their layout is exact and
testable: every modality image is resized to `cell_size` = (height, width) pixels.

Images may be uint8 [H, W, 3] (used as they are), float in [0, 1], or float normalised as the
network input; for the last, pass the normalisation `mean` and `std` (config.data.mean / std) and
they are undone with `denormalize`. Grey images [H, W] or [H, W, 1] are repeated to 3 channels.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import matplotlib
from matplotlib import image as mpl_image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image

MATCH_COLOR = (0, 190, 0)        # border of a correct gallery item (same pid as the query)
MISMATCH_COLOR = (220, 0, 0)     # border of a wrong gallery item
QUERY_COLOR = (40, 90, 220)      # border of the query
BACKGROUND = (255, 255, 255)
CELL_SIZE = (128, 64)            # (H, W) of one modality image in a picture
BORDER = 4                       # rank-list border width in pixels
GAP = 8                          # space between pictures in pixels
MASK_ALPHA = 0.5                 # weight of the colour-mapped mask over the image
MASK_COLORMAP = 'jet'            # low = blue, high = red, as flare heat maps are usually shown
CMC_FIGSIZE = (6.0, 4.0)         # inches; at CMC_DPI this is 600 x 400 pixels
CMC_DPI = 100


def denormalize(x: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Undo `(x / 255 - mean) / std` channel-wise: float [..., 3] -> uint8 [..., 3] in [0, 255]."""
  x = np.asarray(x, np.float32)
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  return np.clip(np.round((x * std + mean) * 255.0), 0, 255).astype(np.uint8)


def to_uint8(image: Any, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, name: str = 'image') -> np.ndarray:
  """One image -> uint8 [H, W, 3] (see the module docstring for the accepted forms)."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'{name} must be [H, W, 3], [H, W, 1] or [H, W], got shape {image.shape}.')
  if image.dtype == np.uint8:
    return image
  if not np.issubdtype(image.dtype, np.number):
    raise ValueError(f'{name} must be numeric, got dtype {image.dtype}.')
  if mean is not None or std is not None:
    if mean is None or std is None:
      raise ValueError(f'{name}: give both mean and std to denormalize, or neither.')
    return denormalize(image, mean, std)
  return np.clip(np.round(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def _resize(image: np.ndarray, cell_size: tuple[int, int]) -> np.ndarray:
  height, width = cell_size
  if image.shape[:2] == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _resize_map(values: np.ndarray, cell_size: tuple[int, int]) -> np.ndarray:
  """[h, w] float map -> [H, W] with bilinear interpolation (mask at feature-map resolution)."""
  height, width = cell_size
  resized = Image.fromarray(values.astype(np.float32)).resize((width, height), Image.BILINEAR)
  return np.asarray(resized)


def _save_png(canvas: np.ndarray, path: str | os.PathLike) -> None:
  os.makedirs(os.path.dirname(os.fspath(path)) or '.', exist_ok=True)
  mpl_image.imsave(os.fspath(path), canvas, format='png')


def _check_size(cell_size: Sequence[int], border: int, gap: int) -> tuple[int, int]:
  if len(cell_size) != 2 or min(cell_size) < 1:
    raise ValueError(f'cell_size must be (height, width) >= 1, got {cell_size!r}.')
  if border < 0 or gap < 0:
    raise ValueError(f'border and gap must be >= 0, got border={border}, gap={gap}.')
  return int(cell_size[0]), int(cell_size[1])


# ---------------------------------------------------------------------------------- CMC
def plot_cmc(cmc: Any, path: str | os.PathLike, title: str = 'CMC') -> None:
  """CMC curve in percent over ranks 1..len(cmc), with R-1/5/10 marked; a 600 x 400 PNG."""
  cmc = np.asarray(cmc, np.float64)
  if cmc.ndim != 1 or cmc.size == 0:
    raise ValueError(f'cmc must be a non-empty 1-D array, got shape {cmc.shape}.')
  if not np.all(np.isfinite(cmc)) or cmc.min() < 0 or cmc.max() > 1:
    raise ValueError('cmc values must be fractions in [0, 1].')
  fig = Figure(figsize=CMC_FIGSIZE, dpi=CMC_DPI)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ranks = np.arange(1, cmc.size + 1)
  ax.plot(ranks, 100.0 * cmc, color='tab:blue', linewidth=1.5)
  for k in (1, 5, 10):
    if k <= cmc.size:
      ax.plot([k], [100.0 * cmc[k - 1]], 'o', color='tab:red', markersize=4)
      ax.annotate(f'R-{k} {100.0 * cmc[k - 1]:.1f}', (k, 100.0 * cmc[k - 1]),
                  textcoords='offset points', xytext=(6, -12), fontsize=8)
  ax.set_xlim(0.5, cmc.size + 0.5)  # room for the R-1 marker
  ax.set_ylim(0, 100)
  ax.set_xlabel('rank')
  ax.set_ylabel('matching rate (%)')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  os.makedirs(os.path.dirname(os.fspath(path)) or '.', exist_ok=True)
  fig.savefig(os.fspath(path), format='png', dpi=CMC_DPI)


# ---------------------------------------------------------------------------------- rank lists
def _triplet_strip(triplet: Sequence[Any], cell_size: tuple[int, int], border: int,
                   color: tuple[int, int, int], mean, std, name: str) -> np.ndarray:
  """(RGB, NI, TI) -> [ch + 2b, 3 cw + 2b, 3] uint8: the three side by side inside a border."""
  if len(triplet) != 3:
    raise ValueError(f'{name} must be an (RGB, NI, TI) triplet, got {len(triplet)} images.')
  height, width = cell_size
  strip = np.empty((height + 2 * border, 3 * width + 2 * border, 3), np.uint8)
  strip[...] = color
  for m, image in enumerate(triplet):
    cell = _resize(to_uint8(image, mean, std, f'{name}[{m}]'), cell_size)
    strip[border:border + height, border + m * width:border + (m + 1) * width] = cell
  return strip


def _is_image(x: Any) -> bool:
  return hasattr(x, '__array__') and np.ndim(x) in (2, 3)


def rank_list_canvas(query_images: Sequence[Any], gallery_images: Sequence[Any],
                     ranked_indices: Any, matches: Any, top_k: int = 10,
                     cell_size: Sequence[int] = CELL_SIZE, border: int = BORDER, gap: int = GAP,
                     mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> np.ndarray:
  """The rank-list picture as uint8 [height, width, 3] (see `plot_rank_list`)."""
  cell = _check_size(cell_size, border, gap)
  num_query = len(query_images)
  if num_query == 0:
    raise ValueError('query_images is empty: nothing to draw.')
  ranked_indices = np.asarray(ranked_indices)
  matches = np.asarray(matches, bool)
  if ranked_indices.ndim != 2 or ranked_indices.shape[0] != num_query:
    raise ValueError(f'ranked_indices must be [{num_query}, >= top_k], got shape '
                     f'{ranked_indices.shape}.')
  if top_k < 1 or ranked_indices.shape[1] < top_k:
    raise ValueError(f'ranked_indices has {ranked_indices.shape[1]} columns, fewer than '
                     f'top_k={top_k} (or top_k < 1).')
  if matches.ndim != 2 or matches.shape[0] != num_query or matches.shape[1] < top_k:
    raise ValueError(f'matches must be [{num_query}, >= {top_k}], got shape {matches.shape}.')
  # A flat gallery holds triplets, whose first element is an image; else: lists of triplets.
  per_query = len(gallery_images) > 0 and not _is_image(gallery_images[0][0])
  if per_query and len(gallery_images) != num_query:
    raise ValueError(f'gallery_images holds {len(gallery_images)} per-query lists but there are '
                     f'{num_query} queries.')

  strip_h, strip_w = cell[0] + 2 * border, 3 * cell[1] + 2 * border
  height = gap + num_query * strip_h + (num_query - 1) * gap + gap
  width = gap + strip_w + 2 * gap + top_k * strip_w + (top_k - 1) * gap + gap
  canvas = np.empty((height, width, 3), np.uint8)
  canvas[...] = BACKGROUND
  for i in range(num_query):
    top = gap + i * (strip_h + gap)
    canvas[top:top + strip_h, gap:gap + strip_w] = _triplet_strip(
        query_images[i], cell, border, QUERY_COLOR, mean, std, f'query_images[{i}]')
    for j in range(top_k):
      if per_query:
        triplet, name = gallery_images[i][j], f'gallery_images[{i}][{j}]'
      else:
        index = int(ranked_indices[i, j])
        if not 0 <= index < len(gallery_images):
          raise ValueError(f'ranked_indices[{i}, {j}] = {index} is outside the gallery '
                           f'(size {len(gallery_images)}).')
        triplet, name = gallery_images[index], f'gallery_images[{index}]'
      color = MATCH_COLOR if matches[i, j] else MISMATCH_COLOR
      left = gap + strip_w + 2 * gap + j * (strip_w + gap)
      canvas[top:top + strip_h, left:left + strip_w] = _triplet_strip(
          triplet, cell, border, color, mean, std, name)
  return canvas


def plot_rank_list(query_images: Sequence[Any], gallery_images: Sequence[Any],
                   ranked_indices: Any, matches: Any, path: str | os.PathLike, top_k: int = 10,
                   cell_size: Sequence[int] = CELL_SIZE, border: int = BORDER, gap: int = GAP,
                   mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None) -> None:
  """One row per query: its (RGB, NI, TI) triplet, then its top-k gallery triplets.

  Each gallery triplet has a MATCH_COLOR (correct) or MISMATCH_COLOR (wrong) border of `border`
  pixels; the query's border is QUERY_COLOR. With cell (ch, cw), a strip is
  (ch + 2 border) x (3 cw + 2 border) and the PNG is
    height = 2 gap + Q strip_h + (Q - 1) gap,
    width  = 2 gap + strip_w + 2 gap + top_k strip_w + (top_k - 1) gap.

  Args:
    query_images: Q triplets (RGB, NI, TI), each image in a form `to_uint8` accepts.
    gallery_images: either the whole gallery (G triplets, indexed by `ranked_indices`) or one list
      per query of its ranked triplets (at least top_k each, in rank order).
    ranked_indices: [Q, >= top_k] gallery indices in rank order.
    matches: [Q, >= top_k] bool, True where the ranked item has the query's pid.
    path: output PNG.
    top_k: gallery items per row.
    cell_size, border, gap: layout in pixels; mean, std: see `to_uint8`.
  """
  _save_png(rank_list_canvas(query_images, gallery_images, ranked_indices, matches, top_k,
                             cell_size, border, gap, mean, std), path)


# ---------------------------------------------------------------------------------- flare masks
def overlay_mask(image: np.ndarray, mask: Any, alpha: float = MASK_ALPHA,
                 colormap: str = MASK_COLORMAP) -> np.ndarray:
  """uint8 image [H, W, 3] + mask [h, w] in [0, 1] -> uint8 [H, W, 3] heat-map overlay.

  The mask (feature-map resolution) is upsampled bilinearly to the image, colour-mapped and
  alpha-blended: out = (1 - alpha) image + alpha colormap(mask).
  """
  mask = np.asarray(mask, np.float32)
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.ndim != 2:
    raise ValueError(f'mask must be [h, w] (or [h, w, 1]), got shape {mask.shape}.')
  if not np.all(np.isfinite(mask)):
    raise ValueError('mask contains non-finite values.')
  mask = np.clip(_resize_map(mask, image.shape[:2]), 0.0, 1.0)
  heat = matplotlib.colormaps[colormap](mask)[..., :3] * 255.0
  blended = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def flare_mask_canvas(images_rgb: Sequence[Any], images_ni: Sequence[Any],
                      masks_rgb: Sequence[Any], masks_ni: Sequence[Any],
                      cell_size: Sequence[int] = CELL_SIZE, gap: int = GAP,
                      mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None) -> np.ndarray:
  """The flare-mask picture as uint8 [height, width, 3] (see `plot_flare_masks`)."""
  cell = _check_size(cell_size, 0, gap)
  num = len(images_rgb)
  if num == 0:
    raise ValueError('images_rgb is empty: nothing to draw.')
  for name, seq in (('images_ni', images_ni), ('masks_rgb', masks_rgb), ('masks_ni', masks_ni)):
    if len(seq) != num:
      raise ValueError(f'{name} has {len(seq)} entries but images_rgb has {num}.')
  height = gap + num * cell[0] + (num - 1) * gap + gap
  width = gap + 4 * cell[1] + 3 * gap + gap
  canvas = np.empty((height, width, 3), np.uint8)
  canvas[...] = BACKGROUND
  for i in range(num):
    rgb = _resize(to_uint8(images_rgb[i], mean, std, f'images_rgb[{i}]'), cell)
    ni = _resize(to_uint8(images_ni[i], mean, std, f'images_ni[{i}]'), cell)
    cells = (rgb, overlay_mask(rgb, masks_rgb[i]), ni, overlay_mask(ni, masks_ni[i]))
    top = gap + i * (cell[0] + gap)
    for j, picture in enumerate(cells):
      left = gap + j * (cell[1] + gap)
      canvas[top:top + cell[0], left:left + cell[1]] = picture
  return canvas


def plot_flare_masks(images_rgb: Sequence[Any], images_ni: Sequence[Any],
                     masks_rgb: Sequence[Any], masks_ni: Sequence[Any],
                     path: str | os.PathLike, cell_size: Sequence[int] = CELL_SIZE,
                     gap: int = GAP, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> None:
  """Predicted flare masks over their images, as in the paper's Fig. 5; one row per sample.

  Row layout: RGB | RGB + M_R overlay | NI | NI + M_N overlay, each cell_size (ch, cw), so the PNG
  is height = 2 gap + B ch + (B - 1) gap, width = 2 gap + 4 cw + 3 gap.

  Args:
    images_rgb, images_ni: B images each (any form `to_uint8` accepts, any resolution).
    masks_rgb, masks_ni: B masks [h, w] in [0, 1] at feature-map resolution (upsampled here).
    path: output PNG; cell_size, gap: layout in pixels; mean, std: see `to_uint8`.
  """
  _save_png(flare_mask_canvas(images_rgb, images_ni, masks_rgb, masks_ni, cell_size, gap, mean,
                              std), path)
