"""The jitted, data-parallel train step: device-count invariance, one compilation, NaN, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facenet_jax import device_input
from facenet_jax import experiment
from facenet_jax import models
from facenet_jax import sharding
from facenet_jax import steps
from facenet_jax.train_state import create_train_state
from input_pipeline import pipeline
from tests.tiny import tiny_config


@pytest.fixture(scope='module')
def setup(tiny_synthetic_root):
  """One experiment, its host-side initial state and a few host batches, shared by the tests."""
  config = tiny_config(tiny_synthetic_root)
  exp = experiment.build_experiment(config)
  variables = models.init_variables(exp.model, config.data.image_size, jax.random.PRNGKey(0))
  # NumPy copies: the jitted step donates its input state, which must not consume these.
  host_state = jax.device_get(create_train_state(variables, exp.tx, jax.random.PRNGKey(1)))
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


def test_loss_and_update_do_not_depend_on_the_number_of_devices(setup):
  """BatchNorm statistics and triplet mining see the global batch, however it is sharded."""
  config, exp, host_state, batches = setup
  assert len(jax.devices()) >= 4
  # 1 vs 4 here; 2 processes x 2 devices vs 1 x 4 is tests/test_multihost.py.
  results = {n: _step_on_mesh(exp, config, host_state, batches[0], n) for n in (1, 4)}
  state_1, metrics_1 = results[1]
  for n in (4,):
    state_n, metrics_n = results[n]
    for key in ('loss', 'triplet', 'id', 'flare', 'ic', 'grad_norm'):
      np.testing.assert_allclose(metrics_n[key], metrics_1[key], rtol=1e-4, atol=1e-6,
                                 err_msg=f'{key} on {n} devices')
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
                 state_n.batch_stats, state_1.batch_stats)
    # Adam's first step is ~lr * sign(g): where g is ~0, float noise in the reduction order can
    # flip the sign, so a handful of elements may differ by up to 2 lr; all others agree closely.
    new_1 = np.concatenate([x.ravel() for x in jax.tree.leaves(state_1.params)])
    new_n = np.concatenate([x.ravel() for x in jax.tree.leaves(state_n.params)])
    close = np.isclose(new_n, new_1, rtol=2e-4, atol=2e-6)
    assert close.mean() > 0.999, f'{(~close).sum()} of {close.size} parameters differ'
    assert np.abs(new_n - new_1).max() <= 2.1 * config.optim.base_lr


@pytest.fixture(scope='module')
def jitted(setup):
  config, exp, host_state, _ = setup
  step = steps.jit_train_step(
      steps.make_train_step(exp.model, exp.spec, exp.tx, config.loss, exp.learning_rate_fn,
                            prepare=device_input.make_prepare(config.data)),
      exp.mesh)
  return step


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


def test_a_non_finite_step_is_reported_and_leaves_the_state_unchanged(setup, jitted):
  config, exp, host_state, batches = setup
  batch = dict(batches[0])
  batch['rgb'] = np.array(batch['rgb'], np.float32)   # uint8 cannot hold a NaN; float passes as is
  batch['rgb'][0, 0, 0, 0] = np.nan
  state = sharding.replicate(host_state, exp.mesh)
  new_state, metrics = jitted(state, sharding.shard_batch(batch, exp.mesh))
  assert float(metrics['finite']) == 0.0
  assert int(new_state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new_state.params),
               jax.device_get(host_state.params))


def test_a_bfloat16_step_runs_on_cpu_and_stays_finite(setup):
  config, _, _, batches = setup
  config = config.copy_and_resolve_references()
  config.model.dtype = 'bfloat16'
  exp = experiment.build_experiment(config)
  host_state = jax.device_get(create_train_state(
      models.init_variables(exp.model, config.data.image_size, jax.random.PRNGKey(0)),
      exp.tx, jax.random.PRNGKey(1)))
  assert jax.tree.leaves(host_state.params)[0].dtype == np.float32
  new_state, metrics = _step_on_mesh(exp, config, host_state, batches[0], 1)
  assert metrics['finite'] == 1.0 and np.isfinite(metrics['loss'])
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new_state.params))
