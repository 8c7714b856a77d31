"""Builders of tiny fake dataset trees in the real on-disk layouts (for the input_pipeline tests)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def small_synthetic_splits(root: str):
  """Splits of a small generated synthetic tree (12 ids x 4 triplets at 32x16, 40% glared)."""
  from input_pipeline import records  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  synthetic.generate_synthetic_dataset(root, num_ids=12, triplets_per_id=4, image_size=(32, 16),
                                       flare_fraction=0.4, seed=1)
  return records.load_splits('synthetic', root)


def write_image(path: str, shape=(16, 8, 3), value: int | None = None, seed: int = 0,
                mode: str | None = None) -> np.ndarray:
  """Writes a random (or constant) uint8 image; returns the array written."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  if value is None:
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
  else:
    arr = np.full(shape, value, np.uint8)
  img = Image.fromarray(arr) if mode is None else Image.fromarray(arr, mode)
  img.save(path)
  return arr


def make_wmveid863(root: str, spec: dict[str, dict[int, list[str]]], shape=(16, 8, 3)) -> str:
  """spec: {'train'|'query'|'test': {pid: [file names]}}; writes vis/ni/th with distinct pixels."""
  seed = 0
  for split, ids in spec.items():
    os.makedirs(os.path.join(root, split), exist_ok=True)
    for pid, names in ids.items():
      for name in names:
        for mod in ('vis', 'ni', 'th'):
          seed += 1
          write_image(os.path.join(root, split, f'{pid:04d}', mod, name), shape, seed=seed)
  return root


def simple_wmveid863(root: str) -> str:
  """Train ids 12, 3, 7 (unsorted), a single-image id 20, query/test ids 30, 31."""
  spec = {
      'train': {12: ['v0_n0_s001_000.png', 'v1_n1_s002_001.png'],
                3: ['v2_n0_s003_000.png', 'v3_n0_s004_001.png', 'v2_n0_s005_002.png'],
                7: ['v4_n1_s006_000.png', 'v5_n0_s007_001.png'],
                20: ['v6_n0_s008_000.png']},
      'query': {30: ['v0_n0_s010_000.png'], 31: ['v1_n0_s011_000.png']},
      'test': {30: ['v0_n0_s010_000.png', 'v2_n0_s012_001.png'],
               31: ['v1_n0_s011_000.png', 'v3_n1_s013_001.png']},
  }
  return make_wmveid863(root, spec)


def make_rgbnt100(parent: str, spec: dict[str, list[str]], width: int = 768) -> str:
  """spec: {'bounding_box_train'|'query'|'bounding_box_test': [file names]}; 128 x width montages."""
  seed = 100
  for sub, names in spec.items():
    for name in names:
      seed += 1
      write_image(os.path.join(parent, 'RGBNT100', 'rgbir', sub, name), (128, width, 3), seed=seed)
  return parent


def make_msvr310(parent: str, spec: dict[str, dict[int, list[str]]]) -> str:
  """spec: {'bounding_box_train'|'query3'|'bounding_box_test': {pid: [file names]}}."""
  seed = 1000
  for sub, ids in spec.items():
    os.makedirs(os.path.join(parent, 'MSVR310', sub), exist_ok=True)
    for pid, names in ids.items():
      for name in names:
        for mod in ('vis', 'ni', 'th'):
          seed += 1
          write_image(os.path.join(parent, 'MSVR310', sub, f'{pid:04d}', mod, name), seed=seed)
  return parent


def reference_normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 [..., 3] -> (x / 255 - mean) / std in float64: the reference for the pipeline's float32."""
  return (images / 255.0 - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)


