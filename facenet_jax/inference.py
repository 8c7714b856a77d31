"""Feature extraction with a trained model: restore a workdir's checkpoint read-only, embed image
triplets, export the embedding function.

    extractor = FeatureExtractor.from_workdir('runs/wmveid863')       # best checkpoint
    features = extractor.embed_arrays(rgb, ni, ti)    # uint8 [N, h, w, 3] x3 -> float32 [N, E]
    names, features = extractor.embed_folder('crops/')
    export_embedding(extractor, 'model.jaxexport')     # then load_exported: JAX + NumPy only

Everything comes from the workdir: the model and preprocessing from `config.json` (written by the
trainer), the weights from `best/<step>` or `checkpoints/<step>` (verified against their
checksums). The dataset is never read (the number of classes comes from the checkpoint's shapes).
Reading is strictly read-only: the step folder is opened directly with an orbax
`PyTreeCheckpointer` restore of just `{params, batch_stats}`, with no `CheckpointManager` (a
writing one creates folders and removes temporary ones on start-up, while a trainer may be
saving there).

Preprocessing is the evaluation transform, through the same functions as the eval stream: flare
pseudo-label from the original uint8 RGB and NI images (`flare_label.flare_bits`,
`config.data.flare_rule`), PIL bilinear resize to `config.data.image_size` (`augment.resize`),
then `augment.normalize` with `config.data.mean` / `std`. Batches have a fixed size, the last one
zero-padded as the eval stream pads, so one program is compiled. Everything runs on one device.
Rows are embedded independently (eval-mode batch norm), except under the reproduced official bug
`model.bug_batch_level_gating`, where, as in the evaluator, one flared row switches FCE on for its
whole batch.

Folders (`embed_folder`), decided by what is at the top:
  * flat:       DIR/{vis,ni,th}/<name>           (one set of triplets)
  * per id:     DIR/<id>/{vis,ni,th}/<name>      (the WMVeID863 layout of one split folder; <id>
                                                  is any folder name, subfolders without any of
                                                  vis/ni/th are skipped)
Files are paired by identical names across vis/ni/th (`input_pipeline.records`, as the dataset
readers pair them); a file without its partners is an error. A triplet is named by the relative
path of its RGB image (`vis/x.jpg`, `0001/vis/x.jpg`); triplets are in sorted order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from facenet_jax import checkpointing
from facenet_jax import exported as exported_lib
from facenet_jax import models
from facenet_jax import steps
from facenet_jax.models import registry
from facenet_jax.optim import path_to_str
from input_pipeline import augment
from input_pipeline import flare_label
from input_pipeline import records

CHECKPOINTS = {'best': 'best', 'latest': 'checkpoints'}   # `which` -> folder in the workdir
EVAL_RESIZE = 'bilinear'   # the test transform of `input_pipeline.pipeline`
VARIABLE_COLLECTIONS = ('params', 'batch_stats')

load_exported = exported_lib.load_exported


class InferenceError(ValueError):
  """Bad input to feature extraction (an empty folder, images of the wrong type); names it."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model restored from a workdir, ready to apply (eval mode)."""
  config: ml_collections.ConfigDict    # the run's config.json
  model: Any                           # the Flax module of config.model
  spec: registry.ModelSpec
  variables: dict[str, Any]            # {'params', 'batch_stats'}, arrays on one device
  num_classes: int                     # classifier width, read from the checkpoint's shapes
  step: int
  checkpoint_dir: pathlib.Path         # the step folder that was read


# ------------------------------------------------------------------------------ loading


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the config had (image_size, mean, std ...)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def read_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The run's config from `<workdir>/config.json`; FileNotFoundError naming what is missing."""
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f'{workdir}: workdir not found (a training run\'s --workdir)')
  path = workdir / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'{path}: not found; the trainer writes it at the start of a run '
                            '(is this a training workdir?)')
  try:
    payload = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise InferenceError(f'{path}: unreadable config ({e})') from None
  for group in ('data', 'model'):
    if not isinstance(payload.get(group), dict):
      raise InferenceError(f'{path}: no {group!r} group; not a facenet_jax run config')
  return ml_collections.ConfigDict(_tuples(payload))


def _finished_steps(folder: pathlib.Path) -> list[int]:
  """Steps of the finished checkpoints in `folder`: orbax renames a save's temporary folder
  (`<step>.orbax-checkpoint-tmp-*`) to the bare step number only once it is complete."""
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir()
                if p.name.isdigit() and (p / 'state').is_dir())


