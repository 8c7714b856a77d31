"""The pure step functions: one training step and one embedding step, and their jitted forms.

Both are built from a model and its `ModelSpec` (loss bundle, batch contract), so they serve every
registered model. `train_step(state, batch) -> (state, metrics)` and
`embed_step(variables, batch) -> outputs` have no Python side effects; the trainer and the
evaluator own the loops around them.
"""

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from facenet_jax import device_input
from facenet_jax import sharding
from facenet_jax.models import registry
from facenet_jax.train_state import TrainState

# Model outputs the evaluator may keep besides the embedding.
EMBED_EXTRAS = ('masks', 'flare_logits')   # {name: [B, ...]} outputs kept when asked


def make_train_step(model, spec: registry.ModelSpec, tx: optax.GradientTransformation,
                    loss_config, learning_rate_fn: Callable[[jax.Array], jax.Array],
                    prepare: Callable[[Mapping[str, Any]], dict] | None = None):
  """`train_step(state, batch) -> (state, metrics)`, pure; jit it with the state donated.

  batch: the `spec.batch.train_keys` of a batch (see facenet_jax/batches.py), with uint8 images
  and their erasing rows when `prepare` (`device_input.make_prepare`) is given: it runs first,
  inside the step, and turns them into the normalised float32 images of the contract. The loss is the
  sum of the loss bundle's weighted terms. metrics: 'loss', 'grad_norm', 'learning_rate',
  'finite', 'terms' (the weighted terms by name) and 'logged' (the bundle's other metrics);
  `flatten_metrics` gives one flat dict of them. A step whose loss or
  gradients are not finite leaves the state unchanged and reports `metrics['finite'] == 0`, so
  the trainer can stop with the last good state still in hand.
  """

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
    if prepare is not None:
      batch = prepare(batch)
    device_input.check_prepared(batch, 'make_train_step')
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      outputs, new_vars = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, *spec.batch.model_inputs(batch),
          train=True, rngs={'dropout': rng}, mutable=['batch_stats'])
      terms, logged = spec.loss_bundle(outputs, batch, loss_config)
      loss = sum(terms.values(), jnp.zeros((), jnp.float32))   # the one place terms are summed
      return loss, (terms, logged, new_vars['batch_stats'])

    (loss, (terms, logged, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    # Keep the last good state when this step diverged (the trainer stops on `finite == 0`).
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                             state.replace(step=state.step + 1))
    metrics = dict(terms=terms, logged=logged, loss=loss, grad_norm=grad_norm,
                   learning_rate=learning_rate_fn(state.step), finite=finite.astype(jnp.float32))
    return new_state, metrics

  return train_step


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
  """One flat dict of a train step's metrics: the terms and logged metrics by their own names."""
  flat = {k: v for k, v in metrics.items() if k not in ('terms', 'logged')}
  return {**metrics['logged'], **metrics['terms'], **flat}


def flip_images(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The batch with every image input ([B, H, W, C] arrays) mirrored left-right."""
  return {k: (v[:, :, ::-1] if getattr(v, 'ndim', 0) == 4 else v) for k, v in batch.items()}


def make_embed_step(model, spec: registry.ModelSpec,
                    batch_transform: Callable[[dict], dict] | None = None,
                    flip_test: bool = False,
                    prepare: Callable[[Mapping[str, Any]], dict] | None = None):
  """`embed_step(variables, batch) -> {'embedding': [B, E]}` (+ `EMBED_EXTRAS` the model has).

  Eval mode (no batch-statistics update). `batch_transform` edits the batch inside the compiled
  function (e.g. zeroing the flare bits to embed without test-time FCE). `flip_test` adds the
  embedding of the horizontally mirrored images (`eval.flip_test`, the AGW family's test-time
  flip: the official DEEN / FSC-Net / TSME test scripts sum the two); the extras stay those of
  the unmirrored images. `prepare` (`device_input.make_prepare`) normalises uint8 images first.
  """

  def embed_step(variables: Mapping[str, Any], batch: Mapping[str, jax.Array]):
    if prepare is not None:
      batch = prepare(batch)
    device_input.check_prepared(batch, 'make_embed_step')
    if batch_transform is not None:
      batch = batch_transform(dict(batch))
    outputs = model.apply(variables, *spec.batch.model_inputs(batch), train=False)
    out = {k: outputs[k] for k in ('embedding',) + EMBED_EXTRAS if k in outputs}
    if flip_test:
      mirrored = model.apply(variables, *spec.batch.model_inputs(flip_images(batch)), train=False)
      out['embedding'] = out['embedding'] + mirrored['embedding']
    return out

  return embed_step


def jit_train_step(train_step, mesh):
  replicated = sharding.replicated_sharding(mesh)
  return jax.jit(train_step, in_shardings=(replicated, sharding.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def jit_embed_step(embed_step, mesh):
  return jax.jit(embed_step, in_shardings=(sharding.replicated_sharding(mesh),
                                           sharding.batch_sharding(mesh)),
                 out_shardings=sharding.batch_sharding(mesh))

