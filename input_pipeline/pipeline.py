"""tf.data train and eval streams of image triplets, yielding NumPy dicts.

Train: an infinite stream of P x K batches (`make_train_stream`). The batch at global step s is a
pure function of (data.seed, s): the sampler is stateless per step and every row's augmentation
draws from a generator seeded by (seed, s, row), so a stream started at step s (a resumed run)
yields exactly the batches a stream started at 0 yields from s on, and the shards of several
processes concatenate to the global batch.

Eval: every record exactly once, in order, in padded batches with a mask (`make_eval_stream`).

Decoding: each record is decoded once (Pillow), its flare pseudo-label computed on the decoded
uint8 images (before any resize or augmentation, data.flare_rule), and resized to data.image_size
(bicubic for train, bilinear for test, PIL semantics as the official torchvision transforms).
With data.cache_images the resized uint8 images are kept in memory, so later epochs only flip,
crop, erase and normalise. The resize is deterministic, which is why the cache holds resized rather
than original images: it is smaller and skips the most expensive step. tf.data runs the per-batch
work in parallel (data.num_parallel_calls) and prefetches data.prefetch_batches batches. Python
(NumPy) only gathers, flips and crops uint8 images. With data.normalize_on_device (the default)
the streams yield those uint8 images and, with random erasing, one int32 box row per image; the
compiled train / embed step normalises them and draws the erasing fill on the accelerator
(`facenet_jax.device_input`). Otherwise the float32 normalisation (and random-erasing fill) runs
as TF ops in the graph, outside the Python lock. `make_train_batch_fn` and
`make_eval_batch_fn` compute the same batches in NumPy alone (the reference in the tests).

TensorFlow is only the executor here and must never take an accelerator: GPUs are hidden from it
at import.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from input_pipeline import augment
from input_pipeline import flare_label
from input_pipeline import records as records_lib
from input_pipeline import sampler as sampler_lib

try:  # Hide accelerators from TF; fails harmlessly if TF already initialised its devices.
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
except (RuntimeError, ValueError):
  pass

Record = records_lib.Record
MODALITIES = records_lib.MODALITIES
TFDS_PREFIX = 'tfds://'

# A loader returns the decoded uint8 (rgb, ni, ti) at original resolution and, when the source
# stores them, the flare bits (paper [2], official [2]); None means "compute from the pixels".
Loader = Callable[[Record], tuple[tuple[np.ndarray, np.ndarray, np.ndarray],
                                  dict[str, np.ndarray] | None]]


def _file_loader(record: Record):
  return records_lib.load_triplet(record), None


class TripletStore:
  """Resized uint8 triplets and flare bits of a record list, decoded on first use.

  Thread-safe for the parallel tf.data map: rows are written once, and a row written twice
  (two threads racing on the same record) gets identical values.
  """

  def __init__(self, records: Sequence[Record], image_size: tuple[int, int], method: str,
               flare_rule: str, cache_images: bool, loader: Loader = _file_loader):
    if flare_rule not in flare_label.FLARE_RULES:
      raise ValueError(f'data.flare_rule: unknown rule {flare_rule!r}; '
                       f'expected one of {flare_label.FLARE_RULES}')
    self.records = list(records)
    self.image_size = (int(image_size[0]), int(image_size[1]))
    self.method = method
    self.flare_rule = flare_rule
    self.cache_images = cache_images
    self._loader = loader
    n = len(self.records)
    self._flare = np.zeros((n, 2), np.int32)
    self._flare_done = np.zeros(n, bool)
    if cache_images:  # np.empty: pages are only touched (and counted) once written
      self._images = np.empty((3, n, *self.image_size, 3), np.uint8)
      self._image_done = np.zeros(n, bool)

  def __len__(self) -> int:
    return len(self.records)

  def _decode(self, i: int) -> tuple[np.ndarray, ...]:
    images, stored_bits = self._loader(self.records[i])
    if not self._flare_done[i]:
      if stored_bits is not None:
        self._flare[i] = stored_bits[self.flare_rule]
      else:
        self._flare[i] = flare_label.flare_bits(images[0], images[1], self.flare_rule)
      self._flare_done[i] = True
    return tuple(augment.resize(x, self.image_size, self.method) for x in images)

  def get(self, i: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """((rgb, ni, ti) uint8 [H, W, 3] resized, flare int32 [2]) of record i."""
    if not self.cache_images:
      return self._decode(i), self._flare[i]
    if not self._image_done[i]:
      resized = self._decode(i)
      for m in range(3):
        self._images[m, i] = resized[m]
      self._image_done[i] = True
    return tuple(self._images[m, i] for m in range(3)), self._flare[i]


_STORES: collections.OrderedDict = collections.OrderedDict()
_STORES_LOCK = threading.Lock()
_MAX_CACHED_STORES = 4


def cached_store(key: tuple, make: Callable[[], Any]) -> Any:
  """The store cached under `key` (made by `make()` on a miss); the last few are kept (LRU).

  Shared by the triplet and the cross-modality streams, so train and eval streams over the same
  records decode each image once."""
  with _STORES_LOCK:
    store = _STORES.pop(key, None)
    if store is None:
      store = make()
    _STORES[key] = store
    while len(_STORES) > _MAX_CACHED_STORES:
      _STORES.popitem(last=False)
  return store


def _get_store(records: Sequence[Record], data_config, method: str) -> TripletStore:
  """A TripletStore, shared between calls with the same records and settings when caching."""
  loader = _loader_for(records)
  if not data_config.cache_images:
    return TripletStore(records, data_config.image_size, method, data_config.flare_rule, False,
                        loader)
  key = (tuple(records), tuple(data_config.image_size), method, data_config.flare_rule)
  return cached_store(key, lambda: TripletStore(records, data_config.image_size, method,
                                                data_config.flare_rule, True, loader))


def clear_cache() -> None:
  """Drops every cached store (frees the decoded images)."""
  with _STORES_LOCK:
    _STORES.clear()


def erase_spec(rows: int, image_size, data_config) -> tf.TensorSpec:
  """Spec of one image key's erasing entry: int32 boxes [rows, 5] when the device normalises
  (data.normalize_on_device), else the float32 fill [rows, H, W, 3] (NaN outside the box)."""
  if data_config.normalize_on_device:
    return tf.TensorSpec([rows, 5], tf.int32)
  return tf.TensorSpec([rows, *image_size, 3], tf.float32)


def erase_entry(params: list[augment.AugmentParams], image_shape, data_config) -> np.ndarray:
  """One image key's erasing entry of a raw batch (see `erase_spec`)."""
  if data_config.normalize_on_device:
    return augment.erase_boxes(params)
  return augment.erase_fill(params, image_shape)


