"""TSME stage 1 (our reconstruction): a GAN step lowers its losses, training resumes exactly,
the generators come back from the workdir, and a missing workdir is an error naming it."""

import numpy as np
import pytest

import jax

from configs import tsme_dsgan
from facenet_jax import checkpointing
from facenet_jax import dsgan_training
from input_pipeline import synthetic_cross_modal

SETTINGS = dsgan_training.GanSettings(image_size=(32, 16), batch_size=2, num_steps=4,
                                      width_multiplier=0.125, depth=18)


@pytest.mark.slow
def test_a_step_on_a_fixed_batch_lowers_both_losses():
  state = dsgan_training.init_state(SETTINGS, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2, 32, 16, 3)).astype(np.float32)
  b = rng.normal(size=(2, 32, 16, 3)).astype(np.float32)
  step = dsgan_training.jitted_gan_step(SETTINGS)
  history = []
  for _ in range(3):
    state, metrics = step(state, a, b)
    history.append({k: float(v) for k, v in metrics.items()})
  assert int(state.step) == 3
  assert history[-1]['g_loss'] < history[0]['g_loss']
  assert history[-1]['d_loss'] < history[0]['d_loss']
  lr = dsgan_training.learning_rate_fn(SETTINGS)
  assert float(lr(0)) == pytest.approx(SETTINGS.learning_rate) == float(lr(2))
  assert float(lr(3)) == pytest.approx(SETTINGS.learning_rate / 2) and float(lr(4)) == 0.0


@pytest.fixture(scope='module')
def sysu_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic') / 'sysu')
  return synthetic_cross_modal.generate_sysu_like(root, num_ids=9, images_per_camera=1,
                                                  image_size=(32, 16))


def _config(root):
  config = tsme_dsgan.get_config('synthetic')
  config.data.root = root
  config.data.image_size = SETTINGS.image_size
  config.gan.update(batch_size=2, num_steps=4, width_multiplier=0.125, depth=18,
                    log_every_steps=1, checkpoint_every_steps=2)
  return config


@pytest.mark.slow
def test_training_resumes_to_the_same_state_and_stage_2_reads_the_generators(sysu_root, tmp_path):
  config = _config(sysu_root)
  lines = []
  whole = dsgan_training.train_dsgan(config, str(tmp_path / 'a'), say=lines.append)
  assert [l.split(' |')[0] for l in lines if l.startswith('step ')] == [
      'step 1/4', 'step 2/4', 'step 3/4', 'step 4/4']
  # A run killed after its step-2 checkpoint resumes there and ends where the whole run ended.
  dsgan_training.train_dsgan(config, str(tmp_path / 'b'), say=lines.append)
  checkpoints = tmp_path / 'b' / 'checkpoints'
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(checkpoints / '4')
  resumed_lines = []
  resumed = dsgan_training.train_dsgan(config, str(tmp_path / 'b'), say=resumed_lines.append)
  assert any('resuming stage 1 from step 2' in l for l in resumed_lines)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
               whole.params, resumed.params)
  generators, settings = dsgan_training.load_generators(str(tmp_path / 'a'))
  assert settings == SETTINGS
  assert set(generators) == {'visible_to_infrared', 'infrared_to_visible'}
  jax.tree.map(np.testing.assert_array_equal, generators['visible_to_infrared']['params'],
               jax.device_get(whole.params['g_ab']))
  with pytest.raises(checkpointing.CheckpointError, match='train_dsgan.py'):
    dsgan_training.load_generators(str(tmp_path / 'none'))