def find_checkpoint(workdir: str | pathlib.Path, which: str = 'best',
                    step: int | None = None) -> pathlib.Path:
  """The step folder `<workdir>/best/<step>` or `<workdir>/checkpoints/<step>` to read.

  `which='best'`: the best-by-validation checkpoint; `'latest'`: the newest step checkpoint;
  `step` picks one step of that folder instead of the newest.
  """
  if which not in CHECKPOINTS:
    raise InferenceError(f'which={which!r}: expected one of {sorted(CHECKPOINTS)}')
  folder = pathlib.Path(workdir) / CHECKPOINTS[which]
  available = _finished_steps(folder)
  if not available:
    other = 'latest' if which == 'best' else 'best'
    raise checkpointing.CheckpointError(
        f'{folder}: no finished checkpoint (try the {other!r} checkpoint)')
  if step is None:
    step = available[-1]
  if step not in available:
    raise checkpointing.CheckpointError(
        f'{folder}: no checkpoint at step {step}; available steps: {available}')
  return folder / str(step)


def _saved_shapes(state_dir: pathlib.Path) -> dict[str, tuple[int, ...]]:
  """{'params/a/b': shape} of the `{params, batch_stats}` leaves stored in a state item."""
  # The handler, not a Checkpointer: it reads the item's own metadata without looking for (and
  # warning about) the step-level metadata file one folder up.
  tree = ocp.PyTreeCheckpointHandler().metadata(state_dir).tree
  is_leaf = lambda x: hasattr(x, 'shape') and not isinstance(x, (dict, list, tuple))
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  shapes = {path_to_str(path): tuple(leaf.shape) for path, leaf in leaves}
  return {k: v for k, v in shapes.items() if k.split('/')[0] in VARIABLE_COLLECTIONS}


def _variable_shapes(model, image_size: tuple[int, int]) -> dict[str, Any]:
  """The model's `{params, batch_stats}` as ShapeDtypeStructs (traced, nothing computed)."""
  shapes = jax.eval_shape(lambda r: registry.init_variables(model, image_size, r),
                          jax.random.PRNGKey(0))
  return {k: shapes.get(k, {}) for k in VARIABLE_COLLECTIONS}


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_to_str(path): tuple(leaf.shape) for path, leaf in leaves}


def _num_classes(probe: dict[str, tuple[int, ...]], saved: dict[str, tuple[int, ...]]) -> int:
  """The classifier width of a checkpoint, given the shapes of the model built for one class.

  The leaves that depend on the number of classes end in it (classifier kernels [D, classes]);
  they are exactly those whose last dimension is 1 in the probe and differs in the checkpoint.
  Any other difference is left to the shape check that follows.
  """
  widths = {saved[k][-1] for k, shape in probe.items()
            if k in saved and shape and shape[-1] == 1 and saved[k][:-1] == shape[:-1]
            and len(saved[k]) == len(shape)}
  return widths.pop() if len(widths) == 1 else 1


def _check_shapes(expected: dict[str, tuple[int, ...]], saved: dict[str, tuple[int, ...]],
                  step_dir: pathlib.Path) -> None:
  """CheckpointError listing the differences when the checkpoint is not this model's."""
  lines = [f'  shape {k}: checkpoint {saved[k]} vs model {expected[k]}'
           for k in sorted(set(expected) & set(saved)) if expected[k] != saved[k]]
  lines += [f'  missing in checkpoint: {k}' for k in sorted(set(expected) - set(saved))]
  lines += [f'  not in the model: {k}' for k in sorted(set(saved) - set(expected))]
  if lines:
    more = [f'  ... {len(lines)} differences in all'] if len(lines) > 20 else []
    raise checkpointing.CheckpointError(
        '\n'.join([f'{step_dir}: checkpoint does not match the model of the config.json next to '
                   'it'] + lines[:20] + more))


