"""The device end of the input path: uint8 images in, normalised float32 images out.

With `data.normalize_on_device` (the default) the host streams ship every image as uint8
[B, H, W, 3], a quarter of the float32 bytes, and random erasing as one int32 row per image
instead of a float32 fill image:

    '<image key>_erase': int32 [B, 5]   (y, x, h, w, seed); h = w = 0 means no box

The train and embed steps call `prepare_batch` first, inside the compiled function, so the
normalisation (float32(x) * scale - offset, the constants of `input_pipeline.augment`) and the
N(0, 1) erasing fill run on the accelerator. Float32 images (host-normalised streams,
`data.normalize_on_device=False`, or arrays a caller made) pass through unchanged.

The fill of an h x w box is h * w draws of `jax.random.normal(jax.random.key(seed), ...)` laid out
row-major over the box (`erase_rows`), as the host fill lays out NumPy's draws from the same
seed: the same distribution, other numbers.
"""

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ERASE_SUFFIX = '_erase'


def is_raw_image(value: Any) -> bool:
  """A uint8 [B, H, W, C] entry: an image that `prepare_batch` still has to normalise."""
  return value.dtype == jnp.uint8 and value.ndim == 4


def transfer_keys(keys: Sequence[str], batch: Mapping[str, Any]) -> tuple[str, ...]:
  """`keys` plus the erasing rows that belong to them, i.e. what to send to the devices."""
  return tuple(keys) + tuple(k + ERASE_SUFFIX for k in keys if k + ERASE_SUFFIX in batch)


def erase_rows(images: jax.Array, boxes: jax.Array, max_box_area: int) -> jax.Array:
  """float [B, H, W, C] images with N(0, 1) noise inside each row's box.

  boxes: int32 [B, 5] (y, x, h, w, seed); a row with h = 0 or w = 0 is returned unchanged.
  The fill of a box is the first h * w rows of `jax.random.normal(jax.random.key(seed),
  [max_box_area, C])` laid out row-major over the box (the host fill is NumPy's [h, w, C] draw).
  Only `max_box_area` (>= every box's h * w) pixels of noise are drawn per row, not H * W: the
  draw dominates the cost on a CPU.
  """
  _, h, w, c = images.shape
  iy = jnp.arange(h)[:, None]
  ix = jnp.arange(w)[None, :]

  def one(image, box):
    y, x, bh, bw, seed = (box[i] for i in range(5))
    inside = (iy >= y) & (iy < y + bh) & (ix >= x) & (ix < x + bw)
    stream = jax.random.normal(jax.random.key(seed), (max_box_area, c), images.dtype)
    index = jnp.clip((iy - y) * bw + (ix - x), 0, max_box_area - 1)
    return jnp.where(inside[..., None], stream[index], image)

  return jax.vmap(one)(images, boxes)


def max_erase_area(image_size: Sequence[int], max_fraction: float) -> int:
  """An upper bound of h * w for boxes of at most `max_fraction` of the image, each side rounded
  to the nearest integer ((a + 1/2)(b + 1/2) <= ab + (a + b) / 2 + 1/4, a, b below H, W)."""
  h, w = image_size
  return int(np.ceil(max_fraction * h * w)) + (h + w) // 2 + 1


def prepare_batch(batch: Mapping[str, Any], scale: np.ndarray, offset: np.ndarray,
                  max_box_fraction: float = 1.0) -> dict[str, Any]:
  """Normalises every uint8 [B, H, W, C] entry, applies its erasing boxes, drops the boxes.

  scale, offset: float32 [C] with float32(x) * scale - offset = (x / 255 - mean) / std.
  max_box_fraction: the largest erasing box as a fraction of the image (the stream's rule).
  Other entries (float images, labels, flare bits, masks) are returned as they are.
  """
  out = {}
  for key, value in batch.items():
    if key.endswith(ERASE_SUFFIX) and key[:-len(ERASE_SUFFIX)] in batch:
      continue
    if is_raw_image(value):
      value = value.astype(jnp.float32) * jnp.asarray(scale) - jnp.asarray(offset)
      if key + ERASE_SUFFIX in batch:
        h, w = value.shape[1:3]
        area = min(max_erase_area((h, w), max_box_fraction), h * w)
        value = erase_rows(value, batch[key + ERASE_SUFFIX], area)
    out[key] = value
  return out


def check_prepared(batch: Mapping[str, Any], where: str) -> None:
  """Raises when `batch` still holds uint8 images, i.e. a step was built without `prepare`."""
  raw = sorted(k for k, v in batch.items() if is_raw_image(v))
  if raw:
    raise ValueError(
        f'{where}: {raw} are uint8 images (a stream with data.normalize_on_device=True); build '
        'the step with prepare=device_input.make_prepare(config.data), or set '
        'data.normalize_on_device=False for float32 streams.')


def make_prepare(data_config) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
  """`prepare_batch` with the constants of data.mean / data.std."""
  from input_pipeline import augment  # pylint: disable=g-import-not-at-top
  scale, offset = augment.normalize_constants(data_config.mean, data_config.std)
  return lambda batch: prepare_batch(batch, scale, offset, augment.ERASE_AREA[1])
