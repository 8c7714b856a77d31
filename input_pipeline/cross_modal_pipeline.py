"""tf.data train and eval streams of cross-modality images (unpaired visible / infrared, day / night).

The contract of `input_pipeline.pipeline`, for single images with a modality instead of aligned
triplets (`pipeline.make_train_stream` and friends hand cross-modality records to this module):

Train: the batch at global step s is a pure function of (data.seed, s): `CrossModalSampler` picks
P ids and K images per modality, and every row's flip / pad / crop / erasing (data.hflip_prob,
pad_pixels, random_erasing_prob) and grey conversion (data.grayscale_prob, DEEN's RandomGrayscale)
draw from generators seeded by (seed, s, row). A batch is the P x K modality-0 images (id-major) followed by the P x K modality-1
images of the same ids in the same order:

    'image'    uint8 [2 P K, H, W, 3]     with data.normalize_on_device (the default; with random
                                          erasing also 'image_erase' int32 [2 P K, 5], see
                                          facenet_jax/device_input.py), else float32 normalised
    'modality' int32 [2 P K]              0 for the first half, 1 for the second
    'pid'      int32 [2 P K]              training label (halves element-wise equal)
    'camid'    int32 [2 P K]
    'glare'    float32 [2 P K, H, W]      only with data.glare_mask ('paper' | 'code'): DNDM's glare
                                          prompt (`glare_mask`), zeros for modality-0 (day) rows

With several processes each process yields its share of both halves (rows [p B/n, (p+1) B/n) of
each, P / n whole ids), so the global batch interleaves the halves by process; the models find the
two modalities from 'modality', never from row positions, and rely only on each global training
batch holding P K images of each.

Eval: every record once, in order, padded batches with 'image', 'modality', 'pid', 'camid',
('glare'), 'mask', 'index'.

Images are decoded once (Pillow, or a row of the SYSU-MM01 `.npy` cache), resized to
data.image_size (bicubic for train, bilinear for test, as the triplet streams; the official AGW
code resizes at load with LANCZOS) and, with data.cache_images, kept in memory as uint8.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from input_pipeline import augment
from input_pipeline import cross_modal
from input_pipeline import glare_mask
from input_pipeline import pipeline
from input_pipeline import sampler as sampler_lib

ImageRecord = cross_modal.ImageRecord
IMAGE_KEYS = ('image',)


class ImageStore:
  """Resized uint8 images of a record list, decoded on first use (thread-safe, as TripletStore)."""

  def __init__(self, records: Sequence[ImageRecord], image_size: tuple[int, int], method: str,
               cache_images: bool):
    self.records = list(records)
    self.image_size = (int(image_size[0]), int(image_size[1]))
    self.method = method
    self.cache_images = cache_images
    if cache_images:
      self._images = np.empty((len(self.records), *self.image_size, 3), np.uint8)
      self._done = np.zeros(len(self.records), bool)

  def get(self, i: int) -> np.ndarray:
    """uint8 [H, W, 3] of record i at data.image_size."""
    if self.cache_images and self._done[i]:
      return self._images[i]
    image = augment.resize(cross_modal.load_image(self.records[i]), self.image_size, self.method)
    if self.cache_images:
      self._images[i] = image
      self._done[i] = True
    return image


def _get_store(records: Sequence[ImageRecord], data_config, method: str) -> ImageStore:
  if not data_config.cache_images:
    return ImageStore(records, data_config.image_size, method, False)
  key = ('cross_modal', tuple(records), tuple(data_config.image_size), method)
  return pipeline.cached_store(key, lambda: ImageStore(records, data_config.image_size, method,
                                                       True))


def _signature(rows: int, data_config, eval_keys: bool) -> dict:
  h, w = data_config.image_size
  spec = {'image': tf.TensorSpec([rows, h, w, 3], tf.uint8),
          'modality': tf.TensorSpec([rows], tf.int32), 'pid': tf.TensorSpec([rows], tf.int32),
          'camid': tf.TensorSpec([rows], tf.int32)}
  if data_config.glare_mask:
    spec['glare'] = tf.TensorSpec([rows, h, w], tf.float32)
  if eval_keys:
    spec.update(mask=tf.TensorSpec([rows], tf.bool), index=tf.TensorSpec([rows], tf.int32))
  return spec


def _glare_rule(data_config) -> str:
  rule = data_config.glare_mask
  if rule and rule not in glare_mask.RULES:
    raise ValueError(f'config.data.glare_mask={rule!r} must be "" (none) or one of '
                     f'{glare_mask.RULES}')
  return rule


def _glare(image: np.ndarray, data_config) -> np.ndarray:
  """float32 [H, W] glare prompt of one night image (`glare_mask`, data.glare_* fields)."""
  return glare_mask.glare_mask(image, data_config.glare_mask, data_config.glare_threshold,
                               data_config.glare_min_region)


def make_sampler(records: Sequence[ImageRecord], data_config) -> sampler_lib.CrossModalSampler:
  """The two-pool sampler over the modality-0 and modality-1 training records."""
  pools = [[r.pid for r in records if r.modality == m] for m in (0, 1)]
  return sampler_lib.CrossModalSampler(pools[0], pools[1], data_config.num_ids_per_batch,
                                       data_config.num_instances, data_config.seed,
                                       data_config.sampler_replacement)


def train_steps_per_epoch(records: Sequence[ImageRecord], data_config) -> int:
  return make_sampler(records, data_config).steps_per_epoch


def _train_source(records: Sequence[ImageRecord], data_config, process_index: int,
                  process_count: int) -> tuple[Callable[[int], dict], dict]:
  if not records:
    raise ValueError('make_train_stream: no training records')
  pipeline.check_process_ids(data_config.num_ids_per_batch, process_index, process_count)
  rule = _glare_rule(data_config)
  sampler = make_sampler(records, data_config)
  pools = [np.asarray([i for i, r in enumerate(records) if r.modality == m]) for m in (0, 1)]
  store = _get_store(records, data_config, 'bicubic')
  half = sampler.batch_size
  rows = half // process_count
  row0 = process_index * rows

  def raw_fn(step: int) -> dict[str, np.ndarray]:
    halves = sampler.batch_indices_for_step(step)
    indices = np.concatenate([pools[m][halves[m][row0:row0 + rows]] for m in (0, 1)])
    # Row numbers in the global batch, so a process's rows draw what they draw with one process.
    global_rows = np.concatenate([np.arange(row0, row0 + rows) + m * half for m in (0, 1)])
    images = [(store.get(int(i)),) for i in indices]
    rngs = [augment.row_rng(data_config.seed, step, int(r)) for r in global_rows]
    (crops,), (params,) = augment.crop_batch(images, rngs, data_config)
    for row, r in enumerate(global_rows):
      if augment.grayscale_draw(data_config.seed, step, int(r), data_config.grayscale_prob):
        crops[row] = augment.to_gray3(crops[row])
    extra = {}
    if rule:   # night rows only; 'paper' from the crop the network sees, 'code' un-augmented
      extra['glare'] = np.zeros(crops.shape[:3], np.float32)
      for row in range(rows, 2 * rows):
        source = crops[row] if rule == 'paper' else store.get(int(indices[row]))
        extra['glare'][row] = _glare(source, data_config)
    if data_config.random_erasing_prob > 0:
      extra['image_erase'] = pipeline.erase_entry(params, crops.shape[1:], data_config)
    return {'image': crops, **extra,
            'modality': np.repeat(np.arange(2, dtype=np.int32), rows),
            'pid': np.asarray([records[i].pid for i in indices], np.int32),
            'camid': np.asarray([records[i].camid for i in indices], np.int32)}

  signature = _signature(2 * rows, data_config, False)
  if data_config.random_erasing_prob > 0:
    signature['image_erase'] = pipeline.erase_spec(2 * rows, data_config.image_size, data_config)
  return raw_fn, signature


def make_train_batch_fn(records, data_config, process_index: int = 0, process_count: int = 1):
  """step -> this process's training batch, in NumPy alone (the reference of the stream)."""
  raw_fn, _ = _train_source(records, data_config, process_index, process_count)
  return lambda step: pipeline._finish(raw_fn(step), data_config, np, IMAGE_KEYS)  # pylint: disable=protected-access


