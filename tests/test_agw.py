"""AGW and its two-stem backbone: routing, non-local block, GeM, WRT, weights, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facenet_jax import losses
from facenet_jax.models import agw
from facenet_jax.models import registry
from facenet_jax.models import resnet
from facenet_jax.models import two_stem_resnet

TINY = dict(depth=18, width_multiplier=0.125)


def _tiny_agw(**kwargs):
  return agw.AGW(num_classes=5, **{**TINY, **kwargs})


def _images(b=4, h=32, w=16, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (b, h, w, 3))


def test_outputs_follow_the_contract_in_train_and_eval():
  model = _tiny_agw()
  variables = registry.init_variables(model, (32, 16), jax.random.PRNGKey(0))
  modality = jnp.array([0, 1, 1, 0])
  out, _ = model.apply(variables, _images(), modality, train=True, mutable=['batch_stats'])
  channels = resnet.stage_channels(18, 0.125)[-1]
  assert out['features']['pool'].shape == (4, channels)
  assert out['logits']['pool'].shape == (4, 5)
  assert out['embedding'].shape == (4, channels)
  out = model.apply(variables, _images(), modality, train=False)
  np.testing.assert_allclose(out['embedding'], out['bn_features']['pool'])   # neck_feat 'after'
  assert set(variables['params']['backbone']) == {'stem_0', 'stem_1', 'layer1', 'layer2',
                                                  'layer3', 'layer4'}
  # ResNet-18 stages have 2 blocks: layer2 gets 2 non-local blocks, layer3 both of its 2.
  assert {k for k in variables['params']['backbone']['layer3'] if k.startswith('nonlocal')} == \
      {'nonlocal_0', 'nonlocal_1'}


@pytest.mark.parametrize('train', [True, False])
def test_each_row_goes_through_its_own_stem_in_any_row_order(train):
  """Training: stem m sees exactly the rows of modality m as one batch (its BatchNorm statistics);
  the outputs come back in the input's row order."""
  stems = [resnet.Stem(features=8) for _ in range(2)]
  x = _images(6)
  modality = jnp.array([1, 0, 0, 1, 1, 0])
  params = [s.init(jax.random.PRNGKey(i), x[:2], train=False) for i, s in enumerate(stems)]

  def routed(x, modality):
    bound = [s.bind(p, mutable=['batch_stats']) for s, p in zip(stems, params)]
    return two_stem_resnet.route_stems(x, modality, bound, train)

  out = routed(x, modality)
  for m in (0, 1):
    rows = np.flatnonzero(np.asarray(modality) == m)
    alone = stems[m].apply(params[m], x[rows], train=train, mutable=['batch_stats'])[0] \
        if train else stems[m].apply(params[m], x[rows], train=False)
    np.testing.assert_allclose(out[rows], alone, rtol=1e-5, atol=1e-5)


def numpy_non_local(x, p, inter):
  """The official `Non_local.forward` on NCHW arrays with torch's views, in NumPy."""
  b, h, w, c = x.shape
  xc = np.transpose(x, (0, 3, 1, 2))                                  # NCHW
  def conv(name, inp):                                               # 1x1 conv on NCHW
    return np.einsum('bchw,cd->bdhw', inp, p[name]['kernel'][0, 0]) + \
        p[name]['bias'][None, :, None, None]
  g_x = conv('g', xc).reshape(b, inter, -1).transpose(0, 2, 1)       # [B, N, C']
  theta_x = conv('theta', xc).reshape(b, inter, -1).transpose(0, 2, 1)
  phi_x = conv('phi', xc).reshape(b, inter, -1)                      # [B, C', N]
  f = theta_x @ phi_x / (h * w)
  y = (f @ g_x).transpose(0, 2, 1).reshape(b, inter, h, w)
  w_y = conv('w', y)
  return np.transpose(w_y, (0, 2, 3, 1)), xc


@pytest.mark.parametrize('one_channel', [False, True])
def test_non_local_block_matches_the_official_computation(one_channel):
  c = 8
  inter = 1 if one_channel else c // 2
  block = two_stem_resnet.NonLocal(inter)
  x = np.asarray(_images(2, 4, 3)) @ np.random.default_rng(0).normal(size=(3, c))
  x = x.astype(np.float32)
  variables = block.init(jax.random.PRNGKey(1), x, train=False)
  # At init BN's scale and bias are zero: the block is the identity.
  np.testing.assert_allclose(block.apply(variables, x, train=False), x, atol=1e-6)
  params = jax.tree.map(np.asarray, variables['params'])
  params['w_bn'] = {'scale': np.full(c, 1.5, np.float32), 'bias': np.full(c, 0.25, np.float32)}
  stats = {'w_bn': {'mean': np.zeros(c, np.float32), 'var': np.ones(c, np.float32)}}
  out = block.apply({'params': params, 'batch_stats': stats}, x, train=False)
  w_y, _ = numpy_non_local(x, params, inter)
  expected = x + 1.5 * w_y / np.sqrt(1 + 1e-5) + 0.25
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_gem_pool_is_the_generalised_mean():
  x = np.abs(np.random.default_rng(1).normal(size=(2, 3, 4, 5))).astype(np.float32)
  expected = (np.mean(x ** 3, axis=(1, 2)) + 1e-12) ** (1 / 3)
  np.testing.assert_allclose(two_stem_resnet.gem_pool(x), expected, rtol=1e-5)
  ones = np.ones((1, 2, 2, 3), np.float32)
  np.testing.assert_allclose(two_stem_resnet.gem_pool(ones, p=5.0), np.ones((1, 3)), rtol=1e-6)