def load_model(workdir: str | pathlib.Path, which: str = 'best', step: int | None = None,
               device: jax.Device | None = None) -> LoadedModel:
  """Restores the `{params, batch_stats}` of a workdir's checkpoint, read-only.

  Args:
    workdir: a training run's folder (config.json, best/, checkpoints/).
    which: 'best' (best validation checkpoint) or 'latest' (newest step checkpoint).
    step: a particular step of that folder (default: its newest).
    device: where the variables go (default: the first device).
  Raises:
    FileNotFoundError: the workdir or its config.json is missing (the message names the path).
    InferenceError: a config.json this version cannot build a model from.
    checkpointing.CheckpointError: no such checkpoint, a damaged one (files that differ from
      the checksums written with it), or one of another model.
  """
  config = read_config(workdir)
  # Absolute: orbax refuses relative checkpoint paths.
  step_dir = find_checkpoint(workdir, which, step).absolute()
  # The checksums the trainer recorded: a damaged step is refused, never silently replaced.
  checkpointing.verify_step(step_dir)
  saved = _saved_shapes(step_dir / 'state')
  image_size = tuple(int(v) for v in config.data.image_size)
  try:
    spec = models.get_spec(config.model.name)
    probe = _flat_shapes(_variable_shapes(models.build_model(config.model, 1), image_size))
    num_classes = _num_classes(probe, saved)
    model = models.build_model(config.model, num_classes)
  except ValueError as e:   # a config.json of another version of the models
    raise InferenceError(f'{pathlib.Path(workdir) / "config.json"}: {e}') from None
  template = _variable_shapes(model, image_size)
  _check_shapes(_flat_shapes(template), saved, step_dir)
  where = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  # Empty collections (a model without batch norm) are not in the checkpoint's tree.
  abstract = {k: jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where), v)
              for k, v in template.items() if jax.tree.leaves(v)}
  # A partial restore of the state item: the optimiser state is never read.
  with ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True))
  variables = {k: restored.get(k, {}) for k in VARIABLE_COLLECTIONS}
  return LoadedModel(config=config, model=model, spec=spec, variables=variables,
                     num_classes=num_classes, step=int(step_dir.name), checkpoint_dir=step_dir)


# ------------------------------------------------------------------------------ folders


