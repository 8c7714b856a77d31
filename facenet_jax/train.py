"""The training loop: steps, logging, checkpoints and periodic evaluation; nothing else.

`train_and_evaluate(config, workdir)` is the whole run behind `scripts/train.py`. Setup comes
from `experiment`, the step functions from `steps`, evaluation from `eval.Evaluator`, console
lines from `console`, the on-disk record from `run_log`. The loop never looks at the model or
the batch keys: the model's spec (loss bundle, batch contract) decides them.
"""

import math
import pathlib
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from facenet_jax import checkpointing
from facenet_jax import console
from facenet_jax import device_input
from facenet_jax import distributed
from facenet_jax import experiment
from facenet_jax import run_log
from facenet_jax import sharding
from facenet_jax import steps
from facenet_jax import workdir as workdir_lib
from facenet_jax.eval import evaluator as evaluator_lib
from facenet_jax.eval import protocols
from facenet_jax.train_state import to_variables


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       exp: experiment.Experiment | None = None,
                       allow_config_change: bool = False,
                       strict_checkpoints: bool = False) -> dict[str, Any]:
  """Train for `config.train.num_epochs` (or `max_steps`), evaluating every `eval_every_epochs`.

  Resumes from the latest intact checkpoint in `workdir/checkpoints`. Writes `config.json` (the
  run's record: a resume with another config is refused unless `allow_config_change`, see
  `facenet_jax.workdir`), `metrics.jsonl` (one line per log point and evaluation, also after
  resumes), TensorBoard scalars and the checkpoints into `workdir`, which one trainer holds at a
  time (`<workdir>/.lock`). Returns the final scalars (test split, and validation if any).
  `exp` reuses an experiment built already from the same config. `strict_checkpoints` refuses a
  damaged latest checkpoint instead of resuming from the previous intact one.
  """
  distributed.initialize(config.train)
  workdir_path = pathlib.Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  # One trainer per workdir; the chief holds the lock for its run's processes.
  lock = workdir_lib.WorkdirLock(workdir_path, notice=console.say)
  if distributed.is_chief():
    lock.acquire()
  try:
    if distributed.is_chief():
      changes = workdir_lib.record_config(workdir_path, config, allow_config_change)
      if changes and all(recorded == workdir_lib.ABSENT for _, recorded, _ in changes):
        console.say('config fields added to the library since this run started (their defaults '
                    f'keep its behaviour; recorded in {workdir_lib.HISTORY_FILE}): '
                    + ', '.join(k for k, _, _ in changes))
      elif changes:
        console.say(f'config changed at resume (recorded in {workdir_lib.HISTORY_FILE}): '
                    f'{workdir_lib.format_differences(changes)}')
    trainer = _Trainer(exp or experiment.build_experiment(config), workdir_path,
                       strict_checkpoints)
    try:
      return trainer.run()
    finally:
      trainer.close()
  finally:
    lock.release()


