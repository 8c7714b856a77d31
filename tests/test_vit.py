"""The official code's ViT-B/16 FACENet: shapes, switches, gradients, cross-attention, weights.

A tiny ViT (D 32, depth 3, 2 heads, patch 8 at 32 x 16, a 4 x 2 token grid) keeps every run
cheap; the full ViT-B/16 sizes are checked through shapes only (`jax.eval_shape`).
"""

import importlib.util
import pathlib

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from facenet_jax import models
from facenet_jax import pretrained
from facenet_jax.models import vit
from facenet_jax.models import vit_mfmp as cross_attention
from tests import fake_trees

B, H, W = 4, 32, 16
GRID = (4, 2)  # patch 8
D = 32
NUM_CLASSES = 5
STREAMS = ('rgb', 'ni', 'ti')


def _config(**overrides) -> ml_collections.ConfigDict:
  config = default.model_config('facenet_vit')
  config.update(embed_dim=D, depth=3, num_heads=2, patch_size=8, cross_attention_heads=2,
                cross_attention_dim_head=16)
  config.update(overrides)
  return config


def _trace(model, h=H, w=W, batch=B, train=True):
  """Shapes of (variables, outputs) without computing anything."""
  image = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32)
  flare = jax.ShapeDtypeStruct((batch, 2), jnp.int32)

  def run(image, flare):
    variables = models.init_variables(model, (h, w), jax.random.PRNGKey(0), batch_size=batch)
    kwargs = {'mutable': ['batch_stats'], 'rngs': {'dropout': jax.random.PRNGKey(1)}}
    out = model.apply(variables, image, image, image, flare, train=train,
                      **(kwargs if train else {}))
    return variables, (out[0] if train else out)

  return jax.eval_shape(run, image, flare)


def _random_variables(shapes, seed=0):
  """NumPy-drawn variables for a traced tree, kernels ~ N(0, 1 / fan_in)."""
  return fake_trees.numpy_variables(shapes, seed, kernel_gain=1.0)


def _inputs(seed=0, batch=B):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(batch, H, W, 3)), jnp.float32) for _ in range(3)]


# ------------------------------------------------------------------------------ shapes, switches

SWITCHES = [
    {},                                                           # full model, defaults
    {'mfmp': False, 'fce': False},                                # three plain ViT streams
    {'fmi': False},                                               # masks without interaction
    {'fce': False},
    {'mask_estimator': 'straight_through', 'neck_feat': 'after', 'bug_rgb_uses_ni_mask': True,
     'bug_batch_level_gating': True, 'bug_dead_threshold': True,
     'cross_attention_split': 'standard'},
    {'dtype': 'bfloat16', 'flare_head_input': 'mask_logits', 'flare_head_bias': False},
]


