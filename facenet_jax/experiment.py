"""Experiment setup: config -> records, mesh, model, optimiser and state templates, built once.

`build_experiment(config)` is everything a training run needs before its first step;
`build_eval_experiment(config)` is the subset evaluation needs (records, mesh, model; no
optimiser). The state is created (`create_state`), or described for a restore
(`exp.variable_template`, `abstract_state`), from them; the model's init is traced for shapes
once per experiment. This module and `facenet_jax.eval` are where
the library meets `input_pipeline` (records and streams).
"""

import dataclasses
import os
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import optax

from facenet_jax import distributed
from facenet_jax import models
from facenet_jax import optim
from facenet_jax import sharding
from facenet_jax.models import registry
from facenet_jax.train_state import TrainState, create_train_state


@dataclasses.dataclass
class EvalExperiment:
  """What evaluating a model needs: the records, the mesh and the model (no optimiser)."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  spec: registry.ModelSpec
  model: Any
  num_classes: int
  train_records: list
  val_query: list
  val_gallery: list
  query: list
  gallery: list
  # `{'params', 'batch_stats'}` as shapes/dtypes with replicated shardings (no values): the
  # restore template of evaluation and the tree every other template derives from.
  variable_template: dict[str, Any]


@dataclasses.dataclass
class Experiment(EvalExperiment):
  """Everything a training run builds from its config before the first step."""
  steps_per_epoch: int = 0
  total_steps: int = 0
  tx: optax.GradientTransformation | None = None
  learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None

  @property
  def batch_size(self) -> int:
    return self.config.data.num_ids_per_batch * self.config.data.num_instances


def build_eval_experiment(config: ml_collections.ConfigDict) -> EvalExperiment:
  """Read the dataset records and build the mesh and model; no arrays are created yet.

  The training records are read too: they fix the number of classes (the classifier's shape).
  """
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import records as records_lib  # pylint: disable=g-import-not-at-top

  root = config.data.root
  if config.data.source == 'folder' and (not root or not os.path.isdir(root)):
    raise FileNotFoundError(
        f'config.data.root={root!r} is not a directory: point it at the {config.data.dataset} '
        'dataset on local disk (see README, "Dataset layouts").')
  splits = pipeline.load_splits_for_config(config.data)
  if config.data.source == 'folder' and config.data.prescan:
    # Every image decoded once now: a bad file fails the run before its first step, not at the
    # first evaluation hours later, and every problem is listed at once.
    problems = pipeline.prescan(splits)
    if problems:
      raise records_lib.DatasetError(records_lib.format_problems(problems, root))
  train_records, val_query, val_gallery = splits.train, [], []
  if config.data.num_val_ids > 0:
    if pipeline.is_cross_modal(config.data.dataset):
      raise ValueError('config.data.num_val_ids: a validation split of held-out ids is not '
                       'available for the cross-modality sets; set it to 0')
    train_records, val_query, val_gallery = records_lib.split_validation(
        splits.train, config.data.num_val_ids, config.data.seed)
  num_classes = records_lib.num_classes(train_records)
  mesh = sharding.create_mesh()
  sharding.check_batch_divisible(config.data.eval_batch_size, mesh, 'config.data.eval_batch_size')
  spec = models.get_spec(config.model.name)
  model = models.build_model(config.model, num_classes)
  return EvalExperiment(config=config, mesh=mesh, spec=spec, model=model,
                        num_classes=num_classes, train_records=train_records,
                        val_query=val_query, val_gallery=val_gallery, query=splits.query,
                        gallery=splits.gallery,
                        variable_template=_variable_template(model, config, mesh))


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
  """`build_eval_experiment` plus the schedule, the step counts and the optimiser."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  base = build_eval_experiment(config)
  sharding.check_batch_divisible(config.data.num_ids_per_batch * config.data.num_instances,
                                 base.mesh,
                                 'config.data.num_ids_per_batch x config.data.num_instances')
  steps_per_epoch = pipeline.train_steps_per_epoch(base.train_records, config.data)
  total_steps = steps_per_epoch * config.train.num_epochs
  if config.train.max_steps > 0:
    total_steps = min(total_steps, config.train.max_steps)
  learning_rate_fn = optim.create_learning_rate_fn(config.optim, steps_per_epoch,
                                                   config.train.num_epochs)
  # The optimiser's decay/LR masks need only the parameter tree's structure.
  tx = optim.create_optimizer(config.optim, base.variable_template['params'], steps_per_epoch,
                              config.train.num_epochs, freeze=base.spec.frozen)
  return Experiment(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
                    steps_per_epoch=steps_per_epoch, total_steps=total_steps, tx=tx,
                    learning_rate_fn=learning_rate_fn)


def _load_pretrained(exp: EvalExperiment, variables: dict[str, Any]) -> dict[str, Any]:
  """`variables` with the weights of `model.pretrained_path` copied in by the model's loader."""
  path = exp.config.model.pretrained_path
  if exp.spec.load_pretrained is None:
    raise ValueError(f'config.model.pretrained_path={path!r}: model {exp.spec.name!r} has no '
                     'pretrained-weight loader.')
  variables = exp.spec.load_pretrained(variables, path, exp.config.model,
                                       tuple(exp.config.data.image_size))
  logging.info('Initialised the streams from %s', path)
  return dict(variables)


def _abstract_with_replicated_sharding(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  replicated = sharding.replicated_sharding(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), tree)


def _variable_template(model, config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """The model's `{'params', 'batch_stats'}` traced for shapes only (nothing initialised)."""
  shapes = jax.eval_shape(lambda r: registry.init_variables(model, config.data.image_size, r),
                          jax.random.PRNGKey(0))
  shapes = {'params': shapes['params'], 'batch_stats': shapes.get('batch_stats', {})}
  return _abstract_with_replicated_sharding(shapes, mesh)


def create_state(exp: Experiment) -> TrainState:
  """A replicated step-0 state, with the pretrained weights when `model.pretrained_path`."""
  rng = jax.random.PRNGKey(exp.config.train.seed)
  init_rng, state_rng = jax.random.split(rng)
  variables = jax.jit(lambda r: registry.init_variables(
      exp.model, exp.config.data.image_size, r))(init_rng)
  if exp.config.model.pretrained_path:
    variables = _load_pretrained(exp, variables)
  if exp.spec.load_parts is not None:
    variables = dict(exp.spec.load_parts(variables, exp.config))
  state = create_train_state(variables, exp.tx, state_rng)
  distributed.barrier('create_state')   # device_put checks equality across processes
  return sharding.replicate(state, exp.mesh)


def abstract_state(exp: Experiment) -> TrainState:
  """The state's structure, shapes, dtypes and (replicated) shardings, with no values.

  A restore template: orbax fills it from the checkpoint, so nothing is initialised or compiled
  for it (initialising the model takes ~20 s on a CPU even for ResNet-18 streams). Derived from
  `exp.variable_template`: only the optimiser's init is traced here, not the model's.
  """
  shapes = jax.eval_shape(lambda v: create_train_state(v, exp.tx, jax.random.PRNGKey(0)),
                          exp.variable_template)
  return _abstract_with_replicated_sharding(shapes, exp.mesh)
