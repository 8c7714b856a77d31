"""Cross-modality datasets: unpaired single images of two modalities, read from the real layouts.

Unlike the aligned RGB/NI/TI triplets of `records`, a cross-modality set holds two independent
pools of images (visible and infrared, or day and night) of the same identities. A reader turns a
dataset folder into `ImageRecord`s (path, pid, camera, modality) for the training pool and for one
evaluation direction's query and gallery candidates. Modality 0 is the visible / day stem,
modality 1 the infrared / thermal / night stem.

Layouts (ROOT is the dataset folder; NumPy + Pillow only):

* SYSU-MM01  `ROOT/cam{1..6}/{pid:04d}/{nnnn}.jpg`, `ROOT/exp/{train,val,test}_id.txt` (each one
  line of comma-separated ids). Visible cameras 1, 2, 4, 5; infrared 3, 6. Training = train + val
  ids. Query = every infrared image of the test ids (both search modes); gallery candidates = the
  visible images of the test ids from cameras 1, 2, 4, 5 ('all' search) or 1, 2 ('indoor'); the
  protocol draws each trial's gallery from them. Optional: the official preprocessing's cache
  `ROOT/train_{rgb,ir}_resized_{img,label}.npy` (`use_npy_cache=True`) replaces the training
  images (144x288 arrays; its labels are used as they are).
* RegDB      `ROOT/idx/{train,test}_{visible,thermal}_{t}.txt`, t = 1..10 (the split files of the
  AGW release), each line `relative/path label`, paths relative to ROOT. One trial per run
  (`trial`); visible is camera 1, thermal camera 2 (as the official test code).
* LLCM       `ROOT/idx/train_vis.txt`, `ROOT/idx/train_nir.txt` (`relative/path label`),
  `ROOT/idx/test_id.txt` (one comma-separated line); test images in
  `ROOT/test_vis/cam{1..9}/{pid:04d}/*` and `ROOT/test_nir/cam{c}/{pid:04d}/*`. Cameras are
  parsed from the folder names below ROOT (the official parser splits the whole path at 'cam'
  and breaks on a root that contains it).
* DN-348     `ROOT/{day,night}/<pid>/<file>` and `ROOT/train_test_split/{train,test}_list_{day,
  night}.txt`, each line `<pid>/<file>` relative to the day or night folder (a tail after a
  space is ignored). Day to night: query = test day list, gallery = test night list.
* DNWild     as DN-348, lists `train_list_{day,night}.txt`, `test_list_{day,night}.txt` and
  `query_list_{day,night}.txt`. Day to night: query_list_day vs test_list_night; night to day:
  query_list_night vs test_list_day (the dataset supplement's protocols). Where the download
  names the lists `{day,night}_{train,query,test}.txt` those names are read instead.

For DN-348 and DNWild a parent folder holding `dn348/` or `dnwild/` (the official code's data
path) is accepted too. Day/night records have no camera: camid is the modality.

Labels. Training pids of both modalities are mapped to 0..N-1 by one sorted mapping over their
union (the official DN code relabels each list separately through Python set order, which can
disagree between the day and night lists); query and gallery keep raw pids. Every problem raises
`DatasetError` naming the file or field; `scan_cross_modal` collects them all.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

import numpy as np

from input_pipeline.records import DatasetError
from input_pipeline.records import IMAGE_EXTENSIONS

CROSS_MODAL_DATASETS = ('sysu_mm01', 'regdb', 'llcm', 'dn348', 'dnwild')
# Modality 0 and 1 of each dataset, in stem order.
MODALITY_NAMES = {'sysu_mm01': ('visible', 'infrared'), 'regdb': ('visible', 'thermal'),
                  'llcm': ('visible', 'infrared'), 'dn348': ('day', 'night'),
                  'dnwild': ('day', 'night')}
# query modality -> gallery modality, per direction name.
DIRECTIONS = {'infrared_to_visible': (1, 0), 'visible_to_infrared': (0, 1),
              'thermal_to_visible': (1, 0), 'visible_to_thermal': (0, 1),
              'night_to_day': (1, 0), 'day_to_night': (0, 1)}
DATASET_DIRECTIONS = {
    'sysu_mm01': ('infrared_to_visible',),
    'regdb': ('visible_to_thermal', 'thermal_to_visible'),
    'llcm': ('infrared_to_visible', 'visible_to_infrared'),
    'dn348': ('day_to_night', 'night_to_day'),
    'dnwild': ('day_to_night', 'night_to_day'),
}
SYSU_VISIBLE_CAMERAS = {'all': (1, 2, 4, 5), 'indoor': (1, 2)}
SYSU_INFRARED_CAMERAS = (3, 6)
LLCM_CAMERAS = {0: ('test_vis', (1, 2, 3, 4, 5, 6, 7, 8, 9)),
                1: ('test_nir', (1, 2, 4, 5, 6, 7, 8, 9))}
REGDB_TRIALS = tuple(range(1, 11))


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One image of one modality.

  pid is the 0..N-1 label for training records and the raw id otherwise. `cache_index` >= 0
  means `path` is an `.npy` array file and the image is its row `cache_index`.
  """
  path: str
  pid: int
  camid: int
  modality: int
  split: str
  cache_index: int = -1