@pytest.mark.parametrize('overrides', SWITCHES)
def test_outputs_and_parameter_tree_for_every_switch(overrides):
  config = _config(**overrides)
  variables, out = _trace(models.build_model(config, NUM_CLASSES))
  expected = {'features', 'bn_features', 'logits', 'embedding'}
  if config.mfmp:
    expected |= {'flare_logits', 'masks', 'threshold'}
  assert set(out) == expected
  for key in ('features', 'bn_features'):
    assert {s: (x.shape, x.dtype) for s, x in out[key].items()} == {
        s: ((B, D), jnp.float32) for s in STREAMS}
  assert {s: x.shape for s, x in out['logits'].items()} == {
      s: (B, NUM_CLASSES) for s in STREAMS}
  assert out['embedding'].shape == (B, 3 * D)
  params = variables['params']
  names = {f'backbone_{s}' for s in STREAMS} | {f'vit_head_{s}' for s in STREAMS}
  names |= {f'head_{s}' for s in STREAMS}
  assert set(params) == names | ({'mfmp'} if config.mfmp else set())
  for s in STREAMS:
    # Blocks 0..depth-2 only: no unused last block, final norm or classifier in the streams.
    assert set(params[f'backbone_{s}']) == {'patch_embed', 'cls_token', 'pos_embed', 'block_0',
                                             'block_1'}
    assert params[f'backbone_{s}']['pos_embed'].shape == (1, 1 + 8, D)
    assert set(params[f'vit_head_{s}']) == {'block', 'norm'}
    assert set(params[f'head_{s}']['bnneck']) == {'scale'}
  if config.mfmp:
    assert {s: x.shape for s, x in out['masks'].items()} == {
        s: (B, *GRID, D) for s in ('rgb', 'ni')}
    assert {s: x.shape for s, x in out['flare_logits'].items()} == {
        s: (B, 2) for s in ('rgb', 'ni')}
    assert out['threshold'].shape == ()
    mfmp = params['mfmp']
    assert ('cross_attention' in mfmp) == config.fmi
    if config.fmi:
      # Two directions stacked on axis 0; no `to_out` (unused in the code) is created.
      assert set(mfmp['cross_attention']) == {'norm_pre', 'norm_attn', 'to_q', 'to_k', 'to_v',
                                              'out'}
      assert mfmp['cross_attention']['to_q']['kernel'].shape == (2, D, 32)
      assert set(mfmp['cross_attention']['to_q']) == {'kernel'}
      assert set(mfmp['cross_attention']['out']) == {'kernel', 'bias'}
    assert set(mfmp['flare_head_rgb']) == {'token_head', 'bn', 'classifier'}
    assert set(mfmp['flare_head_rgb']['classifier']) == (
        {'kernel', 'bias'} if config.flare_head_bias else {'kernel'})
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_full_size_parameter_counts_match_vit_b16_by_hand():
  """ViT-B/16 at 256 x 128; counts derived from timm's published total, not from our modules."""
  config = default.model_config('facenet_vit')
  counts = models.parameter_counts(models.build_model(config, 10), (256, 128))
  timm_vit_b16_224 = 86_567_656  # incl. 197 positions, 12 blocks, final norm, 1000-way head
  block = (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768) \
      + 4 * 768
  stream = timm_vit_b16_224 - 197 * 768 + 129 * 768 - block - 2 * 768 - (768 * 1000 + 1000)
  cross_per_direction = 47_190_528 - 9_437_952  # the reference's count without the unused to_out
  assert counts['backbone_rgb'] == stream == 78_657_024
  assert counts['vit_head_ni'] == block + 2 * 768
  assert counts['mfmp/cross_attention'] == 2 * cross_per_direction
  assert counts['mfmp/flare_head_rgb'] == block + 2 * 768 + 768 + 768 * 2 + 2   # + bias
  assert counts['head_ti'] == 768 + 768 * 10


@pytest.mark.parametrize('overrides,field', [
    ({'cross_attention_split': 'transposed'}, 'config.model.cross_attention_split'),
    ({'embed_dim': 30, 'num_heads': 4}, 'config.model.embed_dim'),
    ({'depth': 1}, 'config.model.depth'),
    ({'patch_size': 0}, 'config.model.patch_size'),
    ({'drop_path': 1.0}, 'config.model.drop_path'),
    ({'plugin_layer': 4}, 'plugin_layer'),
    ({'cross_attention_dropout': -0.1}, 'config.model.cross_attention_dropout'),
    ({'mfmp': False, 'fce': True}, 'config.model.fce'),
])
def test_bad_vit_config_is_rejected_naming_the_field(overrides, field):
  with pytest.raises(ValueError) as e:
    models.build_model(_config(**overrides), NUM_CLASSES)
  assert field in str(e.value)


def test_an_image_size_not_divisible_by_the_patch_names_both_fields():
  with pytest.raises(ValueError) as e:
    _trace(models.build_model(_config(), NUM_CLASSES), h=36)
  assert 'config.data.image_size' in str(e.value)
  assert 'config.model.patch_size' in str(e.value)