def _raw_signature(rows: int, data_config, erase: bool, eval_keys: bool) -> dict:
  """Specs of a raw batch: uint8 images (+ their erasing entries), metadata."""
  h, w = data_config.image_size
  spec = {m: tf.TensorSpec([rows, h, w, 3], tf.uint8) for m in MODALITIES}
  if erase:
    spec.update({f'{m}_erase': erase_spec(rows, (h, w), data_config) for m in MODALITIES})
  spec.update(pid=tf.TensorSpec([rows], tf.int32), camid=tf.TensorSpec([rows], tf.int32),
              scene=tf.TensorSpec([rows], tf.int32), flare=tf.TensorSpec([rows, 2], tf.int32))
  if eval_keys:
    spec.update(mask=tf.TensorSpec([rows], tf.bool), index=tf.TensorSpec([rows], tf.int32))
  return spec


def _finish(raw: dict, data_config, xp, image_keys: Sequence[str] = MODALITIES) -> dict:
  """Raw batch -> output batch: normalise the uint8 images, apply erasing fills, zero padding.

  `xp` is `np` (reference, used by the *_batch_fn functions) or `tf` (inside the tf.data graph,
  where the arithmetic runs multi-threaded outside the Python lock). Both compute
  float32(x) * (1 / (255 std)) - mean / std, the same float32 operations. With
  data.normalize_on_device the raw batch is the output: uint8 images, int32 erasing boxes
  (`facenet_jax.device_input` finishes them inside the compiled step).
  """
  if data_config.normalize_on_device:
    return dict(raw)
  scale, offset = augment.normalize_constants(data_config.mean, data_config.std)
  out = {k: v for k, v in raw.items() if k not in image_keys and not k.endswith('_erase')}
  for m in image_keys:
    if xp is tf:
      # Per-channel constants tiled along W: TF broadcasts a [W * 3] row several times faster
      # than a [3] vector (measured 2x on the whole stream).
      _, _, w, c = raw[m].shape
      flat = tf.reshape(tf.cast(raw[m], tf.float32), [-1, w * c])
      x = tf.reshape(flat * np.tile(scale, w) - np.tile(offset, w), tf.shape(raw[m]))
    else:
      x = augment.normalize(raw[m], data_config.mean, data_config.std)
    if f'{m}_erase' in raw:
      fill = raw[f'{m}_erase']
      x = xp.where(xp.math.is_nan(fill) if xp is tf else np.isnan(fill), x, fill)
    if 'mask' in raw:   # padding rows are all zeros
      keep = xp.reshape(raw['mask'], (-1, 1, 1, 1))
      x = xp.where(keep, x, xp.zeros_like(x))
    out[m] = x
  return out


