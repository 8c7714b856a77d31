"""SingleStream: outputs, the one input it reads, config errors, its loss, train and evaluate."""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from facenet_jax import device_input
from facenet_jax import experiment
from facenet_jax import models
from facenet_jax import sharding
from facenet_jax import steps
from facenet_jax import train
from facenet_jax.eval import report
from facenet_jax.models import facenet
from facenet_jax.models import single_stream
from input_pipeline import pipeline
from tests import fake_trees
from tests.tiny import tiny_config

B, H, W = 4, 32, 16
NUM_CLASSES = 7
MODALITIES = ('rgb', 'ni', 'ti')


def _config(**overrides) -> ml_collections.ConfigDict:
  config = default.model_config('single_stream')
  config.depth = 18
  config.update(overrides)
  return config


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  images = [jnp.asarray(rng.normal(size=(B, H, W, 3)), jnp.float32) for _ in range(3)]
  return images + [jnp.asarray(rng.integers(0, 2, size=(B, 2)), jnp.int32)]


def _trace(model):
  """Shapes of (variables, eval outputs) without computing anything."""
  def run():
    variables = models.init_variables(model, (H, W), jax.random.PRNGKey(0), batch_size=B)
    return variables, model.apply(variables, *_inputs(), train=False)
  return jax.eval_shape(run)


@pytest.mark.parametrize('modality', MODALITIES)
def test_outputs_are_one_branch_named_by_the_modality(modality):
  model = models.build_model(_config(modality=modality), NUM_CLASSES)
  variables, out = _trace(model)
  assert set(out) == {'features', 'bn_features', 'logits', 'embedding'}
  for key in ('features', 'bn_features'):
    assert {s: (x.shape, x.dtype) for s, x in out[key].items()} == {
        modality: ((B, 512), jnp.float32)}
  assert {s: x.shape for s, x in out['logits'].items()} == {modality: (B, NUM_CLASSES)}
  assert (out['embedding'].shape, out['embedding'].dtype) == ((B, 512), jnp.float32)
  # The names of FACENet's stream of that modality.
  assert set(variables['params']) == {f'backbone_{modality}', f'head_{modality}'}
  assert set(variables['batch_stats']) == {f'backbone_{modality}', f'head_{modality}'}


def test_width_multiplier_and_last_stride_reach_the_stream():
  _, out = _trace(models.build_model(_config(width_multiplier=0.5, last_stride=2), NUM_CLASSES))
  assert out['embedding'].shape == (B, 256)
  counts = models.parameter_counts(models.build_model(_config(), NUM_CLASSES), (H, W))
  assert counts['backbone_rgb'] == 11_689_512 - 513_000   # torchvision resnet18 without fc
  assert counts['head_rgb'] == 512 + 512 * NUM_CLASSES     # BNNeck scale + classifier


@pytest.fixture(scope='module')
def rgb_model_and_variables():
  model = models.build_model(_config(modality='rgb'), NUM_CLASSES)
  shapes, _ = _trace(model)
  return model, fake_trees.numpy_variables(shapes, seed=1)


def test_the_model_reads_only_its_own_modality(rgb_model_and_variables):
  model, variables = rgb_model_and_variables
  apply = jax.jit(lambda *x: model.apply(variables, *x, train=False))
  rgb, ni, ti, flare = _inputs(2)
  other_ni, other_ti, other_flare = _inputs(3)[1:]
  base = apply(rgb, ni, ti, flare)
  changed = apply(rgb, other_ni, other_ti, 1 - other_flare)
  jax.tree.map(np.testing.assert_array_equal, changed, base)
  moved = apply(rgb + 1.0, ni, ti, flare)
  assert np.abs(np.asarray(moved['embedding']) - np.asarray(base['embedding'])).max() > 1e-3
  assert np.all(np.isfinite(np.asarray(base['embedding'])))


def test_embedding_is_the_feature_before_or_after_the_bnneck(rgb_model_and_variables):
  _, variables = rgb_model_and_variables
  for neck_feat, key in (('before', 'features'), ('after', 'bn_features')):
    model = models.build_model(_config(neck_feat=neck_feat), NUM_CLASSES)
    out = model.apply(variables, *_inputs(4), train=False)
    np.testing.assert_array_equal(np.asarray(out['embedding']), np.asarray(out[key]['rgb']))


@pytest.mark.parametrize('overrides,field', [
    ({'modality': 'depth'}, 'config.model.modality'),
    ({'depth': 152}, 'model.depth'),
    ({'width_multiplier': -1.0}, 'config.model.width_multiplier'),
    ({'last_stride': 3}, 'config.model.last_stride'),
    ({'dtype': 'float16'}, 'config.model.dtype'),
    ({'neck_feat': 'middle'}, 'config.model.neck_feat'),
])
def test_bad_model_config_is_rejected_naming_the_field(overrides, field):
  with pytest.raises(ValueError, match=field):
    models.build_model(_config(**overrides), NUM_CLASSES)


def test_a_facenet_model_group_renamed_is_refused_pointing_at_the_config_argument():
  config = default.model_config('facenet')
  config.name = 'single_stream'
  with pytest.raises(ValueError, match='configs/default.py:single_stream'):
    models.build_model(config, NUM_CLASSES)


# ----------------------------------------------------------------------------------- the loss


def _loss_config(**overrides):
  loss = default.get_config('single_stream').loss
  loss.update(overrides)
  return loss