def test_drop_path_rates_are_linear_over_depth():
  rates = [vit.drop_path_rate(i, 12, 0.1) for i in range(12)]
  np.testing.assert_allclose(rates, np.linspace(0, 0.1, 12))


# ------------------------------------------------------------------------------ behaviour


def _apply(config, variables, *args):
  """Eval-mode outputs of the model `config` builds (jitted: far faster than op by op)."""
  model = models.build_model(config, NUM_CLASSES)
  return jax.jit(lambda v, *a: model.apply(v, *a, train=False))(variables, *args)


@pytest.fixture(scope='module')
def tiny():
  config = _config()
  shapes, _ = _trace(models.build_model(config, NUM_CLASSES))
  variables = _random_variables(shapes, seed=2)
  images = _inputs(3)
  flare = jnp.array([[1, 1], [0, 0], [1, 0], [0, 1]], jnp.int32)
  return config, variables, images, flare


def test_gradients_reach_every_leaf_and_delta_and_dropout_uses_its_rng(tiny):
  config, variables, images, flare = tiny
  labels = jnp.array([0, 3, 0, 3])
  model = models.build_model(config, NUM_CLASSES)

  def ce(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

  @jax.jit
  def grads_of(params, key):
    def loss(params):
      out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                           *images, flare, train=True, rngs={'dropout': key},
                           mutable=['batch_stats'])
      total = sum(ce(out['logits'][s], labels) for s in STREAMS)
      total += ce(out['flare_logits']['rgb'], flare[:, 0]) + ce(out['flare_logits']['ni'],
                                                                 flare[:, 1])
      return total, out['features']['rgb']
    return jax.grad(loss, has_aux=True)(params)

  grads, features = jax.device_get(grads_of(variables['params'], jax.random.PRNGKey(4)))
  # Dropout and drop path draw from the 'dropout' rng: same key, same result; another, not.
  np.testing.assert_array_equal(
      features, jax.device_get(grads_of(variables['params'], jax.random.PRNGKey(4))[1]))
  other = jax.device_get(grads_of(variables['params'], jax.random.PRNGKey(5))[1])
  assert np.abs(features - other).max() > 1e-4
  flat = flax.traverse_util.flatten_dict(grads)
  assert set(flat) == set(flax.traverse_util.flatten_dict(variables['params']))
  dead = [k for k, g in flat.items() if not np.any(g)]
  assert not dead
  assert abs(float(flat[('mfmp', 'threshold')])) > 0  # Delta learns with the default estimator
  # Both cross-attention directions are trained (each slice of the stacked kernels).
  for direction in (0, 1):
    assert np.any(flat[('mfmp', 'cross_attention', 'to_q', 'kernel')][direction])
  assert all(np.all(np.isfinite(g)) for g in flat.values())


def test_fce_changes_exactly_the_flared_modalities(tiny):
  config, variables, images, flare = tiny
  with_fce = _apply(config, variables, *images, flare)
  no_fce = _apply(_config(fce=False), variables, *images, flare)
  for s, col in (('rgb', 0), ('ni', 1)):
    a, b = np.asarray(with_fce['features'][s]), np.asarray(no_fce['features'][s])
    for i in range(B):
      if flare[i, col]:
        assert np.abs(a[i] - b[i]).max() > 1e-4, (s, i)
      else:
        np.testing.assert_array_equal(a[i], b[i])
  np.testing.assert_array_equal(np.asarray(with_fce['features']['ti']),
                                np.asarray(no_fce['features']['ti']))
  # Same parameters, masks unchanged by FCE; relaxed masks lie strictly inside (0, 1).
  np.testing.assert_array_equal(np.asarray(with_fce['masks']['rgb']),
                                np.asarray(no_fce['masks']['rgb']))
  mask = np.asarray(with_fce['masks']['ni'])
  assert 0 < mask.min() < mask.max() < 1


# ------------------------------------------------------------------------------ cross-attention