def _map_numpy(ds: tf.data.Dataset, fn: Callable[[int], dict], signature: dict,
               data_config, image_keys: Sequence[str] = MODALITIES) -> tf.data.Dataset:
  """ds of int64 scalars -> ds of output batches: `fn(int)` in Python, `_finish` in the graph.

  Runs data.num_parallel_calls batches at a time, keeps their order, prefetches
  data.prefetch_batches.
  """
  keys = sorted(signature)

  def py(x):
    out = fn(int(x))
    return [out[k] for k in keys]

  def tf_fn(x):
    values = tf.numpy_function(py, [x], [signature[k].dtype for k in keys], stateful=False)
    raw = {k: tf.ensure_shape(v, signature[k].shape) for k, v in zip(keys, values)}
    return _finish(raw, data_config, tf, image_keys)

  parallel = tf.data.AUTOTUNE if data_config.num_parallel_calls < 0 else \
      data_config.num_parallel_calls
  ds = ds.map(tf_fn, num_parallel_calls=parallel, deterministic=True)
  return ds.prefetch(data_config.prefetch_batches)


def is_cross_modal(records_or_dataset) -> bool:
  """True for a cross-modality dataset name or a list of its `ImageRecord`s (single images)."""
  from input_pipeline import cross_modal  # pylint: disable=g-import-not-at-top
  if isinstance(records_or_dataset, str):
    return records_or_dataset in cross_modal.CROSS_MODAL_DATASETS
  return bool(records_or_dataset) and isinstance(records_or_dataset[0], cross_modal.ImageRecord)


def _cross_modal():
  from input_pipeline import cross_modal_pipeline  # pylint: disable=g-import-not-at-top
  return cross_modal_pipeline


def _meta(records: Sequence[Record], indices: np.ndarray) -> dict[str, np.ndarray]:
  return {
      'pid': np.asarray([records[i].pid for i in indices], np.int32),
      'camid': np.asarray([records[i].camid for i in indices], np.int32),
      'scene': np.asarray([records[i].scene for i in indices], np.int32),
  }


def _make_sampler(records: Sequence[Record], data_config) -> sampler_lib.IdentitySampler:
  return sampler_lib.IdentitySampler([r.pid for r in records], data_config.num_ids_per_batch,
                                     data_config.num_instances, data_config.seed)


def train_steps_per_epoch(records: Sequence[Record], data_config) -> int:
  """Steps of one sampler epoch (see sampler.compute_steps_per_epoch)."""
  if is_cross_modal(records):
    return _cross_modal().train_steps_per_epoch(records, data_config)
  sizes = collections.Counter(r.pid for r in records).values()
  return sampler_lib.compute_steps_per_epoch(list(sizes), data_config.num_ids_per_batch,
                                             data_config.num_instances)


