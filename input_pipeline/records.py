"""Dataset records: one aligned RGB/NI/TI triplet per record, read from the real on-disk layouts.

Readers (NumPy + Pillow only, no TensorFlow):

* WMVeID863  `ROOT/{train,query,test}/<pid>/{vis,ni,th}/<file>`; `test` is the gallery. The camera
  is the digit after the `v` field of the file name (kept as written, like the official loader);
  an `n<digit>` field must be present; the scene is the optional `s<digits>` field, else -1.
* RGBNT100   `ROOT/RGBNT100/rgbir/{bounding_box_train,query,bounding_box_test}/<pid>_c<cam>_*.jpg`,
  each file a horizontal 768x128 montage RGB | NI | TI of 256x128 tiles. The three paths of a
  record are the same montage file and `montage=True`; cameras become 0-based.
* MSVR310    `ROOT/MSVR310/{bounding_box_train,query3,bounding_box_test}/<pid>/{vis,ni,th}/`,
  names like `0268_s000_v0_000.jpg` (pid, scene, 0-based camera); the scene id is kept.

For RGBNT100 and MSVR310, ROOT is the parent folder as in the official configs; a ROOT that is
the dataset folder itself is accepted too.

Modalities are paired by file name, never by directory-listing order (the official WMVeID863
loader pairs by `os.listdir` index). Only training pids are relabelled, to 0..N-1 in sorted raw-pid
order; query and gallery keep raw pids. Every problem found raises `DatasetError` (a ValueError)
whose message names the offending path or field; `scan_splits` collects all of them instead.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from typing import Callable, Sequence

import numpy as np
from PIL import Image

DATASETS = ('wmveid863', 'rgbnt100', 'msvr310', 'synthetic')
SPLITS = ('train', 'query', 'gallery')
# The spectra of an aligned triplet, in batch and model order; the one definition of these names.
MODALITIES = ('rgb', 'ni', 'ti')
MODALITY_DIRS = ('vis', 'ni', 'th')          # RGB, NI, TI folders (WMVeID863 and MSVR310)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
MONTAGE_TILE = (128, 256)                    # (H, W) of one RGBNT100 tile
MONTAGE_MIN_WIDTH = 3 * MONTAGE_TILE[1]      # RGB | NI | TI side by side

_WMVEID_SPLIT_DIRS = {'train': 'train', 'query': 'query', 'gallery': 'test'}
_RGBNT100_SPLIT_DIRS = {'train': 'bounding_box_train', 'query': 'query',
                        'gallery': 'bounding_box_test'}
_MSVR310_SPLIT_DIRS = {'train': 'bounding_box_train', 'query': 'query3',
                       'gallery': 'bounding_box_test'}


class DatasetError(ValueError):
  """A dataset tree or image is malformed; the message names the path or field."""


@dataclasses.dataclass(frozen=True)
class Record:
  """One aligned image triplet.

  pid is the 0..N-1 label for training records and the raw vehicle id otherwise. scene is -1
  where the dataset has none. For RGBNT100 the three paths are the same montage file and
  `montage` is True (tile 0 = RGB, 1 = NI, 2 = TI).
  """
  rgb_path: str
  ni_path: str
  ti_path: str
  pid: int
  camid: int
  scene: int
  split: str
  montage: bool = False


@dataclasses.dataclass(frozen=True)
class Splits:
  train: list[Record]
  query: list[Record]
  gallery: list[Record]


# ------------------------------------------------------------------------------------ readers


def _image_files(folder: str) -> list[str]:
  return sorted(f for f in os.listdir(folder)
                if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS))


def _pid_folders(split_dir: str, problems: list[str]) -> list[tuple[int, str]]:
  """[(pid, folder path)] for the per-vehicle folders of one split, sorted by pid."""
  out = []
  for name in sorted(os.listdir(split_dir)):
    path = os.path.join(split_dir, name)
    if name.startswith('.') or not os.path.isdir(path):
      continue
    if not name.isdigit():
      problems.append(f'{path}: vehicle folder name is not an integer pid')
      continue
    out.append((int(name), path))
  return out


def _paired_triplets(pid_dir: str, problems: list[str]) -> list[tuple[str, str, str, str]]:
  """[(file name, vis path, ni path, th path)] paired by identical file names."""
  listings = {}
  for mod in MODALITY_DIRS:
    folder = os.path.join(pid_dir, mod)
    if not os.path.isdir(folder):
      problems.append(f'{folder}: missing modality folder')
      return []
    listings[mod] = set(_image_files(folder))
  out = []
  for name in sorted(listings['vis']):
    missing = [m for m in MODALITY_DIRS[1:] if name not in listings[m]]
    if missing:
      problems.append(f'{os.path.join(pid_dir, "vis", name)}: no partner file with the same name '
                   f'in {", ".join(os.path.join(pid_dir, m) for m in missing)}')
      continue
    out.append((name, *(os.path.join(pid_dir, m, name) for m in MODALITY_DIRS)))
  for mod in MODALITY_DIRS[1:]:
    for name in sorted(listings[mod] - listings['vis']):
      problems.append(f'{os.path.join(pid_dir, mod, name)}: no partner file with the same name '
                   f'in {os.path.join(pid_dir, "vis")}')
  return out


_WMV_CAM = re.compile(r'v+(\d)')
_WMV_NIGHT = re.compile(r'n+(\d)')
_WMV_SCENE = re.compile(r'(?:^|_)s(\d+)(?:_|\.|$)')


def parse_wmveid863_name(path: str) -> tuple[int, int]:
  """(camid, scene) from a WMVeID863 file name such as `v3_n0_s012_004.jpg`.

  The camera is the digit after the first run of `v`, kept as written (the official loader does
  not decrement it). The `n<digit>` (day/night) field must be present as the official loader
  requires it; its value is not used. The scene is the `s<digits>` field, or -1.
  """
  stem = os.path.splitext(os.path.basename(path))[0]
  cam = _WMV_CAM.search(stem)
  if cam is None or _WMV_NIGHT.search(stem) is None:
    raise DatasetError(f'{path}: cannot parse file name (expected v<camera> and n<digit> fields, '
                       'e.g. v3_n0_s012_004.jpg)')
  scene = _WMV_SCENE.search(stem)
  return int(cam.group(1)), int(scene.group(1)) if scene else -1


_MSVR_NAME = re.compile(r'^(\d+)_s(\d+)_v(\d)_')


def parse_msvr310_name(path: str) -> tuple[int, int, int]:
  """(pid, scene, camid) from an MSVR310 file name such as `0268_s000_v0_000.jpg` (camid 0..7)."""
  name = os.path.basename(path)
  m = _MSVR_NAME.match(name)
  if m is None or not 0 <= int(m.group(3)) <= 7:
    raise DatasetError(f'{path}: cannot parse file name (expected <pid>_s<scene>_v<camera 0-7>_'
                       '<index>, e.g. 0268_s000_v0_000.jpg)')
  return int(m.group(1)), int(m.group(2)), int(m.group(3))


_RGBNT_NAME = re.compile(r'^(\d+)_c(\d+)')


def parse_rgbnt100_name(path: str) -> tuple[int, int]:
  """(pid, 0-based camid) from an RGBNT100 name such as `0539_c0001_009.jpg` (cameras 1..8).

  Parsed from the file name only: the official regex runs on the full path and can match a
  folder name instead.
  """
  name = os.path.basename(path)
  m = _RGBNT_NAME.match(name)
  if m is None or not 1 <= int(m.group(2)) <= 8:
    raise DatasetError(f'{path}: cannot parse file name (expected <pid>_c<camera 1-8>_*, '
                       'e.g. 0539_c0001_009.jpg)')
  return int(m.group(1)), int(m.group(2)) - 1


def _split_dir(root: str, sub: str, problems: list[str]) -> str | None:
  path = os.path.join(root, sub)
  if not os.path.isdir(path):
    problems.append(f'{path}: missing split folder')
    return None
  return path


def _read_wmveid863(root: str, problems: list[str]) -> dict[str, tuple[str | None, list[Record]]]:
  out = {}
  for split, sub in _WMVEID_SPLIT_DIRS.items():
    records = []
    split_dir = _split_dir(root, sub, problems)
    if split_dir is not None:
      for pid, pid_dir in _pid_folders(split_dir, problems):
        for _, vis, ni, th in _paired_triplets(pid_dir, problems):
          try:
            cam, scene = parse_wmveid863_name(vis)
          except DatasetError as e:
            problems.append(str(e))
            continue
          records.append(Record(vis, ni, th, pid, cam, scene, split))
    out[split] = (split_dir, records)
  return out


def _read_msvr310(root: str, problems: list[str]) -> dict[str, tuple[str | None, list[Record]]]:
  base = os.path.join(root, 'MSVR310')
  if not os.path.isdir(base) and os.path.isdir(os.path.join(root, 'bounding_box_train')):
    base = root
  out = {}
  for split, sub in _MSVR310_SPLIT_DIRS.items():
    records = []
    split_dir = _split_dir(base, sub, problems)
    if split_dir is not None:
      for pid, pid_dir in _pid_folders(split_dir, problems):
        for _, vis, ni, th in _paired_triplets(pid_dir, problems):
          try:
            name_pid, scene, cam = parse_msvr310_name(vis)
          except DatasetError as e:
            problems.append(str(e))
            continue
          if name_pid != pid:
            problems.append(f'{vis}: pid {name_pid} in the file name differs from the folder pid {pid}')
            continue
          records.append(Record(vis, ni, th, pid, cam, scene, split))
    out[split] = (split_dir, records)
  return out


def _read_rgbnt100(root: str, problems: list[str]) -> dict[str, tuple[str | None, list[Record]]]:
  base = os.path.join(root, 'RGBNT100', 'rgbir')
  if not os.path.isdir(base):
    for candidate in (os.path.join(root, 'rgbir'), root):
      if os.path.isdir(os.path.join(candidate, 'bounding_box_train')):
        base = candidate
        break
  out = {}
  for split, sub in _RGBNT100_SPLIT_DIRS.items():
    records = []
    split_dir = _split_dir(base, sub, problems)
    if split_dir is not None:
      for name in _image_files(split_dir):
        path = os.path.join(split_dir, name)
        try:
          pid, cam = parse_rgbnt100_name(path)
        except DatasetError as e:
          problems.append(str(e))
          continue
        records.append(Record(path, path, path, pid, cam, -1, split, montage=True))
    out[split] = (split_dir, records)
  return out


_READERS: dict[str, Callable[[str, list[str]], dict[str, tuple[str | None, list[Record]]]]] = {
    'wmveid863': _read_wmveid863,
    'synthetic': _read_wmveid863,   # the built-in synthetic set is written in WMVeID863 layout
    'rgbnt100': _read_rgbnt100,
    'msvr310': _read_msvr310,
}


def relabel(records: Sequence[Record]) -> list[Record]:
  """Records with pids mapped to 0..N-1 in sorted order of the pids they carry."""
  mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
  return [dataclasses.replace(r, pid=mapping[r.pid]) for r in records]


def num_classes(records: Sequence[Record]) -> int:
  """Number of distinct pids (the classifier width for relabelled training records)."""
  return len({r.pid for r in records})


def scan_splits(dataset: str, root: str) -> tuple[Splits, list[str]]:
  """Reads a dataset tree, collecting every problem instead of raising on the first one.

  Returns the records that could be read (training pids relabelled) and the problem messages,
  each naming a path or field. An empty split is a problem.
  """
  if dataset not in _READERS:
    raise DatasetError(f'data.dataset: unknown dataset {dataset!r}; expected one of {DATASETS}')
  if not root or not os.path.isdir(root):
    raise DatasetError(f'data.root: dataset root {root!r} is not a folder')
  problems: list[str] = []
  by_split = _READERS[dataset](root, problems)
  for split in SPLITS:
    folder, records = by_split[split]
    if folder is not None and not records:
      problems.append(f'{folder}: empty split {split!r} (no readable image triplets)')
  splits = Splits(train=relabel(by_split['train'][1]), query=by_split['query'][1],
                  gallery=by_split['gallery'][1])
  return splits, problems


def load_splits(dataset: str, root: str) -> Splits:
  """Reads train/query/gallery records of `dataset` under `root`; raises DatasetError on any problem.

  Image contents are not opened here (see `load_triplet` and scripts/check_dataset.py).
  """
  splits, problems = scan_splits(dataset, root)
  if problems:
    more = (f' (and {len(problems) - 1} more problems; scripts/check_dataset.py lists them all)'
            if len(problems) > 1 else '')
    raise DatasetError(problems[0] + more)
  return splits


def prescan(splits: Splits) -> list[str]:
  """Every problem that would stop a run midway or skew its numbers, found before it starts.

  Decodes every image of every split once (`load_triplet`, what training and evaluation use),
  checks that the three images of a triplet have the same size (they are aligned views), and that
  every query id has gallery images (else its queries cannot be scored). Returns the problem
  messages, each naming a file or the ids.
  """
  problems: list[str] = []
  for split in SPLITS:
    for r in getattr(splits, split):
      try:
        rgb, ni, ti = load_triplet(r)
      except DatasetError as e:
        problems.append(str(e))
        continue
      if not r.montage and not rgb.shape[:2] == ni.shape[:2] == ti.shape[:2]:
        problems.append(f'{r.rgb_path}: the triplet\'s images differ in size (RGB '
                        f'{rgb.shape[1]}x{rgb.shape[0]}, NI {ni.shape[1]}x{ni.shape[0]} '
                        f'{r.ni_path}, TI {ti.shape[1]}x{ti.shape[0]} {r.ti_path})')
  gallery_ids = {g.pid for g in splits.gallery}
  absent = sorted({q.pid for q in splits.query} - gallery_ids)
  if absent:
    shown = ', '.join(map(str, absent[:20])) + (' ...' if len(absent) > 20 else '')
    problems.append(f'{len(absent)} query ids have no gallery images, so their queries cannot be '
                    f'scored: {shown}')
  return problems


def format_problems(problems: Sequence[str], root: str) -> str:
  """One message listing every problem (the first 50) of the tree at `root`."""
  listed = '\n'.join(f'  {p}' for p in problems[:50])
  more = f'\n  ... and {len(problems) - 50} more' if len(problems) > 50 else ''
  return f'{len(problems)} problems in the dataset at {root}:\n{listed}{more}'


# ------------------------------------------------------------------------------ validation split


def split_validation(train: Sequence[Record], num_val_ids: int,
                     seed: int) -> tuple[list[Record], list[Record], list[Record]]:
  """Holds `num_val_ids` training identities out as a validation query/gallery pair.

  Ids are drawn at random (seeded) among those with at least two triplets, preferring ids seen
  by two or more cameras. Rule per held-out id, so that every validation query has a gallery
  match from another camera whenever the id was seen by two cameras:
    * one query per camera that has two or more triplets of the id (drawn at random); the other
      triplets stay in the gallery, so every camera keeps at least one gallery triplet;
    * if no camera has two triplets (each camera saw the id once), one triplet becomes the query
      and the others (all from other cameras) form the gallery;
    * an id seen by a single camera gives one query and the rest as same-camera gallery.
  The remaining training ids are relabelled 0..N-1 again; validation records keep the pid they
  had and get split 'query' / 'gallery'.

  Returns: (train, val_query, val_gallery).
  """
  if num_val_ids <= 0:
    return list(train), [], []
  by_pid: dict[int, list[Record]] = collections.defaultdict(list)
  for r in train:
    by_pid[r.pid].append(r)
  rng = np.random.default_rng([seed, 0x7A1])
  eligible = sorted(p for p, rs in by_pid.items() if len(rs) >= 2)
  multi_cam = [p for p in eligible if len({r.camid for r in by_pid[p]}) >= 2]
  single_cam = [p for p in eligible if p not in set(multi_cam)]
  if num_val_ids > len(eligible) or num_val_ids >= len(by_pid):
    raise DatasetError(
        f'data.num_val_ids: {num_val_ids} validation ids requested but only {len(eligible)} of '
        f'{len(by_pid)} training ids have two or more triplets (and at least one id must remain '
        'for training)')
  order = list(rng.permutation(multi_cam)) + list(rng.permutation(single_cam))
  held_out = set(int(p) for p in order[:num_val_ids])

  val_query, val_gallery = [], []
  for pid in sorted(held_out):
    rs = by_pid[pid]
    by_cam: dict[int, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(rs):
      by_cam[r.camid].append(i)
    query_idx = [int(rng.choice(idx)) for _, idx in sorted(by_cam.items()) if len(idx) >= 2]
    if not query_idx:
      query_idx = [int(rng.integers(len(rs)))]
    for i, r in enumerate(rs):
      if i in query_idx:
        val_query.append(dataclasses.replace(r, split='query'))
      else:
        val_gallery.append(dataclasses.replace(r, split='gallery'))
  remaining = relabel([r for r in train if r.pid not in held_out])
  return remaining, val_query, val_gallery


# ---------------------------------------------------------------------------------- decoding


def load_image(path: str) -> np.ndarray:
  """Decodes one image file to uint8 [H, W, 3].

  1-channel (L), palette and alpha images are converted to RGB (channels replicated), the same
  values the RGB image of an L file shows; NI/TI images are often saved that way. High bit-depth
  or float images (modes I, I;16, F) are rejected rather than silently rescaled.
  """
  if path.startswith('tfds://'):
    raise DatasetError(f'{path}: a record of a prepared TFDS dataset; decode it with '
                       'input_pipeline.pipeline.load_record_triplet')
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
        raise DatasetError(f'{path}: unsupported image mode {im.mode!r} (expected 8-bit RGB or L)')
      if im.mode != 'RGB':
        im = im.convert('RGB')
      return np.asarray(im, dtype=np.uint8).copy()
  except DatasetError:
    raise
  except (OSError, SyntaxError, ValueError) as e:
    raise DatasetError(f'{path}: unreadable or truncated image ({e})') from e


def split_montage(montage: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Cuts an RGBNT100 montage uint8 [128, >=768, 3] into RGB, NI, TI tiles [128, 256, 3]."""
  h, w = montage.shape[:2]
  th, tw = MONTAGE_TILE
  if w < MONTAGE_MIN_WIDTH or h < th:
    raise DatasetError(f'{path}: RGBNT100 montage is {w}x{h} (width x height); expected at least '
                       f'{MONTAGE_MIN_WIDTH}x{th} (RGB | NI | TI tiles of {tw}x{th})')
  return tuple(montage[:th, i * tw:(i + 1) * tw] for i in range(3))


def load_triplet(record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Decoded uint8 (rgb, ni, ti), each [H, W, 3], at the original resolution."""
  if record.montage:
    return split_montage(load_image(record.rgb_path), record.rgb_path)
  return load_image(record.rgb_path), load_image(record.ni_path), load_image(record.ti_path)


def single_image_ids(records: Sequence[Record]) -> list[int]:
  """Pids with exactly one triplet (kept for training; the sampler repeats them)."""
  counts = collections.Counter(r.pid for r in records)
  return sorted(p for p, c in counts.items() if c == 1)