def _cross_params(seed, d, heads, dim_head):
  rng = np.random.default_rng(seed)
  inner = heads * dim_head
  return {
      'norm_pre': {'scale': rng.uniform(0.5, 1.5, d), 'bias': rng.normal(0, .1, d)},
      'norm_attn': {'scale': rng.uniform(0.5, 1.5, d), 'bias': rng.normal(0, .1, d)},
      'to_q': {'kernel': rng.normal(0, d ** -.5, (d, inner))},
      'to_k': {'kernel': rng.normal(0, d ** -.5, (d, inner))},
      'to_v': {'kernel': rng.normal(0, d ** -.5, (d, inner))},
      'out': {'kernel': rng.normal(0, inner ** -.5, (inner, d)), 'bias': rng.normal(0, .1, d)},
  }


def test_official_split_is_windowed_attention_over_consecutive_tokens():
  """n = 8 tokens, 2 'heads': tokens 0-3 only see context tokens 0-3, tokens 4-7 only 4-7."""
  d, heads, dim_head, n = 6, 2, 5, 8
  params = jax.tree.map(jnp.asarray, _cross_params(0, d, heads, dim_head))
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(1, n, d)), jnp.float32)
  ctx = np.asarray(rng.normal(size=(1, n, d)), np.float32)
  moved = ctx.copy()
  moved[0, 6] += 3.0  # change one context token in the second window
  for split, untouched in (('official', slice(0, 4)), ('standard', slice(0, 0))):
    module = cross_attention.CrossAttention(heads, dim_head, split, 0.5)
    y0 = np.asarray(module.apply({'params': params}, x, jnp.asarray(ctx), False))
    y1 = np.asarray(module.apply({'params': params}, x, jnp.asarray(moved), False))
    np.testing.assert_array_equal(y0[0, untouched], y1[0, untouched])
    changed = np.abs(y0 - y1).max(axis=-1)[0]
    assert (changed[untouched.stop:] > 1e-6).all(), split


def test_both_directions_start_identical_and_draw_independent_dropout():
  module = cross_attention.MutualCrossAttention(2, 4, 'official', 0.5)
  x = jnp.ones((2, 1, 4, 6))
  variables = jax.jit(lambda k: module.init(k, x, x * 0.5, False))(jax.random.PRNGKey(0))
  for leaf in jax.tree.leaves(variables['params']):
    np.testing.assert_array_equal(np.asarray(leaf[0]), np.asarray(leaf[1]))
  out = jax.jit(lambda v, k: module.apply(v, x, x, True, rngs={'dropout': k}))(
      variables, jax.random.PRNGKey(3))
  assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))


# ------------------------------------------------------------------------------ weights


def test_pos_embed_resize_keeps_cls_and_is_exact_on_a_linear_ramp():
  """Bilinear interpolation reproduces a linear function away from the clamped borders."""
  g = 6
  yy, xx = np.meshgrid(np.arange(g), np.arange(g), indexing='ij')
  grid = np.stack([2 * yy + 3 * xx, yy - xx], axis=-1).reshape(1, g * g, 2).astype(np.float32)
  pos = np.concatenate([np.array([[[7.0, -7.0]]], np.float32), grid], axis=1)
  out = pretrained.resize_pos_embed(pos, (3, 12))
  assert out.shape == (1, 1 + 36, 2)
  np.testing.assert_array_equal(out[0, 0], [7.0, -7.0])
  new = out[0, 1:].reshape(3, 12, 2)
  ys = (np.arange(3) + 0.5) * g / 3 - 0.5     # half-pixel source coordinates
  xs = np.clip((np.arange(12) + 0.5) * g / 12 - 0.5, 0, g - 1)  # clamped at the borders
  np.testing.assert_allclose(new[..., 0], 2 * ys[:, None] + 3 * xs[None], atol=1e-5)
  with pytest.raises(ValueError, match='not a square grid'):
    pretrained.resize_pos_embed(np.zeros((1, 1 + 10, 2)), (2, 2))