@dataclasses.dataclass(frozen=True)
class CrossModalSplits:
  """Training pool (both modalities) and one direction's query and gallery candidates."""
  dataset: str
  direction: str
  train: list[ImageRecord]
  query: list[ImageRecord]
  gallery: list[ImageRecord]

  @property
  def modality_names(self) -> tuple[str, str]:
    return MODALITY_NAMES[self.dataset]

  def pool(self, modality: int) -> list[ImageRecord]:
    """Training records of one modality, in reading order."""
    return [r for r in self.train if r.modality == modality]


# ----------------------------------------------------------------------------- small readers
def _image_files(folder: str) -> list[str]:
  return sorted(f for f in os.listdir(folder)
                if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS))


def read_id_line(path: str, problems: list[str]) -> list[int]:
  """Ids of an `exp/*_id.txt` / `test_id.txt` file: one line of comma-separated integers."""
  if not os.path.isfile(path):
    problems.append(f'{path}: missing id list')
    return []
  with open(path) as f:
    text = f.read().strip()
  if not text:
    problems.append(f'{path}: empty id list')
    return []
  ids = []
  for token in text.splitlines()[0].split(','):
    token = token.strip()
    if not token.isdigit():
      problems.append(f'{path}: {token!r} is not an integer id')
      return []
    ids.append(int(token))
  return ids


def _read_list(path: str, problems: list[str], parse, expected: str) -> list[tuple[str, int]]:
  """[(relative path, int)] of a list file, one `parse(parts) -> item | None` per non-empty line."""
  if not os.path.isfile(path):
    problems.append(f'{path}: missing list file')
    return []
  out = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      item = parse(parts)
      if item is None:
        problems.append(f'{path}:{number}: expected "{expected}", got {line.strip()!r}')
        continue
      out.append(item)
  if not out:
    problems.append(f'{path}: empty list')
  return out


def read_labelled_list(path: str, problems: list[str]) -> list[tuple[str, int]]:
  """[(relative path, label)] of a `relative/path label` list (RegDB, LLCM training lists)."""
  def parse(parts):
    if len(parts) < 2 or not re.fullmatch(r'-?\d+', parts[1]):
      return None
    return parts[0], int(parts[1])
  return _read_list(path, problems, parse, 'relative/path label')


def read_pid_list(path: str, problems: list[str]) -> list[tuple[str, int]]:
  """[(relative path, pid)] of a DN-348 / DNWild list: `<pid>/<file>`, the pid before the '/'."""
  def parse(parts):
    head = parts[0].split('/', 1)[0]
    if '/' not in parts[0] or not head.isdigit():
      return None
    return parts[0], int(head)
  return _read_list(path, problems, parse, '<pid>/<file>')


def _existing(paths: list[tuple[str, int]], base: str, problems: list[str], listed_in: str
              ) -> list[tuple[str, int]]:
  out = []
  for rel, label in paths:
    full = os.path.join(base, rel)
    if os.path.isfile(full):
      out.append((full, label))
    else:
      problems.append(f'{full}: listed in {listed_in} but missing')
  return out


def _records(items, camid: int, modality: int, split: str) -> list[ImageRecord]:
  return [ImageRecord(path, pid, camid, modality, split) for path, pid in items]


def relabel(records: Sequence[ImageRecord]) -> list[ImageRecord]:
  """One sorted pid -> 0..N-1 mapping over all records (both modalities)."""
  mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
  return [dataclasses.replace(r, pid=mapping[r.pid]) for r in records]


