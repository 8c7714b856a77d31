"""FSC-Net: DEEN with frequency (FSA), gated-channel (GCA) and spatial (SPT) blocks in each DEE branch.

There is no paper; the spec is the first commit of the official code (`model_FSC.py` at a2dcc76,
reference §4.1-4.2). Inside each of DEE's two branches the C' = C/4 map u (the mean of the three
dilated convs) becomes SPT(GCA(FSA(u))) before the ReLU and the 1x1 expansion; everything else is
DEEN (`deen.py`). The three blocks, NHWC here ([B, h, w, C']):

* FSA, frequency: F = rfft2(u, 'ortho') over (h, w) -> [B, h, w//2 + 1, C'] complex. For the real
  part R and the imaginary part I separately: z = conv1x1(2C' -> C')([GAP(.); GMP(.)]) -> Linear(C'
  -> C'/16) -> ReLU -> Linear(-> C') -> sigmoid -> per-channel weights; the conv and the MLP are
  shared by R and I. Output irfft2(R w_R + i I w_I, s=(h, w), 'ortho'). No residual.
* GCA, a MambaOut-style gated CNN block: x -> LayerNorm(eps 1e-6) -> Linear(C' -> 2 hidden),
  hidden = int(8 C' / 3), split into g (hidden), i (hidden - c), c (c = int(C' / 2)); c ->
  depthwise 7x7 conv (pad 3, bias); y = Linear(hidden -> C')(GELU(g) * [i; c]) (exact, erf GELU as
  torch); out = y + x, and then DropPath(0.01) on `out` as coded (`gca_drop_path_placement=
  'after_residual'`: a dropped sample loses its shortcut too; kept samples are scaled by 1/0.99).
  'branch' is the usual placement (x + DropPath(y)), a documented alternative.
* SPT, spatial: u + tanh(BN(depthwise 3x3 conv(u))).

Ablation switches `fsa`, `gca`, `spt` (each block on/off; all off is DEEN exactly). FSC-Net's loss
differs from DEEN's in one line: the triplet sees L2-normalised features
(`loss.triplet_normalize=True` in its configs).

Initialisation: DEEN's, and FSA / GCA / SPT at torch's defaults (every Conv2d / Linear kernel
and bias U(+-1/sqrt(fan_in)), LayerNorm and BatchNorm 1 / 0), as the official code leaves them
(`tests/test_initializers.py`). Gradients and optimiser steps are not compared against the
official code here.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from facenet_jax import batches
from facenet_jax.models import agw
from facenet_jax.models import deen
from facenet_jax.models import initializers
from facenet_jax.models import registry
from facenet_jax.models import resnet

DROP_PATH_PLACEMENTS = ('after_residual', 'branch')


class FSA(nn.Module):
  """Frequency attention: `[B, h, w, C] -> [B, h, w, C]` (module docstring)."""
  reduction: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, u: jax.Array) -> jax.Array:
    _, h, w, c = u.shape
    spectrum = jnp.fft.rfft2(u.astype(jnp.float32), axes=(1, 2), norm='ortho')
    hidden_units = max(c // self.reduction, 1)
    # The 1x1 conv on a 1x1 map is a Dense; all three start as torch's defaults (official).
    reduce = initializers.torch_dense(c, 2 * c, name='conv_reduce')
    hidden = initializers.torch_dense(hidden_units, c, name='mlp_1')
    out = initializers.torch_dense(c, hidden_units, name='mlp_2')

    def weights(part):                                 # [B, h, w', C] -> [B, 1, 1, C]
      pooled = jnp.concatenate([jnp.mean(part, axis=(1, 2)), jnp.max(part, axis=(1, 2))], -1)
      return jax.nn.sigmoid(out(nn.relu(hidden(reduce(pooled)))))[:, None, None, :]

    real, imag = spectrum.real, spectrum.imag
    attended = jax.lax.complex(real * weights(real), imag * weights(imag))
    return jnp.fft.irfft2(attended, s=(h, w), axes=(1, 2), norm='ortho').astype(u.dtype)


def drop_path(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """timm DropPath: each sample zeroed with probability `rate`, kept ones scaled by 1 / (1 - rate)."""
  if rng is None or rate == 0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class GCA(nn.Module):
  """Gated channel block: `[B, h, w, C] -> [B, h, w, C]` (module docstring)."""
  expansion_ratio: float = 8 / 3
  kernel_size: int = 7
  conv_ratio: float = 0.5
  drop_path: float = 0.01
  drop_path_placement: str = 'after_residual'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    hidden = int(self.expansion_ratio * c)
    conv_channels = int(self.conv_ratio * c)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32, name='norm')(x)
    y = initializers.torch_dense(2 * hidden, c, dtype=self.dtype, param_dtype=jnp.float32,
                                 name='fc1')(y)
    g, i, conv = jnp.split(y, [hidden, 2 * hidden - conv_channels], axis=-1)
    k = self.kernel_size
    conv = initializers.torch_conv(conv_channels, (k, k), conv_channels, groups=conv_channels,
                                   padding=((k // 2, k // 2), (k // 2, k // 2)), dtype=self.dtype,
                                   param_dtype=jnp.float32, name='conv')(conv)
    y = nn.gelu(g, approximate=False) * jnp.concatenate([i, conv], axis=-1)
    y = initializers.torch_dense(c, hidden, dtype=self.dtype, param_dtype=jnp.float32,
                                 name='fc2')(y)
    rng = self.make_rng('dropout') if train and self.drop_path > 0 else None
    if self.drop_path_placement == 'after_residual':
      return drop_path(y + x, self.drop_path, rng)
    return x + drop_path(y, self.drop_path, rng)


class SPT(nn.Module):
  """Spatial block: `u + tanh(BN(depthwise3x3(u)))`, `[B, h, w, C] -> [B, h, w, C]`."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, u: jax.Array, train: bool) -> jax.Array:
    c = u.shape[-1]
    y = initializers.torch_conv(c, (3, 3), c, groups=c, padding=((1, 1), (1, 1)),
                                dtype=self.dtype, param_dtype=jnp.float32, name='conv')(u)
    y = resnet.batch_norm(train, self.dtype, 'norm')(y)
    return u + jnp.tanh(y)


