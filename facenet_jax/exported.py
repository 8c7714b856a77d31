"""The exported embedding function on disk: written by `inference.export_embedding`, read here
with JAX and NumPy only (no Flax, no model code, no facenet_jax module but this one).

An export at PATH is three files:

    PATH                 `jax.export` serialization of
                         f(variables, rgb, ni, ti, flare) -> embedding float32 [B, E]
    PATH.json            the sidecar: image size, normalisation, batch size, flare rule,
                         embedding dim, checkpoint, and the order of the variables
    PATH.variables.npz   the model's `{params, batch_stats}`, one array per 'params/a/b' name

The variables are an argument of the exported function, not constants closed over: the
serialized program stays a few MB whatever the model (ResNet-50 or ViT-B streams would embed
0.3-1 GB of constants, near the 2 GB limit of the serialization and slow to compile), and the
weights stay plain float32 arrays that can be inspected or swapped for another checkpoint of the
same config.

Inputs of the function are the images after the evaluation transform: PIL bilinear resize to
`image_size` (H, W), then (x / 255 - mean) / std per channel, float32 [B, H, W, 3] each, and the
flare pseudo-label int32 [B, 2] (RGB bit, NI bit) computed from the original uint8 images with
`flare_rule` (`input_pipeline.flare_label`). The batch dimension is symbolic: any B works (each
new B compiles once).

    embed = load_exported('model.jaxexport')
    features = embed(rgb, ni, ti, flare)      # np.ndarray float32 [B, E], L2-normalised rows
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import jax
import numpy as np

FORMAT = 'facenet_jax.exported_embedding'
FORMAT_VERSION = 1
INPUT_NAMES = ('rgb', 'ni', 'ti', 'flare')


class ExportError(ValueError):
  """A missing or inconsistent export; the message names the file."""


def artifact_paths(path: str | pathlib.Path) -> dict[str, pathlib.Path]:
  """{'program', 'sidecar', 'variables'}: the three files of the export at `path`."""
  path = pathlib.Path(path)
  return {'program': path, 'sidecar': path.with_name(path.name + '.json'),
          'variables': path.with_name(path.name + '.variables.npz')}


def write(path: str | pathlib.Path, exported: jax.export.Exported,
          variables: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, str]:
  """Writes the three files of an export; returns their paths by role.

  Args:
    exported: the function, called as `(variable list, rgb, ni, ti, flare)`.
    variables: {'params/a/b': array}, in the order of the exported variable list.
    meta: JSON-serialisable facts for the sidecar (image size, normalisation, ...).
  """
  paths = artifact_paths(path)
  paths['program'].parent.mkdir(parents=True, exist_ok=True)
  paths['program'].write_bytes(exported.serialize())
  with paths['variables'].open('wb') as f:
    np.savez(f, **variables)
  sidecar = {'format': FORMAT, 'format_version': FORMAT_VERSION, **meta,
             'variable_names': list(variables)}
  paths['sidecar'].write_text(json.dumps(sidecar, indent=2) + '\n')
  return {k: str(v) for k, v in paths.items()}


def _read_sidecar(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    raise ExportError(f'{path}: sidecar of the export not found (written next to the program by '
                      'export_embedding)')
  try:
    meta = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ExportError(f'{path}: unreadable sidecar ({e})') from None
  if meta.get('format') != FORMAT or meta.get('format_version') != FORMAT_VERSION:
    raise ExportError(f'{path}: not a version-{FORMAT_VERSION} {FORMAT} sidecar '
                      f'(format {meta.get("format")!r}, version {meta.get("format_version")!r})')
  return meta


def _read_variables(path: pathlib.Path, names: Sequence[str]) -> list[np.ndarray]:
  if not path.is_file():
    raise ExportError(f'{path}: variables of the export not found')
  with np.load(path) as arrays:
    missing = [n for n in names if n not in arrays.files]
    if missing:
      raise ExportError(f'{path}: {len(missing)} variables named in the sidecar are missing, '
                        f'e.g. {missing[0]}')
    return [arrays[n] for n in names]


class ExportedEmbedding:
  """The exported embedding function with its variables bound: `(rgb, ni, ti, flare) -> [B, E]`.

  `meta` is the sidecar (image_size, mean, std, flare_rule, embedding_dim, ...), i.e. how to
  prepare the inputs.
  """

  def __init__(self, exported: jax.export.Exported, variables: list[np.ndarray],
               meta: dict[str, Any]):
    self.meta = meta
    self._exported = exported
    self._variables = jax.device_put(variables)
    self._call = jax.jit(exported.call)

  def __call__(self, rgb: np.ndarray, ni: np.ndarray, ti: np.ndarray,
               flare: np.ndarray) -> np.ndarray:
    """float32 [B, H, W, 3] x3 (resized, normalised) and int32 [B, 2] -> float32 [B, E]."""
    h, w = self.meta['image_size']
    images = []
    for name, x in zip(INPUT_NAMES, (rgb, ni, ti)):
      x = np.asarray(x, np.float32)
      if x.ndim != 4 or x.shape[1:] != (h, w, 3):
        raise ValueError(f'{name}: expected float32 [B, {h}, {w}, 3] (resized and normalised), '
                         f'got shape {x.shape}')
      images.append(x)
    flare = np.asarray(flare, np.int32)
    if flare.shape != (images[0].shape[0], 2) or any(x.shape != images[0].shape for x in images):
      raise ValueError(f'rgb, ni, ti must share one shape and flare be [B, 2]; got '
                       f'{[x.shape for x in images]} and {flare.shape}')
    return np.asarray(self._call(self._variables, *images, flare))


def load_exported(path: str | pathlib.Path) -> ExportedEmbedding:
  """Deserializes the export at `path` (see the module docstring) and binds its variables."""
  paths = artifact_paths(path)
  if not paths['program'].is_file():
    raise ExportError(f'{paths["program"]}: exported embedding not found')
  meta = _read_sidecar(paths['sidecar'])
  variables = _read_variables(paths['variables'], meta['variable_names'])
  exported = jax.export.deserialize(bytearray(paths['program'].read_bytes()))
  return ExportedEmbedding(exported, variables, meta)
