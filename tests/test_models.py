"""The contract every registered model keeps (`facenet_jax/models/registry.py`), one case each.

Each model is built from its own config group (`configs/default.py:<name>`, shrunk by
`tests/tiny.TINY_MODEL_FIELDS`): its outputs have the contract's structure and shapes in training
and at test time, and one jitted train step (the trainer's, with the model's own loss bundle)
is finite, sends a non-zero gradient to every trainable leaf and updates every BatchNorm's
running statistics (frozen parts excepted: `ModelSpec.frozen`). Family-specific behaviour is tested beside each family.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from facenet_jax import models
from facenet_jax import steps
from facenet_jax.train_state import create_train_state
from tests.tiny import TINY_MODEL_CLASSES
from tests.tiny import TINY_MODEL_FIELDS
from tests.tiny import TINY_MODEL_IMAGE_SIZE as IMAGE_SIZE
from tests.tiny import initial_variables
from tests.tiny import tiny_model

B = 8


def test_every_registered_model_has_a_tiny_config_and_a_config_group():
  assert sorted(TINY_MODEL_FIELDS) == sorted(models.names())
  for name in models.names():
    assert default.get_config(name).model.name == name


def _batch(contract) -> dict[str, np.ndarray]:
  """A hand-made batch of `contract`: 4 ids x 2 rows (cross-modality: each id once per modality,
  visible rows first; day-night: glare on the night rows)."""
  rng = np.random.default_rng(0)
  image = lambda: rng.normal(size=(B, *IMAGE_SIZE, 3)).astype(np.float32)
  batch = {'pid': np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32)}
  if contract.name == 'aligned_triplets':
    batch.update(rgb=image(), ni=image(), ti=image(),
                 flare=np.array([[1, 1], [0, 0], [1, 0], [0, 1]] * 2, np.int32))
  else:
    batch.update(image=image(), modality=np.array([0] * 4 + [1] * 4, np.int32),
                 pid=np.array([0, 1, 2, 3] * 2, np.int32))
    if contract.name == 'day_night_images':
      glare = np.zeros((B, *IMAGE_SIZE), np.float32)
      glare[4:, 8:20, 4:12] = 1.0
      batch['glare'] = glare
  assert set(batch) == set(contract.train_keys), (sorted(batch), contract.train_keys)
  return batch


def _gradient_recorder() -> optax.GradientTransformation:
  """An 'optimiser' that leaves the parameters as they are and keeps the gradient as its state,
  so the trainer's own step hands back what reached each leaf."""
  return optax.GradientTransformation(
      init=lambda params: jax.tree.map(jnp.zeros_like, params),
      update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


@pytest.mark.parametrize('name', models.names())
def test_outputs_follow_the_contract_in_training_and_at_test_time(name):
  _, model, spec = tiny_model(name)
  batch = _batch(spec.batch)
  shapes = jax.eval_shape(lambda r: models.init_variables(model, IMAGE_SIZE, r),
                          jax.random.PRNGKey(0))
  inputs = tuple(jnp.asarray(a) for a in spec.batch.model_inputs(batch))
  rngs = {'dropout': jax.random.PRNGKey(1)}
  train_out, updates = jax.eval_shape(
      lambda v: model.apply(v, *inputs, train=True, mutable=['batch_stats'], rngs=rngs), shapes)
  test_out = jax.eval_shape(lambda v: model.apply(v, *inputs, train=False), shapes)
  assert {'features', 'bn_features', 'logits', 'embedding'} <= set(train_out)
  assert set(train_out['features']) == set(train_out['bn_features']) == set(train_out['logits'])
  for branch in train_out['features']:
    # [B, D] rows, or a multiple of B where training expands the batch (DEEN's three branches).
    rows, dim = train_out['features'][branch].shape
    assert rows % B == 0 and train_out['bn_features'][branch].shape == (rows, dim)
    assert train_out['logits'][branch].shape == (rows, TINY_MODEL_CLASSES)
  assert test_out['embedding'].shape[0] == B and test_out['embedding'].ndim == 2
  assert test_out['embedding'].dtype == jnp.float32
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(shapes['batch_stats'])


def _revive_zero_scales(params):
  """Zero-initialised BatchNorm scales set to one. A residual branch ending in one (the non-local
  blocks' W-BN) starts as the identity, so on the very first step its inputs get exactly no
  gradient, as in the official code (tested beside AGW); this checks that they are reachable."""
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  return flax.traverse_util.unflatten_dict(
      {k: jnp.ones_like(v) if k.endswith('/scale') and not np.any(v) else v
       for k, v in flat.items()}, sep='/')


@pytest.mark.slow
@pytest.mark.parametrize('name', models.names())
def test_one_train_step_reaches_every_trainable_leaf_and_every_batch_norm(name):
  config, model, spec = tiny_model(name)
  variables = initial_variables(name, jax.random.PRNGKey(0))
  variables = {**variables, 'params': _revive_zero_scales(variables['params'])}
  tx = _gradient_recorder()
  state = create_train_state(variables, tx, jax.random.PRNGKey(1))
  step = jax.jit(steps.make_train_step(model, spec, tx, config.loss, lambda s: 0.0))
  new_state, metrics = step(state, _batch(spec.batch))
  assert float(metrics['finite']) == 1.0 and np.isfinite(float(metrics['loss']))
  frozen = spec.frozen or (lambda path: False)
  grads = flax.traverse_util.flatten_dict(jax.device_get(new_state.opt_state), sep='/')
  assert set(grads) == set(flax.traverse_util.flatten_dict(variables['params'], sep='/'))
  dead = [path for path, g in grads.items() if not frozen(path) and not np.any(g)]
  assert not dead, f'{name}: no gradient reaches {dead}'
  assert all(np.all(np.isfinite(g)) for g in grads.values())
  old = flax.traverse_util.flatten_dict(jax.device_get(variables.get('batch_stats', {})), sep='/')
  new = flax.traverse_util.flatten_dict(jax.device_get(new_state.batch_stats), sep='/')
  assert set(old) == set(new)
  # Frozen parts (TSME's stage-1 generators) run with their statistics fixed.
  unchanged = [path for path in old if not frozen(path) and np.array_equal(old[path], new[path])]
  assert not unchanged, f'{name}: training leaves these running statistics as they were: {unchanged}'
