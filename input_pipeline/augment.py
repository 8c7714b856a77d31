"""Image augmentations in NumPy + Pillow: resize, flip, pad + random crop, random erasing, normalise.

The train transform follows the official code (itself torchvision's): Resize (bicubic, PIL) ->
RandomHorizontalFlip(p) -> Pad(pad, fill 0) -> RandomCrop(image_size) -> ToTensor -> Normalize,
with optional random erasing after normalisation. The test transform is Resize (bilinear, PIL)
-> Normalize.

Randomness is stateless: every draw of one batch row comes from a generator seeded by
(seed, step, row), so a row's augmentation does not depend on which rows or steps were produced
before it (a resumed or sharded stream reproduces it exactly). With `shared` augmentation one
draw (flip, crop offset, erasing box and fill) is applied to RGB, NI and TI, which keeps the
modalities pixel-aligned for the element-wise FCE (Eq. 7); otherwise each modality gets its own
draw, as the official code's per-modality transform calls do.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

RESAMPLE = {'bicubic': Image.Resampling.BICUBIC, 'bilinear': Image.Resampling.BILINEAR}

# Random erasing as in the re-id ViT code (timm's RandomErasing, mode 'pixel', one box):
# area fraction ~ U(0.02, 1/3), log aspect ~ U(log 0.3, log 1/0.3), up to 10 attempts, the box
# filled with N(0, 1) noise in normalised units.
ERASE_AREA = (0.02, 1.0 / 3.0)
ERASE_LOG_ASPECT = (math.log(0.3), math.log(1.0 / 0.3))
ERASE_ATTEMPTS = 10


def resize(image: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
  """PIL resize of a uint8 [h, w, 3] image to uint8 [H, W, 3], size = (H, W)."""
  h, w = int(size[0]), int(size[1])
  if image.shape[:2] == (h, w):
    return image
  return np.asarray(Image.fromarray(image).resize((w, h), RESAMPLE[method]))


def normalize_constants(mean, std) -> tuple[np.ndarray, np.ndarray]:
  """(scale, offset), float32 [C] each, with float32(x) * scale - offset = (x / 255 - mean) / std.

  The one definition of the normalisation constants: the tf.data streams, their NumPy reference
  and feature extraction (`facenet_jax.inference`) all derive theirs from here, so train-time,
  evaluation and inference preprocessing cannot drift apart.
  """
  mean = np.asarray(mean, np.float32)
  inv_std = np.float32(1.0) / np.asarray(std, np.float32)
  return inv_std / np.float32(255.0), mean * inv_std


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 [..., C] -> float32 [..., C]: (x / 255 - mean) / std, the streams' float32 operations."""
  scale, offset = normalize_constants(mean, std)
  return images.astype(np.float32) * scale - offset


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """One draw: flip, crop offset into the padded image, optional erasing box [y, x, h, w]."""
  flip: bool
  crop_y: int
  crop_x: int
  erase_box: tuple[int, int, int, int] | None
  erase_seed: int


def row_rng(seed: int, step: int, row: int) -> np.random.Generator:
  """The stateless generator of one training row."""
  return np.random.default_rng([seed, step, row, 0xA06])


def draw_params(rng: np.random.Generator, image_size: tuple[int, int], hflip_prob: float,
                pad_pixels: int, erasing_prob: float) -> AugmentParams:
  """Draws one augmentation for an image of `image_size` (H, W), in a fixed order."""
  h, w = image_size
  flip = bool(rng.random() < hflip_prob)
  crop_y = int(rng.integers(0, 2 * pad_pixels + 1))
  crop_x = int(rng.integers(0, 2 * pad_pixels + 1))
  box = None
  if rng.random() < erasing_prob:
    for _ in range(ERASE_ATTEMPTS):
      area = h * w * rng.uniform(*ERASE_AREA)
      aspect = math.exp(rng.uniform(*ERASE_LOG_ASPECT))
      eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
      if 0 < eh < h and 0 < ew < w:
        box = (int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1)), eh, ew)
        break
  return AugmentParams(flip, crop_y, crop_x, box, int(rng.integers(0, 2**31 - 1)))


