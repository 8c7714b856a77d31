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


def _abstract(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


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


def test_a_reader_never_cleans_up_or_creates_folders(tmp_path):
  """Evaluation during training: the trainer's in-flight temporary save must survive a reader."""
  writer = checkpointing.Checkpointer(tmp_path, keep=2)
  writer.save(_state(4, 4.0), {'step': 4})
  in_flight = tmp_path / 'checkpoints' / '8.orbax-checkpoint-tmp-1234567890'
  in_flight.mkdir()
  (in_flight / 'partial').write_text('half written')
  reader = checkpointing.Checkpointer(tmp_path, keep=2, read_only=True)
  _, step, _ = reader.restore_variables(_template())
  reader.close()
  assert step == 4 and (in_flight / 'partial').is_file()
  with pytest.raises(RuntimeError, match='read-only'):
    checkpointing.Checkpointer(tmp_path, keep=2, read_only=True).save(_state(9, 9.0), {})
  # What this guards against: a writer opening the workdir may remove the temporary folder (orbax
  # cleans such folders up, sometimes in a background thread, so the writer side is not asserted).
  missing = tmp_path / 'not_a_run'
  with pytest.raises(checkpointing.CheckpointError, match='not_a_run: no checkpoints/'):
    checkpointing.Checkpointer(missing, keep=2, read_only=True)
  assert not missing.exists()
  writer.close()


def _damage(step_dir, how):
  victim = max((p for p in step_dir.rglob('*') if p.is_file() and p.name != 'checksums.json'),
               key=lambda p: p.stat().st_size)
  data = bytearray(victim.read_bytes())
  if how == 'truncate':
    data = data[:len(data) // 2]
  else:
    data[len(data) // 2] ^= 0xFF
  victim.write_bytes(bytes(data))


@pytest.mark.parametrize('how', ['truncate', 'flip'])
def test_a_damaged_latest_step_falls_back_to_the_previous_intact_one(tmp_path, how):
  ckpt = checkpointing.Checkpointer(tmp_path, keep=3)
  ckpt.save(_state(1, 1.0), {'step': 1})
  ckpt.save(_state(2, 2.0), {'step': 2})
  ckpt.close()
  _damage(tmp_path / 'checkpoints' / '2', how)
  notices = []
  ckpt = checkpointing.Checkpointer(tmp_path, keep=3, warn=notices.append)
  variables, step, _ = ckpt.restore_variables(_template())
  assert step == 1 and len(notices) == 1 and 'checkpoints/2: damaged checkpoint' in notices[0]
  np.testing.assert_array_equal(variables['params']['dense']['kernel'], 1.0)
  state, meta = ckpt.restore(_state(0, 0.0))
  assert int(state.step) == 1 and meta == {'step': 1}
  with pytest.raises(checkpointing.DamagedCheckpointError, match='damaged'):
    ckpt.restore_variables(_template(), step=2)           # asked for explicitly: refused
  ckpt.close()
  strict = checkpointing.Checkpointer(tmp_path, keep=3, strict=True)
  with pytest.raises(checkpointing.DamagedCheckpointError, match='checkpoints/2: damaged'):
    strict.restore_variables(_template())
  strict.close()


def test_a_background_save_writes_a_host_copy_and_announces_it_when_complete(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2, background=True)
  assert ckpt.background
  state = _state(5, 5.0)
  announced = []

  def on_saved(step):   # runs once the step folder is final, with its checksums
    assert (tmp_path / 'checkpoints' / str(step) / checkpointing.CHECKSUM_FILE).is_file()
    announced.append(step)

  assert ckpt.save(state, {'step': 5}, on_saved=on_saved)
  # The trainer's next step donates (frees) the state's buffers while the save is in flight.
  jax.tree.map(lambda x: x.delete(), state)
  ckpt.wait()
  assert announced == [5]
  assert not ckpt.save(_state(5, 0.0), {'step': 5})           # this step exists already
  variables, step, meta = ckpt.restore_variables(_template())
  assert step == 5 and meta == {'step': 5}
  np.testing.assert_array_equal(variables['params']['dense']['kernel'], 5.0)
  restored, _ = ckpt.restore(jax.tree.map(_abstract, _state(0, 0.0)))
  np.testing.assert_array_equal(restored.batch_stats['bn']['mean'], 5.0)
  assert int(restored.step) == 5
  ckpt.close()


def test_a_failed_background_save_is_raised_at_the_next_save_and_keeps_the_last_step(
    tmp_path, monkeypatch):
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2, background=True)
  ckpt.save(_state(1, 1.0), {'step': 1})
  ckpt.wait()

  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(ckpt.steps, 'save', full_disk)
  announced = []
  assert ckpt.save(_state(2, 2.0), {'step': 2}, on_saved=announced.append)
  with pytest.raises(OSError, match='No space left'):
    ckpt.save(_state(3, 3.0), {'step': 3})
  assert announced == [] and ckpt.latest_step() == 1
  monkeypatch.undo()
  ckpt.save(_state(3, 3.0), {'step': 3})
  ckpt.close()                                                 # waits for it
  reader = checkpointing.Checkpointer(tmp_path, 2, read_only=True)
  assert sorted(reader.steps.all_steps()) == [1, 3]
  reader.close()
