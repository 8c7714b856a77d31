"""The library's BatchNorm computes what torch's does in training: two-pass float32 statistics,
the running variance updated unbiased; checked against float64 NumPy where flax's default fails."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facenet_jax.models import batch_norm
from facenet_jax.models import resnet
from facenet_jax.models import two_stem_resnet
from tests.test_agw import _relative_error  # pylint: disable=protected-access
from tests.test_agw import numpy_non_local

EPS = batch_norm.EPSILON


def numpy_batch_norm(x, scale, bias):
  """Training-mode BatchNorm in float64 over every axis but the last: output, mean, biased var."""
  x = np.asarray(x, np.float64)
  axes = tuple(range(x.ndim - 1))
  mean, var = x.mean(axes), x.var(axes)
  return (x - mean) / np.sqrt(var + EPS) * scale + bias, mean, var


def _affine(c, seed):
  rng = np.random.default_rng(seed)
  return (rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(size=c).astype(np.float32))


def _apply(module, variables, x):
  return module.apply(variables, x, mutable=['batch_stats'])


def test_train_mode_matches_float64_where_the_mean_is_1e5_spreads():
  """|mean| / std ~ 1e5: E[x^2] - E[x]^2 (flax's default) loses every digit, two passes none.

  The values 1e5 + k / 4 and their partial sums are exact in float32, so the only error left is
  the variance formula's."""
  rng = np.random.default_rng(0)
  x = (1e5 + rng.integers(-8, 9, size=(4, 2, 4, 3)) / 4).astype(np.float32)
  scale, bias = _affine(3, 1)
  params = {'params': {'scale': scale, 'bias': bias},
            'batch_stats': {'mean': np.zeros(3, np.float32), 'var': np.ones(3, np.float32)}}
  expected, _, var = numpy_batch_norm(x, scale, bias)
  assert np.all(np.abs(x.mean((0, 1, 2))) / np.sqrt(var) > 3e4)
  ours, _ = _apply(batch_norm.BatchNorm(use_running_average=False), params, x)
  np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
  fast, _ = _apply(nn.BatchNorm(use_running_average=False, epsilon=EPS), params, x)
  assert np.abs(np.asarray(fast) - expected).max() > 0.1   # what this test guards against


def test_running_statistics_follow_torchs_rule():
  """running = 0.9 running + 0.1 batch (torch momentum 0.1), the variance unbiased: n / (n - 1)."""
  rng = np.random.default_rng(2)
  module = batch_norm.BatchNorm(use_running_average=False)
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((2, 3, 5)))
  mean, var = np.zeros(5), np.ones(5)
  for _ in range(2):
    x = rng.normal(3.0, 2.0, size=(2, 3, 5)).astype(np.float32)
    _, updates = _apply(module, variables, x)
    variables = {**variables, **updates}
    n = 6
    mean = 0.9 * mean + 0.1 * x.astype(np.float64).mean((0, 1))
    var = 0.9 * var + 0.1 * x.astype(np.float64).var((0, 1)) * n / (n - 1)
    np.testing.assert_allclose(variables['batch_stats']['mean'], mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(variables['batch_stats']['var'], var, rtol=1e-6)
  # At test time the running statistics normalise: (x - mean) / sqrt(var + eps) * 1 + 0.
  x = rng.normal(size=(4, 5)).astype(np.float32)
  out = batch_norm.BatchNorm(use_running_average=True).apply(variables, x)
  np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + EPS), rtol=1e-5, atol=1e-6)


def test_statistics_are_float32_under_bfloat16_compute():
  x = jnp.asarray(np.random.default_rng(3).normal(50.0, 1.0, size=(8, 4)), jnp.bfloat16)
  module = resnet.batch_norm(True, jnp.bfloat16, 'bn')
  variables = module.init(jax.random.PRNGKey(0), x)
  out, updates = _apply(module, variables, x)
  assert out.dtype == jnp.bfloat16
  stats = updates['batch_stats']
  assert stats['mean'].dtype == stats['var'].dtype == jnp.float32
  x64 = np.asarray(x, np.float64)
  np.testing.assert_allclose(stats['mean'], 0.1 * x64.mean(0), rtol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * x64.var(0) * 8 / 7, rtol=1e-5)


def test_flax_checkpoints_load_unchanged():
  """Same parameter and statistic names and shapes as flax's nn.BatchNorm, and at test time the
  same numbers."""
  x = np.random.default_rng(4).normal(size=(2, 3, 3, 6)).astype(np.float32)
  flax_vars = nn.BatchNorm(use_running_average=True).init(jax.random.PRNGKey(0), x)
  ours = batch_norm.BatchNorm(use_running_average=True)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == \
      jax.tree.map(jnp.shape, flax_vars)
  variables = {'params': {'scale': np.linspace(0.5, 2, 6, dtype=np.float32),
                          'bias': np.linspace(-1, 1, 6, dtype=np.float32)},
               'batch_stats': {'mean': np.linspace(-3, 3, 6, dtype=np.float32),
                               'var': np.linspace(0.1, 4, 6, dtype=np.float32)}}
  np.testing.assert_array_equal(ours.apply(variables, x),
                                nn.BatchNorm(use_running_average=True).apply(variables, x))


