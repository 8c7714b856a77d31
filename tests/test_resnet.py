"""ResNet backbone: shapes, parameter counts against torchvision, staged calls, dtype, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from facenet_jax.models import resnet

# torchvision's published parameter counts minus the 1000-way fc layer (512e * 1000 + 1000).
TORCHVISION_PARAMS_WITHOUT_FC = {
    18: 11_689_512 - 513_000,
    34: 21_797_672 - 513_000,
    50: 25_557_032 - 2_049_000,
    101: 44_549_160 - 2_049_000,
}


def _shapes(model, image_shape, **kwargs):
  x = jax.ShapeDtypeStruct(image_shape, jnp.float32)

  def run(x):
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    return variables, model.apply(variables, x, train=False, **kwargs)

  return jax.eval_shape(run, x)


@pytest.mark.parametrize('depth', [18, 34, 50, 101])
def test_parameter_count_matches_torchvision(depth):
  variables = jax.eval_shape(lambda x: resnet.ResNet(depth=depth).init(jax.random.PRNGKey(0), x),
                             jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))
  assert count == TORCHVISION_PARAMS_WITHOUT_FC[depth]


@pytest.mark.parametrize('depth,channels,last_stride,out_hw', [
    (18, 512, 1, (4, 2)), (34, 512, 2, (2, 1)), (50, 2048, 2, (2, 1)), (101, 2048, 1, (4, 2))])
def test_feature_map_shape(depth, channels, last_stride, out_hw):
  _, out = _shapes(resnet.ResNet(depth=depth, last_stride=last_stride), (3, 64, 32, 3))
  assert out.shape == (3, *out_hw, channels)
  assert out.dtype == jnp.float32


def test_return_stages_gives_the_four_stage_outputs():
  _, outs = _shapes(resnet.ResNet(depth=50), (2, 64, 32, 3), return_stages=True)
  assert [o.shape for o in outs] == [(2, 16, 8, 256), (2, 8, 4, 512), (2, 4, 2, 1024),
                                     (2, 4, 2, 2048)]
  assert resnet.stage_channels(50) == (256, 512, 1024, 2048)
  assert resnet.stage_channels(34) == (64, 128, 256, 512)


def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
  variables, out = _shapes(resnet.ResNet(depth=18, dtype=jnp.bfloat16), (2, 64, 32, 3))
  assert out.dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_staged_calls_equal_the_full_forward_pass():
  model = resnet.ResNet(depth=18)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 64, 32, 3)), jnp.float32)  # as in the parity test
  variables, _ = _shapes(model, x.shape)
  variables = jax.tree.map(lambda s: 0.1 * rng.normal(size=s.shape).astype(np.float32) + (
      1.0 if len(s.shape) == 1 else 0.0), variables)  # BN vectors near 1, kernels small

  def staged(module, x):
    h = module.forward_stem(x, False)
    outs = []
    for i in range(1, 5):
      h = module.forward_stage(i, h, False)
      outs.append(h)
    return outs

  stage_by_stage = model.apply(variables, x, method=staged)
  full = model.apply(variables, x, return_stages=True)
  for a, b in zip(stage_by_stage, full):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(jnp.abs(full[-1]).max()) > 0


def test_stem_downsamples_by_four_with_torch_padding():
  # 7x7/2 pad 3 then 3x3/2 pad 1 (torch): 33x17 -> 17x9 -> 9x5. 'SAME' padding would agree on
  # sizes but not on values; the values are covered by the parity test in test_pretrained.py.
  def run(x):
    stem = resnet.Stem()
    return stem.apply(stem.init(jax.random.PRNGKey(0), x, train=False), x, train=False)

  out = jax.eval_shape(run, jax.ShapeDtypeStruct((1, 33, 17, 3), jnp.float32))
  assert out.shape == (1, 9, 5, 64)


def test_unsupported_depth_and_last_stride_name_the_field():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  with pytest.raises(ValueError, match='model.depth=42'):
    jax.eval_shape(lambda x: resnet.ResNet(depth=42).init(jax.random.PRNGKey(0), x), x)
  with pytest.raises(ValueError, match='model.last_stride=3'):
    jax.eval_shape(lambda x: resnet.ResNet(depth=18, last_stride=3).init(
        jax.random.PRNGKey(0), x), x)


def test_stage_index_out_of_range_is_rejected():
  model = resnet.ResNet(depth=18)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  with pytest.raises(ValueError, match='stage index 5'):
    jax.eval_shape(
        lambda v, x: model.apply(v, 5, x, False, method=resnet.ResNet.forward_stage), shapes, x)


def test_width_multiplier_scales_the_stem_and_every_stage():
  # Positional construction (depth, last_stride, dtype) keeps working; the multiplier comes last.
  model = resnet.ResNet(18, 1, jnp.float32, 0.5)
  variables, out = _shapes(model, (2, 64, 32, 3))
  params = variables['params']
  assert params['stem']['conv']['kernel'].shape == (7, 7, 3, 32)
  assert variables['batch_stats']['stem']['bn']['mean'].shape == (32,)
  assert params['layer1']['block_0']['conv1']['kernel'].shape == (3, 3, 32, 32)
  assert params['layer4']['block_0']['conv1']['kernel'].shape == (3, 3, 128, 256)
  assert params['layer4']['block_1']['conv2']['kernel'].shape == (3, 3, 256, 256)
  assert out.shape == (2, 4, 2, 256)
  assert resnet.stage_channels(18, 0.5) == (32, 64, 128, 256)
  assert resnet.stage_channels(50, 0.5) == (128, 256, 512, 1024)
  assert resnet.stage_channels(18, 1.0) == resnet.stage_channels(18)
  # Rounded, and never below MIN_WIDTH channels.
  assert resnet.stage_channels(18, 0.3) == (19, 38, 77, 154)
  assert resnet.stage_channels(18, 0.01) == (8, 8, 8, 8)


def test_bottleneck_width_multiplier_scales_the_inner_width_before_the_expansion():
  _, outs = _shapes(resnet.ResNet(depth=50, width_multiplier=0.25), (2, 64, 32, 3),
                    return_stages=True)
  assert [o.shape[-1] for o in outs] == list(resnet.stage_channels(50, 0.25)) == [64, 128, 256,
                                                                                  512]


@pytest.mark.parametrize('width', [0.0, -0.5, float('nan')])
def test_a_non_positive_width_multiplier_names_the_config_field(width):
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  with pytest.raises(ValueError, match='config.model.width_multiplier'):
    jax.eval_shape(lambda x: resnet.ResNet(depth=18, width_multiplier=width).init(
        jax.random.PRNGKey(0), x), x)
  with pytest.raises(ValueError, match='config.model.width_multiplier'):
    resnet.stage_channels(18, width)


def _numpy_max_pool(x, window, stride, padding):
  """Per-window loop: the max and, for the gradient, the row-major first position holding it."""
  b, h, w, c = x.shape
  xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
              constant_values=-np.inf)
  oh, ow = (h + 2 * padding - window) // stride + 1, (w + 2 * padding - window) // stride + 1
  out = np.zeros((b, oh, ow, c), x.dtype)
  argmax = np.zeros((b, oh, ow, c, 2), int)
  for n in range(b):
    for i in range(oh):
      for j in range(ow):
        for ch in range(c):
          win = xp[n, i * stride:i * stride + window, j * stride:j * stride + window, ch]
          flat = int(np.argmax(win))                      # first maximum, row-major
          out[n, i, j, ch] = win.flat[flat]
          argmax[n, i, j, ch] = (i * stride + flat // window - padding,
                                 j * stride + flat % window - padding)
  return out, argmax


@pytest.mark.parametrize('window,stride,padding', [(3, 2, 1), (2, 2, 0)])
def test_max_pool_routes_the_gradient_to_the_first_maximum_of_each_window(window, stride, padding):
  # Post-ReLU values on a coarse grid: many ties (zeros and repeated levels) and edge windows
  # that include the -inf padding.
  rng = np.random.default_rng(0)
  x = np.maximum(np.round(rng.standard_normal((2, 7, 6, 3)) * 2) / 2, 0).astype(np.float32)
  want, argmax = _numpy_max_pool(x, window, stride, padding)
  g = rng.standard_normal(want.shape).astype(np.float32)
  want_grad = np.zeros_like(x)
  for idx in np.ndindex(*want.shape):
    n, _, _, ch = idx
    r, col = argmax[idx]
    want_grad[n, r, col, ch] += g[idx]
  pool = lambda v: resnet.max_pool(v, window, stride, padding)  # noqa: E731
  out, vjp = jax.vjp(pool, jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(out), want)
  np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), want_grad)
  # The same as flax's reduce-window pool and its select-and-scatter gradient.
  flax_pool = lambda v: nn.max_pool(v, (window, window), strides=(stride, stride),  # noqa: E731
                                    padding=((padding, padding), (padding, padding)))
  flax_out, flax_vjp = jax.vjp(flax_pool, jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(flax_out), want)
  np.testing.assert_array_equal(np.asarray(flax_vjp(jnp.asarray(g))[0]), want_grad)


def test_max_pool_keeps_a_nan_and_bfloat16():
  x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1).at[0, 0, 0, 0].set(jnp.nan)
  out = resnet.max_pool(x.astype(jnp.bfloat16), 3, 2, padding=1)
  assert out.dtype == jnp.bfloat16 and out.shape == (1, 2, 2, 1)
  assert np.isnan(float(out[0, 0, 0, 0]))
  np.testing.assert_array_equal(np.asarray(out[0, :, :, 0], np.float32)[1:, 1:], [[15.0]])


@pytest.mark.parametrize('k,stride,hw', [(1, 1, (6, 5)), (1, 2, (7, 6)), (3, 1, (6, 5)),
                                         (3, 2, (7, 6)), (7, 2, (9, 8)), (3, 1, (2, 1))])
def test_conv_formulations_compute_torch_conv2d_and_its_gradients(k, stride, hw):
  # float64 NumPy reference of torch's Conv2d(padding=(k - 1) // 2, bias=False) by direct sum.
  rng = np.random.default_rng(k * 10 + stride)
  x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
  w = rng.standard_normal((k, k, 3, 4)).astype(np.float32)
  pad = (k - 1) // 2
  xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oh, ow = (hw[0] + 2 * pad - k) // stride + 1, (hw[1] + 2 * pad - k) // stride + 1
  want = np.zeros((2, oh, ow, 4))
  for i in range(oh):
    for j in range(ow):
      win = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
      want[:, i, j] = np.einsum('bhwc,hwcd->bd', win, w)
  g = rng.standard_normal(want.shape).astype(np.float32)
  hows = ['conv', 'patches'] + (['matmul'] if k == 1 else [])
  grads = {}
  for how in hows:
    fn = lambda a, b, how=how: resnet.torch_padded_conv(a, b, stride, how)  # noqa: E731
    out, vjp = jax.vjp(fn, jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5, err_msg=how)
    grads[how] = [np.asarray(t) for t in vjp(jnp.asarray(g))]
  for how in hows[1:]:
    for a, b in zip(grads[how], grads['conv']):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=how)


def test_conv_formulation_per_backend_and_map_size():
  assert resnet.conv_formulation(1, (64, 32), 'cpu') == 'matmul'
  assert resnet.conv_formulation(3, (64, 32), 'cpu') == 'patches'
  assert resnet.conv_formulation(3, (64, 32), 'gpu') == 'conv'
  assert resnet.conv_formulation(1, (64, 32), 'gpu') == 'conv'
  assert resnet.conv_formulation(3, (2, 1), 'gpu') == 'patches'   # map smaller than the kernel
  with pytest.raises(ValueError, match='1x1'):
    resnet.torch_padded_conv(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)), 1, 'matmul')


@pytest.mark.parametrize('backend', ['gpu', 'tpu'])
def test_conv_formulation_policy_changes_the_accelerator_choice_only(backend):
  pick = resnet.conv_formulation
  assert [pick(k, (64, 32), backend, 'matmul_1x1') for k in (1, 3, 7)] == [
      'matmul', 'conv', 'conv']
  assert [pick(k, (64, 32), backend, 'matmul') for k in (1, 3, 7)] == [
      'matmul', 'patches', 'patches']
  for policy in resnet.CONV_FORMULATIONS:   # XLA:CPU keeps its own choice whatever the policy
    assert [pick(k, (64, 32), 'cpu', policy) for k in (1, 3)] == ['matmul', 'patches']
  with pytest.raises(ValueError, match=r'model\.conv_formulation=.cudnn'):
    pick(1, (8, 8), backend, 'cudnn')


@pytest.mark.parametrize('policy,convs', [('auto', 20), ('matmul_1x1', 17), ('matmul', 0)])
def test_conv_formulation_reaches_every_convolution_of_the_network(monkeypatch, policy, convs):
  # Traced as on a GPU: ResNet-18 has 20 convolutions (stem, 16 3x3, 3 1x1 downsamples); the
  # policy decides how many stay convolutions, and the function and parameters do not change.
  # At 128x64 every map is at least 3 wide, so no convolution falls back to patches.
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 128, 64, 3)), jnp.float32)
  model = resnet.ResNet(depth=18, width_multiplier=0.25, conv_formulation=policy)
  variables = model.init(jax.random.PRNGKey(0), x)
  want = model.apply(variables, x)            # on this CPU: the products XLA:CPU gets anyway
  monkeypatch.setattr(resnet.jax, 'default_backend', lambda: 'gpu')
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x))(variables)
  assert str(jaxpr).count('conv_general_dilated') == convs
  if policy == 'matmul':    # nothing left for cuDNN: the traced-as-GPU program also runs here
    np.testing.assert_allclose(np.asarray(jax.jit(lambda v: model.apply(v, x))(variables)),
                               np.asarray(want), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='conv_formulation'):
    resnet.ResNet(depth=18, conv_formulation='cudnn').init(jax.random.PRNGKey(0), x)
