"""Step functions and the training driver.

`make_train_step` / `make_embed_step` build pure, jitted functions over a `TrainState`;
`train_and_evaluate(config, workdir)` is the whole run behind `scripts/train.py`. This is the one
module of the package that imports `input_pipeline` (arrows point scripts -> facenet_jax ->
input_pipeline only here).
"""

import dataclasses
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterator, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from facenet_jax import checkpointing
from facenet_jax import distributed
from facenet_jax import evaluation
from facenet_jax import losses
from facenet_jax import optim
from facenet_jax import sharding
from facenet_jax.models import facenet
from facenet_jax.train_state import TrainState, create_train_state, to_variables

IMAGE_KEYS = ('rgb', 'ni', 'ti')
# Only these batch fields reach the device; the rest (paths, indices) stay on the host.
TRAIN_KEYS = ('rgb', 'ni', 'ti', 'pid', 'flare')
EVAL_KEYS = ('rgb', 'ni', 'ti', 'flare')


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""


# ------------------------------------------------------------------------------------------ steps
def make_train_step(model, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                    learning_rate_fn: Callable[[jax.Array], jax.Array]):
  """`train_step(state, batch) -> (state, metrics)`, pure; jit it with the state donated.

  batch: `{'rgb','ni','ti': [B, H, W, 3] float32, 'pid': [B] int32, 'flare': [B, 2] int32}`.
  A step whose loss or gradients are not finite leaves the state unchanged and reports
  `metrics['finite'] == 0`, so the driver can stop with the last good state still in hand.
  """

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      outputs, new_vars = model.apply(
          {'params': params, 'batch_stats': state.batch_stats},
          batch['rgb'], batch['ni'], batch['ti'], batch['flare'], train=True,
          rngs={'dropout': rng}, mutable=['batch_stats'])
      loss, terms = losses.total_loss(outputs, batch, config.loss, config.model)
      return loss, (terms, new_vars['batch_stats'])

    (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    # Keep the last good state when this step diverged (the driver stops on `finite == 0`).
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                             state.replace(step=state.step + 1))
    metrics = dict(terms)
    metrics.update(loss=loss, grad_norm=grad_norm, learning_rate=learning_rate_fn(state.step),
                   finite=finite.astype(jnp.float32))
    return new_state, metrics

  return train_step


def make_embed_step(model):
  """`embed_step(state, batch) -> outputs` in eval mode (no batch-statistics update).

  Returns `{'embedding': [B, 3D]}` plus the predicted masks when the model has them, so
  evaluation and the flare-mask pictures share one compiled function.
  """

  def embed_step(state: TrainState, batch: Mapping[str, jax.Array]):
    outputs = model.apply(to_variables(state), batch['rgb'], batch['ni'], batch['ti'],
                          batch['flare'], train=False)
    result = {'embedding': outputs['embedding']}
    if 'masks' in outputs:
      result['masks'] = outputs['masks']
    return result

  return embed_step