def list_triplets(folder: str | pathlib.Path) -> list[tuple[str, tuple[str, str, str]]]:
  """[(name, (vis path, ni path, th path))] of a flat or per-id folder (module docstring).

  Raises FileNotFoundError for a missing folder, records.DatasetError for unpaired files and
  InferenceError when no triplet is found.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f'{folder}: image folder not found')
  modality_dirs = records.MODALITY_DIRS
  if any((folder / m).is_dir() for m in modality_dirs):
    groups = [('', folder)]
  else:
    groups = [(p.name, p) for p in sorted(folder.iterdir())
              if p.is_dir() and not p.name.startswith('.')
              and any((p / m).is_dir() for m in modality_dirs)]
  problems: list[str] = []
  out = []
  for prefix, group in groups:
    # The dataset readers' pairing (by identical file names), problems collected per file.
    pairs = records._paired_triplets(str(group), problems)  # pylint: disable=protected-access
    for name, vis, ni, th in pairs:
      out.append((os.path.join(prefix, modality_dirs[0], name), (vis, ni, th)))
  if problems:
    more = f' (and {len(problems) - 1} more problems)' if len(problems) > 1 else ''
    raise records.DatasetError(problems[0] + more)
  if not out:
    raise InferenceError(
        f'{folder}: no image triplets (expected {folder}/{{vis,ni,th}}/<name> or '
        f'{folder}/<id>/{{vis,ni,th}}/<name>, {"/".join(records.IMAGE_EXTENSIONS)} files)')
  return out


# ------------------------------------------------------------------------------ extraction


def make_embedding_fn(model, spec: registry.ModelSpec):
  """`f(variables, rgb, ni, ti, flare) -> embedding [B, E]`: the evaluator's embed step
  (`steps.make_embed_step`, eval mode) keeping the embedding only."""
  if spec.batch.input_keys != exported_lib.INPUT_NAMES:
    raise InferenceError(f'model {spec.name!r} takes {spec.batch.input_keys}; feature extraction '
                         f'handles the aligned-triplet models ({exported_lib.INPUT_NAMES})')
  embed_step = steps.make_embed_step(model, spec)

  def embed(variables, rgb, ni, ti, flare):
    return embed_step(variables, {'rgb': rgb, 'ni': ni, 'ti': ti, 'flare': flare})['embedding']

  return embed


def _as_images(images: Any, name: str) -> list[np.ndarray]:
  """uint8 [N, h, w, 3] (or N arrays [h_i, w_i, 3]) -> N arrays [h_i, w_i, 3]."""
  if isinstance(images, np.ndarray) and images.ndim != 4:
    raise InferenceError(f'{name}: expected uint8 [N, H, W, 3], got shape {images.shape}')
  out = [np.asarray(x) for x in images]
  for i, x in enumerate(out):
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[-1] != 3 or not x.size:
      raise InferenceError(
          f'{name}[{i}]: expected a uint8 [H, W, 3] image (decoded RGB; replicate a one-channel '
          f'image to 3 channels), got {x.dtype} {x.shape}')
  return out


class FeatureExtractor:
  """Embeds image triplets with a restored model, as the evaluator does, one batch size.

  Attributes:
    image_size: (H, W) the images are resized to (config.data.image_size).
    mean, std: per-channel normalisation (config.data.mean / std).
    flare_rule: pseudo-label rule for `flare=None` (config.data.flare_rule).
    batch_size: rows per compiled batch (default config.data.eval_batch_size).
  """

  def __init__(self, loaded: LoadedModel, batch_size: int | None = None):
    data = loaded.config.data
    self.loaded = loaded
    self.image_size = (int(data.image_size[0]), int(data.image_size[1]))
    self.mean = tuple(float(v) for v in data.mean)
    self.std = tuple(float(v) for v in data.std)
    self.flare_rule = str(data.flare_rule)
    if self.flare_rule not in flare_label.FLARE_RULES:
      raise InferenceError(f'config.data.flare_rule={self.flare_rule!r}: expected one of '
                           f'{flare_label.FLARE_RULES}')
    self.batch_size = int(data.eval_batch_size if batch_size is None else batch_size)
    if self.batch_size < 1:
      raise InferenceError(f'batch_size={self.batch_size}: must be positive')
    self.embedding_fn = make_embedding_fn(loaded.model, loaded.spec)
    self._embed = jax.jit(self.embedding_fn)

  @classmethod
  def from_workdir(cls, workdir: str | pathlib.Path, which: str = 'best', step: int | None = None,
                   batch_size: int | None = None) -> FeatureExtractor:
    return cls(load_model(workdir, which, step), batch_size)

  @property
  def variables(self) -> dict[str, Any]:
    return self.loaded.variables

  def input_specs(self, batch_size: Any) -> tuple[jax.ShapeDtypeStruct, ...]:
    """(rgb, ni, ti, flare) of the embedding function: float32 [B, H, W, 3] x3, int32 [B, 2]."""
    image = jax.ShapeDtypeStruct((batch_size, *self.image_size, 3), np.float32)
    return image, image, image, jax.ShapeDtypeStruct((batch_size, 2), np.int32)

  @functools.cached_property
  def embedding_dim(self) -> int:
    out = jax.eval_shape(self.embedding_fn, self.variables, *self.input_specs(1))
    return int(out.shape[-1])

  def prepare(self, rgb: np.ndarray, ni: np.ndarray, ti: np.ndarray
              ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """One original-size uint8 triplet -> (resized uint8 [H, W, 3] x3, flare int32 [2]); the
    order of the eval stream: the flare label sees the original pixels, then the resize."""
    flare = flare_label.flare_bits(rgb, ni, self.flare_rule)
    return tuple(augment.resize(x, self.image_size, EVAL_RESIZE) for x in (rgb, ni, ti)), flare

  def _embed_rows(self, images: Sequence[tuple[np.ndarray, ...]], flare: np.ndarray) -> np.ndarray:
    """n <= batch_size resized uint8 triplets and flare [n, 2] -> [n, E]; zero padding rows
    (zeros after normalisation, flare 0, as the eval stream pads) keep one compiled shape."""
    n = len(images)
    h, w = self.image_size
    batch = []
    for m in range(3):
      x = np.zeros((self.batch_size, h, w, 3), np.float32)
      x[:n] = augment.normalize(np.stack([t[m] for t in images]), self.mean, self.std)
      batch.append(x)
    flags = np.zeros((self.batch_size, 2), np.int32)
    flags[:n] = flare
    return np.asarray(self._embed(self.variables, *batch, flags))[:n]

  def embed_arrays(self, rgb: Any, ni: Any, ti: Any, flare: Any = None) -> np.ndarray:
    """float32 [N, E] embeddings (L2-normalised rows) of N original-size triplets.

    Args:
      rgb, ni, ti: uint8 [N, H, W, 3] arrays of any H, W, or sequences of N uint8 [h, w, 3]
        images (sizes may differ); resized like evaluation.
      flare: int32 [N, 2] pseudo-labels; None computes them with `flare_rule` from the images.
    """
    mods = [_as_images(x, name) for x, name in ((rgb, 'rgb'), (ni, 'ni'), (ti, 'ti'))]
    n = len(mods[0])
    if any(len(m) != n for m in mods):
      raise InferenceError(f'rgb, ni, ti hold {[len(m) for m in mods]} images; one triplet is '
                           'one image of each')
    if flare is not None:
      flare = np.asarray(flare)
      if flare.shape != (n, 2) or not np.isin(flare, (0, 1)).all():
        raise InferenceError(f'flare: expected [{n}, 2] bits (RGB, NI) of 0/1, got {flare.shape}')
      flare = flare.astype(np.int32)
    out = []
    for start in range(0, n, self.batch_size):
      rows = range(start, min(start + self.batch_size, n))
      prepared = [self.prepare(mods[0][i], mods[1][i], mods[2][i]) for i in rows]
      bits = flare[start:rows.stop] if flare is not None else np.stack([p[1] for p in prepared])
      out.append(self._embed_rows([p[0] for p in prepared], bits))
    return np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32)

  def embed_files(self, triplets: Sequence[tuple[str, tuple[str, str, str]]]
                  ) -> tuple[list[str], np.ndarray]:
    """(names, float32 [N, E]) of `list_triplets` output, decoded one batch at a time."""
    out = []
    for start in range(0, len(triplets), self.batch_size):
      chunk = triplets[start:start + self.batch_size]
      # records.load_image: the dataset decoder (L/palette -> RGB; DatasetError naming the file).
      prepared = [self.prepare(*(records.load_image(p) for p in paths)) for _, paths in chunk]
      out.append(self._embed_rows([p[0] for p in prepared], np.stack([p[1] for p in prepared])))
    names = [name for name, _ in triplets]
    return names, (np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32))

  def embed_folder(self, folder: str | pathlib.Path) -> tuple[list[str], np.ndarray]:
    """(names, float32 [N, E]) of every triplet of a flat or per-id folder (module docstring)."""
    return self.embed_files(list_triplets(folder))


# ------------------------------------------------------------------------------ export


def export_embedding(extractor: FeatureExtractor, path: str | pathlib.Path,
                     platforms: Sequence[str] | None = None) -> dict[str, str]:
  """`jax.export` of the extractor's embedding function to `path` (+ sidecar and variables).

  The exported function takes the variables as its first argument (a list, in the sidecar's
  order; `load_exported` binds them), then the preprocessed rgb, ni, ti float32 [B, H, W, 3] and
  flare int32 [B, 2], with a symbolic batch dimension B. `platforms` (e.g. ('cpu', 'cuda'))
  defaults to the platform of this process. Returns the written paths by role.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(extractor.variables)
  names = [path_to_str(p) for p, _ in flat]
  if len(set(names)) != len(names):
    raise InferenceError('variable names collide when flattened to a/b/c paths')
  fn = extractor.embedding_fn

  def embed(leaves, rgb, ni, ti, flare):
    return fn(jax.tree_util.tree_unflatten(treedef, leaves), rgb, ni, ti, flare)

  (batch,) = jax.export.symbolic_shape('B')
  leaf_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for _, x in flat]
  exported = jax.export.export(jax.jit(embed), platforms=platforms)(
      leaf_specs, *extractor.input_specs(batch))
  loaded = extractor.loaded
  meta = {
      'image_size': list(extractor.image_size), 'mean': list(extractor.mean),
      'std': list(extractor.std), 'resize': EVAL_RESIZE, 'flare_rule': extractor.flare_rule,
      'batch_size': None, 'suggested_batch_size': extractor.batch_size,
      'embedding_dim': int(exported.out_avals[0].shape[-1]),
      'inputs': {'rgb': 'float32 [B, H, W, 3]', 'ni': 'float32 [B, H, W, 3]',
                 'ti': 'float32 [B, H, W, 3]', 'flare': 'int32 [B, 2]'},
      'platforms': list(exported.platforms), 'model': str(loaded.config.model.name),
      'checkpoint': str(loaded.checkpoint_dir), 'step': loaded.step,
  }
  variables = {name: np.asarray(x) for name, (_, x) in zip(names, flat)}
  return exported_lib.write(path, exported, variables, meta)
