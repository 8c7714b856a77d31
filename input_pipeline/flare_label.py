"""The flare pseudo-label delta from raw pixels (paper Sec. 3.3 and the official code's rule).

Both rules look at the decoded uint8 images, at their original resolution, before any resize,
flip, crop or normalisation, over all values (C x H x W) of the image.

* 'paper':    an image is flare-corrupted when more than 10% of its values lie in [250, 255].
              RGB and NI are decided separately: two bits (rgb_bit, ni_bit).
* 'official': torch.histc(image / 255) with 100 bins over the image's own [min, max]; the fraction
              in the top two bins (the top 2% of that range) must be >= 9.5% in RGB *and* NI. One
              bit per triplet, returned twice (b, b) so both rules give the same shape.
"""

from __future__ import annotations

import numpy as np

FLARE_RULES = ('paper', 'official')

PAPER_LOW_VALUE = 250          # values in [250, 255] count as saturated (paper)
PAPER_MIN_FRACTION_INVERSE = 10  # strictly more than 1/10 of the values (paper: "a bar 10%")
OFFICIAL_NUM_BINS = 100        # torch.histc default
OFFICIAL_TOP_BINS = 2          # bins 98 and 99
OFFICIAL_MIN_FRACTION = np.float32(0.095)  # `.ge(0.095)` on a float32 tensor in the official code


def _check_uint8(image: np.ndarray, name: str) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'{name}: flare label needs a decoded uint8 image, got dtype {image.dtype}')
  if image.size == 0:
    raise ValueError(f'{name}: empty image')
  return image


def paper_flare_fraction(image: np.ndarray) -> float:
  """Fraction of values of a uint8 image (any shape) in [250, 255]."""
  image = _check_uint8(image, 'image')
  return float(np.count_nonzero(image >= PAPER_LOW_VALUE)) / image.size


def paper_flare_bit(image: np.ndarray) -> int:
  """1 if strictly more than 10% of the values are in [250, 255]; exact integer comparison."""
  image = _check_uint8(image, 'image')
  # count / size > 1 / PAPER_MIN_FRACTION_INVERSE, compared in integers (no rounding at 10%).
  return int(np.count_nonzero(image >= PAPER_LOW_VALUE) * PAPER_MIN_FRACTION_INVERSE > image.size)


def histc_top_count(image: np.ndarray) -> int:
  """Number of values in the top 2 of 100 torch.histc bins of image / 255 (float32 arithmetic).

  Reproduces `torch.histc(x, bins=100)` with default min = max = 0, i.e. the range is the data's
  own [a, b] = [min(x), max(x)], and, when a == b, widened to [a - 1, b + 1] (so a constant image
  puts everything in the middle bin and the count is 0). The bin of v is
  int((v - a) * 100 / (b - a)), clamped to 99, computed in float32 as torch does on the CPU.
  """
  image = _check_uint8(image, 'image')
  # Histograms only depend on value counts: bin the 256 possible values and weight by counts.
  counts = np.bincount(image.ravel(), minlength=256)
  present = np.nonzero(counts)[0]
  values = present.astype(np.float32) / np.float32(255.0)
  a, b = values.min(), values.max()
  if a == b:
    a, b = a - np.float32(1.0), b + np.float32(1.0)
  bins = ((values - a) * np.float32(OFFICIAL_NUM_BINS) / (b - a)).astype(np.int64)
  bins = np.minimum(bins, OFFICIAL_NUM_BINS - 1)
  return int(counts[present][bins >= OFFICIAL_NUM_BINS - OFFICIAL_TOP_BINS].sum())


def official_flare_fraction(image: np.ndarray) -> float:
  """Fraction of values in the top 2% of the image's own value range (torch.histc semantics)."""
  image = _check_uint8(image, 'image')
  return float(np.float32(histc_top_count(image)) / np.float32(image.size))


def official_flare_bit(image: np.ndarray) -> int:
  """1 if the official fraction is >= 9.5% (float32 comparison, as `.ge(0.095)` on a tensor)."""
  image = _check_uint8(image, 'image')
  ratio = np.float32(histc_top_count(image)) / np.float32(image.size)
  return int(ratio >= OFFICIAL_MIN_FRACTION)


def flare_bits(rgb_uint8: np.ndarray, ni_uint8: np.ndarray, rule: str) -> np.ndarray:
  """Flare pseudo-label of one triplet as int32 [2].

  'paper' gives (rgb_bit, ni_bit) decided separately; 'official' gives (b, b) with
  b = official_bit(rgb) and official_bit(ni). TI is never looked at (flare-immune).
  """
  if rule == 'paper':
    bits = (paper_flare_bit(rgb_uint8), paper_flare_bit(ni_uint8))
  elif rule == 'official':
    b = official_flare_bit(rgb_uint8) & official_flare_bit(ni_uint8)
    bits = (b, b)
  else:
    raise ValueError(f'data.flare_rule: unknown rule {rule!r}; expected one of {FLARE_RULES}')
  return np.asarray(bits, dtype=np.int32)