def jit_train_step(train_step, mesh):
  replicated = sharding.replicated_sharding(mesh)
  return jax.jit(train_step, in_shardings=(replicated, sharding.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def jit_embed_step(embed_step, mesh):
  return jax.jit(embed_step, in_shardings=(sharding.replicated_sharding(mesh),
                                           sharding.batch_sharding(mesh)),
                 out_shardings=sharding.batch_sharding(mesh))


# ------------------------------------------------------------------------------------ experiment
@dataclasses.dataclass
class Experiment:
  """Everything a run builds from its config before the first step."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model: Any
  train_records: list
  val_query: list
  val_gallery: list
  query: list
  gallery: list
  num_classes: int
  steps_per_epoch: int
  total_steps: int
  tx: optax.GradientTransformation
  learning_rate_fn: Callable[[jax.Array], jax.Array]


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
  """Read the dataset records, build the model and optimiser; no arrays are created yet."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import records as records_lib  # pylint: disable=g-import-not-at-top

  root = config.data.root
  if config.data.source == 'folder' and (not root or not os.path.isdir(root)):
    raise FileNotFoundError(
        f'config.data.root={root!r} is not a directory: point it at the {config.data.dataset} '
        'dataset on local disk (see README, "Dataset layouts").')
  splits = pipeline.load_splits_for_config(config.data)
  train_records, val_query, val_gallery = splits.train, [], []
  if config.data.num_val_ids > 0:
    train_records, val_query, val_gallery = records_lib.split_validation(
        splits.train, config.data.num_val_ids, config.data.seed)
  num_classes = records_lib.num_classes(train_records)

  mesh = sharding.create_mesh()
  sharding.check_batch_divisible(config.data.num_ids_per_batch * config.data.num_instances, mesh,
                                 'config.data.num_ids_per_batch x config.data.num_instances')
  sharding.check_batch_divisible(config.data.eval_batch_size, mesh, 'config.data.eval_batch_size')

  steps_per_epoch = pipeline.train_steps_per_epoch(train_records, config.data)
  total_steps = steps_per_epoch * config.train.num_epochs
  if config.train.max_steps > 0:
    total_steps = min(total_steps, config.train.max_steps)
  model = facenet.build_model(config.model, num_classes)
  learning_rate_fn = optim.create_learning_rate_fn(config.optim, steps_per_epoch,
                                                   config.train.num_epochs)
  # The optimiser's decay/LR masks need only the parameter tree's structure.
  abstract_params = jax.eval_shape(
      lambda r: _init_fn(model, config)(r), jax.random.PRNGKey(0))['params']
  tx = optim.create_optimizer(config.optim, abstract_params, steps_per_epoch,
                              config.train.num_epochs)
  return Experiment(config=config, mesh=mesh, model=model, train_records=train_records,
                    val_query=val_query, val_gallery=val_gallery, query=splits.query,
                    gallery=splits.gallery, num_classes=num_classes,
                    steps_per_epoch=steps_per_epoch, total_steps=total_steps, tx=tx,
                    learning_rate_fn=learning_rate_fn)


def _init_fn(model, config: ml_collections.ConfigDict) -> Callable[[jax.Array], Any]:
  """`rng -> variables`, initialising on a dummy batch of two at the configured image size."""
  h, w = config.data.image_size
  image = jnp.zeros((2, h, w, 3), jnp.float32)
  flare = jnp.zeros((2, 2), jnp.int32)
  return lambda rng: model.init({'params': rng, 'dropout': rng}, image, image, image, flare,
                                train=False)


def init_variables(model, config: ml_collections.ConfigDict, rng: jax.Array,
                   load_pretrained: bool = True) -> dict[str, Any]:
  """Initialise the model's variables, then load pretrained weights when configured."""
  variables = dict(jax.jit(_init_fn(model, config))(rng))
  if load_pretrained and config.model.pretrained_path:
    from facenet_jax import pretrained  # pylint: disable=g-import-not-at-top
    backbone = pretrained.load_pretrained_backbone(config.model.pretrained_path, config.model.depth,
                                                   config.model.backbone)
    variables = pretrained.init_streams_from_pretrained(variables, backbone,
                                                        config.data.image_size)
    logging.info('Initialised the three streams from %s', config.model.pretrained_path)
  return variables


def create_state(exp: Experiment, load_pretrained: bool = True) -> TrainState:
  """A replicated step-0 state (pass `load_pretrained=False` for a restore template)."""
  rng = jax.random.PRNGKey(exp.config.train.seed)
  init_rng, state_rng = jax.random.split(rng)
  variables = init_variables(exp.model, exp.config, init_rng, load_pretrained)
  state = create_train_state(variables, exp.tx, state_rng)
  distributed.barrier('create_state')   # device_put checks equality across processes
  return sharding.replicate(state, exp.mesh)


def abstract_state(exp: Experiment) -> TrainState:
  """The state's structure, shapes, dtypes and (replicated) shardings, with no values.

  A restore template: orbax fills it from the checkpoint, so nothing is initialised or compiled
  for it (initialising the model takes ~20 s on a CPU even for ResNet-18 streams).
  """
  def build(rng):
    return create_train_state(dict(_init_fn(exp.model, exp.config)(rng)), exp.tx, rng)
  shapes = jax.eval_shape(build, jax.random.PRNGKey(0))
  replicated = sharding.replicated_sharding(exp.mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                      shapes)


# ------------------------------------------------------------------------------------ evaluation
def embed_records(state: TrainState, embed_fn, records: list, config: ml_collections.ConfigDict,
                  mesh, with_masks: bool = False) -> dict[str, np.ndarray]:
  """Embed every record exactly once: `{'embedding': [N, 3D]}` (+ `'masks'` when asked).

  With several processes each reads and embeds only its rows of every eval batch; the outputs
  are all-gathered, so every process returns the same complete arrays.
  """
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  if not records:
    raise ValueError('embed_records got no records (an empty query or gallery split).')
  embedding = None
  masks = {}
  stream = pipeline.make_eval_stream(records, config.data, process_index=jax.process_index(),
                                     process_count=jax.process_count())
  first = True
  for batch in stream:
    out = embed_fn(state, sharding.shard_batch({k: batch[k] for k in EVAL_KEYS}, mesh))
    if not with_masks:
      out = {'embedding': out['embedding']}
    if first:  # the first gather follows this process's compile of embed_fn: start together
      distributed.barrier('embed')
      first = False
    out = distributed.gather_to_host(
        {'out': out, 'mask': np.asarray(batch['mask'], bool), 'index': np.asarray(batch['index'])})
    keep, index, out = out['mask'], out['index'][out['mask']], out['out']
    if embedding is None:
      embedding = np.zeros((len(records), out['embedding'].shape[-1]), np.float32)
    embedding[index] = out['embedding'][keep]
    for name, value in out.get('masks', {}).items():
      if name not in masks:
        masks[name] = np.zeros((len(records),) + value.shape[1:], np.float32)
      masks[name][index] = value[keep]
  result = {'embedding': embedding}
  if with_masks:
    result['masks'] = masks
  return result


def evaluate_retrieval(state: TrainState, embed_fn, query: list, gallery: list,
                       config: ml_collections.ConfigDict, mesh) -> dict[str, Any]:
  """mAP, mINP and CMC of `query` against `gallery` under the configured protocol."""
  if not query:
    raise ValueError('The query split is empty: nothing to evaluate.')
  if not gallery:
    raise ValueError('The gallery split is empty: nothing to evaluate.')
  q = embed_records(state, embed_fn, query, config, mesh)['embedding']
  g = embed_records(state, embed_fn, gallery, config, mesh)['embedding']
  return evaluate_embeddings(q, g, query, gallery, config)


def evaluate_embeddings(q_feats: np.ndarray, g_feats: np.ndarray, query: list, gallery: list,
                        config: ml_collections.ConfigDict) -> dict[str, Any]:
  labels = lambda recs, f: np.asarray([getattr(r, f) for r in recs])
  scene = config.eval.protocol == 'scene'
  if config.eval.protocol not in ('camera', 'scene'):
    raise ValueError(f"config.eval.protocol must be 'camera' or 'scene', got "
                     f'{config.eval.protocol!r}')
  rerank = None
  if config.eval.rerank:
    rerank = dict(k1=config.eval.rerank_k1, k2=config.eval.rerank_k2,
                  lambda_value=config.eval.rerank_lambda)
  return evaluation.evaluate_features(
      q_feats, g_feats, labels(query, 'pid'), labels(gallery, 'pid'),
      labels(query, 'camid'), labels(gallery, 'camid'), metric=config.eval.distance,
      max_rank=config.eval.max_rank, chunk_size=config.eval.query_chunk_size,
      q_sceneids=labels(query, 'scene') if scene else None,
      g_sceneids=labels(gallery, 'scene') if scene else None, rerank=rerank)


def summarize_metrics(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
  cmc = np.asarray(metrics['cmc'])
  rank = lambda k: float(cmc[min(k, len(cmc)) - 1])
  return {f'{prefix}/mAP': float(metrics['mAP']), f'{prefix}/mINP': float(metrics['mINP']),
          f'{prefix}/R1': rank(1), f'{prefix}/R5': rank(5), f'{prefix}/R10': rank(10)}


# ------------------------------------------------------------------------------------ the driver
class _Progress:
  """A progress line with steps/s, triplets/s and ETA, measured between log points."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int):
    self.total_steps, self.batch_size = total_steps, batch_size
    self.last_step, self.last_time = start_step, time.perf_counter()

  def update(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    steps_per_sec = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    eta = (self.total_steps - step) / max(steps_per_sec, 1e-9)
    return {'steps_per_sec': steps_per_sec, 'triplets_per_sec': steps_per_sec * self.batch_size,
            'eta_sec': eta}


def _format_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train for `config.train.num_epochs` (or `max_steps`), evaluating every `eval_every_epochs`.

  Resumes from the latest checkpoint in `workdir/checkpoints`. Writes `config.json`,
  `metrics.jsonl` (one line per log point and evaluation), TensorBoard scalars and the
  checkpoints into `workdir`. Returns the final metrics (test split, and validation if any).
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  distributed.initialize(config.train)
  workdir_path = pathlib.Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  is_chief = distributed.is_chief()
  if is_chief:
    (workdir_path / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')

  exp = build_experiment(config)
  batch_size = config.data.num_ids_per_batch * config.data.num_instances
  logging.info('%d training ids, %d triplets, %d steps per epoch, %d steps in all, %d devices',
               exp.num_classes, len(exp.train_records), exp.steps_per_epoch, exp.total_steps,
               exp.mesh.devices.size)
  ckpt = checkpointing.Checkpointer(workdir_path, config.train.keep_checkpoints)
  best_score = -math.inf
  if ckpt.latest_step() is None:
    state = create_state(exp)
  else:
    state, meta = ckpt.restore(abstract_state(exp))
    best_meta = ckpt.best_meta()
    if best_meta is not None:
      best_score = best_meta['score']
    logging.info('Resumed from step %d (%s)', int(state.step), meta)
  start_step = int(jax.device_get(state.step))

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  metrics_file = (workdir_path / 'metrics.jsonl').open('a') if is_chief else None

  def record(step: int, scalars: dict[str, float]) -> None:
    writer.write_scalars(step, scalars)
    if metrics_file is not None:
      metrics_file.write(checkpointing.json.dumps({'step': step, **scalars}) + '\n')
      metrics_file.flush()

  train_step = jit_train_step(
      make_train_step(exp.model, exp.tx, config, exp.learning_rate_fn), exp.mesh)
  embed_step = jit_embed_step(make_embed_step(exp.model), exp.mesh)

  def run_evaluation(step: int) -> dict[str, float]:
    nonlocal best_score
    scalars = {}
    if exp.val_query:
      val = evaluate_retrieval(state, embed_step, exp.val_query, exp.val_gallery, config, exp.mesh)
      scalars.update(summarize_metrics(val, 'val'))
    test = evaluate_retrieval(state, embed_step, exp.query, exp.gallery, config, exp.mesh)
    scalars.update(summarize_metrics(test, 'test'))
    # Model selection never looks at the test split; without a validation split the latest wins.
    score = scalars['val/mAP'] if exp.val_query else float(step)
    if score >= best_score:
      best_score = score
      ckpt.save_best(state, {'step': step, 'score': score, **scalars})
    record(step, scalars)
    logging.info('Evaluation at step %d: %s', step,
                 ', '.join(f'{k} {v:.4f}' for k, v in scalars.items()))
    return scalars

  stream = pipeline.make_train_stream(exp.train_records, config.data, start_step=start_step,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
  progress = _Progress(exp.total_steps, batch_size, start_step)
  pending = []          # per-step metrics on device, fetched at log time
  previous = None       # last step's metrics: its finiteness is checked one step late
  final_scalars: dict[str, float] = {}
  step = start_step
  compiled_step = None
  while step < exp.total_steps:
    host_batch = next(stream)
    batch = sharding.shard_batch({k: host_batch[k] for k in TRAIN_KEYS}, exp.mesh)
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
      scalars = {f'train/{k}': float(v) for k, v in averaged.items() if k != 'finite'}
      speed = progress.update(step)
      scalars.update({f'train/{k}': v for k, v in speed.items()})
      scalars['train/epoch'] = step / exp.steps_per_epoch
      record(step, scalars)
      logging.info('step %d/%d  epoch %.2f  loss %.4f  %.2f steps/s  %.1f triplets/s  ETA %s',
                   step, exp.total_steps, step / exp.steps_per_epoch, scalars['train/loss'],
                   speed['steps_per_sec'], speed['triplets_per_sec'],
                   _format_eta(speed['eta_sec']))
    end_of_epoch = step % exp.steps_per_epoch == 0
    epoch = step // exp.steps_per_epoch
    if step % config.train.checkpoint_every_steps == 0 or end_of_epoch or step == exp.total_steps:
      ckpt.save(state, {'step': step, 'epoch': step / exp.steps_per_epoch})
    if (end_of_epoch and epoch % config.train.eval_every_epochs == 0) or step == exp.total_steps:
      final_scalars = run_evaluation(step)
  if not final_scalars:  # resumed a finished run: evaluate what is there
    final_scalars = run_evaluation(step)
  writer.flush()
  if metrics_file is not None:
    metrics_file.close()
  ckpt.close()
  return final_scalars


def _raise_non_finite(step: int, metrics: Mapping[str, Any]) -> None:
  terms = ', '.join(f'{k}={float(v):.4g}' for k, v in sorted(metrics.items()))
  raise NonFiniteLossError(
      f'Non-finite loss at step {step}; training stopped with the last finite state kept '
      f'(the update of that step was skipped). Terms: {terms}. Lower config.optim.base_lr, '
      'enable config.optim.grad_clip_norm, or check the input data.')