def _train_source(records: Sequence[Record], data_config, process_index: int,
                  process_count: int) -> tuple[Callable[[int], dict], dict]:
  """(step -> raw batch of this process, its signature)."""
  if not records:
    raise ValueError('make_train_stream: no training records')
  check_process_ids(data_config.num_ids_per_batch, process_index, process_count)
  sampler = _make_sampler(records, data_config)
  store = _get_store(records, data_config, 'bicubic')
  rows = sampler.batch_size // process_count
  row0 = process_index * rows
  erasing = data_config.random_erasing_prob > 0
  lock = threading.Lock()

  def raw_fn(step: int) -> dict[str, np.ndarray]:
    with lock:  # the sampler caches one epoch plan; keep its use serial
      indices = sampler.batch_indices_for_step(step)[row0:row0 + rows]
    triplets, flares = zip(*(store.get(int(i)) for i in indices))
    rngs = [augment.row_rng(data_config.seed, step, row0 + r) for r in range(rows)]
    crops, params = augment.crop_batch(list(triplets), rngs, data_config)
    batch = dict(zip(MODALITIES, crops))
    if erasing:
      for m, ps in zip(MODALITIES, params):
        batch[f'{m}_erase'] = erase_entry(ps, crops[0].shape[1:], data_config)
    batch.update(_meta(records, indices), flare=np.stack(flares).astype(np.int32))
    return batch

  return raw_fn, _raw_signature(rows, data_config, erasing, False)


def make_train_batch_fn(records: Sequence[Record], data_config, process_index: int = 0,
                        process_count: int = 1) -> Callable[[int], dict[str, np.ndarray]]:
  """The pure function step -> this process's share of the training batch at `step` (NumPy).

  The global batch is P x K rows grouped by id; process p gets ids p*P/n .. (p+1)*P/n - 1, i.e.
  rows [p*B/n, (p+1)*B/n), so concatenating the processes' shards gives the global batch.
  `make_train_stream` yields the same batches, computed in parallel by tf.data.
  """
  if is_cross_modal(records):
    return _cross_modal().make_train_batch_fn(records, data_config, process_index, process_count)
  raw_fn, _ = _train_source(records, data_config, process_index, process_count)
  return lambda step: _finish(raw_fn(step), data_config, np)


def make_train_stream(records: Sequence[Record], data_config, start_step: int = 0,
                      process_index: int = 0, process_count: int = 1
                      ) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of training batches from global step `start_step` on.

  Yields NumPy dicts with B = P * K / process_count rows, ordered by identity (K consecutive rows
  per id): 'rgb', 'ni', 'ti' uint8 [B, H, W, 3] with data.normalize_on_device (plus
  '<m>_erase' int32 [B, 5] with random erasing; `facenet_jax.device_input` finishes them), else
  float32 [B, H, W, 3] normalised; 'pid', 'camid', 'scene' int32 [B], 'flare' int32 [B, 2]. Cross-modality records: `cross_modal_pipeline`'s batches.
  """
  if is_cross_modal(records):
    return _cross_modal().make_train_stream(records, data_config, start_step, process_index,
                                            process_count)
  raw_fn, signature = _train_source(records, data_config, process_index, process_count)
  ds = tf.data.Dataset.counter(start=start_step)
  return _map_numpy(ds, raw_fn, signature, data_config).as_numpy_iterator()


def check_process_ids(num_ids_per_batch: int, process_index: int, process_count: int) -> None:
  """A training batch's P ids must split into whole ids over the processes."""
  if (process_count <= 0 or not 0 <= process_index < process_count
      or num_ids_per_batch % process_count):
    raise ValueError(f'data.num_ids_per_batch: {num_ids_per_batch} ids per batch cannot be split '
                     f'into whole identities over {process_count} processes (process_index '
                     f'{process_index})')


