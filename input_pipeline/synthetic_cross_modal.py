"""Built-in synthetic cross-modality sets, drawn with the vehicle renderer of `synthetic`.

Two layouts, each the real dataset's, so the real readers (`cross_modal`) read them unchanged:

* SYSU-like (`generate_sysu_like`, read as 'sysu_mm01'): six cameras; 1, 2, 4, 5 are visible
  (the renderer's RGB image), 3 and 6 near-infrared (its NI image). Every capture is rendered
  afresh (own pose, lighting, noise) and only one of its modalities is written, so the two pools
  are unpaired, as in SYSU-MM01. Infrared cameras film mostly at night. Each id is seen by two to
  four visible cameras and one or both infrared ones. `exp/{train,val,test}_id.txt` split the ids
  2 : 1/3 : 1 like SYSU-MM01's 296 / 99 / 96 in spirit (a third of them are test ids).
* DN-like (`generate_dn_like`, read as 'dn348'): RGB captures by day and by night, the night ones
  with the renderer's headlight and street-light glare at the night rate; `day/<pid:05d>/`,
  `night/<pid:05d>/` and `train_test_split/{train,test}_list_{day,night}.txt`.

Everything is a pure function of the seed (NumPy + Pillow). What a model can learn here is the
renderer's identity cues seen through two sensors (colour is gone in NI; glare hides parts at
night); the numbers are a check that the whole path works, not a stand-in for SYSU-MM01 or DN-348.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from input_pipeline import synthetic

SYSU_VISIBLE = (1, 2, 4, 5)
SYSU_INFRARED = (3, 6)


def _check_out(out_dir: str) -> None:
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise ValueError(f'{out_dir}: output folder exists and is not empty')


def _save(image: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, compress_level=1)


def _split_ids(num_ids: int, seed: int) -> tuple[list[int], list[int], list[int]]:
  """(train, val, test) pids 1..num_ids: a third test, a sixth of the rest val."""
  pids = np.random.default_rng([seed, 20]).permutation(np.arange(1, num_ids + 1))
  num_test = max(2, num_ids // 3)
  test, rest = sorted(pids[:num_test].tolist()), pids[num_test:]
  num_val = len(rest) // 6
  return sorted(rest[num_val:].tolist()), sorted(rest[:num_val].tolist()), test


def generate_sysu_like(out_dir: str, *, num_ids: int = 60, images_per_camera: int = 3,
                       image_size: tuple[int, int] = (64, 32), seed: int = 0) -> str:
  """Writes a SYSU-MM01-layout tree of unpaired visible / infrared captures (module docstring)."""
  if num_ids < 6:
    raise ValueError(f'num_ids: need at least 6 identities, got {num_ids}')
  if images_per_camera < 1:
    raise ValueError(f'images_per_camera: must be >= 1, got {images_per_camera}')
  _check_out(out_dir)
  cameras = {c: synthetic._make_camera(np.random.default_rng([seed, 21, c]), front=c % 2 == 1)  # pylint: disable=protected-access
             for c in SYSU_VISIBLE + SYSU_INFRARED}
  for pid in range(1, num_ids + 1):
    rng = np.random.default_rng([seed, 22, pid])
    ident = synthetic._make_identity(np.random.default_rng([seed, 23, pid]))  # pylint: disable=protected-access
    visible = rng.choice(SYSU_VISIBLE, int(rng.integers(2, 5)), replace=False)
    infrared = rng.choice(SYSU_INFRARED, int(rng.integers(1, 3)), replace=False)
    for cam in sorted(int(c) for c in np.concatenate([visible, infrared])):
      is_infrared = cam in SYSU_INFRARED
      for n in range(images_per_camera):
        crng = np.random.default_rng([seed, 24, pid, cam, n])
        night = bool(crng.random() < (0.8 if is_infrared else 0.1))
        t = synthetic.render_triplet(ident, cameras[cam], crng, tuple(image_size), night, False)
        _save(t.ni if is_infrared else t.rgb,
              os.path.join(out_dir, f'cam{cam}', f'{pid:04d}', f'{n + 1:04d}.png'))
  train, val, test = _split_ids(num_ids, seed)
  os.makedirs(os.path.join(out_dir, 'exp'), exist_ok=True)
  for name, ids in (('train', train), ('val', val), ('test', test)):
    with open(os.path.join(out_dir, 'exp', f'{name}_id.txt'), 'w') as f:
      f.write(','.join(str(i) for i in ids) + '\n')
  return out_dir


def generate_dn_like(out_dir: str, *, num_ids: int = 60, images_per_state: int = 4,
                     image_size: tuple[int, int] = (64, 32), night_glare_rate: float = 0.44,
                     seed: int = 0) -> str:
  """Writes a DN-348-layout tree of day and night RGB captures (module docstring)."""
  if num_ids < 6:
    raise ValueError(f'num_ids: need at least 6 identities, got {num_ids}')
  if images_per_state < 1:
    raise ValueError(f'images_per_state: must be >= 1, got {images_per_state}')
  if not 0.0 <= night_glare_rate <= 1.0:
    raise ValueError(f'night_glare_rate: must be in [0, 1], got {night_glare_rate}')
  _check_out(out_dir)
  cameras = [synthetic._make_camera(np.random.default_rng([seed, 25, c]), front=c % 2 == 0)  # pylint: disable=protected-access
             for c in range(8)]
  train, val, test = _split_ids(num_ids, seed)
  lists: dict[str, list[str]] = {}
  for pid in range(1, num_ids + 1):
    ident = synthetic._make_identity(np.random.default_rng([seed, 26, pid]))  # pylint: disable=protected-access
    split = 'test' if pid in test else 'train'
    for state, night in (('day', False), ('night', True)):
      for n in range(images_per_state):
        crng = np.random.default_rng([seed, 27, pid, int(night), n])
        cam = cameras[int(crng.integers(len(cameras)))]
        glared = night and bool(crng.random() < night_glare_rate)
        t = synthetic.render_triplet(ident, cam, crng, tuple(image_size), night, glared)
        rel = f'{pid:05d}/{n:03d}.png'
        _save(t.rgb, os.path.join(out_dir, state, rel))
        lists.setdefault(f'{split}_list_{state}.txt', []).append(rel)
  del val  # DN-348 has no validation ids: the val share trains
  os.makedirs(os.path.join(out_dir, 'train_test_split'), exist_ok=True)
  for name, lines in lists.items():
    with open(os.path.join(out_dir, 'train_test_split', name), 'w') as f:
      f.write('\n'.join(lines) + '\n')
  return out_dir
