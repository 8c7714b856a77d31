"""Orbax checkpoints of the `TrainState`: the last N steps, plus the best by validation mAP.

Layout inside the workdir:

    checkpoints/<step>/   state + meta   (the last `train.keep_checkpoints` saves)
    best/<step>/          state + meta   (one: the best validation score so far)

Orbax finalises each save by an atomic rename of a temporary folder, so a run killed at any
moment (SIGKILL included) leaves only complete checkpoints; a restart picks the latest one and
continues (the data stream is a pure function of the step, so the step restores the data position
too). With `background=True` (the trainer's `train.background_checkpoints`, single-process runs)
a step save copies the state to host memory and returns; the write, the rename and the checksums
run in one background thread while training goes on. The next save, a best save, a restore and
`close` wait for it first and re-raise its error, so at most one save is in flight and a step
checkpoint is announced (`on_saved`) only once it is complete on disk. Best saves are always
synchronous.

Integrity: after a save, `checksums.json` in the step folder records the SHA-256 of every file
of the step; a restore verifies it first. A damaged latest step (truncated or flipped bytes) is
reported and the previous intact step is used instead, or, with `strict`, refused.

Read-only use (`read_only=True`, what evaluation and feature extraction use): no folder is
created, no temporary folder of a running trainer is cleaned up, nothing can be saved.
"""

import hashlib
import json
import pathlib
import threading
from typing import Any, Callable

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from facenet_jax.optim import path_to_str
from facenet_jax.train_state import TrainState


CHECKSUM_FILE = 'checksums.json'


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored into the model at hand."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint whose files differ from the checksums written when it was saved."""


def _manager(directory: pathlib.Path, max_to_keep: int,
             read_only: bool = False) -> ocp.CheckpointManager:
  # A writer cleans up its own interrupted saves on start-up; a reader must never do that (it
  # would delete the half-written checkpoint of a trainer running in the same workdir).
  # A read-only manager logs warnings that it is read-only (asked for, so not shown).
  verbosity = logging.get_verbosity()
  if read_only:
    logging.set_verbosity(logging.ERROR)
  try:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only, read_only=read_only)
    # Handlers are named up front so a fresh manager can read metadata before any save/restore.
    return ocp.CheckpointManager(
        directory.absolute(), options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})
  finally:
    logging.set_verbosity(verbosity)


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_to_str(path): tuple(leaf.shape) for path, leaf in leaves}