def test_vit_weight_errors_name_the_file_and_keys(tmp_path):
  path = tmp_path / 'vit.npz'
  np.savez(path, **{'blocks.0.norm1.weight': np.ones(4), 'cls_token': np.zeros((1, 1, 4))})
  with pytest.raises(ValueError) as e:
    pretrained.load_pretrained_backbone(str(path), 50, backbone='vit_b16')
  assert str(path) in str(e.value) and 'blocks.0.attn.qkv.weight' in str(e.value)
  with pytest.raises(ValueError, match="backbone='swin'"):
    pretrained.load_pretrained_backbone(str(path), 50, backbone='swin')


def _full_vit_from(params, grid=3):
  """A 'pretrained' full-ViT tree (streams' blocks + head block + norm) for the tiny model."""
  stream = params['backbone_rgb']
  tree = {k: v for k, v in stream.items() if k != 'pos_embed'}
  tree['pos_embed'] = np.ones((1, 1 + grid * grid, D), np.float32)
  tree['block_2'] = params['vit_head_rgb']['block']
  tree['norm'] = params['vit_head_rgb']['norm']
  return {'params': tree}


def test_stream_initialisation_errors_name_the_fields():
  shapes, _ = _trace(models.build_model(_config(), NUM_CLASSES), batch=2)
  variables = _random_variables(shapes)
  full = _full_vit_from(variables['params'])
  new = pretrained.init_streams_from_pretrained(variables, full, (H, W))
  np.testing.assert_array_equal(new['params']['backbone_ti']['pos_embed'], 1.0)  # resized ones
  with pytest.raises(ValueError, match='config.data.image_size'):
    pretrained.init_streams_from_pretrained(variables, full)
  shallow = {'params': {k: v for k, v in full['params'].items() if k != 'block_1'}}
  with pytest.raises(ValueError, match='config.model.depth=3'):
    pretrained.init_streams_from_pretrained(variables, shallow, (H, W))
  wide = jax.tree.map(lambda a: np.ones(a.shape[:-1] + (a.shape[-1] * 2,), np.float32), full)
  with pytest.raises(ValueError, match='pretrained ViT vs FACENet rgb stream'):
    pretrained.init_streams_from_pretrained(variables, wide, (H, W))


# ---------------------------------------------------------- parity with PyTorch (timm layout)

TORCH_DEPTH, TORCH_GRID = 3, 3  # a tiny "pretrained" ViT at 24 x 24 (3 x 3 patches of 8)