class FSCRefinement(nn.Module):
  """FSA -> GCA -> SPT in series on a DEE branch's C/4 map, each switchable."""
  fsa: bool = True
  gca: bool = True
  spt: bool = True
  gca_drop_path: float = 0.01
  gca_drop_path_placement: str = 'after_residual'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, u: jax.Array, train: bool) -> jax.Array:
    if self.fsa:
      u = FSA(dtype=self.dtype, name='fsa')(u)
    if self.gca:
      u = GCA(drop_path=self.gca_drop_path, drop_path_placement=self.gca_drop_path_placement,
              dtype=self.dtype, name='gca')(u, train)
    if self.spt:
      u = SPT(self.dtype, name='spt')(u, train)
    return u


class FSCNet(deen.DEEN):
  """DEEN with `FSCRefinement` in both DEE branches (module docstring)."""
  fsa: bool = True                  # frequency block on/off (ablation)
  gca: bool = True                  # gated channel block on/off
  spt: bool = True                  # spatial block on/off
  gca_drop_path: float = 0.01       # DropPath rate inside GCA (official 0.01)
  gca_drop_path_placement: str = 'after_residual'  # as coded | 'branch' (the usual x + DropPath(y))

  def __post_init__(self):
    deen._check_choice(self.gca_drop_path_placement, DROP_PATH_PLACEMENTS,  # pylint: disable=protected-access
                       'gca_drop_path_placement')
    if not 0 <= self.gca_drop_path < 1:
      raise ValueError(f'config.model.gca_drop_path={self.gca_drop_path!r} must be in [0, 1)')
    super().__post_init__()

  def branch_refinement(self, dtype):
    if not (self.fsa or self.gca or self.spt):
      return None
    return functools.partial(FSCRefinement, self.fsa, self.gca, self.spt, self.gca_drop_path,
                             self.gca_drop_path_placement, dtype)


registry.register(registry.ModelSpec(
    name='fsc_net', module=FSCNet, loss_bundle=deen.deen_loss_bundle,
    batch=batches.CROSS_MODAL_IMAGES, load_pretrained=agw.load_imagenet_backbone,
    description='FSC-Net: DEEN + FSA / GCA / SPT in the DEE branches (official first commit)'))