def numpy_variables(shapes, seed: int = 0, kernel_gain: float = 2.0):
  """NumPy-drawn values for a traced variable tree (no PRNG compile: keeps the tests fast).

  Kernels ~ N(0, kernel_gain / fan_in), BatchNorm / LayerNorm scales and running variances
  ~ U(0.5, 1.5), biases and running means ~ N(0, 0.1^2), the flare threshold Delta = 0 as at
  initialisation. `shapes` is what `jax.eval_shape` gives for `model.init`.
  """
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == 'threshold':
      return np.zeros(s.shape, np.float32)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    if name in ('bias', 'mean'):
      return rng.normal(0, 0.1, s.shape).astype(np.float32)
    fan_in = max(int(np.prod(s.shape[:-1])), 1)
    return (rng.normal(size=s.shape) * np.sqrt(kernel_gain / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, flax.core.unfreeze(shapes))


# ------------------------------------------------------------------ cross-modality layouts
def make_sysu(root: str, images: dict[tuple[int, int], int], train_ids, val_ids, test_ids,
              shape=(12, 6, 3)) -> str:
  """images: {(camera, pid): number of images}; writes cam{c}/{pid:04d}/{n:04d}.jpg and exp/."""
  seed = 200
  for (cam, pid), count in sorted(images.items()):
    for n in range(count):
      seed += 1
      write_image(os.path.join(root, f'cam{cam}', f'{pid:04d}', f'{n + 1:04d}.png'), shape,
                  seed=seed)
  os.makedirs(os.path.join(root, 'exp'), exist_ok=True)
  for name, ids in (('train', train_ids), ('val', val_ids), ('test', test_ids)):
    with open(os.path.join(root, 'exp', f'{name}_id.txt'), 'w') as f:
      f.write(','.join(str(i) for i in ids) + '\n')
  return root


def make_regdb(root: str, trial: int, train_ids, test_ids, per_id: int = 2,
               shape=(12, 6, 3)) -> str:
  """idx/{train,test}_{visible,thermal}_{trial}.txt with `per_id` images of each id per modality."""
  seed = 300
  os.makedirs(os.path.join(root, 'idx'), exist_ok=True)
  for split, ids in (('train', train_ids), ('test', test_ids)):
    for name, folder in (('visible', 'Visible'), ('thermal', 'Thermal')):
      lines = []
      for label, pid in enumerate(ids):
        for n in range(per_id):
          seed += 1
          rel = f'{folder}/{pid}/{folder[0]}_{pid}_{n}.png'
          write_image(os.path.join(root, rel), shape, seed=seed)
          lines.append(f'{rel} {label if split == "train" else pid}')
      with open(os.path.join(root, 'idx', f'{split}_{name}_{trial}.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
  return root


def make_llcm(root: str, train: dict[int, int], test: dict[tuple[str, int, int], int],
              shape=(12, 6, 3)) -> str:
  """train: {label: images per modality}; test: {('vis'|'nir', camera, pid): images}."""
  seed = 400
  os.makedirs(os.path.join(root, 'idx'), exist_ok=True)
  for mod in ('vis', 'nir'):
    lines = []
    for label, count in sorted(train.items()):
      for n in range(count):
        seed += 1
        rel = f'{mod}/cam{n % 2 + 1}/{label:04d}/{n:03d}.png'
        write_image(os.path.join(root, rel), shape, seed=seed)
        lines.append(f'{rel} {label}')
    with open(os.path.join(root, 'idx', f'train_{mod}.txt'), 'w') as f:
      f.write('\n'.join(lines) + '\n')
  for (mod, cam, pid), count in sorted(test.items()):
    for n in range(count):
      seed += 1
      write_image(os.path.join(root, f'test_{mod}', f'cam{cam}', f'{pid:04d}', f'{n:03d}.png'),
                  shape, seed=seed)
  with open(os.path.join(root, 'idx', 'test_id.txt'), 'w') as f:
    f.write(','.join(str(p) for p in sorted({p for _, _, p in test})) + '\n')
  return root


def make_dn(root: str, lists: dict[str, dict[int, int]], shape=(12, 6, 3)) -> str:
  """lists: {list file name: {pid: images}}; images in day/ or night/ by the name's ending."""
  seed = 500
  os.makedirs(os.path.join(root, 'train_test_split'), exist_ok=True)
  for name, ids in lists.items():
    folder = 'day' if 'day' in name else 'night'
    lines = []
    for pid, count in sorted(ids.items()):
      for n in range(count):
        seed += 1
        rel = f'{pid:05d}/{name[:-4]}_{n:03d}.png'
        write_image(os.path.join(root, folder, rel), shape, seed=seed)
        lines.append(rel)
    with open(os.path.join(root, 'train_test_split', name), 'w') as f:
      f.write('\n'.join(lines) + '\n')
  return root
