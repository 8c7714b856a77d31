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
from facenet_jax import distributed
from facenet_jax import experiment
from facenet_jax import run_log
from facenet_jax import sharding
from facenet_jax import steps
from facenet_jax.eval import evaluator as evaluator_lib
from facenet_jax.eval import protocols
from facenet_jax.train_state import to_variables


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""


def _summary_scalars(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
  return {f'{prefix}/{k}': v for k, v in protocols.rank_summary(metrics).items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       exp: experiment.Experiment | None = None) -> dict[str, Any]:
  """Train for `config.train.num_epochs` (or `max_steps`), evaluating every `eval_every_epochs`.

  Resumes from the latest checkpoint in `workdir/checkpoints`. Writes `config.json`,
  `metrics.jsonl` (one line per log point and evaluation), TensorBoard scalars and the
  checkpoints into `workdir`. Returns the final scalars (test split, and validation if any).
  `exp` reuses an experiment built already from the same config.
  """
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  distributed.initialize(config.train)
  workdir_path = pathlib.Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  is_chief = distributed.is_chief()
  say = console.say if is_chief else (lambda line='': None)
  if is_chief:
    (workdir_path / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')

  exp = exp or experiment.build_experiment(config)
  ckpt = checkpointing.Checkpointer(workdir_path, config.train.keep_checkpoints)
  best_score = -math.inf
  if ckpt.latest_step() is None:
    state = experiment.create_state(exp)
  else:
    state, _ = ckpt.restore(experiment.abstract_state(exp))
    best_meta = ckpt.best_meta()
    if best_meta is not None:
      best_score = best_meta['score']
  start_step = int(jax.device_get(state.step))
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
  say(console.format_startup(exp, start_step, num_params, workdir))

  log = run_log.RunLog(workdir_path, enabled=is_chief)
  evaluator = evaluator_lib.Evaluator(exp.model, exp.spec, exp.mesh, config)
  train_step = steps.jit_train_step(
      steps.make_train_step(exp.model, exp.spec, exp.tx, config.loss, exp.learning_rate_fn),
      exp.mesh)

  def run_evaluation(step: int) -> dict[str, float]:
    nonlocal best_score
    variables = to_variables(state)
    splits = {}
    if exp.val_query:
      splits['val'] = evaluator.evaluate(variables, exp.val_query, exp.val_gallery).metrics
    splits['test'] = evaluator.evaluate(variables, exp.query, exp.gallery).metrics
    scalars = {}
    for name, metrics in splits.items():
      scalars.update(_summary_scalars(metrics, name))
    log.write(step, scalars)
    say(console.format_metric_table(
        splits, f'Evaluation at step {step} (epoch {step / exp.steps_per_epoch:.1f}), percent'))
    # Model selection never looks at the test split; without a validation split the latest wins.
    score = scalars['val/mAP'] if exp.val_query else float(step)
    if score >= best_score:
      best_score = score
      ckpt.save_best(state, {'step': step, 'score': score, **scalars})
      say(f'best checkpoint: step {step} ({"val mAP " + format(100 * score, ".2f") if exp.val_query else "latest"})'
          f' -> {workdir_path / "best" / str(step)}')
    return scalars

  stream = pipeline.make_train_stream(exp.train_records, config.data, start_step=start_step,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
  pending = []          # per-step metrics on device, fetched at log time
  previous = None       # last step's metrics: its finiteness is checked one step late
  final_scalars: dict[str, float] = {}
  step = start_step
  last_time, last_step = time.perf_counter(), start_step
  compiled_step = None
  while step < exp.total_steps:
    host_batch = next(stream)
    batch = sharding.shard_batch({k: host_batch[k] for k in exp.spec.batch.train_keys}, exp.mesh)
    if compiled_step is None:
      # Compiled ahead, then every process starts stepping together (see distributed.barrier).
      compiled_step = train_step.lower(state, batch).compile()
      distributed.barrier('train_step')
    state, metrics = compiled_step(state, batch)
    step += 1
    if previous is not None and not float(previous[1]['finite']):
      _raise_non_finite(previous[0], jax.device_get(previous[1]))
    previous = (step, metrics)
    pending.append(metrics)
    if step % config.train.log_every_steps == 0 or step == exp.total_steps:
      if not float(metrics['finite']):
        _raise_non_finite(step, jax.device_get(metrics))
      averaged = jax.device_get(jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *pending))
      pending = []
      now = time.perf_counter()
      steps_per_sec = (step - last_step) / max(now - last_time, 1e-9)
      last_time, last_step = now, step
      scalars = {k: float(v) for k, v in steps.flatten_metrics(averaged).items() if k != 'finite'}
      log.write(step, {**{f'train/{k}': v for k, v in scalars.items()},
                       'train/steps_per_sec': steps_per_sec,
                       'train/samples_per_sec': steps_per_sec * exp.batch_size,
                       'train/epoch': step / exp.steps_per_epoch})
      say(console.format_progress(step, exp.total_steps, exp.steps_per_epoch, scalars,
                                  list(averaged['terms']), steps_per_sec))
    end_of_epoch = step % exp.steps_per_epoch == 0
    epoch = step // exp.steps_per_epoch
    if step % config.train.checkpoint_every_steps == 0 or end_of_epoch or step == exp.total_steps:
      if ckpt.save(state, {'step': step, 'epoch': step / exp.steps_per_epoch}):
        say(f'checkpoint: step {step} -> {workdir_path / "checkpoints" / str(step)}')
    if (end_of_epoch and epoch % config.train.eval_every_epochs == 0) or step == exp.total_steps:
      final_scalars = run_evaluation(step)
  if not final_scalars:  # resumed a finished run: evaluate what is there
    final_scalars = run_evaluation(step)
  log.close()
  ckpt.close()
  return final_scalars


def _raise_non_finite(step: int, metrics: Mapping[str, Any]) -> None:
  flat = steps.flatten_metrics(metrics)
  terms = ', '.join(f'{k}={float(v):.4g}' for k, v in sorted(flat.items()))
  raise NonFiniteLossError(
      f'Non-finite loss at step {step}; training stopped with the last finite state kept '
      f'(the update of that step was skipped). Terms: {terms}. Lower config.optim.base_lr, '
      'enable config.optim.grad_clip_norm, or check the input data.')