# ---------------------------------------------------------------------------------- SYSU-MM01
def _sysu_images(root: str, cameras: Sequence[int], ids: Sequence[int], modality: int, split: str,
                 problems: list[str]) -> list[ImageRecord]:
  """Every image of `ids` seen by `cameras`, id-major then camera order then file name."""
  out = []
  for cam in cameras:
    if not os.path.isdir(os.path.join(root, f'cam{cam}')):
      problems.append(f'{os.path.join(root, f"cam{cam}")}: missing camera folder')
  for pid in sorted(ids):
    for cam in cameras:
      folder = os.path.join(root, f'cam{cam}', f'{pid:04d}')
      if os.path.isdir(folder):  # not every id is seen by every camera
        out += [ImageRecord(os.path.join(folder, f), pid, cam, modality, split)
                for f in _image_files(folder)]
  return out


def _sysu_npy_cache(root: str, problems: list[str]) -> list[ImageRecord] | None:
  names = {m: (os.path.join(root, f'train_{tag}_resized_img.npy'),
               os.path.join(root, f'train_{tag}_resized_label.npy'))
           for m, tag in ((0, 'rgb'), (1, 'ir'))}
  out = []
  for modality, (images, labels) in names.items():
    for f in (images, labels):
      if not os.path.isfile(f):
        problems.append(f'{f}: missing (data.use_npy_cache is on)')
        return None
    label_array = np.load(labels)
    num_images = np.load(images, mmap_mode='r').shape[0]
    if label_array.shape != (num_images,):
      problems.append(f'{labels}: {label_array.shape[0]} labels for {num_images} images in {images}')
      return None
    # Cameras are not cached; the official code does not use them in training.
    out += [ImageRecord(images, int(p), -1, modality, 'train', cache_index=i)
            for i, p in enumerate(label_array)]
  return out


def _read_sysu(root, problems, *, mode='all', use_npy_cache=False, **_):
  if mode not in SYSU_VISIBLE_CAMERAS:
    raise DatasetError(f'data.search_mode must be one of {tuple(SYSU_VISIBLE_CAMERAS)}, got {mode!r}')
  exp = os.path.join(root, 'exp')
  train_ids = (read_id_line(os.path.join(exp, 'train_id.txt'), problems)
               + read_id_line(os.path.join(exp, 'val_id.txt'), problems))
  test_ids = read_id_line(os.path.join(exp, 'test_id.txt'), problems)
  overlap = sorted(set(train_ids) & set(test_ids))
  if overlap:
    problems.append(f'{os.path.join(exp, "test_id.txt")}: ids {overlap[:10]} are also training ids')
  if use_npy_cache:
    train = _sysu_npy_cache(root, problems) or []
  else:
    train = relabel(_sysu_images(root, SYSU_VISIBLE_CAMERAS['all'], train_ids, 0, 'train', problems)
                    + _sysu_images(root, SYSU_INFRARED_CAMERAS, train_ids, 1, 'train', problems))
  query = _sysu_images(root, SYSU_INFRARED_CAMERAS, test_ids, 1, 'query', problems)
  gallery = _sysu_images(root, SYSU_VISIBLE_CAMERAS[mode], test_ids, 0, 'gallery', problems)
  return train, query, gallery


# -------------------------------------------------------------------------------------- RegDB
def _read_regdb(root, problems, *, trial=1, direction='visible_to_thermal', **_):
  if trial not in REGDB_TRIALS:
    raise DatasetError(f'data.trial must be one of 1..10 for RegDB, got {trial!r}')
  idx = os.path.join(root, 'idx')
  pools = {}
  for split in ('train', 'test'):
    for modality, name in ((0, 'visible'), (1, 'thermal')):
      listed = os.path.join(idx, f'{split}_{name}_{trial}.txt')
      items = _existing(read_labelled_list(listed, problems), root, problems, listed)
      pools[split, modality] = _records(items, modality + 1, modality,
                                        'train' if split == 'train' else 'test')
  train = relabel(pools['train', 0] + pools['train', 1])
  q_mod, g_mod = DIRECTIONS[direction]
  query = [dataclasses.replace(r, split='query') for r in pools['test', q_mod]]
  gallery = [dataclasses.replace(r, split='gallery') for r in pools['test', g_mod]]
  return train, query, gallery


# --------------------------------------------------------------------------------------- LLCM
_LLCM_CAMERA = re.compile(r'^cam(\d+)$')