def step_checksums(step_dir: pathlib.Path) -> dict[str, str]:
  """{relative path: SHA-256 hex} of every file of a finished step folder (but the checksums)."""
  out = {}
  for path in sorted(p for p in step_dir.rglob('*') if p.is_file()):
    rel = path.relative_to(step_dir).as_posix()
    if rel == CHECKSUM_FILE:
      continue
    digest = hashlib.sha256()
    with path.open('rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
    out[rel] = digest.hexdigest()
  return out


def verify_step(step_dir: pathlib.Path) -> None:
  """Raise `DamagedCheckpointError` naming the files that differ from the recorded checksums.

  A step saved before checksums existed (no checksums file) is accepted as it is.
  """
  recorded_file = step_dir / CHECKSUM_FILE
  if not recorded_file.is_file():
    return
  try:
    recorded = json.loads(recorded_file.read_text())
  except (OSError, ValueError) as e:
    raise DamagedCheckpointError(f'{recorded_file}: unreadable checksums ({e})') from None
  actual = step_checksums(step_dir)
  bad = sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
  if bad:
    shown = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
    raise DamagedCheckpointError(f'{step_dir}: damaged checkpoint, {len(bad)} files differ from '
                                 f'their checksums ({shown})')


class Checkpointer:
  """Step and best-model checkpoints for one workdir.

  `read_only` opens an existing workdir for restoring only (evaluation): nothing is created or
  cleaned up, and a workdir without checkpoints is an error naming it. `warn` receives the
  one-line notice when a damaged step is skipped.
  """

  def __init__(self, workdir: str | pathlib.Path, keep: int, read_only: bool = False,
               strict: bool = False, warn: Callable[[str], None] = print,
               background: bool = False):
    workdir = pathlib.Path(workdir)
    self.read_only, self.strict, self.warn = read_only, strict, warn
    # Several processes write one checkpoint together (orbax's barriers): keep those in step.
    self.background = background and jax.process_count() == 1
    self._pending: threading.Thread | None = None
    self._pending_error: BaseException | None = None
    if read_only and not ((workdir / 'checkpoints').is_dir() or (workdir / 'best').is_dir()):
      raise CheckpointError(f'{workdir}: no checkpoints/ or best/ folder; not a training workdir '
                            'with checkpoints (--workdir)')
    self.steps = _manager(workdir / 'checkpoints', keep, read_only)
    self.best = _manager(workdir / 'best', 1, read_only)

  # -------------------------------------------------------------- saving
  def _save(self, manager: ocp.CheckpointManager, step: int, state: TrainState,
            meta: dict[str, Any]) -> None:
    if self.read_only:
      raise RuntimeError('this Checkpointer is read-only')
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    step_dir = pathlib.Path(manager.directory) / str(step)
    if jax.process_index() == 0:
      write_json(step_dir / CHECKSUM_FILE, step_checksums(step_dir))

  def wait(self) -> None:
    """Blocks until the background save (if any) is complete; re-raises its error."""
    if self._pending is not None:
      self._pending.join()
      self._pending = None
    if self._pending_error is not None:
      error, self._pending_error = self._pending_error, None
      raise error

  def save(self, state: TrainState, meta: dict[str, Any],
           on_saved: Callable[[int], None] | None = None) -> bool:
    """Save a step checkpoint; False when this step is saved already.

    `on_saved(step)` runs once the checkpoint is complete on disk (in the background thread when
    saving in the background).
    """
    self.wait()
    step = int(jax.device_get(state.step))
    if step in self.steps.all_steps():
      return False
    if not self.background:
      self._save(self.steps, step, state, meta)
      if on_saved is not None:
        on_saved(step)
      return True
    # An own host copy (np.array copies): the next train step donates, i.e. reuses, the device
    # buffers of `state` while this copy is being written.
    host_state = jax.tree.map(np.array, state)

    def write() -> None:
      try:
        self._save(self.steps, step, host_state, meta)
        if on_saved is not None:
          on_saved(step)
      except BaseException as e:  # pylint: disable=broad-except  (re-raised by `wait`)
        self._pending_error = e

    # Not a daemon: a process that ends while a save is in flight finishes writing it first.
    self._pending = threading.Thread(target=write, name=f'checkpoint-{step}')
    self._pending.start()
    return True

  def save_best(self, state: TrainState, meta: dict[str, Any]) -> None:
    """Save the new best, and only then remove the older one: a kill, an OOM or a full disk
    during the save leaves the previous best in place (there is always a valid best)."""
    self.wait()
    step = int(jax.device_get(state.step))
    if step not in self.best.all_steps():
      self._save(self.best, step, state, meta)
    for old in self.best.all_steps():
      if old != step:
        self.best.delete(old)

  # -------------------------------------------------------------- restoring
  def latest_step(self) -> int | None:
    self.wait()
    return self.steps.latest_step()

  def best_step(self) -> int | None:
    steps = self.best.all_steps()
    return max(steps) if steps else None

  def best_meta(self) -> dict[str, Any] | None:
    """The meta of the newest intact best checkpoint (None when there is none)."""
    if not self.best.all_steps():
      return None
    return self.meta(best=True)[1]

  def meta(self, step: int | None = None, best: bool = False) -> tuple[int, dict[str, Any]]:
    """(step, meta) of a step checkpoint (the newest intact one by default) or of the best."""
    manager, step = self._resolve(step, best)
    return step, manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def restore(self, target: TrainState, step: int | None = None, best: bool = False
              ) -> tuple[TrainState, dict[str, Any]]:
    """Restore into the structure, shapes and shardings of `target`.

    Raises `CheckpointError` listing the differing parameters when the checkpoint was written by a
    different model (another depth, switch or number of classes).
    """
    manager, step = self._resolve(step, best)
    self._check_compatible(manager, step, target)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def restore_variables(self, target: dict[str, Any], step: int | None = None,
                        best: bool = False) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """Only `{'params', 'batch_stats'}` of a checkpoint (what evaluation needs): the optimiser
    state is neither built nor read. Returns (variables, step, meta)."""
    manager, step = self._resolve(step, best)
    self._check_compatible(manager, step, target)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    # The state item is a PyTree checkpoint; a partial restore reads just these subtrees.
    with ocp.PyTreeCheckpointer() as reader:
      variables = reader.restore(
          pathlib.Path(manager.directory) / str(step) / 'state',
          args=ocp.args.PyTreeRestore(
              item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
              partial_restore=True))
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    return {k: variables[k] for k in target}, step, meta

  def _resolve(self, step: int | None, best: bool) -> tuple[ocp.CheckpointManager, int]:
    """The manager and an intact step: the one asked for, else the newest intact one.

    An explicitly asked-for step that is damaged is an error; without a step, damaged newer
    steps are reported through `warn` and skipped (an error when `strict` or none is intact).
    """
    self.wait()
    manager = self.best if best else self.steps
    available = sorted(manager.all_steps(), reverse=True)
    if step is not None or not available:
      if step is None or step not in available:
        raise CheckpointError(
            f'No checkpoint{" at step " + str(step) if step is not None else ""} in '
            f'{manager.directory}; available steps: {sorted(available)}')
      verify_step(pathlib.Path(manager.directory) / str(step))
      return manager, step
    for candidate in available:
      try:
        verify_step(pathlib.Path(manager.directory) / str(candidate))
      except DamagedCheckpointError as e:
        if self.strict:
          raise
        self.warn(f'warning: {e}; using the previous step')
        continue
      return manager, candidate
    raise CheckpointError(f'{manager.directory}: every checkpoint is damaged '
                          f'(steps {sorted(available)})')

  @staticmethod
  def _check_compatible(manager: ocp.CheckpointManager, step: int, target: Any) -> None:
    """Raise `CheckpointError` unless the checkpoint has `target`'s leaves with its shapes
    (for a dict target such as `{'params', 'batch_stats'}`, only those subtrees are compared)."""
    saved = manager.item_metadata(step)['state']
    saved_shapes = {k: tuple(v.shape) for k, v in _flat_metadata(saved).items()}
    if isinstance(target, dict):
      saved_shapes = {k: v for k, v in saved_shapes.items() if k.split('/')[0] in target}
    expected = _flat_shapes(target)
    # Parameters first: they say what differs; optimiser slots only repeat it.
    order = lambda k: (not k.startswith('params/'), k)
    missing = sorted(set(expected) - set(saved_shapes), key=order)
    unexpected = sorted(set(saved_shapes) - set(expected), key=order)
    mismatched = sorted((k for k in set(expected) & set(saved_shapes)
                         if expected[k] != saved_shapes[k]), key=order)
    if missing or unexpected or mismatched:
      lines = [f'Checkpoint {manager.directory}/{step} does not match the configured model '
               '(was it written with another config.model or dataset?).']
      lines += [f'  shape {k}: checkpoint {saved_shapes[k]} vs model {expected[k]}'
                for k in mismatched[:20]]
      lines += [f'  missing in checkpoint: {k}' for k in missing[:20]]
      lines += [f'  not in the model: {k}' for k in unexpected[:20]]
      total = len(missing) + len(unexpected) + len(mismatched)
      if total > 60:
        lines.append(f'  ... {total} differences in all')
      raise CheckpointError('\n'.join(lines))

  def close(self) -> None:
    """Waits for a background save (re-raising its error), then closes the managers."""
    try:
      self.wait()
    finally:
      self.steps.close()
      self.best.close()


def _flat_metadata(tree: Any) -> dict[str, Any]:
  """Flatten orbax's metadata tree (nested dicts/lists of ArrayMetadata) to `a/b/c` keys.

  Orbax's metadata stores dataclasses and namedtuples (TrainState, optax states) as dicts, so
  paths are compared by their names only (`path_to_str`), never by key type.
  """
  is_leaf = lambda x: hasattr(x, 'shape') and not isinstance(x, (dict, list, tuple))
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {path_to_str(path): leaf for path, leaf in leaves}


def write_json(path: str | pathlib.Path, payload: Any) -> None:
  """Small JSON writer for metrics files; NumPy scalars and arrays become plain numbers/lists."""
  def default(o):
    if isinstance(o, np.ndarray):
      return o.tolist()
    if isinstance(o, np.generic):
      return o.item()
    raise TypeError(f'not JSON serialisable: {type(o)}')
  pathlib.Path(path).write_text(json.dumps(payload, indent=2, default=default) + '\n')