def numpy_wrt(features, labels):
  """AGW `TripletLoss_WRT` row by row in NumPy (float64)."""
  x = np.asarray(features, np.float64)
  d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 1e-12))
  total = 0.0
  for i in range(len(x)):
    pos = labels == labels[i]
    neg = ~pos
    wp = np.exp(d[i, pos] - d[i, pos].max())
    wp = wp / (wp.sum() + 1e-6)
    dn = d[i, neg]
    wn = np.exp(-dn - max((-dn).max(), 0.0))   # official max over -D * mask includes the zeros
    wn = wn / (wn.sum() + 1e-6)
    total += np.log1p(np.exp((d[i, pos] * wp).sum() - (dn * wn).sum()))
  return total / len(x)


def test_wrt_matches_a_numpy_loop():
  rng = np.random.default_rng(2)
  features = rng.normal(size=(12, 6)).astype(np.float32)
  labels = np.repeat(np.arange(4), 3)
  got = losses.weighted_regularized_triplet_loss(jnp.asarray(features), jnp.asarray(labels))
  assert float(got) == pytest.approx(numpy_wrt(features, labels), rel=1e-5)
  with pytest.raises(ValueError, match='triplet_normalize'):
    losses.triplet_loss(features, labels, 'wrt', None, normalize=True)
  with pytest.raises(ValueError, match='config.loss.triplet_kind'):
    losses.triplet_loss(features, labels, 'hard', 0.3)


def test_gradients_reach_every_parameter():
  model = _tiny_agw()
  variables = registry.init_variables(model, (32, 16), jax.random.PRNGKey(0))
  modality = jnp.array([0, 0, 1, 1])
  labels = jnp.array([0, 1, 0, 1])

  def loss_fn(params):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, _images(),
                         modality, train=True, mutable=['batch_stats'])
    return losses.cross_entropy_loss(out['logits']['pool'], labels) + \
        losses.weighted_regularized_triplet_loss(out['features']['pool'], labels)

  grads = jax.grad(loss_fn)(variables['params'])
  flat = jax.tree_util.tree_leaves_with_path(grads)
  # The non-local W-BN scale starts at zero, so its inputs' convs get no gradient on the very
  # first step (as in the official code); every other leaf must.
  dead = [jax.tree_util.keystr(p) for p, g in flat
          if not np.any(np.asarray(g)) and 'nonlocal' not in jax.tree_util.keystr(p)]
  assert not dead
  assert any('w_bn' in jax.tree_util.keystr(p) and np.any(np.asarray(g)) for p, g in flat)


def test_imagenet_resnet_weights_load_into_both_stems_and_the_stages():
  net = resnet.ResNet(depth=18, width_multiplier=0.125)
  x = _images(2)
  resnet_vars = net.init(jax.random.PRNGKey(3), x)
  model = _tiny_agw(nonlocal_blocks=False)
  variables = registry.init_variables(model, (32, 16), jax.random.PRNGKey(0))
  loaded = agw.copy_resnet_into_two_stems(variables, resnet_vars)
  backbone = two_stem_resnet.TwoStemResNet(18, 1, 0.125)
  bb_vars = {c: loaded[c]['backbone'] for c in ('params', 'batch_stats')}
  expected = net.apply(resnet_vars, x)
  for m in (0, 1):
    out = backbone.apply(bb_vars, x, jnp.full((2,), m), train=False)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  bad = jax.tree.map(lambda a: a, resnet_vars)
  bad['params'] = dict(bad['params'])
  bad['params']['stem'] = {'conv': {'kernel': np.zeros((7, 7, 3, 3))},
                           'bn': resnet_vars['params']['stem']['bn']}
  with pytest.raises(ValueError, match='params/stem: shapes differ'):
    agw.copy_resnet_into_two_stems(variables, bad)


def test_bad_fields_name_the_config_field():
  with pytest.raises(ValueError, match='config.model.pooling'):
    _tiny_agw(pooling='max')
  with pytest.raises(ValueError, match='config.model.gem_p'):
    _tiny_agw(gem_p=0.0)