def _llcm_test_images(root: str, modality: int, ids: Sequence[int], split: str,
                      problems: list[str]) -> list[ImageRecord]:
  """All test images of one modality, id-major then camera then file name (official order)."""
  folder, cameras = LLCM_CAMERAS[modality]
  base = os.path.join(root, folder)
  if not os.path.isdir(base):
    problems.append(f'{base}: missing test folder')
    return []
  present = {}
  for name in sorted(os.listdir(base)):
    m = _LLCM_CAMERA.match(name)
    if m:
      present[int(m.group(1))] = os.path.join(base, name)
  unknown = sorted(set(present) - set(cameras))
  if unknown:
    problems.append(f'{base}: unexpected camera folders {["cam%d" % c for c in unknown]}')
  out = []
  for pid in sorted(ids):
    for cam in cameras:
      if cam not in present:
        continue
      pid_dir = os.path.join(present[cam], f'{pid:04d}')
      if os.path.isdir(pid_dir):
        out += [ImageRecord(os.path.join(pid_dir, f), pid, cam, modality, split)
                for f in _image_files(pid_dir)]
  return out


def _llcm_train_camera(path: str) -> int:
  """Camera of a training image: the first `cam<digits>` component of its relative path, else -1."""
  for part in path.replace(os.sep, '/').split('/'):
    m = _LLCM_CAMERA.match(part)
    if m:
      return int(m.group(1))
  return -1


def _read_llcm(root, problems, *, direction='infrared_to_visible', **_):
  idx = os.path.join(root, 'idx')
  train = []
  for modality, name in ((0, 'train_vis.txt'), (1, 'train_nir.txt')):
    listed = os.path.join(idx, name)
    items = _existing(read_labelled_list(listed, problems), root, problems, listed)
    train += [ImageRecord(p, pid, _llcm_train_camera(os.path.relpath(p, root)), modality, 'train')
              for p, pid in items]
  test_ids = read_id_line(os.path.join(idx, 'test_id.txt'), problems)
  q_mod, g_mod = DIRECTIONS[direction]
  query = _llcm_test_images(root, q_mod, test_ids, 'query', problems)
  gallery = _llcm_test_images(root, g_mod, test_ids, 'gallery', problems)
  return relabel(train), query, gallery


# ---------------------------------------------------------------------------- DN-348 / DNWild
_DN_LISTS = {
    'dn348': {'train': ('train_list_day.txt', 'train_list_night.txt'),
              ('day_to_night', 'query'): 'test_list_day.txt',
              ('day_to_night', 'gallery'): 'test_list_night.txt',
              ('night_to_day', 'query'): 'test_list_night.txt',
              ('night_to_day', 'gallery'): 'test_list_day.txt'},
    'dnwild': {'train': ('train_list_day.txt', 'train_list_night.txt'),
               ('day_to_night', 'query'): 'query_list_day.txt',
               ('day_to_night', 'gallery'): 'test_list_night.txt',
               ('night_to_day', 'query'): 'query_list_night.txt',
               ('night_to_day', 'gallery'): 'test_list_day.txt'},
}
# Other release names of the DNWild lists: 'query_list_day.txt' <-> 'day_query.txt', ...
_DN_ALTERNATIVE = re.compile(r'^(train|test|query)_list_(day|night)\.txt$')


def _dn_root(root: str, dataset: str) -> str:
  nested = os.path.join(root, dataset)
  if not os.path.isdir(os.path.join(root, 'train_test_split')) and os.path.isdir(nested):
    return nested
  return root


def _dn_list(split_dir: str, name: str) -> str:
  path = os.path.join(split_dir, name)
  if not os.path.isfile(path):
    m = _DN_ALTERNATIVE.match(name)
    alternative = os.path.join(split_dir, f'{m.group(2)}_{m.group(1)}.txt') if m else path
    if os.path.isfile(alternative):
      return alternative
  return path


def _dn_records(root: str, name: str, split: str, problems: list[str]) -> list[ImageRecord]:
  modality = 0 if name.endswith('day.txt') else 1
  listed = _dn_list(os.path.join(root, 'train_test_split'), name)
  base = os.path.join(root, ('day', 'night')[modality])
  items = _existing(read_pid_list(listed, problems), base, problems, listed)
  return _records(items, modality, modality, split)


def _read_dn(dataset):
  def read(root, problems, *, direction='day_to_night', **_):
    lists = _DN_LISTS[dataset]
    train = sum((_dn_records(root, n, 'train', problems) for n in lists['train']), [])
    query = _dn_records(root, lists[direction, 'query'], 'query', problems)
    gallery = _dn_records(root, lists[direction, 'gallery'], 'gallery', problems)
    return relabel(train), query, gallery
  return read


