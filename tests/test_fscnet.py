"""FSC-Net: FSA, GCA and SPT against NumPy and PyTorch computations; switches; gradients; steps."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from facenet_jax import steps
from facenet_jax import optim
from facenet_jax.models import deen
from facenet_jax.models import fscnet
from facenet_jax.models import registry
from facenet_jax.train_state import create_train_state

RNG = np.random.default_rng(0)


def _map(b=2, h=6, w=5, c=32):
  return RNG.normal(size=(b, h, w, c)).astype(np.float32)


def _params(module, *args, **kwargs):
  variables = module.init(jax.random.PRNGKey(0), *args, **kwargs)
  return jax.tree.map(np.array, dict(variables))   # writable copies (torch.from_numpy needs them)


def numpy_fsa(u, p):
  """FSA in NumPy: rfft2 'ortho' over (h, w), shared pooled-conv + MLP weights for R and I."""
  h, w = u.shape[1:3]
  f = np.fft.rfft2(u.astype(np.float64), axes=(1, 2), norm='ortho')

  def dense(x, name):
    return x @ p[name]['kernel'] + p[name]['bias']

  def weights(part):
    pooled = np.concatenate([part.mean(axis=(1, 2)), part.max(axis=(1, 2))], -1)
    z = dense(np.maximum(dense(dense(pooled, 'conv_reduce'), 'mlp_1'), 0), 'mlp_2')
    return (1 / (1 + np.exp(-z)))[:, None, None, :]

  g = f.real * weights(f.real) + 1j * f.imag * weights(f.imag)
  return np.fft.irfft2(g, s=(h, w), axes=(1, 2), norm='ortho')


def test_fsa_matches_numpy():
  u = _map()
  block = fscnet.FSA()
  p = _params(block, u)['params']
  np.testing.assert_allclose(block.apply({'params': p}, u), numpy_fsa(u, p), rtol=1e-4, atol=1e-5)


def _depthwise(x, kernel, bias, pad):
  """Depthwise conv NHWC with a Flax kernel [k, k, 1, C], zero padding."""
  k = kernel.shape[0]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h, w = x.shape[1:3]
  out = sum(xp[:, i:i + h, j:j + w] * kernel[i, j, 0] for i in range(k) for j in range(k))
  return out + bias


def numpy_gca(x, p, drop_keep=None):
  c = x.shape[-1]
  hidden, conv_c = int(8 / 3 * c), int(0.5 * c)
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  y = (x - mean) / np.sqrt(var + 1e-6) * p['norm']['scale'] + p['norm']['bias']
  y = y @ p['fc1']['kernel'] + p['fc1']['bias']
  g, i, conv = y[..., :hidden], y[..., hidden:2 * hidden - conv_c], y[..., 2 * hidden - conv_c:]
  conv = _depthwise(conv, p['conv']['kernel'], p['conv']['bias'], 3)
  erf = np.vectorize(math.erf)
  gelu = 0.5 * g * (1 + erf(g / math.sqrt(2)))
  y = (gelu * np.concatenate([i, conv], -1)) @ p['fc2']['kernel'] + p['fc2']['bias']
  return y + x


def test_gca_matches_numpy_and_drops_whole_samples_after_the_residual():
  x = _map(b=8)
  block = fscnet.GCA(drop_path=0.5)
  p = _params(block, x, train=False)['params']
  expected = numpy_gca(x, p)
  np.testing.assert_allclose(block.apply({'params': p}, x, train=False), expected, rtol=1e-4,
                             atol=1e-4)
  out = np.asarray(block.apply({'params': p}, x, train=True,
                               rngs={'dropout': jax.random.PRNGKey(5)}))
  dropped = [b for b in range(8) if not out[b].any()]
  kept = [b for b in range(8) if out[b].any()]
  assert dropped and kept            # as coded: a dropped sample loses its shortcut too
  np.testing.assert_allclose(out[kept], expected[kept] / 0.5, rtol=1e-4, atol=1e-4)
  branch = fscnet.GCA(drop_path=0.5, drop_path_placement='branch')
  out = np.asarray(branch.apply({'params': p}, x, train=True,
                                rngs={'dropout': jax.random.PRNGKey(5)}))
  np.testing.assert_allclose(out[dropped], x[dropped], atol=1e-6)   # the usual placement


def test_spt_matches_numpy():
  u = _map()
  block = fscnet.SPT()
  variables = _params(block, u, train=False)
  p = variables['params']
  stats = {'norm': {'mean': RNG.normal(size=32).astype(np.float32) * 0.1,
                    'var': RNG.uniform(0.5, 1.5, 32).astype(np.float32)}}
  p['norm'] = {'scale': RNG.uniform(0.5, 1.5, 32).astype(np.float32),
               'bias': RNG.normal(size=32).astype(np.float32) * 0.1}
  y = _depthwise(u, p['conv']['kernel'], p['conv']['bias'], 1)
  y = (y - stats['norm']['mean']) / np.sqrt(stats['norm']['var'] + 1e-5) * p['norm']['scale'] + \
      p['norm']['bias']
  out = block.apply({'params': p, 'batch_stats': stats}, u, train=False)
  np.testing.assert_allclose(out, u + np.tanh(y), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_all_blocks_off_is_deen_exactly():
  kwargs = dict(num_classes=4, depth=18, width_multiplier=0.125)
  off = fscnet.FSCNet(fsa=False, gca=False, spt=False, **kwargs)
  base = deen.DEEN(**kwargs)
  variables = registry.init_variables(off, (32, 16), jax.random.PRNGKey(0))
  assert jax.tree.structure(variables) == jax.tree.structure(
      registry.init_variables(base, (32, 16), jax.random.PRNGKey(0)))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 16, 3))
  modality = jnp.array([0, 0, 1, 1])
  np.testing.assert_allclose(off.apply(variables, x, modality)['embedding'],
                             base.apply(variables, x, modality)['embedding'], atol=1e-6)
  with pytest.raises(ValueError, match='config.model.gca_drop_path_placement'):
    fscnet.FSCNet(gca_drop_path_placement='before', **kwargs)


@pytest.mark.parametrize('switch', ['fsa', 'gca', 'spt'])
def test_each_block_has_its_switch(switch):
  model = fscnet.FSCNet(num_classes=4, depth=18, width_multiplier=0.125, **{switch: False})
  variables = registry.init_variables(model, (32, 16), jax.random.PRNGKey(0))
  assert set(variables['params']['dee']['branch_1']['refine']) == {'fsa', 'gca', 'spt'} - {switch}


@pytest.mark.slow
def test_steps_lower_the_loss_and_move_every_block():
  config = default.get_config('fsc_net')
  config.model.depth, config.model.width_multiplier = 18, 0.125
  config.loss.triplet_normalize = True
  config.optim.optimizer, config.optim.base_lr, config.optim.weight_decay = 'adam', 1e-3, 0.0
  from facenet_jax import models  # pylint: disable=g-import-not-at-top
  model = models.build_model(config.model, num_classes=4)
  spec = models.get_spec('fsc_net')
  variables = registry.init_variables(model, (32, 16), jax.random.PRNGKey(0))
  tx = optim.create_optimizer(config.optim, variables['params'], 10, 5)
  state = create_train_state(variables, tx, jax.random.PRNGKey(1))
  batch = {'image': jax.random.normal(jax.random.PRNGKey(2), (8, 32, 16, 3)),
           'modality': jnp.array([0] * 4 + [1] * 4), 'pid': jnp.array([0, 0, 1, 1] * 2)}

  step = jax.jit(steps.make_train_step(model, spec, tx, config.loss, lambda s: 1e-3))
  before = jax.device_get(state.params['dee']['branch_1']['refine'])
  losses = []
  for _ in range(4):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  after = jax.device_get(state.params['dee']['branch_1']['refine'])
  for block in ('fsa', 'gca', 'spt'):   # the loss reaches every block (no weight decay here)
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(after[block]),
                                               jax.tree.leaves(before[block]))), block
  # That a gradient reaches every parameter (at a width where FSA's MLP has several hidden
  # units) is the model contract test's fsc_net case (tests/test_models.py).


# ------------------------------------------------------------------ PyTorch parity (parity extra)
@pytest.mark.parity
def test_fsa_gca_spt_match_pytorch():
  """Each block against the same operation written with torch (NCHW, torch.fft, F.gelu)."""
  torch = pytest.importorskip('torch')
  tf = torch.nn.functional
  u = _map(c=24)
  t = torch.from_numpy(u.transpose(0, 3, 1, 2).copy())
  # FSA
  block = fscnet.FSA()
  p = _params(block, u)['params']
  lin = lambda x, name: x @ torch.from_numpy(p[name]['kernel']) + torch.from_numpy(p[name]['bias'])
  f = torch.fft.rfft2(t, norm='ortho')

  def weights(part):
    pooled = torch.cat([tf.adaptive_avg_pool2d(part, 1), tf.adaptive_max_pool2d(part, 1)], 1)
    z = lin(torch.relu(lin(lin(pooled.flatten(1), 'conv_reduce'), 'mlp_1')), 'mlp_2')
    return torch.sigmoid(z)[:, :, None, None]

  out = torch.fft.irfft2(torch.complex(f.real * weights(f.real), f.imag * weights(f.imag)),
                         s=t.shape[-2:], norm='ortho')
  np.testing.assert_allclose(block.apply({'params': p}, u), out.numpy().transpose(0, 2, 3, 1),
                             rtol=1e-4, atol=1e-5)
  # GCA (eval: no drop path)
  block = fscnet.GCA()
  p = _params(block, u, train=False)['params']
  x = t.permute(0, 2, 3, 1)
  y = tf.layer_norm(x, (24,), torch.from_numpy(p['norm']['scale']),
                    torch.from_numpy(p['norm']['bias']), eps=1e-6)
  g, i, c = torch.split(lin(y, 'fc1'), (64, 64 - 12, 12), dim=-1)
  c = tf.conv2d(c.permute(0, 3, 1, 2), torch.from_numpy(p['conv']['kernel'].transpose(3, 2, 0, 1)),
                torch.from_numpy(p['conv']['bias']), padding=3, groups=12).permute(0, 2, 3, 1)
  out = lin(tf.gelu(g) * torch.cat([i, c], -1), 'fc2') + x
  np.testing.assert_allclose(block.apply({'params': p}, u, train=False), out.numpy(), rtol=1e-4,
                             atol=1e-4)
  # SPT (eval BN with the initial statistics)
  block = fscnet.SPT()
  v = _params(block, u, train=False)
  conv = tf.conv2d(t, torch.from_numpy(v['params']['conv']['kernel'].transpose(3, 2, 0, 1)),
                   torch.from_numpy(v['params']['conv']['bias']), padding=1, groups=24)
  bn = tf.batch_norm(conv, torch.zeros(24), torch.ones(24), torch.ones(24), torch.zeros(24),
                     eps=1e-5)
  out = (t + torch.tanh(bn)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(block.apply(v, u, train=False), out, rtol=1e-4, atol=1e-5)


def test_ablation_rows_build_the_intended_models():
  from experiments import cross_modal_ablation as ablation  # pylint: disable=g-import-not-at-top
  from facenet_jax import models  # pylint: disable=g-import-not-at-top
  settings = ablation.Settings()
  configs = {row: ablation.run_config(row, 1, settings, '/data') for row in ablation.ROWS}
  assert configs['deen'].model.name == 'deen' and not configs['deen'].loss.triplet_normalize
  for row in ('fsc_net', 'fsc_no_fsa', 'fsc_no_gca', 'fsc_no_spt', 'fsc_all_off'):
    assert configs[row].loss.triplet_normalize
  off = configs['fsc_all_off'].model
  assert (off.fsa, off.gca, off.spt) == (False, False, False)
  assert configs['fsc_no_gca'].model.gca is False and configs['fsc_no_gca'].model.fsa is True
  for config in configs.values():   # every row builds, on the same schedule and data
    models.build_model(config.model, num_classes=3)
    assert config.data.seed == 1 and config.train.num_epochs == settings.num_epochs
    assert config.eval.cmc_mode == 'standard'     # the committed tables' CMC
  summary = ablation.summarize([
      {'row': 'deen', 'metrics': {m: 0.5 for m in ablation.METRICS}},
      {'row': 'deen', 'metrics': {m: 0.7 for m in ablation.METRICS}}])
  assert summary['deen']['n'] == 2 and summary['deen']['mAP'] == pytest.approx((60.0, 10.0))
  assert '| deen | 2 | 60.00 ± 10.00 |' in ablation.format_table(summary)
