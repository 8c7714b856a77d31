"""TSME stage 2: SE, stripes, grey input and the HC loss against NumPy; frozen generators read from
a stage-1 workdir (errors name it); a few steps on the synthetic cross-modality set."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import tsme_sysu
from facenet_jax import checkpointing
from facenet_jax import dsgan_training
from facenet_jax import train
from facenet_jax.models import registry
from facenet_jax.models import tsme
from input_pipeline import synthetic_cross_modal

RNG = np.random.default_rng(0)
GAN = dsgan_training.GanSettings(image_size=(32, 16), batch_size=2, num_steps=2,
                                 width_multiplier=0.125, depth=18)


def test_parameter_free_se_and_the_official_stripes():
  x = RNG.normal(size=(2, 18, 3, 4)).astype(np.float32)
  gate = 1 / (1 + np.exp(-(x.mean(axis=(1, 2)) + x.max(axis=(1, 2)))))
  np.testing.assert_allclose(tsme.parameter_free_se(jnp.asarray(x)), x * gate[:, None, None],
                             rtol=1e-5, atol=1e-6)
  six = np.asarray(tsme.stripes(jnp.asarray(x), 6))          # h 18: rows 0-2, 3-5, ..., 15-17
  np.testing.assert_allclose(six, np.stack([x[:, 3 * i:3 * i + 3].mean(axis=(1, 2))
                                            for i in range(6)], 1), rtol=1e-5, atol=1e-6)
  two = np.asarray(tsme.stripes(jnp.asarray(x[:, :7]), 2))   # h 7: s 3, window 4: 0-3, 3-6
  np.testing.assert_allclose(two, np.stack([x[:, 0:4].mean(axis=(1, 2)),
                                            x[:, 3:7].mean(axis=(1, 2))], 1), rtol=1e-5, atol=1e-6)
  small = np.asarray(tsme.stripes(jnp.asarray(x[:, :4]), 6))  # h < 6: every stripe is the map
  np.testing.assert_allclose(small, np.repeat(x[:, :4].mean(axis=(1, 2))[:, None], 6, 1),
                             rtol=1e-5, atol=1e-6)


def test_grey_input_is_the_normalised_luma_of_the_unnormalised_image():
  rgb = RNG.random((1, 2, 2, 3)).astype(np.float32)
  mean, std = np.asarray(tsme.IMAGENET_MEAN), np.asarray(tsme.IMAGENET_STD)
  gray = rgb @ np.asarray([0.299, 0.587, 0.114])
  expected = (gray[..., None] - mean) / std
  np.testing.assert_allclose(tsme.to_gray_input(jnp.asarray((rgb - mean) / std)), expected,
                             rtol=1e-5, atol=1e-6)


def test_loss_sums_ce_and_half_hc_over_the_ten_heads():
  labels = np.array([3, 5, 3, 5])
  modality = np.array([0, 0, 1, 1])
  outputs = {'features': {}, 'logits': {}}
  expected_id, expected_hc = 0.0, 0.0
  for k in range(1, 11):
    y = RNG.normal(size=(4, 8)).astype(np.float32)
    logits = RNG.normal(size=(4, 6)).astype(np.float32)
    outputs['features'][f'part{k}'], outputs['logits'][f'part{k}'] = y, logits
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected_id += -log_p[np.arange(4), labels].mean()
    z = y / np.linalg.norm(y, axis=1, keepdims=True)
    # One image per id and modality: the centres are the rows; HC sums over the two ids.
    expected_hc += ((z[0] - z[2]) ** 2).sum() + ((z[1] - z[3]) ** 2).sum()
  config = default.get_config('tsme').loss
  terms, metrics = tsme.tsme_loss_bundle(
      jax.tree.map(jnp.asarray, outputs), {'pid': jnp.asarray(labels),
                                           'modality': jnp.asarray(modality)}, config)
  np.testing.assert_allclose(terms['id'], expected_id, rtol=1e-5)
  np.testing.assert_allclose(terms['hc'], 0.5 * expected_hc, rtol=1e-5)
  assert 'hc_part10' in metrics


def _save_stage1(workdir):
  """A stage-1 checkpoint without training: initialised GAN state saved as train_dsgan does."""
  state = dsgan_training.init_state(GAN, jax.random.PRNGKey(3))
  ckpt = checkpointing.Checkpointer(workdir, 1)
  ckpt.save(state, {'step': 0, 'settings': {**GAN.__dict__, 'image_size': list(GAN.image_size)}})
  ckpt.close()
  return state


def _tiny_config(root, stage1):
  config = tsme_sysu.get_config()
  config.data.root = root
  config.data.image_size = (32, 16)
  config.data.num_ids_per_batch, config.data.num_instances = 2, 2
  config.data.eval_batch_size = 16
  config.model.update(depth=18, width_multiplier=0.125, generator_workdir=stage1,
                      generator_depth=18, generator_width_multiplier=0.125)
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_epochs = 100
  return config


@pytest.mark.slow
def test_generators_load_from_the_stage_1_workdir_and_errors_name_it(tmp_path):
  stage1 = str(tmp_path / 'stage1')
  state = _save_stage1(stage1)
  config = _tiny_config('/unused', stage1)
  model = registry.build_model(config.model, 5)
  # Only the structure is needed (loading replaces the generator subtrees): shapes, no compile.
  variables = jax.eval_shape(
      lambda: registry.init_variables(model, (32, 16), jax.random.PRNGKey(0)))
  loaded = tsme.load_generators(variables, config)
  jax.tree.map(np.testing.assert_array_equal,
               loaded['params']['generator_visible_to_infrared'],
               jax.device_get(state.params['g_ab']))
  jax.tree.map(np.testing.assert_array_equal,
               loaded['batch_stats']['generator_infrared_to_visible'],
               jax.device_get(state.batch_stats['g_ba']))
  with pytest.raises(checkpointing.CheckpointError, match='missing_stage1'):
    tsme.load_generators(variables, _tiny_config('/unused', str(tmp_path / 'missing_stage1')))
  config.model.generator_depth = 34
  with pytest.raises(ValueError, match='generator_depth'):
    tsme.load_generators(variables, config)
  config.model.generator_workdir = ''
  with pytest.raises(ValueError, match='config.model.generator_workdir'):
    tsme.load_generators(variables, config)
  assert tsme.frozen_parameter('generator_visible_to_infrared/stem/conv/kernel')
  assert not tsme.frozen_parameter('real_0/resnet/stem/conv/kernel')


@pytest.mark.slow
def test_tsme_trains_a_few_steps_with_frozen_generators_and_evaluates(tmp_path, capsys):
  root = synthetic_cross_modal.generate_sysu_like(str(tmp_path / 'sysu'), num_ids=12,
                                                  images_per_camera=2, image_size=(32, 16))
  stage1 = str(tmp_path / 'stage1')
  state = _save_stage1(stage1)
  config = _tiny_config(root, stage1)
  config.train.max_steps = 2
  final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  out = capsys.readouterr().out
  assert 'tsme on sysu_mm01' in out and ' hc ' in out
  assert 0 < final['test/mAP'] <= 1
  # The generators in the trained checkpoint are the stage-1 ones, bit for bit.
  trained = _restore_params(tmp_path / 'run', config)
  for name, key in (('visible_to_infrared', 'g_ab'), ('infrared_to_visible', 'g_ba')):
    jax.tree.map(np.testing.assert_array_equal, trained['params'][f'generator_{name}'],
                 jax.device_get(state.params[key]))


def _restore_params(workdir, config):
  from facenet_jax import experiment  # pylint: disable=g-import-not-at-top
  exp = experiment.build_eval_experiment(config)
  ckpt = checkpointing.Checkpointer(workdir, 3, read_only=True)
  variables, _, _ = ckpt.restore_variables(exp.variable_template)
  ckpt.close()
  return jax.device_get(variables)


def test_the_study_rows_share_data_and_schedule_and_tsme_reads_its_seeds_stage_1():
  from experiments import tsme_study  # pylint: disable=g-import-not-at-top
  settings = tsme_study.Settings()
  agw, stage2 = (tsme_study.run_config(row, 2, settings, '/out/data') for row in tsme_study.ROWS)
  assert agw.model.name == 'agw' and stage2.model.name == 'tsme'
  assert stage2.model.generator_workdir == '/out/stage1/seed2'
  stage1 = tsme_study.stage1_config(2, settings, '/out/data')
  assert (stage1.gan.depth, stage1.gan.width_multiplier) == (
      stage2.model.generator_depth, stage2.model.generator_width_multiplier)
  for config in (agw, stage2):
    assert config.train.num_epochs == settings.num_epochs and config.data.seed == 2
    assert tuple(config.data.image_size) == settings.image_size
    assert config.eval.cmc_mode == 'standard'     # the committed tables' CMC
    registry.build_model(config.model, num_classes=3)
