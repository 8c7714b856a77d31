"""FACENet: outputs for every switch, parameter tree, gradients, FCE gating, config errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from facenet_jax import models
from facenet_jax.models import facenet
from tests import fake_trees

B, H, W = 4, 32, 16  # small images keep the eager (op-by-op) runs cheap
NUM_CLASSES = 7
STREAMS = ('rgb', 'ni', 'ti')


def _config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config().model
  config.depth = 18
  config.update(overrides)
  return config


def _inputs(seed=0, batch=B):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(batch, H, W, 3)), jnp.float32) for _ in range(3)]


def _trace(model, train=True):
  """Shapes of (variables, outputs) without computing anything."""
  image = jax.ShapeDtypeStruct((B, H, W, 3), jnp.float32)
  flare = jax.ShapeDtypeStruct((B, 2), jnp.int32)

  def run(image, flare):
    variables = models.init_variables(model, (H, W), jax.random.PRNGKey(0), batch_size=B)
    kwargs = {'mutable': ['batch_stats']} if train else {}
    out = model.apply(variables, image, image, image, flare, train=train, **kwargs)
    return variables, (out[0] if train else out)

  return jax.eval_shape(run, image, flare)


def random_variables(shapes, seed=0):
  return fake_trees.numpy_variables(shapes, seed)


# (mfmp, fmi, fce, plugin_layer, extra overrides); the mask map is [B, h, w, C] of that stage.
SWITCHES = [
    (False, False, False, 4, {}),                      # Table 2 baseline
    (True, True, False, 4, {}),                        # + MFMP
    (True, True, True, 4, {}),                         # + MFMP + FCE (full model)
    (True, False, True, 4, {}),                        # + MFMP w/o FMI + FCE
    (True, False, False, 4, {}),
    (True, True, True, 1, {}),                         # Table 4 plug-in layers
    (True, True, True, 2, {}),
    (True, True, True, 3, {}),
    (True, True, True, 4, {'mask_estimator': 'straight_through', 'neck_feat': 'after',
                           'bug_rgb_uses_ni_mask': True, 'bug_batch_level_gating': True,
                           'bug_dead_threshold': True, 'last_stride': 2}),
    (True, True, True, 2, {'dtype': 'bfloat16', 'flare_head_input': 'mask_logits'}),
]
MASK_SHAPES = {1: (8, 4, 64), 2: (4, 2, 128), 3: (2, 1, 256), 4: (2, 1, 512)}


@pytest.mark.parametrize('mfmp,fmi,fce,plugin_layer,extra', SWITCHES)
def test_outputs_for_every_switch_combination(mfmp, fmi, fce, plugin_layer, extra):
  model = models.build_model(
      _config(mfmp=mfmp, fmi=fmi, fce=fce, plugin_layer=plugin_layer, **extra), NUM_CLASSES)
  variables, out = _trace(model)
  expected = {'features', 'bn_features', 'logits', 'embedding'}
  if mfmp:
    expected |= {'flare_logits', 'masks', 'threshold'}
  assert set(out) == expected
  for key in ('features', 'bn_features'):
    assert {s: (x.shape, x.dtype) for s, x in out[key].items()} == {
        s: ((B, 512), jnp.float32) for s in STREAMS}
  assert {s: (x.shape, x.dtype) for s, x in out['logits'].items()} == {
      s: ((B, NUM_CLASSES), jnp.float32) for s in STREAMS}
  assert (out['embedding'].shape, out['embedding'].dtype) == ((B, 3 * 512), jnp.float32)
  if mfmp:
    assert {s: (x.shape, x.dtype) for s, x in out['flare_logits'].items()} == {
        s: ((B, 2), jnp.float32) for s in ('rgb', 'ni')}
    mask_shape = MASK_SHAPES[plugin_layer]
    if extra.get('last_stride') == 2 and plugin_layer == 4:
      mask_shape = (1, 1, 512)
    assert {s: x.shape for s, x in out['masks'].items()} == {
        s: (B, *mask_shape) for s in ('rgb', 'ni')}
    assert out['threshold'].shape == ()
  params = variables['params']
  assert ('mfmp' in params) == mfmp
  if mfmp:
    assert ('fmi' in params['mfmp']) == fmi
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_bnneck_has_no_bias_and_the_classifier_none_either():
  variables, _ = _trace(models.build_model(_config(), NUM_CLASSES))
  for s in STREAMS:
    head = variables['params'][f'head_{s}']
    assert set(head) == {'bnneck', 'classifier'}
    assert set(head['bnneck']) == {'scale'}  # no bias parameter exists: it is frozen at zero
    assert set(head['classifier']) == {'kernel'}
    assert head['classifier']['kernel'].shape == (512, NUM_CLASSES)
    assert set(variables['batch_stats'][f'head_{s}']['bnneck']) == {'mean', 'var'}
  assert set(variables['params']) == {
      'backbone_rgb', 'backbone_ni', 'backbone_ti', 'mfmp', 'head_rgb', 'head_ni', 'head_ti'}


@pytest.mark.parametrize('overrides,exc,fields', [
    ({'name': 'densenet'}, ValueError, ['config.model.name', "'facenet'"]),
    ({'vit_depth': 3}, ValueError, ['vit_depth', 'does not have']),
    ({'mfmp': False, 'fce': True}, ValueError, ['config.model.fce', 'config.model.mfmp']),
    ({'depth': 152}, ValueError, ['model.depth']),
    ({'dtype': 'float16'}, ValueError, ['config.model.dtype']),
    ({'plugin_layer': 5}, ValueError, ['config.model.plugin_layer']),
    ({'last_stride': 4}, ValueError, ['config.model.last_stride']),
    ({'mask_estimator': 'hard'}, ValueError, ['config.model.mask_estimator']),
    ({'flare_head_input': 'x'}, ValueError, ['config.model.flare_head_input']),
    ({'neck_feat': 'middle'}, ValueError, ['config.model.neck_feat']),
    ({'mask_temperature': 0.0}, ValueError, ['config.model.mask_temperature']),
    ({'mask_similarity': 'cosine'}, ValueError, ['config.model.mask_similarity']),
    ({'width_multiplier': 0.0}, ValueError, ['config.model.width_multiplier']),
    ({'fce_gate': 'flared'}, ValueError, ['config.model.fce_gate']),
    ({'conv_formulation': 'cudnn'}, ValueError, ['config.model.conv_formulation']),
])
def test_bad_model_config_is_rejected_naming_the_fields(overrides, exc, fields):
  with pytest.raises(exc) as e:
    models.build_model(_config(**overrides), NUM_CLASSES)
  for field in fields:
    assert field in str(e.value)


@pytest.mark.parametrize('kwargs,field', [
    ({'mfmp': False, 'fce': True}, 'config.model.fce=True needs config.model.mfmp=True'),
    ({'plugin_layer': 0}, 'model.plugin_layer=0'),
    ({'neck_feat': 'bn'}, "model.neck_feat='bn'"),
])
def test_module_built_directly_rejects_bad_fields(kwargs, field):
  with pytest.raises(ValueError) as e:
    _trace(facenet.FACENet(num_classes=3, depth=18, **kwargs))
  assert field in str(e.value)


def test_build_model_rejects_an_empty_label_set():
  with pytest.raises(ValueError, match='num_classes=0'):
    models.build_model(_config(), 0)


# Gradients reaching every trainable leaf (Delta included) and every BatchNorm's statistics:
# the model contract test, tests/test_models.py.


# ------------------------------------------------------------------- FCE gating at test time


@pytest.fixture(scope='module')
def eval_setup():
  model = models.build_model(_config(), NUM_CLASSES)
  shapes, _ = _trace(model)
  variables = random_variables(shapes, seed=2)
  images = _inputs(3, batch=6)  # six distinct triplets
  flare = jnp.array([[1, 1], [0, 0], [1, 0], [0, 1], [0, 0], [1, 1]], jnp.int32)
  return variables, images, flare


def _embed(config, variables, images, flare, idx):
  idx = np.asarray(idx)
  model = models.build_model(config, NUM_CLASSES)
  rgb, ni, ti = (x[idx] for x in images)
  return model.apply(variables, rgb, ni, ti, flare[idx], train=False)


@pytest.mark.slow
def test_test_time_embedding_of_a_sample_does_not_depend_on_its_batch(eval_setup):
  variables, images, flare = eval_setup
  config = _config()
  batch_a = _embed(config, variables, images, flare, [0, 1, 2, 3])
  batch_b = _embed(config, variables, images, flare, [4, 1, 5, 0])
  alone_0 = _embed(config, variables, images, flare, [0])
  alone_1 = _embed(config, variables, images, flare, [1])
  for got in (batch_b['embedding'][3], alone_0['embedding'][0]):
    np.testing.assert_allclose(np.asarray(got), np.asarray(batch_a['embedding'][0]), rtol=1e-4,
                               atol=1e-5)
  for got in (batch_b['embedding'][1], alone_1['embedding'][0]):
    np.testing.assert_allclose(np.asarray(got), np.asarray(batch_a['embedding'][1]), rtol=1e-4,
                               atol=1e-5)
  # The official any-sample-in-the-batch gate makes the flare-free sample 1 batch-dependent.
  bugged = _config(bug_batch_level_gating=True)
  in_batch = _embed(bugged, variables, images, flare, [0, 1, 2, 3])['embedding'][1]
  alone = _embed(bugged, variables, images, flare, [1])['embedding'][0]
  assert np.abs(np.asarray(in_batch) - np.asarray(alone)).max() > 1e-3


def test_fce_changes_exactly_the_flared_modalities(eval_setup):
  variables, images, flare = eval_setup
  idx = [0, 1, 2, 3]  # flare bits (1,1), (0,0), (1,0), (0,1)
  with_fce = _embed(_config(), variables, images, flare, idx)
  no_fce = _embed(_config(fce=False), variables, images, flare, idx)  # same parameters
  no_test_fce = _embed(_config(test_time_fce=False), variables, images, flare, idx)
  bugged = _embed(_config(bug_rgb_uses_ni_mask=True), variables, images, flare, idx)
  for s, col in (('rgb', 0), ('ni', 1)):
    a, b = np.asarray(with_fce['features'][s]), np.asarray(no_fce['features'][s])
    for i in range(4):
      if flare[i, col]:
        assert np.abs(a[i] - b[i]).max() > 1e-3, (s, i)
      else:
        np.testing.assert_array_equal(a[i], b[i])
    np.testing.assert_array_equal(np.asarray(no_test_fce['features'][s]), b)
  np.testing.assert_array_equal(np.asarray(with_fce['features']['ti']),
                                np.asarray(no_fce['features']['ti']))
  # The RGB bug (f_R * (1 - M_N)) changes flared RGB features only; NI is untouched.
  diff = np.asarray(bugged['features']['rgb'][0]) - np.asarray(with_fce['features']['rgb'][0])
  assert np.abs(diff).max() > 1e-3
  np.testing.assert_array_equal(np.asarray(bugged['features']['rgb'][1]),
                                np.asarray(with_fce['features']['rgb'][1]))
  np.testing.assert_array_equal(np.asarray(bugged['features']['ni']),
                                np.asarray(with_fce['features']['ni']))


def test_fce_gate_all_enhances_the_flare_free_samples_too(eval_setup):
  """The control: with fce_gate='all' every RGB / NI sample changes, TI stays as it is."""
  variables, images, flare = eval_setup
  idx = [0, 1, 2, 3]  # flare bits (1,1), (0,0), (1,0), (0,1)
  every = _embed(_config(fce_gate='all'), variables, images, flare, idx)
  labelled = _embed(_config(), variables, images, flare, idx)
  no_fce = _embed(_config(fce=False), variables, images, flare, idx)
  for s, col in (('rgb', 0), ('ni', 1)):
    a, b = np.asarray(every['features'][s]), np.asarray(no_fce['features'][s])
    for i in range(4):
      assert np.abs(a[i] - b[i]).max() > 1e-3, (s, i)
      if flare[i, col]:  # a flared sample is enhanced the same way under both gates
        np.testing.assert_allclose(a[i], np.asarray(labelled['features'][s][i]), rtol=1e-5,
                                   atol=1e-6)
  np.testing.assert_array_equal(np.asarray(every['features']['ti']),
                                np.asarray(no_fce['features']['ti']))


def test_embedding_is_the_plain_concat_before_or_after_the_bnneck(eval_setup):
  """Not normalised: the distance decides (the paper's plain Euclidean stays reachable)."""
  variables, images, flare = eval_setup
  for neck_feat, key in (('before', 'features'), ('after', 'bn_features')):
    out = _embed(_config(neck_feat=neck_feat), variables, images, flare, [0, 1, 2, 3])
    concat = np.concatenate([np.asarray(out[key][s]) for s in STREAMS], axis=1)
    np.testing.assert_array_equal(np.asarray(out['embedding']), concat)
  bn = np.asarray(out['bn_features']['rgb'])
  stats = variables['batch_stats']['head_rgb']['bnneck']
  scale = variables['params']['head_rgb']['bnneck']['scale']
  expected_bn = ((np.asarray(out['features']['rgb']) - stats['mean'])
                 / np.sqrt(stats['var'] + 1e-5) * scale)  # no bias term
  np.testing.assert_allclose(bn, expected_bn, rtol=1e-4, atol=1e-5)


def test_parameter_counts_by_hand_for_resnet18():
  counts = models.parameter_counts(models.build_model(_config(), NUM_CLASSES), (H, W))
  c, hidden, att = 512, 128, 32  # C, fmi_hidden_ratio 0.25 * C, fmi_attention_ratio 1/16 * C
  fmi = (9 * 2 * c * hidden + 2 * hidden          # 3x3 conv 2C -> h, BN
         + hidden * hidden + 2 * hidden           # 1x1 conv, BN
         + 9 * hidden * hidden + 2 * hidden       # 3x3 conv, BN
         + 9 * hidden * c + 2 * c                 # 3x3 conv h -> C, BN
         + c * att + att + att * c + c)           # SE: two 1x1 convs with bias
  expected = {
      'mfmp/fmi': fmi,
      'mfmp/mask_rgb': 2 * c * c,                 # two bias-free 1x1 projections
      'mfmp/flare_head_ni': c + 2 * c + 2,        # BN scale + 2-way classifier with bias
      'mfmp/threshold': 1,
      'head_ti': c + c * NUM_CLASSES,             # BNNeck scale (no bias) + classifier
      'backbone_rgb': 11_689_512 - 513_000,       # torchvision resnet18 without fc
  }
  assert {k: counts[k] for k in expected} == expected
  assert counts['mfmp'] == fmi + 2 * (2 * c * c) + 2 * (3 * c + 2) + 1
  assert counts['total'] == sum(v for k, v in counts.items()
                                if '/' not in k and k not in ('total', 'batch_stats'))


@pytest.mark.slow
@pytest.mark.parametrize('identical', [True, False])
def test_streams_start_identical_unless_switched_off(identical):
  """Eq. 7 swaps TI channel c into RGB/NI channel c: the streams start alike (paper, official)."""
  model = models.build_model(_config(identical_stream_init=identical), NUM_CLASSES)
  variables = jax.jit(lambda r: models.init_variables(model, (H, W), r))(jax.random.PRNGKey(0))
  for collection in ('params', 'batch_stats'):
    rgb = jax.tree.leaves(variables[collection]['backbone_rgb'])
    for s in ('ni', 'ti'):
      same = [np.array_equal(a, b) for a, b in
              zip(rgb, jax.tree.leaves(variables[collection][f'backbone_{s}']))]
      if identical or collection == 'batch_stats':   # running statistics start equal anyway
        assert all(same), (collection, s)
      else:
        assert not all(same), (collection, s)       # independent draws (kernels differ)


# ------------------------------------------------------------------------------ width multiplier


def test_half_width_facenet_runs_mfmp_and_fce_on_the_scaled_maps():
  model = models.build_model(_config(width_multiplier=0.5), NUM_CLASSES)
  shapes, out = _trace(model)
  params = shapes['params']
  for s in STREAMS:
    assert params[f'backbone_{s}']['stem']['conv']['kernel'].shape == (7, 7, 3, 32)
    assert params[f'backbone_{s}']['layer4']['block_1']['conv2']['kernel'].shape == (3, 3, 256,
                                                                                    256)
    assert params[f'head_{s}']['classifier']['kernel'].shape == (256, NUM_CLASSES)
  assert params['mfmp']['mask_rgb']['proj_common']['kernel'].shape == (1, 1, 256, 256)
  assert {s: x.shape for s, x in out['masks'].items()} == {s: (B, 2, 1, 256) for s in ('rgb', 'ni')}
  assert out['embedding'].shape == (B, 3 * 256)
  # A real forward pass with MFMP + FCE on flared and flare-free samples.
  variables = random_variables(shapes, seed=4)
  rgb, ni, ti = _inputs(5)
  flare = jnp.array([[1, 1], [0, 0], [1, 0], [0, 1]], jnp.int32)
  result = jax.jit(lambda v, *x: model.apply(v, *x, train=False))(variables, rgb, ni, ti, flare)
  assert result['embedding'].shape == (B, 3 * 256)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(result))


def test_the_pretrained_loader_refuses_a_scaled_model_naming_the_field(tmp_path):
  config = _config(width_multiplier=0.5)
  config.pretrained_path = str(tmp_path / 'resnet18.npz')  # never read: refused before
  spec = models.get_spec('facenet')
  with pytest.raises(ValueError, match='config.model.width_multiplier=0.5'):
    spec.load_pretrained({}, config.pretrained_path, config, (H, W))