def _torch_modules():
  torch = pytest.importorskip('torch')
  nn = torch.nn
  F = torch.nn.functional

  class Attention(nn.Module):
    def __init__(self, dim, heads):
      super().__init__()
      self.heads = heads
      self.qkv = nn.Linear(dim, dim * 3)
      self.proj = nn.Linear(dim, dim)

    def forward(self, x):
      b, n, c = x.shape
      qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
      q, k, v = qkv[0], qkv[1], qkv[2]
      attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
      return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))

  class Mlp(nn.Module):
    def __init__(self, dim, hidden):
      super().__init__()
      self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
      return self.fc2(F.gelu(self.fc1(x)))

  class Block(nn.Module):
    def __init__(self, dim, heads):
      super().__init__()
      self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
      self.attn, self.mlp = Attention(dim, heads), Mlp(dim, 4 * dim)

    def forward(self, x):
      x = x + self.attn(self.norm1(x))
      return x + self.mlp(self.norm2(x))

  class PatchEmbed(nn.Module):
    def __init__(self, dim, patch):
      super().__init__()
      self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x):
      return self.proj(x).flatten(2).transpose(1, 2)

  class ViT(nn.Module):
    def __init__(self, dim, depth, heads, patch, grid):
      super().__init__()
      self.patch_embed = PatchEmbed(dim, patch)
      self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
      self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
      self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
      self.norm = nn.LayerNorm(dim, eps=1e-6)
      self.head = nn.Linear(dim, 10)

    def tokens(self, x, pos_embed):
      x = self.patch_embed(x)
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos_embed
      for block in self.blocks[:-1]:
        x = block(x)
      return x

    def head_feature(self, x):
      return self.norm(self.blocks[-1](x))[:, 0]

  class CrossAttention(nn.Module):
    """The code's cross-attention as described in the reference (PreNorm LN + attention LN)."""

    def __init__(self, dim, heads, dim_head, official):
      super().__init__()
      inner = heads * dim_head
      self.heads, self.dim_head, self.official = heads, dim_head, official
      self.norm_pre, self.norm_attn = nn.LayerNorm(dim), nn.LayerNorm(dim)
      self.to_q = nn.Linear(dim, inner, bias=False)
      self.to_k = nn.Linear(dim, inner, bias=False)
      self.to_v = nn.Linear(dim, inner, bias=False)
      self.out = nn.Linear(inner, dim)

    def split(self, t):
      b, n, _ = t.shape
      if self.official:
        return t.reshape(b, self.heads, n, self.dim_head)
      return t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, x, ctx):
      q = self.split(self.to_q(self.norm_attn(self.norm_pre(x))))
      k, v = self.split(self.to_k(ctx)), self.split(self.to_v(ctx))
      out = ((q @ k.transpose(-1, -2)) * self.dim_head ** -0.5).softmax(-1) @ v
      b, _, n, _ = out.shape
      out = out.reshape(b, n, -1) if self.official else out.transpose(1, 2).reshape(b, n, -1)
      return x + self.out(out)

  return torch, F, ViT, CrossAttention


def _torch_pos_resize(torch, F, pos_embed, grid):
  g = int(round((pos_embed.shape[1] - 1) ** 0.5))
  old = pos_embed[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
  new = F.interpolate(old, size=grid, mode='bilinear', align_corners=False)
  return torch.cat([pos_embed[:, :1], new.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)],
                   dim=1)


@pytest.mark.parity
@pytest.mark.parametrize('grid', [(16, 8), (8, 16), (4, 2), (20, 20)])
def test_pos_embed_resize_matches_torch_interpolate(grid):
  torch, F, _, _ = _torch_modules()
  pos = torch.randn(1, 1 + 14 * 14, 5, generator=torch.Generator().manual_seed(0))
  expected = _torch_pos_resize(torch, F, pos, grid).numpy()
  # torch interpolates in float32, the loader in float64: ~1 ulp of the values apart.
  np.testing.assert_allclose(pretrained.resize_pos_embed(pos.numpy(), grid), expected,
                             rtol=1e-5, atol=1e-5)


