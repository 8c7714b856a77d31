"""Checkpoints: the best survives a failed save; evaluation restores only the model's variables."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from facenet_jax import checkpointing
from facenet_jax.train_state import create_train_state


def _state(step: int, value: float):
  variables = {'params': {'dense': {'kernel': jnp.full((2, 3), value)}},
               'batch_stats': {'bn': {'mean': jnp.full((3,), value)}}}
  state = create_train_state(variables, optax.adam(1e-3), jax.random.PRNGKey(0))
  return state.replace(step=jnp.asarray(step, jnp.int32))


def _template(kernel_shape=(2, 3)):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=device)
  return {'params': {'dense': {'kernel': spec(kernel_shape)}},
          'batch_stats': {'bn': {'mean': spec((3,))}}}


def test_a_failed_best_save_keeps_the_previous_best(tmp_path, monkeypatch):
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2)
  ckpt.save_best(_state(1, 1.0), {'step': 1, 'score': 0.5})

  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(ckpt.best, 'save', full_disk)
  with pytest.raises(OSError, match='No space left'):
    ckpt.save_best(_state(2, 2.0), {'step': 2, 'score': 0.9})
  assert ckpt.best_step() == 1 and ckpt.best_meta()['score'] == 0.5
  variables, step, _ = ckpt.restore_variables(_template(), best=True)
  assert step == 1
  np.testing.assert_array_equal(variables['params']['dense']['kernel'], 1.0)
  monkeypatch.undo()
  ckpt.save_best(_state(3, 3.0), {'step': 3, 'score': 0.7})    # then the older one goes
  assert list(ckpt.best.all_steps()) == [3]
  ckpt.close()


def test_restore_variables_reads_the_model_variables_without_the_optimiser(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2)
  ckpt.save(_state(4, 4.0), {'step': 4})
  variables, step, meta = ckpt.restore_variables(_template())
  assert step == 4 and meta == {'step': 4} and set(variables) == {'params', 'batch_stats'}
  np.testing.assert_array_equal(variables['params']['dense']['kernel'], 4.0)
  np.testing.assert_array_equal(variables['batch_stats']['bn']['mean'], 4.0)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'shape params/dense/kernel: checkpoint \(2, 3\) vs model \(3, 3\)'):
    ckpt.restore_variables(_template(kernel_shape=(3, 3)))
  ckpt.close()