def eval_rows_per_process(batch_size: int, process_index: int, process_count: int) -> int:
  """Rows of each eval batch a process reads (data.eval_batch_size / process_count), checked."""
  if batch_size <= 0:
    raise ValueError(f'data.eval_batch_size: must be positive, got {batch_size}')
  if process_count <= 0 or not 0 <= process_index < process_count or batch_size % process_count:
    raise ValueError(f'data.eval_batch_size: {batch_size} does not split evenly over '
                     f'{process_count} processes (process_index {process_index})')
  return batch_size // process_count


def eval_indices(b: int, batch_size: int, rows: int, process_index: int,
                 num_records: int) -> np.ndarray:
  """Record indices of this process's rows of global eval batch `b` (fewer at the end)."""
  start = b * batch_size + process_index * rows
  return np.arange(start, min(start + rows, num_records))


def _eval_source(records: Sequence[Record], data_config, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> tuple[Callable[[int], dict], dict]:
  """(batch number -> this process's rows of the padded eval batch, their signature).

  Global batch b covers records [b * B, (b + 1) * B); process p reads rows
  [p * B / n, (p + 1) * B / n) of it. Bilinear resize, no augmentation.
  """
  rows = eval_rows_per_process(batch_size, process_index, process_count)
  store = _get_store(records, data_config, 'bilinear')
  h, w = data_config.image_size

  def raw_fn(b: int) -> dict[str, np.ndarray]:
    indices = eval_indices(b, batch_size, rows, process_index, len(records))
    n = len(indices)
    batch = {m: np.zeros((rows, h, w, 3), np.uint8) for m in MODALITIES}
    batch.update(pid=np.full(rows, -1, np.int32), camid=np.full(rows, -1, np.int32),
                 scene=np.full(rows, -1, np.int32), flare=np.zeros((rows, 2), np.int32),
                 mask=np.zeros(rows, bool), index=np.full(rows, -1, np.int32))
    for row, i in enumerate(indices):
      images, flare = store.get(int(i))
      for m, x in zip(MODALITIES, images):
        batch[m][row] = x
      batch['flare'][row] = flare
    for k, v in _meta(records, indices).items():
      batch[k][:n] = v
    batch['mask'][:n] = True
    batch['index'][:n] = indices
    return batch

  return raw_fn, _raw_signature(rows, data_config, False, True)


def make_eval_batch_fn(records: Sequence[Record], data_config, batch_size: int
                       ) -> Callable[[int], dict[str, np.ndarray]]:
  """The function batch number -> padded eval batch (NumPy); see `make_eval_stream`."""
  if is_cross_modal(records):
    return _cross_modal().make_eval_batch_fn(records, data_config, batch_size)
  raw_fn, _ = _eval_source(records, data_config, batch_size)
  return lambda b: _finish(raw_fn(b), data_config, np)


def make_eval_stream(records: Sequence[Record], data_config, batch_size: int | None = None,
                     process_index: int = 0, process_count: int = 1
                     ) -> Iterator[dict[str, np.ndarray]]:
  """Every record exactly once, in order, in global batches of `batch_size` (data.eval_batch_size).

  Same keys as the train stream plus 'mask' bool [B] (False for padding rows) and 'index' int32
  [B] (record index, -1 for padding). Padding rows are zero images with pid/camid/scene -1.
  Test-time transform: bilinear resize, normalise (on the device with data.normalize_on_device:
  the images are uint8 then), no augmentation. With several processes each
  yields its B / process_count rows of every global batch (all processes yield the same number
  of batches), so the processes' batches side by side are the single-process batch.
  Cross-modality records: `cross_modal_pipeline`'s batches ('image', 'modality', ...).
  """
  if is_cross_modal(records):
    return _cross_modal().make_eval_stream(records, data_config, batch_size, process_index,
                                           process_count)
  batch_size = int(batch_size or data_config.eval_batch_size)
  raw_fn, signature = _eval_source(records, data_config, batch_size, process_index, process_count)
  num_batches = -(-len(records) // batch_size)
  ds = tf.data.Dataset.range(num_batches)
  return _map_numpy(ds, raw_fn, signature, data_config).as_numpy_iterator()


# ------------------------------------------------------------------------------ TFDS source


def _loader_for(records: Sequence[Record]) -> Loader:
  if records and records[0].rgb_path.startswith(TFDS_PREFIX):
    return _tfds_loader
  return _file_loader


_TFDS_SPLITS: dict[tuple[str, str, str], list] = {}
_TFDS_LOCK = threading.Lock()


def _tfds_split(name: str, split: str, data_dir: str) -> list:
  """All examples of a prepared TFDS split as NumPy dicts, read once per process."""
  key = (name, split, data_dir)
  with _TFDS_LOCK:
    if key not in _TFDS_SPLITS:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      from input_pipeline import tfds_builders  # pylint: disable=g-import-not-at-top
      by_name = {b.name: b for b in tfds_builders.BUILDERS.values()}
      builder = by_name[name](data_dir=data_dir or None)
      if not builder.is_prepared():
        raise records_lib.DatasetError(
            f'data.tfds_data_dir: TFDS dataset {name!r} is not prepared in '
            f'{builder.data_dir!r}; run scripts/check_dataset.py --prepare_tfds first')
      ds = builder.as_dataset(split=split, shuffle_files=False)
      _TFDS_SPLITS[key] = list(tfds.as_numpy(ds))
    return _TFDS_SPLITS[key]


def _parse_tfds_path(path: str) -> tuple[str, str, str, int]:
  # tfds://<name>/<split>/<index>?data_dir=<dir>
  body, _, data_dir = path[len(TFDS_PREFIX):].partition('?data_dir=')
  name, split, index = body.split('/')
  return name, split, data_dir, int(index)


def _tfds_loader(record: Record):
  name, split, data_dir, index = _parse_tfds_path(record.rgb_path)
  ex = _tfds_split(name, split, data_dir)[index]
  bits = {'paper': ex['flare_paper'], 'official': ex['flare_official']}
  return (ex['rgb'], ex['ni'], ex['ti']), bits


def prescan(splits) -> list[str]:
  """The problems `records.prescan` (triplets) or `cross_modal.prescan` (single images) finds."""
  if is_cross_modal(splits.train or splits.query):
    from input_pipeline import cross_modal  # pylint: disable=g-import-not-at-top
    return cross_modal.prescan(splits)
  return records_lib.prescan(splits)


def load_record_triplet(record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Decoded uint8 (rgb, ni, ti) [H, W, 3] of a folder or TFDS record, original resolution."""
  return _loader_for([record])(record)[0]


def load_tfds_splits(dataset: str, data_dir: str) -> records_lib.Splits:
  """Records of a prepared TFDS dataset; their paths point into the TFDS splits."""
  from input_pipeline import tfds_builders  # pylint: disable=g-import-not-at-top
  name = tfds_builders.TFDS_NAMES[dataset]
  out = {}
  for split in records_lib.SPLITS:
    examples = _tfds_split(name, split, data_dir)
    out[split] = [
        Record(*(f'{TFDS_PREFIX}{name}/{split}/{i}?data_dir={data_dir}',) * 3,
               pid=int(ex['pid']), camid=int(ex['camid']), scene=int(ex['scene']), split=split)
        for i, ex in enumerate(examples)]
  return records_lib.Splits(train=out['train'], query=out['query'], gallery=out['gallery'])


def load_splits_for_config(data_config) -> records_lib.Splits:
  """Train/query/gallery records from data.source: 'folder' (data.root) or 'tfds' (prepared).

  Cross-modality sets give `cross_modal.CrossModalSplits` (train, query, gallery of `ImageRecord`).
  """
  if is_cross_modal(data_config.dataset):
    return _cross_modal().load_splits(data_config)
  if data_config.source == 'folder':
    return records_lib.load_splits(data_config.dataset, data_config.root)
  if data_config.source == 'tfds':
    return load_tfds_splits(data_config.dataset, data_config.tfds_data_dir)
  raise ValueError(f"data.source: unknown source {data_config.source!r}; expected 'folder' or "
                   "'tfds'")