def _jax_layout(state: dict) -> dict:
  """timm names -> the original JAX release's names (independent inverse of the loader)."""
  heads, d = 2, D
  out = {'embedding/kernel': state['patch_embed.proj.weight'].transpose(2, 3, 1, 0),
         'embedding/bias': state['patch_embed.proj.bias'], 'cls': state['cls_token'],
         'Transformer/posembed_input/pos_embedding': state['pos_embed'],
         'Transformer/encoder_norm/scale': state['norm.weight'],
         'Transformer/encoder_norm/bias': state['norm.bias'],
         'head/kernel': state['head.weight'].T, 'head/bias': state['head.bias']}
  for i in range(TORCH_DEPTH):
    p, t = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
    out[p + 'LayerNorm_0/scale'], out[p + 'LayerNorm_0/bias'] = (state[t + 'norm1.weight'],
                                                                 state[t + 'norm1.bias'])
    out[p + 'LayerNorm_2/scale'], out[p + 'LayerNorm_2/bias'] = (state[t + 'norm2.weight'],
                                                                 state[t + 'norm2.bias'])
    for j, name in enumerate(('Dense_0', 'Dense_1')):
      out[p + f'MlpBlock_3/{name}/kernel'] = state[t + f'mlp.fc{j + 1}.weight'].T
      out[p + f'MlpBlock_3/{name}/bias'] = state[t + f'mlp.fc{j + 1}.bias']
    a = p + 'MultiHeadDotProductAttention_1/'
    w, b = state[t + 'attn.qkv.weight'], state[t + 'attn.qkv.bias']
    for j, name in enumerate(('query', 'key', 'value')):
      out[a + f'{name}/kernel'] = w[j * d:(j + 1) * d].T.reshape(d, heads, d // heads)
      out[a + f'{name}/bias'] = b[j * d:(j + 1) * d].reshape(heads, d // heads)
    out[a + 'out/kernel'] = state[t + 'attn.proj.weight'].T.reshape(heads, d // heads, d)
    out[a + 'out/bias'] = state[t + 'attn.proj.bias']
  return out


@pytest.mark.parity
def test_converted_timm_and_jax_vit_weights_give_the_torch_tokens(tmp_path):
  torch, F, TorchViT, _ = _torch_modules()
  torch.manual_seed(0)
  ref = TorchViT(D, TORCH_DEPTH, 2, 8, TORCH_GRID).eval()
  with torch.no_grad():  # non-trivial norms and biases
    for name, p in ref.named_parameters():
      if 'norm' in name and name.endswith('weight'):
        p.uniform_(0.5, 1.5)
      elif name.endswith('bias'):
        p.normal_(0, 0.1)
  torch.save(ref.state_dict(), tmp_path / 'vit.pth')
  state = {k: v.numpy() for k, v in ref.state_dict().items()}
  np.savez(tmp_path / 'vit_jax.npz', **_jax_layout(state))

  config = _config()
  model = models.build_model(config, NUM_CLASSES)
  shapes, _ = _trace(model, batch=2)
  variables = _random_variables(shapes, seed=5)
  loaded = pretrained.load_pretrained_backbone(str(tmp_path / 'vit.pth'), 50, 'vit_b16')
  from_pth = pretrained.init_streams_from_pretrained(variables, loaded, (H, W))
  pretrained.save_backbone(loaded, str(tmp_path / 'converted.npz'))  # torch-free round trip
  jax.tree.map(np.testing.assert_array_equal, loaded,
               pretrained.load_pretrained_backbone(str(tmp_path / 'converted.npz'), 50, 'vit_b16'))
  # scripts/convert_weights.py turns the JAX-layout file into the torch-free Flax-layout .npz.
  spec = importlib.util.spec_from_file_location(
      'convert_weights', pathlib.Path(__file__).resolve().parent.parent / 'scripts' /
      'convert_weights.py')
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  assert script.main([str(tmp_path / 'vit_jax.npz'), str(tmp_path / 'flax.npz'),
                      '--backbone', 'vit_b16']) == 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), loaded,
               pretrained.load_pretrained_backbone(str(tmp_path / 'flax.npz'), 50, 'vit_b16'))
  from_npz = pretrained.init_streams_from_pretrained(
      variables, pretrained.load_pretrained_backbone(str(tmp_path / 'vit_jax.npz'), 50,
                                                     'vit_b16'), (H, W))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               from_pth, from_npz)

  params = from_pth['params']
  # All streams and heads are copies; BNNecks and the cross-attention keep their values.
  for s in ('ni', 'ti'):
    jax.tree.map(np.testing.assert_array_equal, params[f'backbone_{s}'], params['backbone_rgb'])
    jax.tree.map(np.testing.assert_array_equal, params[f'vit_head_{s}'], params['vit_head_rgb'])
  for s in ('rgb', 'ni'):
    jax.tree.map(np.testing.assert_array_equal, params['mfmp'][f'flare_head_{s}']['token_head'],
                 params['vit_head_rgb'])
  jax.tree.map(np.testing.assert_array_equal, params['mfmp']['cross_attention'],
               variables['params']['mfmp']['cross_attention'])
  jax.tree.map(np.testing.assert_array_equal, params['head_rgb'], variables['params']['head_rgb'])

  x = np.random.default_rng(0).normal(size=(2, H, W, 3)).astype(np.float32)
  with torch.no_grad():
    pos = _torch_pos_resize(torch, F, ref.pos_embed, GRID)
    want_tokens = ref.tokens(torch.from_numpy(x).permute(0, 3, 1, 2), pos)
    want_head = ref.head_feature(want_tokens).numpy()
  stream = vit.ViT(D, TORCH_DEPTH, 2, 4.0, 8, 0.1)
  got_tokens = stream.apply({'params': params['backbone_rgb']}, jnp.asarray(x), False)
  np.testing.assert_allclose(np.asarray(got_tokens), want_tokens.numpy(), rtol=1e-4, atol=1e-4)
  head = vit.TokenHead(2, 4.0, 0.1)
  got_head = head.apply({'params': params['vit_head_rgb']}, got_tokens, False)
  np.testing.assert_allclose(np.asarray(got_head), want_head, rtol=1e-4, atol=1e-4)