_READERS = {'sysu_mm01': _read_sysu, 'regdb': _read_regdb, 'llcm': _read_llcm,
            'dn348': _read_dn('dn348'), 'dnwild': _read_dn('dnwild')}


# --------------------------------------------------------------------------------- entry points
def default_direction(dataset: str) -> str:
  return DATASET_DIRECTIONS[dataset][0]


def scan_cross_modal(dataset: str, root: str, *, direction: str | None = None,
                     search_mode: str = 'all', trial: int = 1, use_npy_cache: bool = False
                     ) -> tuple[CrossModalSplits, list[str]]:
  """Reads a cross-modality dataset, collecting every problem instead of raising on the first.

  Args:
    dataset: one of CROSS_MODAL_DATASETS.
    root: the dataset folder.
    direction: query -> gallery modality (`DATASET_DIRECTIONS[dataset]`; None: the first).
    search_mode: SYSU-MM01 'all' or 'indoor' (which visible cameras form the gallery).
    trial: RegDB split 1..10.
    use_npy_cache: SYSU-MM01 training images from the official `.npy` cache.
  """
  if dataset not in _READERS:
    raise DatasetError(f'data.dataset: unknown cross-modality dataset {dataset!r}; expected one '
                       f'of {CROSS_MODAL_DATASETS}')
  direction = direction or default_direction(dataset)
  if direction not in DATASET_DIRECTIONS[dataset]:
    raise DatasetError(f'data.direction: {dataset} is evaluated {DATASET_DIRECTIONS[dataset]}, '
                       f'got {direction!r}')
  if not root or not os.path.isdir(root):
    raise DatasetError(f'data.root: dataset root {root!r} is not a folder')
  if dataset in ('dn348', 'dnwild'):
    root = _dn_root(root, dataset)
  problems: list[str] = []
  train, query, gallery = _READERS[dataset](root, problems, mode=search_mode, trial=trial,
                                            direction=direction, use_npy_cache=use_npy_cache)
  for name, records in (('train', train), ('query', query), ('gallery', gallery)):
    if not records and not problems:
      problems.append(f'{root}: empty {name} split')
  if train:
    missing = [MODALITY_NAMES[dataset][m] for m in (0, 1) if not any(r.modality == m for r in train)]
    if missing:
      problems.append(f'{root}: the training set has no {" or ".join(missing)} images')
  return CrossModalSplits(dataset, direction, train, query, gallery), problems


def load_cross_modal(dataset: str, root: str, **kwargs) -> CrossModalSplits:
  """`scan_cross_modal` that raises DatasetError on any problem (the first, and a count)."""
  splits, problems = scan_cross_modal(dataset, root, **kwargs)
  if problems:
    more = (f' (and {len(problems) - 1} more problems; scripts/check_dataset.py lists them all)'
            if len(problems) > 1 else '')
    raise DatasetError(problems[0] + more)
  return splits


def load_image(record: ImageRecord) -> np.ndarray:
  """uint8 [H, W, 3] RGB image of a record (a row of the `.npy` cache when it has one)."""
  from input_pipeline import records as records_lib  # pylint: disable=g-import-not-at-top
  if record.cache_index < 0:
    return records_lib.load_image(record.path)
  try:
    array = np.load(record.path, mmap_mode='r')
  except (OSError, ValueError) as e:
    raise DatasetError(f'{record.path}: cannot read the .npy cache ({e})') from None
  if not 0 <= record.cache_index < array.shape[0] or array.ndim != 4 or array.shape[-1] != 3:
    raise DatasetError(f'{record.path}: no image row {record.cache_index} in an array of shape '
                       f'{array.shape} (expected [N, H, W, 3])')
  return np.asarray(array[record.cache_index], np.uint8)


def prescan(splits: CrossModalSplits) -> list[str]:
  """Decodes every image once and checks that every query id has gallery candidates."""
  problems = []
  for split in ('train', 'query', 'gallery'):
    for r in getattr(splits, split):
      try:
        load_image(r)
      except DatasetError as e:
        problems.append(str(e))
  absent = sorted({q.pid for q in splits.query} - {g.pid for g in splits.gallery})
  if absent:
    shown = ', '.join(map(str, absent[:20])) + (' ...' if len(absent) > 20 else '')
    problems.append(f'{len(absent)} query ids have no gallery images, so their queries cannot be '
                    f'scored: {shown}')
  return problems
