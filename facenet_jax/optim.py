"""Optimiser and learning-rate schedules (optax).

Paper recipe: Adam, base LR 3.5e-4, x0.1 at epochs 40 and 70, 120 epochs. Official code: SGD with
momentum 0.9, coupled weight decay, biases at 2x LR, cosine schedule with linear warmup (timm
`CosineLRScheduler` with per-epoch steps). Both are selected by `config.optim` fields.

Parameter groups are chosen by the parameter's path in the tree (flax.linen names):
  * weight decay: conv/dense kernels and any other leaf, but not biases ('bias'), norm scales
    ('scale'), or anything inside a BatchNorm/LayerNorm/GroupNorm module (`decay_mask`);
    `optim.decay_all_params` decays every trainable leaf as the official code does;
  * bias LR: leaves named 'bias' get `optim.bias_lr_factor` (`bias_mask`), as the official code
    gives every parameter whose name contains "bias" the factor;
  * frozen: leaves selected by a path predicate get exactly zero updates (`frozen_mask`).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[Any], jax.Array]
PathPredicate = Callable[[str], bool]

# Leaf names that never get weight decay: biases, the scale of normalisation layers, and the SMP
# threshold Delta (a decision boundary: L2 would pull it back to its initial 0 for no reason).
NO_DECAY_LEAF_NAMES = ('bias', 'scale', 'threshold')
# Module name prefixes (flax auto-names: BatchNorm_0, LayerNorm_1, ...) whose leaves are not decayed.
NORM_MODULE_PREFIXES = ('BatchNorm', 'LayerNorm', 'GroupNorm')
# Official cosine schedule (solver/scheduler_factory): ends at 0.002 x base, an absolute value
# shared by all parameter groups (its warmup start, 0.01 x base, is `optim.warmup_init_factor`).
COSINE_MIN_FACTOR = 0.002
# torch.optim.Adam defaults; the paper gives no Adam hyper-parameters.
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8

OPTIMIZERS = ('adam', 'sgd')
SCHEDULES = ('multistep', 'cosine')


# ------------------------------------------------------------------------------ parameter paths


def path_to_str(path: tuple[Any, ...]) -> str:
  """A jax key path as 'a/b/c' (dict keys, attribute names and sequence indices)."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def _leaf_decays(path: str) -> bool:
  parts = path.split('/')
  if parts[-1] in NO_DECAY_LEAF_NAMES:
    return False
  return not any(p.startswith(NORM_MODULE_PREFIXES) for p in parts[:-1])


def decay_mask(params: Any) -> Any:
  """Tree of bools like `params`: True where weight decay applies.

  False for leaves named 'bias', 'scale' or 'threshold' (the SMP Delta) and for every leaf inside
  a BatchNorm / LayerNorm / GroupNorm module; True otherwise (conv/dense kernels, embeddings).
  """
  return jax.tree_util.tree_map_with_path(lambda p, _: _leaf_decays(path_to_str(p)), params)


def bias_mask(params: Any) -> Any:
  """Tree of bools like `params`: True for leaves named 'bias' (they get bias_lr_factor)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: path_to_str(p).split('/')[-1] == 'bias', params)


def feature_mask(params: Any) -> Any:
  """Tree of bools like `params`: True outside the top-level 'head*' modules (BNNeck + classifier
  of every model), i.e. the feature extractor with its plug-ins, which gets
  `optim.feature_lr_factor` (AGW family: 0.1, the official `base_params` group)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: not path_to_str(p).split('/')[0].startswith('head'), params)


def frozen_mask(params: Any, freeze: PathPredicate | None) -> Any:
  """Tree of bools like `params`: True where `freeze('a/b/leaf')` holds (no updates at all)."""
  if freeze is None:
    return jax.tree_util.tree_map(lambda _: False, params)
  return jax.tree_util.tree_map_with_path(lambda p, _: bool(freeze(path_to_str(p))), params)


# ------------------------------------------------------------------------------ schedules


def _check_schedule_args(optim_config: Any, steps_per_epoch: int, num_epochs: int) -> None:
  if optim_config.schedule not in SCHEDULES:
    raise ValueError(f'optim.schedule must be one of {SCHEDULES}, got {optim_config.schedule!r}')
  if steps_per_epoch < 1:
    raise ValueError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}')
  if num_epochs < 1:
    raise ValueError(f'train.num_epochs must be >= 1, got {num_epochs}')
  if optim_config.base_lr <= 0:
    raise ValueError(f'optim.base_lr must be > 0, got {optim_config.base_lr}')
  if optim_config.warmup_epochs < 0:
    raise ValueError(f'optim.warmup_epochs must be >= 0, got {optim_config.warmup_epochs}')
  epochs = tuple(optim_config.decay_epochs)
  if list(epochs) != sorted(epochs) or any(e < 0 for e in epochs):
    raise ValueError(
        f'optim.decay_epochs must be non-negative and increasing, got {epochs}')


