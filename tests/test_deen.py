"""DEEN: MFA (CNL, PNL with the official NCHW views), DEE, CPM, orthogonality, loss, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facenet_jax import losses
from facenet_jax.models import deen
from facenet_jax.models import registry

RNG = np.random.default_rng(0)


def _conv_nchw(x, p, stride=1):
  """1x1 conv of an NCHW array with a Flax kernel [1, 1, in, out] and bias, torch semantics."""
  x = x[:, :, ::stride, ::stride]
  return np.einsum('bchw,cd->bdhw', x, p['kernel'][0, 0]) + p['bias'][None, :, None, None]


def _nchw(x):
  return np.transpose(x, (0, 3, 1, 2))


def _set_w_bn(params, c, scale=1.5, bias=0.25):
  params['w_bn'] = {'scale': np.full(c, scale, np.float32), 'bias': np.full(c, bias, np.float32)}
  return params, {'w_bn': {'mean': np.zeros(c, np.float32), 'var': np.ones(c, np.float32)}}


def numpy_cnl(x_h, x_l, p, low, stride):
  """DEEN `CNL.forward`, line by line on NCHW arrays (torch `view` = C-order reshape)."""
  b = x_h.shape[0]
  xh, xl = _nchw(x_h), _nchw(x_l)
  g_x = _conv_nchw(xl, p['g']).reshape(b, low, -1)
  theta_x = _conv_nchw(xh, p['theta']).reshape(b, low, -1)
  phi_x = _conv_nchw(xl, p['phi'], stride).reshape(b, low, -1).transpose(0, 2, 1)
  energy = theta_x @ phi_x
  y = (energy / energy.shape[-1]) @ g_x
  y = y.reshape(b, low, *xl.shape[2:])
  w_y = _conv_nchw(y, p['w'], stride)
  return w_y


def numpy_pnl(x_h, x_l, p, low):
  """DEEN `PNL.forward` (reduc_ratio 2) on NCHW arrays."""
  b = x_h.shape[0]
  xh, xl = _nchw(x_h), _nchw(x_l)
  g_x = _conv_nchw(xl, p['g']).reshape(b, low, -1).transpose(0, 2, 1)
  theta_x = _conv_nchw(xh, p['theta']).reshape(b, low, -1).transpose(0, 2, 1)
  phi_x = _conv_nchw(xl, p['phi']).reshape(b, low, -1)
  energy = theta_x @ phi_x
  y = (energy / energy.shape[-1]) @ g_x
  y = y.transpose(0, 2, 1).reshape(b, low // 2, *xh.shape[2:])
  return _conv_nchw(y, p['w'])


@pytest.mark.parametrize('downsample', [False, True])
def test_cnl_matches_the_official_computation(downsample):
  high, low = 6, 4
  x_l = RNG.normal(size=(2, 6, 4, low)).astype(np.float32)
  x_h = RNG.normal(size=(2, 3 if downsample else 6, 2 if downsample else 4, high)).astype(np.float32)
  block = deen.CNL(high, low, downsample)
  variables = block.init(jax.random.PRNGKey(0), x_h, x_l, train=False)
  np.testing.assert_allclose(block.apply(variables, x_h, x_l, train=False), x_h, atol=1e-6)
  params, stats = _set_w_bn(jax.tree.map(np.asarray, variables['params']), high)
  out = block.apply({'params': params, 'batch_stats': stats}, x_h, x_l, train=False)
  w_y = np.transpose(numpy_cnl(x_h, x_l, params, low, 2 if downsample else 1), (0, 2, 3, 1))
  np.testing.assert_allclose(out, x_h + 1.5 * w_y / np.sqrt(1 + 1e-5) + 0.25, rtol=1e-4,
                             atol=1e-4)


def test_pnl_matches_the_official_views():
  """The [C/2, N] maps are viewed row-major as [C, N/2]: not a plain position attention."""
  high, low = 6, 4
  x_l = RNG.normal(size=(2, 6, 4, low)).astype(np.float32)
  x_h = RNG.normal(size=(2, 3, 2, high)).astype(np.float32)
  block = deen.PNL(high, low)
  variables = block.init(jax.random.PRNGKey(1), x_h, x_l, train=False)
  params, stats = _set_w_bn(jax.tree.map(np.asarray, variables['params']), high)
  out = block.apply({'params': params, 'batch_stats': stats}, x_h, x_l, train=False)
  w_y = np.transpose(numpy_pnl(x_h, x_l, params, low), (0, 2, 3, 1))
  np.testing.assert_allclose(out, x_h + 1.5 * w_y / np.sqrt(1 + 1e-5) + 0.25, rtol=1e-4,
                             atol=1e-4)


def test_dee_triples_the_batch_with_dilated_branches():
  x = RNG.normal(size=(2, 5, 3, 8)).astype(np.float32)
  block = deen.DEE(dropout=0.0)
  variables = block.init(jax.random.PRNGKey(2), x, train=False)
  out = np.asarray(block.apply(variables, x, train=False))
  assert out.shape == (6, 5, 3, 8)
  np.testing.assert_allclose(out[:2], x)
  p = jax.tree.map(np.asarray, variables['params']['branch_1'])
  # Branch 1 by hand: mean of the three dilated 3x3 convs, ReLU, 1x1 conv (NumPy, zero padding).
  u = 0
  for d in (1, 2, 3):
    k = p[f'dilated_{d}']['kernel']
    padded = np.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
    u = u + sum(np.einsum('bhwc,cd->bhwd', padded[:, i * d:i * d + 5, j * d:j * d + 3], k[i, j])
                for i in range(3) for j in range(3))
  v = np.einsum('bhwc,cd->bhwd', np.maximum(u / 3, 0), p['expand']['kernel'][0, 0]) + \
      p['expand']['bias']
  np.testing.assert_allclose(out[2:4], v, rtol=1e-4, atol=1e-5)


def numpy_cpm(features, labels, margin=0.2):
  """DEEN `CPMLoss.forward`: chunk into 4, per-id centres by chunking each part into n ids."""
  parts = np.split(np.asarray(features, np.float64), 4)
  lbs = np.asarray(labels[:len(labels) // 4])
  ids = list(dict.fromkeys(lbs.tolist()))
  centres = [np.stack([p[lbs == i].mean(0) for i in ids]) for p in parts]
  d = lambda a, b: np.sqrt(np.maximum(((a[:, None] - b[None]) ** 2).sum(-1), 1e-12))
  h = lambda t: np.maximum(t + margin, 0)
  n = len(ids)
  other = ~np.eye(n, dtype=bool)
  c1, c2, c3, c4 = centres
  l123 = l124 = 0.0
  for i in range(n):
    ap = d(c2, c3)[i, i]
    l123 += h(ap - d(c1, c3)[i, i]) + 0.5 * (h(ap - d(c3, c3)[i][other[i]].min()) +
                                             h(ap - d(c1, c1)[i][other[i]].min()))
    ap = d(c1, c4)[i, i]
    l124 += h(ap - d(c2, c4)[i, i]) + 0.5 * (h(ap - d(c4, c4)[i][other[i]].min()) +
                                             h(ap - d(c2, c2)[i][other[i]].min()))
  return (l123 / n + l124 / n) / 2


def test_cpm_matches_the_official_loop():
  labels = np.tile(np.repeat([3, 7, 9], 2), 4)
  features = RNG.normal(size=(24, 5)).astype(np.float32)
  got = losses.cpm_loss(jnp.asarray(features), jnp.asarray(labels))
  assert float(got) == pytest.approx(numpy_cpm(features, labels), rel=1e-5)
  grad = jax.grad(lambda f: losses.cpm_loss(f, jnp.asarray(labels)))(jnp.asarray(features))
  assert np.all(np.isfinite(grad)) and np.any(grad)
  with pytest.raises(ValueError, match='4 chunks'):
    losses.cpm_loss(jnp.zeros((6, 2)), jnp.zeros(6, jnp.int32))


@pytest.mark.slow
def test_deen_outputs_losses_and_gradients():
  model = deen.DEEN(num_classes=4, depth=18, width_multiplier=0.125)
  variables = registry.init_variables(model, (32, 16), jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 16, 3))
  modality = jnp.array([0] * 4 + [1] * 4)
  labels = jnp.array([0, 0, 1, 1] * 2)
  from configs import default
  loss_config = default.get_config('deen').loss

  def loss_fn(params):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                         modality, train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.PRNGKey(2)})
    terms, metrics = deen.deen_loss_bundle(out, {'pid': labels}, loss_config)
    return sum(terms.values()), (out, terms, metrics)

  (_, (out, terms, metrics)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables['params'])
  assert out['features']['pool'].shape == (24, 64) and out['logits']['pool'].shape == (24, 4)
  assert set(terms) == {'id', 'triplet', 'cpm', 'orthogonality'}
  f = np.asarray(out['features']['pool'])
  assert float(out['orthogonality']) == pytest.approx((f[8:16] * f[16:]).sum() / 24, rel=1e-5)
  assert float(terms['cpm']) == pytest.approx(0.8 * float(metrics['cpm']))
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g))]
  # The MFA blocks' W-BN start at zero scale: their g/theta/phi/w convs get no gradient on the
  # first step (as in the official code); everything else must.
  assert all('mfa' in name and 'w_bn' not in name for name in dead), dead
  embedding = model.apply(variables, x, modality, train=False)['embedding']
  assert embedding.shape == (8, 6 * 64)
  np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), np.sqrt(6), rtol=1e-5)
