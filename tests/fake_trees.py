"""Builders of tiny fake dataset trees in the real on-disk layouts (for the input_pipeline tests)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


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