def numpy_conv(x, kernel, stride=1, pad=1):
  """`[B, H, W, Ci] * [kh, kw, Ci, Co]`, symmetric zero padding, float64."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw = kernel.shape[:2]
  h = (x.shape[1] - kh) // stride + 1
  w = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], h, w, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + stride * h:stride, j:j + stride * w:stride]
      out += np.einsum('bhwc,co->bhwo', window, np.asarray(kernel[i, j], np.float64))
  return out


def _large_mean_input(shape, mean, seed):
  return (mean + np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


@pytest.mark.parametrize('use_fast_variance', [False, True])
def test_a_resnet_bottleneck_in_training_matches_float64(monkeypatch, use_fast_variance):
  """A bottleneck block with a projection shortcut on an input whose channels have
  |mean| / std ~ 1e3, as have its 1x1 convolutions' outputs: float64 NumPy agrees with ours to
  what float32 allows there (~1e-7 x 1e3); flax's fast variance, swapped in as the library's
  BatchNorm, does not (~1e-7 x 1e3^2; the second case checks that the test can fail)."""
  if use_fast_variance:
    monkeypatch.setattr(batch_norm, 'BatchNorm', lambda **kw: nn.BatchNorm(**kw))
  block = resnet.Bottleneck(4, 1)                         # 8 -> 16 channels: projection shortcut
  x = _large_mean_input((4, 6, 4, 8), 1e3, 5)
  variables = block.init(jax.random.PRNGKey(0), x, train=False)
  p = jax.tree.map(np.asarray, variables['params'])
  for k, name in enumerate(('bn1', 'bn2', 'bn3', 'downsample_bn')):
    p[name]['scale'], p[name]['bias'] = _affine(p[name]['scale'].shape[0], 10 + k)
  out, _ = block.apply({'params': p, 'batch_stats': variables['batch_stats']}, x,
                       train=True, mutable=['batch_stats'])
  bn = lambda y, name: numpy_batch_norm(y, p[name]['scale'], p[name]['bias'])
  first = numpy_conv(x, p['conv1']['kernel'], pad=0)
  _, mean, var = numpy_batch_norm(first, 1.0, 0.0)
  assert np.median(np.abs(mean) / np.sqrt(var)) > 3e2
  y = np.maximum(bn(first, 'bn1')[0], 0)
  y = np.maximum(bn(numpy_conv(y, p['conv2']['kernel']), 'bn2')[0], 0)
  y = bn(numpy_conv(y, p['conv3']['kernel'], pad=0), 'bn3')[0]
  shortcut = bn(numpy_conv(x, p['downsample_conv']['kernel'], pad=0), 'downsample_bn')[0]
  expected = np.maximum(y + shortcut, 0)
  error = _relative_error(out, expected)
  if use_fast_variance:
    assert error > 1e-2, error   # ~0.3 measured
  else:
    assert error < 1e-3, error   # ~1.4e-4 measured


@pytest.mark.parametrize('use_fast_variance', [False, True])
def test_a_one_channel_non_local_block_in_training_matches_float64(monkeypatch, use_fast_variance):
  """The official one-channel non-local block (AGW), where the issue was found: its W-BN input has
  |mean| / std ~ 1e3 for this input (~3e5 in the official AGW on images)."""
  if use_fast_variance:
    monkeypatch.setattr(batch_norm, 'BatchNorm', lambda **kw: nn.BatchNorm(**kw))
  c = 8
  block = two_stem_resnet.NonLocal(1)
  x = _large_mean_input((4, 4, 3, c), 1e3, 6)
  variables = block.init(jax.random.PRNGKey(1), x, train=False)
  params = jax.tree.map(np.asarray, variables['params'])
  params['w_bn']['scale'], params['w_bn']['bias'] = _affine(c, 7)
  out, _ = block.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                       train=True, mutable=['batch_stats'])
  w_y, _ = numpy_non_local(x.astype(np.float64), params, 1)
  bn, mean, var = numpy_batch_norm(w_y, params['w_bn']['scale'], params['w_bn']['bias'])
  assert np.median(np.abs(mean) / np.sqrt(var)) > 3e2
  expected = x + bn
  error = np.abs(np.asarray(out, np.float64) - expected).max() / np.abs(bn).max()
  if use_fast_variance:
    assert error > 1e-2, error
  else:
    assert error < 1e-3, error   # ~9e-5 measured (float32 at |mean| / std ~ 1e3); fast: ~9e-2