@pytest.mark.parity
@pytest.mark.parametrize('split', cross_attention.SPLITS)
def test_cross_attention_matches_a_torch_reimplementation(split):
  torch, _, _, TorchCrossAttention = _torch_modules()
  d, heads, dim_head, n = 12, 4, 6, 8
  torch.manual_seed(1)
  ref = TorchCrossAttention(d, heads, dim_head, official=split == 'official').eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if 'norm' in name:
        p.uniform_(0.5, 1.5) if name.endswith('weight') else p.normal_(0, 0.1)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  params = {'norm_pre': {'scale': sd['norm_pre.weight'], 'bias': sd['norm_pre.bias']},
            'norm_attn': {'scale': sd['norm_attn.weight'], 'bias': sd['norm_attn.bias']},
            'out': {'kernel': sd['out.weight'].T, 'bias': sd['out.bias']}}
  params.update({k: {'kernel': sd[f'{k}.weight'].T} for k in ('to_q', 'to_k', 'to_v')})
  rng = np.random.default_rng(2)
  x, ctx = (rng.normal(size=(3, n, d)).astype(np.float32) for _ in range(2))
  with torch.no_grad():
    want = ref(torch.from_numpy(x), torch.from_numpy(ctx)).numpy()
  got = cross_attention.CrossAttention(heads, dim_head, split, 0.5).apply(
      {'params': params}, jnp.asarray(x), jnp.asarray(ctx), False)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_two_training_steps_end_to_end_on_synthetic_data(tiny_synthetic_root, tmp_path):
  from tests.tiny import tiny_config  # pylint: disable=g-import-not-at-top
  from facenet_jax import train  # pylint: disable=g-import-not-at-top
  config = tiny_config(tiny_synthetic_root)
  config.model = default.model_config('facenet_vit')
  config.model.update(embed_dim=D, depth=2, num_heads=2, patch_size=8, cross_attention_heads=2,
                      cross_attention_dim_head=8)
  config.data.num_val_ids = 0
  config.train.max_steps = 2
  # Start from "pretrained" ViT weights: checks the driver's loading path (image size, backbone).
  shapes, _ = _trace(models.build_model(config.model, NUM_CLASSES), batch=2)
  full = _random_variables(shapes, seed=7)['params']
  full = {**full['backbone_rgb'], 'pos_embed': np.zeros((1, 1 + 9, D), np.float32),
          'block_1': full['vit_head_rgb']['block'], 'norm': full['vit_head_rgb']['norm']}
  pretrained.save_backbone({'params': full}, str(tmp_path / 'vit.npz'))
  config.model.pretrained_path = str(tmp_path / 'vit.npz')
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert 0.0 <= result['test/mAP'] <= 1.0
  lines = (tmp_path / 'run' / 'metrics.jsonl').read_text().strip().splitlines()
  assert len([l for l in lines if '"train/loss"' in l]) == 2
