"""The jitted train step: one compilation, a non-finite step, bf16 (device-count invariance:
tests/test_sharding.py)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facenet_jax import device_input
from facenet_jax import experiment
from facenet_jax import sharding
from facenet_jax import steps
from input_pipeline import pipeline
from tests.tiny import SHORT_SGD_RUN
from tests.tiny import tiny_config


@pytest.fixture(scope='module')
def setup(tiny_synthetic_root):
  """One experiment, its host-side initial state and a few host batches, shared by the tests."""
  config = tiny_config(tiny_synthetic_root, **SHORT_SGD_RUN)   # the trainer tests' programs
  exp = experiment.build_experiment(config)
  # The trainer's own initialisation (one compiled program; op by op, a few hundred). NumPy
  # copies: the jitted step donates its input state, which must not consume these.
  host_state = jax.device_get(experiment.create_state(exp))
  stream = pipeline.make_train_stream(exp.train_records, config.data)
  batches = [{k: b[k] for k in exp.spec.batch.train_keys} for b, _ in zip(stream, range(8))]
  return config, exp, host_state, batches


def _step_on_mesh(exp, config, host_state, batch, num_devices):
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  step = steps.jit_train_step(
      steps.make_train_step(exp.model, exp.spec, exp.tx, config.loss, exp.learning_rate_fn,
                            prepare=device_input.make_prepare(config.data)), mesh)
  state = sharding.replicate(host_state, mesh)
  new_state, metrics = step(state, sharding.shard_batch(batch, mesh))
  return jax.device_get(new_state), steps.flatten_metrics(jax.device_get(metrics))


@pytest.fixture(scope='module')
def jitted(setup):
  config, exp, host_state, _ = setup
  step = steps.jit_train_step(
      steps.make_train_step(exp.model, exp.spec, exp.tx, config.loss, exp.learning_rate_fn,
                            prepare=device_input.make_prepare(config.data)),
      exp.mesh)
  return step


@pytest.mark.slow
def test_step_compiles_once_and_the_loss_goes_down(setup, jitted):
  """Six steps alternating over two batches: one compilation, and both batches fit better."""
  config, exp, host_state, batches = setup
  state = sharding.replicate(host_state, exp.mesh)
  losses = []
  for i in range(6):
    state, metrics = jitted(state, sharding.shard_batch(batches[i % 2], exp.mesh))
    losses.append(float(metrics['loss']))
  assert jitted._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 6
  assert all(np.isfinite(losses))
  assert losses[4] < losses[0] and losses[5] < losses[1], losses


@pytest.mark.slow
def test_a_non_finite_step_is_reported_and_leaves_the_state_unchanged(setup, jitted):
  config, exp, host_state, batches = setup
  # One NaN weight of a stream's stem (the batch stays uint8, so the step compiled above
  # runs; a float batch holding a NaN pixel would compile another one).
  params = flax.traverse_util.flatten_dict(host_state.params, sep='/')
  stem = next(k for k in sorted(params) if 'stem' in k and k.endswith('kernel'))
  params[stem] = np.array(params[stem])
  params[stem].flat[0] = np.nan
  poisoned = host_state.replace(params=flax.traverse_util.unflatten_dict(params, sep='/'))
  state = sharding.replicate(poisoned, exp.mesh)
  new_state, metrics = jitted(state, sharding.shard_batch(batches[0], exp.mesh))
  assert float(metrics['finite']) == 0.0
  assert int(new_state.step) == 1
  # Unchanged, NaN included (assert_array_equal counts NaN == NaN).
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new_state.params),
               jax.device_get(poisoned.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new_state.opt_state),
               jax.device_get(poisoned.opt_state))


@pytest.mark.slow
def test_a_bfloat16_step_runs_on_cpu_and_stays_finite(setup):
  config, _, _, batches = setup
  config = config.copy_and_resolve_references()
  config.model.dtype = 'bfloat16'
  exp = experiment.build_experiment(config)
  host_state = jax.device_get(experiment.create_state(exp))
  assert jax.tree.leaves(host_state.params)[0].dtype == np.float32
  new_state, metrics = _step_on_mesh(exp, config, host_state, batches[0], 1)
  assert metrics['finite'] == 1.0 and np.isfinite(metrics['loss'])
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new_state.params))