class _Trainer:
  """One run's state and the pieces around it; `run` is the loop."""

  def __init__(self, exp: experiment.Experiment, workdir: pathlib.Path,
               strict_checkpoints: bool = False):
    self.exp, self.config, self.workdir = exp, exp.config, workdir
    self.say = console.say if distributed.is_chief() else (lambda line='': None)
    self.ckpt = checkpointing.Checkpointer(
        workdir, self.config.train.keep_checkpoints, strict=strict_checkpoints, warn=self.say,
        background=self.config.train.background_checkpoints)
    self.best_score = -math.inf
    if self.ckpt.latest_step() is None:
      self.state = experiment.create_state(exp)
    else:
      self.state, _ = self.ckpt.restore(experiment.abstract_state(exp))
      best_meta = self.ckpt.best_meta()
      if best_meta is not None:
        self.best_score = best_meta['score']
    self.step = int(jax.device_get(self.state.step))
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(self.state.params))
    self.say(console.format_startup(exp, self.step, num_params, str(workdir)))
    # Rows of steps after the restored one are dropped: they are about to be logged again.
    self.log = run_log.RunLog(workdir, enabled=distributed.is_chief(), resume_step=self.step)
    # Killed after the checkpoint of an evaluation step but before its evaluation: do it first.
    self.pending_evaluation = (self._is_evaluation_step(self.step) and
                               not run_log.has_scalar(workdir, self.step, 'test/mAP'))
    self.evaluator = evaluator_lib.Evaluator(exp.model, exp.spec, exp.mesh, self.config)
    self.train_step = steps.jit_train_step(
        steps.make_train_step(exp.model, exp.spec, exp.tx, self.config.loss,
                              exp.learning_rate_fn,
                              prepare=device_input.make_prepare(self.config.data)), exp.mesh)

  def run(self) -> dict[str, float]:
    from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
    exp = self.exp
    stream = pipeline.make_train_stream(exp.train_records, self.config.data,
                                        start_step=self.step, process_index=jax.process_index(),
                                        process_count=jax.process_count())
    pending = []          # per-step metrics on device, fetched (and checked) at log time
    final_scalars: dict[str, float] = {}
    clock = (time.perf_counter(), self.step)
    compiled_step = None
    if self.pending_evaluation:
      final_scalars = self.evaluate()
    batches = self._device_batches(stream)
    try:
      while self.step < exp.total_steps:
        compiled_step, pending, clock, scalars = self._step(
            next(batches), compiled_step, pending, clock)
        final_scalars = scalars or final_scalars
    except NonFiniteLossError as e:
      # The step skips non-finite updates, so the state in hand is the last finite one.
      self._save_checkpoint()
      raise NonFiniteLossError(f'{e} The last finite state is saved in '
                               f'{self.workdir / "checkpoints" / str(self.step)}.') from None
    return final_scalars or self.evaluate()   # a finished run resumed: evaluate what is there

  def _is_evaluation_step(self, step: int) -> bool:
    exp = self.exp
    end_of_epoch = step > 0 and step % exp.steps_per_epoch == 0
    epoch = step // exp.steps_per_epoch
    return (end_of_epoch and epoch % self.config.train.eval_every_epochs == 0) or (
        step == exp.total_steps)

  def _device_batches(self, stream):
    """The train keys of each host batch, sharded onto the devices one batch ahead.

    `device_put` is asynchronous, so the next batch's transfer runs while the current step
    computes; the loop itself never waits on the devices except at log steps.
    """
    keys, mesh = self.exp.spec.batch.train_keys, self.exp.mesh

    def to_devices(batch):   # with the erasing rows of uint8 images (device_input)
      return sharding.shard_batch({k: batch[k] for k in device_input.transfer_keys(keys, batch)},
                                  mesh)

    upcoming = to_devices(next(stream))
    while True:
      current = upcoming
      upcoming = to_devices(next(stream))
      yield current

  def _step(self, batch, compiled_step, pending, clock):
    """One training step with its logging, checkpoint and evaluation.

    Returns the loop's carried values (compiled step, metrics pending logging, clock) and the
    evaluation scalars when this step evaluated (else None). A non-finite step leaves the state
    unchanged (see `steps.make_train_step`) and is reported at the next log step.
    """
    exp, train_config = self.exp, self.config.train
    if compiled_step is None:
      # Compiled ahead, then every process starts stepping together (see distributed.barrier).
      compiled_step = self.train_step.lower(self.state, batch).compile()
      distributed.barrier('train_step')
    self.state, metrics = compiled_step(self.state, batch)
    self.step += 1
    pending.append(metrics)
    last = self.step == exp.total_steps
    if self.step % train_config.log_every_steps == 0 or last:
      clock = self._log_progress(pending, clock)
      pending = []
    end_of_epoch = self.step % exp.steps_per_epoch == 0
    if self.step % train_config.checkpoint_every_steps == 0 or end_of_epoch or last:
      self._save_checkpoint()
    scalars = self.evaluate() if self._is_evaluation_step(self.step) else None
    return compiled_step, pending, clock, scalars

  def _save_checkpoint(self) -> None:
    meta = {'step': self.step, 'epoch': self.step / self.exp.steps_per_epoch}
    self.ckpt.save(self.state, meta, on_saved=lambda step: self.say(
        f'checkpoint: step {step} -> {self.workdir / "checkpoints" / str(step)}'))

  def _log_progress(self, pending: list[Any], clock: tuple[float, int]) -> tuple[float, int]:
    """Average the pending step metrics, write them, print the progress line; the new clock."""
    finite = jax.device_get([m['finite'] for m in pending])
    if not all(finite):
      first = [bool(f) for f in finite].index(False)
      _raise_non_finite(self.step - len(pending) + 1 + first, jax.device_get(pending[first]))
    averaged = jax.device_get(jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *pending))
    now = time.perf_counter()
    steps_per_sec = (self.step - clock[1]) / max(now - clock[0], 1e-9)
    scalars = {k: float(v) for k, v in steps.flatten_metrics(averaged).items() if k != 'finite'}
    self.log.write(self.step, {**{f'train/{k}': v for k, v in scalars.items()},
                               'train/steps_per_sec': steps_per_sec,
                               'train/samples_per_sec': steps_per_sec * self.exp.batch_size,
                               'train/epoch': self.step / self.exp.steps_per_epoch})
    self.say(console.format_progress(self.step, self.exp.total_steps, self.exp.steps_per_epoch,
                                     scalars, list(averaged['terms']), steps_per_sec))
    return now, self.step

  def evaluate(self) -> dict[str, float]:
    """Validation (if any) and test metrics of the current state; keeps the best checkpoint."""
    exp, variables = self.exp, to_variables(self.state)
    splits = {}
    if exp.val_query:
      splits['val'] = self.evaluator.evaluate(variables, exp.val_query, exp.val_gallery).metrics
    splits['test'] = self.evaluator.evaluate(variables, exp.query, exp.gallery).metrics
    scalars = {f'{name}/{k}': v for name, metrics in splits.items()
               for k, v in protocols.rank_summary(metrics).items()}
    self.log.write(self.step, scalars)
    self.say(console.format_metric_table(
        splits, f'Evaluation at step {self.step} (epoch {self.step / exp.steps_per_epoch:.1f}), '
        'percent'))
    # Model selection never looks at the test split; without a validation split the latest wins.
    score = scalars['val/mAP'] if exp.val_query else float(self.step)
    if score >= self.best_score:
      self.best_score = score
      self.ckpt.save_best(self.state, {'step': self.step, 'score': score, **scalars})
      why = f'val mAP {100 * score:.2f}' if exp.val_query else 'latest'
      self.say(f'best checkpoint: step {self.step} ({why}) -> '
               f'{self.workdir / "best" / str(self.step)}')
    return scalars

  def close(self) -> None:
    self.log.close()
    self.ckpt.close()


def _raise_non_finite(step: int, metrics: Mapping[str, Any]) -> None:
  flat = steps.flatten_metrics(metrics)
  terms = ', '.join(f'{k}={float(v):.4g}' for k, v in sorted(flat.items()))
  raise NonFiniteLossError(
      f'Non-finite loss at step {step}; training stopped (the update of that step was skipped). '
      f'Terms: {terms}. Lower config.optim.base_lr, enable config.optim.grad_clip_norm, or check '
      'the input data.')

