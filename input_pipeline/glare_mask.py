"""DNDM's glare prompt: a binary mask of the headlight glare in a night image (DN-ReID §3.3).

    image uint8 [H, W, 3] (RGB) -> mask float32 [H, W] in {0, 1}, 1 = glare

Two rules (`data.glare_mask`):

* 'paper' (default): grey = rgb2gray(image) (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B), pixels
  with grey > `threshold` (220) are bright; adjacent bright pixels are grouped into regions
  (8-connectivity) and regions of fewer than `min_region` pixels are discarded. The paper names
  neither the connectivity nor the size limit. Our choices: 8-connectivity (a diagonal glare
  streak is one region) and `min_region` = 9 pixels at the network input, the area of the 3x3
  element of the official opening below, so both rules discard specks of about the same size.
* 'code' (official `thermal_module`, reference §2.2): grey with the BT.601 weights in B, G, R order
  applied to an R, G, B image (R gets 0.114, B 0.299: the official quirk), grey > threshold, then a
  3x3 morphological opening with zero padding (erosion keeps a pixel whose whole 3x3 neighbourhood
  is bright, so nothing within one pixel of the border survives; dilation by the same element).

Where the image comes from (the pipeline, `cross_modal_pipeline`): 'paper' computes the mask from
the training crop the network sees (after flip / pad / crop, before normalisation and erasing), so
mask and features stay aligned; 'code' from the un-augmented resized image, as the official loader
returns it, so in training the mask is not aligned with flipped or shifted crops. At test time both
read the resized image. Day (modality 0) images get an all-zero mask (paper Eq. 5).

NumPy and SciPy only (the mask is not differentiable and is computed on the host).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

RULES = ('paper', 'code')
BT601_RGB = np.asarray([0.299, 0.587, 0.114], np.float32)
# The official code's weights [0.114, 0.587, 0.299] meant for B, G, R, applied to R, G, B.
CODE_WEIGHTS = BT601_RGB[::-1].copy()
DEFAULT_THRESHOLD = 220.0
DEFAULT_MIN_REGION = 9
_EIGHT_CONNECTED = np.ones((3, 3), bool)


def grey(image: np.ndarray, weights: np.ndarray = BT601_RGB) -> np.ndarray:
  """uint8 or float [H, W, 3] -> float32 [H, W], the weighted channel sum."""
  return np.asarray(image, np.float32) @ np.asarray(weights, np.float32)


def paper_mask(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
               min_region: int = DEFAULT_MIN_REGION) -> np.ndarray:
  """The paper's rule (module docstring): `[H, W, 3] -> float32 [H, W]`."""
  bright = grey(image) > threshold
  labels, count = ndimage.label(bright, structure=_EIGHT_CONNECTED)
  if count == 0:
    return np.zeros(bright.shape, np.float32)
  sizes = np.bincount(labels.ravel(), minlength=count + 1)
  keep = sizes >= min_region
  keep[0] = False                                   # label 0 is the background
  return keep[labels].astype(np.float32)


def code_mask(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
  """The official rule (module docstring): `[H, W, 3] -> float32 [H, W]`."""
  bright = grey(image, CODE_WEIGHTS) > threshold
  # Zero padding: out-of-image neighbours are dark, as the official conv with padding 1.
  eroded = ndimage.binary_erosion(bright, structure=_EIGHT_CONNECTED, border_value=0)
  return ndimage.binary_dilation(eroded, structure=_EIGHT_CONNECTED).astype(np.float32)


def glare_mask(image: np.ndarray, rule: str, threshold: float = DEFAULT_THRESHOLD,
               min_region: int = DEFAULT_MIN_REGION) -> np.ndarray:
  """`rule` in RULES: `[H, W, 3] -> float32 [H, W]`."""
  if rule == 'paper':
    return paper_mask(image, threshold, min_region)
  if rule == 'code':
    return code_mask(image, threshold)
  raise ValueError(f'config.data.glare_mask={rule!r} must be one of {RULES} (or "" for none)')
