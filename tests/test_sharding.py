"""Sharding: a step on four devices computes what it computes on one.

BatchNorm statistics, triplet mining and the gradient all-reduce see the global batch however it
is split. This module runs with four simulated devices (in a child pytest, see conftest); the
others run on one. Two processes x two devices against one x four is tests/test_multihost.py.
Setup happens inside the tests, not in fixtures, so the parent process (which only relays the
child's outcomes) builds nothing.
"""

import jax
import numpy as np
import pytest

from facenet_jax import device_input
from facenet_jax import experiment
from facenet_jax import sharding
from facenet_jax import steps
from facenet_jax.models import mfmp
from input_pipeline import pipeline
from tests import test_mfmp
from tests.tiny import SHORT_SGD_RUN
from tests.tiny import tiny_agw_config
from tests.tiny import tiny_config

pytestmark = [pytest.mark.devices(4), pytest.mark.slow]


def test_this_module_sees_four_simulated_cpu_devices():
  devices = jax.devices()
  assert len(devices) == 4 and all(d.platform == 'cpu' for d in devices)


def _host_state(exp):
  """The trainer's step-0 state (one compiled initialisation) as NumPy arrays."""
  return jax.device_get(experiment.create_state(exp))


def _step_on_mesh(exp, config, host_state, batch, num_devices):
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  step = steps.jit_train_step(
      steps.make_train_step(exp.model, exp.spec, exp.tx, config.loss, exp.learning_rate_fn,
                            prepare=device_input.make_prepare(config.data)), mesh)
  new_state, metrics = step(sharding.replicate(host_state, mesh), sharding.shard_batch(batch, mesh))
  return jax.device_get(new_state), steps.flatten_metrics(jax.device_get(metrics))


def _assert_same_step(results, keys, initial_params):
  (state_1, metrics_1), (state_4, metrics_4) = results[1], results[4]
  for key in keys:
    np.testing.assert_allclose(metrics_4[key], metrics_1[key], rtol=1e-4, atol=1e-6,
                               err_msg=f'{key} on 4 devices')
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
               state_4.batch_stats, state_1.batch_stats)
  # The SGD update (lr x the all-reduced gradient) as a whole: its elements near zero carry
  # the reduction order's float noise, so the tree is compared by its norm, not elementwise.
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
  update_1 = flat(state_1.params) - flat(initial_params)
  update_4 = flat(state_4.params) - flat(initial_params)
  assert np.linalg.norm(update_1) > 0
  assert np.linalg.norm(update_4 - update_1) <= 1e-4 * np.linalg.norm(update_1)


def test_facenet_loss_and_update_do_not_depend_on_the_number_of_devices(tiny_synthetic_root):
  # The trainer tests' short SGD run: its one-device step is theirs (the persistent cache).
  config = tiny_config(tiny_synthetic_root, **SHORT_SGD_RUN)
  exp = experiment.build_experiment(config)
  host_state = _host_state(exp)
  batch = next(iter(pipeline.make_train_stream(exp.train_records, config.data)))
  batch = {k: batch[k] for k in exp.spec.batch.train_keys}
  results = {n: _step_on_mesh(exp, config, host_state, batch, n) for n in (1, 4)}
  _assert_same_step(results, ('loss', 'triplet', 'id', 'flare', 'ic', 'grad_norm'),
                    host_state.params)


def test_agw_step_does_not_depend_on_the_number_of_devices(tiny_sysu_root):
  """The stems' and shared stages' BatchNorm see the global batch however it is sharded."""
  config = tiny_agw_config(tiny_sysu_root)
  exp = experiment.build_experiment(config)
  host_state = _host_state(exp)
  batch = pipeline.make_train_batch_fn(exp.train_records, config.data)(0)
  batch = {k: batch[k] for k in exp.spec.batch.train_keys}
  results = {n: _step_on_mesh(exp, config, host_state, batch, n) for n in (1, 4)}
  _assert_same_step(results, ('loss', 'id', 'triplet', 'grad_norm'), host_state.params)


def test_batch_norm_statistics_span_the_whole_sharded_batch():
  # Contract: BatchNorm under jit with the batch sharded over devices normalises with global
  # statistics. With one sample per device, per-device statistics would differ completely.
  b = test_mfmp.B
  devices = jax.devices()[:b]
  f_r, f_n = test_mfmp._maps(13, n=2)  # pylint: disable=protected-access
  module = mfmp.MFMP(test_mfmp.C, hidden_ratio=0.5, attention_ratio=0.5)
  variables = test_mfmp.random_variables(module, f_r, f_n, train=True)
  step = jax.jit(lambda v, a, b: module.apply(v, a, b, train=True, mutable=['batch_stats']))
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  single = jax.device_put((f_r, f_n), devices[0])
  split = jax.device_put((f_r, f_n), sharded)
  assert len(split[0].sharding.device_set) == b
  out_single, stats_single = step(variables, *single)
  out_split, stats_split = step(variables, *split)
  # Equal up to float reassociation of the cross-device reductions.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                                       atol=1e-4),
               (out_single, stats_single), (out_split, stats_split))
