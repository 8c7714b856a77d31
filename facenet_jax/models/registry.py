"""Model registry: `config.model.name` -> `ModelSpec` (module, loss bundle, batch contract).

A model plugs in by calling `register(ModelSpec(...))` in its own module, imported by
`facenet_jax/models/__init__.py`. The trainer, the evaluator and the scripts use the spec only:
a new model never edits them.

Config contract: `config.model` holds `name`, `pretrained_path` and fields of the module's
dataclass (all but `num_classes`, which the dataset decides). `build_model` passes them to the
module unchanged, so a config field IS a module field and the module validates it once (in its
`__post_init__`, with messages that name `config.model.<field>`). A field the module does not
have is refused here.

Output contract of every model (`facenet_jax.models.heads.branch_outputs` builds the common part):
  'features', 'bn_features': {branch: [B, D]}; 'logits': {branch: [B, num_classes]};
  'embedding': [B, E], the L2-normalised test embedding;
  optional extras, e.g. FACENet's 'masks' {branch: [B, h, w, C]} and 'flare_logits'.
The evaluator keeps 'embedding' and, when asked, 'masks'.

Loss bundle: `loss_bundle(outputs, batch, loss_config) -> (terms, metrics)`; `terms` are the
already-weighted scalars whose sum is the training loss (one place: the train step sums them),
`metrics` are logged only (per-branch terms, accuracies).
"""

import dataclasses
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import ml_collections

from facenet_jax import batches

# config.model fields read by the registry and the experiment, not passed to the module.
BUILD_FIELDS = ('name', 'pretrained_path')

LossBundle = Callable[[Mapping[str, Any], Mapping[str, jax.Array], ml_collections.ConfigDict],
                      tuple[dict[str, jax.Array], dict[str, jax.Array]]]
# (variables, path, config.model, image_size) -> variables with the pretrained weights copied in.
PretrainedLoader = Callable[[Mapping[str, Any], str, ml_collections.ConfigDict,
                             tuple[int, int]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  module: type[nn.Module]
  loss_bundle: LossBundle
  batch: batches.BatchContract
  load_pretrained: PretrainedLoader | None = None
  # (model, freshly initialised variables) -> variables, e.g. streams that start identical.
  finalize_init: Callable[[nn.Module, dict[str, Any]], dict[str, Any]] | None = None
  # (variables, config) -> variables: parts a model reads from files whenever a run starts from
  # scratch (TSME's stage-1 generators); errors name the file or config field.
  load_parts: Callable[[Mapping[str, Any], ml_collections.ConfigDict], dict[str, Any]] | None = None
  # 'a/b/leaf' parameter path -> True where the optimiser must never change it.
  frozen: Callable[[str], bool] | None = None
  description: str = ''


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
  if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
    raise ValueError(f'model name {spec.name!r} is registered twice')
  _REGISTRY[spec.name] = spec
  return spec


def names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def get_spec(name: str) -> ModelSpec:
  if name not in _REGISTRY:
    raise ValueError(f'config.model.name={name!r} is not a registered model; known: {names()}')
  return _REGISTRY[name]


def module_fields(module: type[nn.Module]) -> tuple[str, ...]:
  """The module's configurable dataclass fields (what `config.model` may set)."""
  skip = {'parent', 'name', 'num_classes'}
  return tuple(f.name for f in dataclasses.fields(module) if f.name not in skip and f.init)


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The module of `config.model.name`, its fields taken from `config.model` as they are."""
  spec = get_spec(model_config.name)
  if num_classes < 1:
    raise ValueError(f'num_classes={num_classes!r} must be >= 1 (no training identities?)')
  fields = set(module_fields(spec.module))
  given = [k for k in model_config.keys() if k not in BUILD_FIELDS]
  unknown = sorted(set(given) - fields)
  if unknown:
    # Typically `--config.model.name` overridden alone: the group keeps the old model's fields.
    raise ValueError(f'config.model has fields {unknown} that model {spec.name!r} does not have; '
                     f'its fields: {sorted(fields)}. A model is chosen with its own config.model '
                     f'group: the config argument, e.g. --config configs/default.py:{spec.name}')
  return spec.module(num_classes=num_classes, **{k: model_config[k] for k in given})


def spec_of(model: nn.Module) -> ModelSpec:
  """The spec whose module class built `model`."""
  for spec in _REGISTRY.values():
    if type(model) is spec.module:  # pylint: disable=unidiomatic-typecheck
      return spec
  raise ValueError(f'{type(model).__name__} is not the module of a registered model')


def init_variables(model: nn.Module, image_size: tuple[int, int], rng: jax.Array,
                   batch_size: int = 2) -> dict[str, Any]:
  """`{'params', 'batch_stats'}` of `model` from a zero batch of its contract at `image_size`."""
  spec = spec_of(model)
  inputs = spec.batch.dummy_inputs(tuple(image_size), batch_size)
  variables = dict(model.init({'params': rng, 'dropout': rng}, *inputs, train=False))
  return spec.finalize_init(model, variables) if spec.finalize_init else variables


def parameter_counts(model: nn.Module, image_size: tuple[int, int],
                     breakdown: tuple[str, ...] = ('mfmp',)) -> dict[str, int]:
  """Trainable parameters per top-level component ('backbone_rgb', 'head_ni', ...), per child of
  the components named in `breakdown` ('mfmp/fmi', ...), 'total' and 'batch_stats'.

  Shapes only (jax.eval_shape): nothing is initialised or computed.
  """
  shapes = jax.eval_shape(lambda: init_variables(model, image_size, jax.random.PRNGKey(0)))
  count = lambda tree: int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
  params = shapes['params']
  counts = {name: count(params[name]) for name in sorted(params)}
  for name in breakdown:
    if name in params:
      counts.update({f'{name}/{k}': count(v) for k, v in sorted(params[name].items())})
  counts['total'] = count(params)
  counts['batch_stats'] = count(shapes.get('batch_stats', {}))
  return counts