def flip_pad_crop(image: np.ndarray, params: AugmentParams, pad_pixels: int) -> np.ndarray:
  """Horizontal flip, zero-pad by `pad_pixels`, crop back to the input size; uint8 [H, W, C].

  Equivalent to cropping the padded image at (crop_y, crop_x), without building it.
  """
  if params.flip:
    image = image[:, ::-1]
  if pad_pixels == 0:
    return np.ascontiguousarray(image)
  h, w = image.shape[:2]
  out = np.zeros_like(image)
  dy, dx = params.crop_y - pad_pixels, params.crop_x - pad_pixels   # shift of source vs output
  ys, yd = max(dy, 0), max(-dy, 0)
  xs, xd = max(dx, 0), max(-dx, 0)
  hh, ww = h - abs(dy), w - abs(dx)
  if hh > 0 and ww > 0:
    out[yd:yd + hh, xd:xd + ww] = image[ys:ys + hh, xs:xs + ww]
  return out


def erase(image: np.ndarray, params: AugmentParams) -> np.ndarray:
  """Random erasing on a normalised float32 [H, W, C] image (in place): N(0, 1) pixels."""
  if params.erase_box is not None:
    y, x, eh, ew = params.erase_box
    noise = np.random.default_rng(params.erase_seed).standard_normal((eh, ew, image.shape[-1]))
    image[y:y + eh, x:x + ew] = noise.astype(np.float32)
  return image


def crop_batch(triplets: list[tuple[np.ndarray, ...]], rngs: list[np.random.Generator],
               data_config) -> tuple[list[np.ndarray], list[list[AugmentParams]]]:
  """The uint8 part of the train transform: draws, flips, pads and crops a batch of triplets.

  Args:
    triplets: B tuples of M uint8 [H, W, 3] images (M = 3 modalities), all the same size.
    rngs: B generators, one per row (`row_rng`).
    data_config: reads hflip_prob, pad_pixels, random_erasing_prob, shared_augmentation.
  Returns:
    (M uint8 arrays [B, H, W, 3], M lists of B AugmentParams).
  """
  num_mod = len(triplets[0])
  size = triplets[0][0].shape[:2]
  crops = [[] for _ in range(num_mod)]
  params = [[] for _ in range(num_mod)]
  for images, rng in zip(triplets, rngs):
    def draw():
      return draw_params(rng, size, data_config.hflip_prob, data_config.pad_pixels,
                         data_config.random_erasing_prob)
    shared = draw() if data_config.shared_augmentation else None
    for m, image in enumerate(images):
      p = shared if shared is not None else draw()
      crops[m].append(flip_pad_crop(image, p, data_config.pad_pixels))
      params[m].append(p)
  return [np.stack(c) for c in crops], params


def erase_fill(params: list[AugmentParams], image_shape: tuple[int, ...]) -> np.ndarray:
  """float32 [B, H, W, C]: the erasing noise inside each row's box, NaN elsewhere."""
  fill = np.full((len(params), *image_shape), np.nan, np.float32)
  for b, p in enumerate(params):
    erase(fill[b], p)
  return fill


def erase_boxes(params: list[AugmentParams]) -> np.ndarray:
  """int32 [B, 5]: each row's erasing box and fill seed (y, x, h, w, seed); zeros for no box.

  The compact form of `erase_fill` for streams normalised on the device
  (`facenet_jax.device_input` draws the N(0, 1) fill there from the seed)."""
  rows = np.zeros((len(params), 5), np.int32)
  for b, p in enumerate(params):
    if p.erase_box is not None:
      rows[b] = (*p.erase_box, p.erase_seed)
  return rows


def to_gray3(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> its luma in all three channels, PIL `convert('L')` exactly (ITU-R 601-2).

  torchvision's RandomGrayscale (the DEEN / FSC-Net recipe) converts PIL images this way.
  """
  rgb = image.astype(np.uint32)
  luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
  return np.repeat(luma.astype(np.uint8)[..., None], 3, axis=-1)


def grayscale_draw(seed: int, step: int, row: int, prob: float) -> bool:
  """Whether training row `row` of step `step` is turned grey (its own stateless generator)."""
  return prob > 0 and bool(np.random.default_rng([seed, step, row, 0x6A7]).random() < prob)