def test_loss_is_the_branch_ce_and_triplet_facenet_sums_per_branch(rgb_model_and_variables):
  model, variables = rgb_model_and_variables
  out = model.apply(variables, *_inputs(5), train=False)
  batch = {'pid': jnp.array([0, 0, 3, 3])}
  loss = _loss_config(label_smoothing=0.1, id_weight=0.5, triplet_weight=2.0)
  terms, metrics = single_stream.single_stream_loss_bundle(out, batch, loss)
  assert set(terms) == {'id', 'triplet'}
  assert set(metrics) == {'id_rgb', 'triplet_rgb', 'acc_rgb'}
  expected_terms, expected_metrics = facenet.reid_terms(out, batch['pid'], loss, ('rgb',))
  jax.tree.map(np.testing.assert_array_equal, (terms, metrics),
               (expected_terms, expected_metrics))
  np.testing.assert_allclose(terms['id'], 0.5 * metrics['id_rgb'], rtol=1e-6)
  np.testing.assert_allclose(terms['triplet'], 2.0 * metrics['triplet_rgb'], rtol=1e-6)
  assert float(metrics['triplet_rgb']) > 0


@pytest.mark.parametrize('overrides,field', [
    ({'ic': True}, 'config.loss.ic'), ({'relation': 'hc'}, 'config.loss.relation')])
def test_multi_branch_losses_are_refused(rgb_model_and_variables, overrides, field):
  model, variables = rgb_model_and_variables
  out = model.apply(variables, *_inputs(6), train=False)
  with pytest.raises(ValueError, match=field):
    single_stream.single_stream_loss_bundle(out, {'pid': jnp.zeros(B, jnp.int32)},
                                            _loss_config(**overrides))


def test_the_pretrained_loader_fills_the_one_stream_and_refuses_a_scaled_model(tmp_path):
  from facenet_jax import pretrained  # pylint: disable=g-import-not-at-top
  model = models.build_model(_config(modality='ni'), NUM_CLASSES)
  variables = jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32), _trace(model)[0])
  backbone = jax.tree.map(lambda s: np.full(s.shape, 2.0, np.float32),
                          pretrained.backbone_shapes(18))
  path = str(tmp_path / 'resnet18.npz')
  pretrained.save_backbone(backbone, path)
  spec = models.get_spec('single_stream')
  new = spec.load_pretrained(variables, path, _config(modality='ni', pretrained_path=path),
                             (H, W))
  for c in ('params', 'batch_stats'):
    jax.tree.map(np.testing.assert_array_equal, new[c]['backbone_ni'], backbone[c])
  jax.tree.map(np.testing.assert_array_equal, new['params']['head_ni'],
               variables['params']['head_ni'])
  with pytest.raises(ValueError, match='config.model.width_multiplier=0.5'):
    spec.load_pretrained(variables, path, _config(width_multiplier=0.5), (H, W))


# --------------------------------------------------------------------- configs, train, evaluate


def test_synthetic_and_default_configs_select_the_model_with_ic_off():
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  for config in (default.get_config('single_stream'), synthetic.get_config('single_stream')):
    assert config.model.name == 'single_stream' and not config.loss.ic
    models.build_model(config.model, NUM_CLASSES)
  assert synthetic.get_config('single_stream').model.depth == 18
  with pytest.raises(ValueError, match='facenet_vit'):
    synthetic.get_config('facenet_vit')


@pytest.fixture(scope='module')
def tiny_exp(tiny_synthetic_root):
  config = tiny_config(tiny_synthetic_root, 'single_stream', model__modality='ni',
                       train__max_steps=3)
  return config, experiment.build_experiment(config)


@pytest.mark.slow
def test_train_steps_on_one_batch_are_finite_and_lower_the_loss(tiny_exp):
  config, exp = tiny_exp
  stream = pipeline.make_train_stream(exp.train_records, config.data)
  batch = sharding.shard_batch({k: v for k, v in next(stream).items()
                                if k in exp.spec.batch.train_keys}, exp.mesh)
  step = steps.jit_train_step(
      steps.make_train_step(exp.model, exp.spec, exp.tx, config.loss, exp.learning_rate_fn,
                            prepare=device_input.make_prepare(config.data)),
      exp.mesh)
  state = experiment.create_state(exp)
  losses = []
  for _ in range(4):
    state, metrics = step(state, batch)
    flat = steps.flatten_metrics(jax.device_get(metrics))
    assert flat['finite'] == 1.0
    losses.append(float(flat['loss']))
  assert set(jax.device_get(metrics)['terms']) == {'id', 'triplet'}
  assert 'acc_ni' in flat
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.mark.slow
def test_the_trainer_and_the_report_run_it_unchanged(tiny_exp, tmp_path):
  config, exp = tiny_exp
  workdir = tmp_path / 'run'
  scalars = train.train_and_evaluate(config, str(workdir), exp=exp)
  assert 0.0 <= scalars['test/mAP'] <= 1.0 and 0.0 <= scalars['val/mAP'] <= 1.0
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train_lines = [l for l in lines if 'train/loss' in l]
  assert [l['step'] for l in train_lines] == [1, 2, 3]
  assert all(np.isfinite(l['train/loss']) and 'train/triplet_ni' in l for l in train_lines)
  out = report.evaluate_checkpoint(config, str(workdir), step=3, out_dir=str(tmp_path / 'report'),
                                   export_features=True, exp=exp)
  np.testing.assert_allclose(out['metrics']['mAP'], scalars['test/mAP'], rtol=1e-4)
  assert 'flare_masks' not in out['files']   # no masks: nothing to draw
  features = np.load(out['files']['query_features'])
  assert features.shape == (len(exp.query), 512) and np.all(np.isfinite(features))
  assert pathlib.Path(out['files']['rank_list']).is_file()