def make_train_stream(records, data_config, start_step: int = 0, process_index: int = 0,
                      process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of training batches from global step `start_step` on (module docstring)."""
  raw_fn, signature = _train_source(records, data_config, process_index, process_count)
  ds = tf.data.Dataset.counter(start=start_step)
  return pipeline._map_numpy(ds, raw_fn, signature, data_config, IMAGE_KEYS).as_numpy_iterator()  # pylint: disable=protected-access


def _eval_source(records, data_config, batch_size: int, process_index: int = 0,
                 process_count: int = 1):
  rows = pipeline.eval_rows_per_process(batch_size, process_index, process_count)
  rule = _glare_rule(data_config)
  store = _get_store(records, data_config, 'bilinear')
  h, w = data_config.image_size

  def raw_fn(b: int) -> dict[str, np.ndarray]:
    indices = pipeline.eval_indices(b, batch_size, rows, process_index, len(records))
    n = len(indices)
    batch = {'image': np.zeros((rows, h, w, 3), np.uint8), 'modality': np.zeros(rows, np.int32),
             'pid': np.full(rows, -1, np.int32), 'camid': np.full(rows, -1, np.int32),
             'mask': np.zeros(rows, bool), 'index': np.full(rows, -1, np.int32)}
    if rule:
      batch['glare'] = np.zeros((rows, h, w), np.float32)
    for row, i in enumerate(indices):
      r = records[int(i)]
      batch['image'][row] = store.get(int(i))
      if rule and r.modality == 1:
        batch['glare'][row] = _glare(batch['image'][row], data_config)
      batch['modality'][row], batch['pid'][row], batch['camid'][row] = r.modality, r.pid, r.camid
    batch['mask'][:n] = True
    batch['index'][:n] = indices
    return batch

  return raw_fn, _signature(rows, data_config, True)


def make_eval_batch_fn(records, data_config, batch_size: int):
  raw_fn, _ = _eval_source(records, data_config, batch_size)
  return lambda b: pipeline._finish(raw_fn(b), data_config, np, IMAGE_KEYS)  # pylint: disable=protected-access


def make_eval_stream(records, data_config, batch_size: int | None = None, process_index: int = 0,
                     process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every record exactly once, in order, in padded batches (module docstring)."""
  batch_size = int(batch_size or data_config.eval_batch_size)
  raw_fn, signature = _eval_source(records, data_config, batch_size, process_index, process_count)
  ds = tf.data.Dataset.range(-(-len(records) // batch_size))
  return pipeline._map_numpy(ds, raw_fn, signature, data_config, IMAGE_KEYS).as_numpy_iterator()  # pylint: disable=protected-access


def load_splits(data_config) -> cross_modal.CrossModalSplits:
  """The configured cross-modality splits (`data.dataset`, `data.root`, direction, mode, trial)."""
  if data_config.source != 'folder':
    raise ValueError(f"data.source={data_config.source!r}: cross-modality sets are read from "
                     "their folders only (data.source='folder')")
  return cross_modal.load_cross_modal(
      data_config.dataset, data_config.root, direction=data_config.direction or None,
      search_mode=data_config.search_mode, trial=data_config.trial,
      use_npy_cache=data_config.use_npy_cache)
