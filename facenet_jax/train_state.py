"""The training state: a pytree of arrays and nothing else.

The model's `apply` and the optax transformation are not part of the state; the step functions
close over them. That keeps the state trivially checkpointable (orbax saves exactly these leaves)
and makes `donate_argnums` cover all of it.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: Any              # float32 parameters
  batch_stats: Any         # BatchNorm running statistics
  opt_state: Any           # optax state
  rng: jax.Array           # uint32[2] base key; the step's key is fold_in(rng, step)


def create_train_state(variables: Any, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  """Wrap freshly initialised (or pretrained) `variables` into a step-0 state."""
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(params),
      rng=rng,
  )


def to_variables(state: TrainState) -> dict[str, Any]:
  """The `variables` dict that `model.apply` expects."""
  return {'params': state.params, 'batch_stats': state.batch_stats}