def create_learning_rate_fn(optim_config: Any, steps_per_epoch: int, num_epochs: int,
                            lr_factor: float = 1.0) -> Schedule:
  """Per-step learning rate, constant within an epoch (both schedules change LR per epoch).

  (Long because most of it is the two schedules' docstring and argument checks; the schedules
  themselves are a few lines each.)

  Let e = step // steps_per_epoch (0-based epoch) and t = e + 1: the official code calls
  `scheduler.step(epoch)` at the start of epoch t = 1..num_epochs. base_g = lr_factor x base_lr
  is the group's peak LR (lr_factor = bias_lr_factor for biases).

  'multistep' (paper): base_g x decay_factor^(number of decay_epochs <= e); with decay_epochs
    (40, 70) epochs 0..39 run at base, 40..69 at base/10, 70.. at base/100 (torch MultiStepLR).
  'cosine' (official, timm CosineLRScheduler with t_in_epochs, no warmup prefix, one cycle):
    lr0 = warmup_init_factor x base_lr (official 0.01), lr_min = 0.002 x base_lr (absolute, the
    same for every group),
    w = warmup_epochs, T = num_epochs:
      t < w:       lr0 + t (base_g - lr0) / w
      w <= t < T:  lr_min + (base_g - lr_min)(1 + cos(pi t / T)) / 2     (no warmup offset)
      t >= T:      lr_min                                               (cycle limit reached)
  The linear warmup above also applies to 'multistep' when warmup_epochs > 0 (the paper has
  none; this is our extension so both schedules read warmup_epochs the same way). With
  warmup_init_factor 0 it is the AGW family's warmup: lr = base_g (e + 1) / w for e < w.

  Args:
    optim_config: `config.optim`.
    steps_per_epoch: optimiser steps per epoch (>= 1).
    num_epochs: training length in epochs (`config.train.num_epochs`).
    lr_factor: multiplier of base_lr for this parameter group.

  Returns:
    schedule(step) -> float32 scalar; step may be a Python int or a traced integer array.
  """
  _check_schedule_args(optim_config, steps_per_epoch, num_epochs)
  base = float(optim_config.base_lr)
  base_g = base * float(lr_factor)
  warmup = int(optim_config.warmup_epochs)
  lr0 = float(optim_config.warmup_init_factor) * base

  if optim_config.schedule == 'multistep':
    decay_epochs = tuple(int(d) for d in optim_config.decay_epochs)
    decay_factor = float(optim_config.decay_factor)

    def main_schedule(e, t):
      del t
      num_decays = jnp.zeros([], jnp.float32)
      for d in decay_epochs:
        num_decays = num_decays + (e >= d).astype(jnp.float32)
      return base_g * jnp.power(jnp.float32(decay_factor), num_decays)
  else:
    lr_min = COSINE_MIN_FACTOR * base

    def main_schedule(e, t):
      del e
      t = t.astype(jnp.float32)
      cosine = lr_min + 0.5 * (base_g - lr_min) * (1.0 + jnp.cos(jnp.pi * t / num_epochs))
      return jnp.where(t >= num_epochs, jnp.float32(lr_min), cosine)

  def schedule(step):
    e = jnp.asarray(step, jnp.int32) // steps_per_epoch
    t = e + 1
    lr = main_schedule(e, t)
    if warmup > 0:
      warm = lr0 + t.astype(jnp.float32) * (base_g - lr0) / warmup
      lr = jnp.where(t < warmup, warm, lr)
    return jnp.asarray(lr, jnp.float32)

  return schedule


# ------------------------------------------------------------------------------ optimiser


class ScaleByGroupLRState(NamedTuple):
  count: jax.Array  # number of updates applied so far (int32 scalar)


def scale_by_group_lr(group_of: Callable[[Any], Any],
                      schedules: dict[str, Schedule]) -> optax.GradientTransformation:
  """Multiplies each leaf by -schedules[group](count): the per-group learning-rate step.

  `group_of(updates)` returns a tree of group names like `updates`; the group '_frozen' (not in
  `schedules`) gets exactly zero updates. Groups are read from the update tree's paths each
  trace, so any dict-like container type of the parameter tree works.
  """

  def init_fn(params):
    del params
    return ScaleByGroupLRState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    lrs = {name: fn(state.count) for name, fn in schedules.items()}

    def scale(u, group):
      if group not in lrs:
        return jnp.zeros_like(u)
      return (-lrs[group] * u).astype(u.dtype)

    updates = jax.tree_util.tree_map(scale, updates, group_of(updates))
    return updates, ScaleByGroupLRState(count=optax.safe_int32_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def zero_frozen(frozen_of: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Sets the gradient of frozen leaves (True in `frozen_of(updates)`) to zero."""

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree_util.tree_map(
        lambda u, frozen: jnp.zeros_like(u) if frozen else u, updates, frozen_of(updates))
    return updates, state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def create_optimizer(optim_config: Any, params: Any, steps_per_epoch: int, num_epochs: int,
                     freeze: PathPredicate | None = None) -> optax.GradientTransformation:
  """The full optax chain for `config.optim`.

  (One function on purpose: the chain's order is the point, and it reads top to bottom here.)

  Order (as a torch training step): zero frozen grads -> global-norm clipping (if
  grad_clip_norm > 0, on the raw gradients like torch's clip_grad_norm_ before step) ->
  coupled weight decay g + wd * p on `decay_mask` leaves -> Adam moments or SGD momentum ->
  x -lr of the leaf's group (weights: base LR; 'bias' leaves: bias_lr_factor; frozen: 0).

  'sgd' is torch SGD with momentum, dampening 0: d = g + wd p; buf = momentum buf + d (buf = d
    on the first step); p -= lr buf, or with `optim.nesterov` p -= lr (d + momentum buf)
    (torch's Nesterov form, the AGW family's optimiser).
  Each leaf's LR is base_lr x (bias_lr_factor for biases) x (feature_lr_factor outside the
  'head*' modules).
  'adam' is torch Adam (betas 0.9/0.999, eps 1e-8) with its `weight_decay`, i.e. the decay is
    coupled (added to the gradient before the moments) rather than AdamW's decoupled decay: the
    paper is silent and the strong re-id baseline it builds on uses torch Adam this way.

  Args:
    optim_config: `config.optim`.
    params: the parameter tree (used to check the masks once, eagerly).
    steps_per_epoch: optimiser steps per epoch.
    num_epochs: `config.train.num_epochs`.
    freeze: optional predicate on 'a/b/leaf' paths; matching leaves never change (no decay,
      no momentum, no LR), e.g. parameters the model never uses.

  Returns:
    An optax.GradientTransformation.
  """
  if optim_config.optimizer not in OPTIMIZERS:
    raise ValueError(
        f'optim.optimizer must be one of {OPTIMIZERS}, got {optim_config.optimizer!r}')
  if optim_config.weight_decay < 0:
    raise ValueError(f'optim.weight_decay must be >= 0, got {optim_config.weight_decay}')
  if optim_config.grad_clip_norm < 0:
    raise ValueError(f'optim.grad_clip_norm must be >= 0, got {optim_config.grad_clip_norm}')
  if optim_config.bias_lr_factor <= 0:
    raise ValueError(f'optim.bias_lr_factor must be > 0, got {optim_config.bias_lr_factor}')

  def frozen_of(tree):
    return frozen_mask(tree, freeze)

  def decay_of(tree):
    if optim_config.decay_all_params:
      return jax.tree_util.tree_map(lambda f: not f, frozen_of(tree))
    return jax.tree_util.tree_map(lambda d, f: d and not f, decay_mask(tree), frozen_of(tree))

  def group_of(tree):
    return jax.tree_util.tree_map(
        lambda b, k, f: '_frozen' if f else ('bias' if b else 'weight') + ('_feature' if k else ''),
        bias_mask(tree), feature_mask(tree), frozen_of(tree))

  # Build every mask once now, so a bad predicate fails at construction, not inside jit.
  group_of(params)
  decay_of(params)

  if optim_config.feature_lr_factor <= 0:
    raise ValueError(f'optim.feature_lr_factor must be > 0, got {optim_config.feature_lr_factor}')
  schedules = {}
  for kind, kind_factor in (('weight', 1.0), ('bias', optim_config.bias_lr_factor)):
    for part, part_factor in (('', 1.0), ('_feature', optim_config.feature_lr_factor)):
      schedules[kind + part] = create_learning_rate_fn(
          optim_config, steps_per_epoch, num_epochs, lr_factor=kind_factor * part_factor)
  chain = [zero_frozen(frozen_of)]
  if optim_config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
  if optim_config.weight_decay > 0:
    chain.append(optax.add_decayed_weights(optim_config.weight_decay, mask=decay_of))
  if optim_config.optimizer == 'sgd':
    chain.append(optax.trace(decay=optim_config.momentum, nesterov=optim_config.nesterov))
  else:
    chain.append(optax.scale_by_adam(b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS))
  chain.append(scale_by_group_lr(group_of, schedules))
  return optax.chain(*chain)
