"""DEEN: diverse embedding expansion (Zhang & Wang, CVPR 2023), the AGW-family skeleton FSC-Net uses.

    image, modality -> stems (per modality) -> layer1 -> MFA1 -> layer2 -> MFA2 -> layer3 -> MFA3
    -> DEE (batch x 3: [x; v1; v2]) -> layer4 -> GAP -> f [3B, C] -> BNNeck -> b -> classifier

(RegDB, `dee_after_stage=2`: DEE right after MFA2, then layer3, no MFA3 and no layer4; C = 1024.)
As the official code (reference §4.2; FSC-Net's first commit minus its three modules):

* MFA block = CNL then PNL, both ending in BN with zero scale and bias (identity at init).
  CNL (channel non-local): E = theta(x_h) phi(x_l)^T / C_l over channels, y = E g(x_l), z = x_h +
  BN(W y) (phi and W with stride 2 when the low-level map is twice as large). PNL (position
  non-local, r = 2) with the official code's row-major views of [C/2, N] tensors as [C, N/2]:
  reproduced exactly by flattening in NCHW order (`_nchw_view`).
* DEE: two branches b, each u_b = mean of three 3x3 convs (dilation 1, 2, 3; C -> C/4, no bias),
  v_b = conv1x1(C/4 -> C)(ReLU(u_b)); output concat_batch(x, v1, v2), dropout 0.01; in training
  and at test time.
* Training outputs: 'features' {'pool': f [3B, C]}, 'logits' {'pool': [3B, classes]} (rows:
  original, branch 1, branch 2, each in input order) and 'orthogonality' = sum_i <f_b1,i, f_b2,i>
  / 3B (non-negative: f follows ReLU). The loss bundle tiles the labels three times.
* Test embedding [B, 6C]: the L2-normalised pool and BN features of the three rows of each image,
  concatenated; its dot product is the official sum of the six cosine similarities, so the
  cosine / normalised-Euclidean ranking equals the official ranking (without the test-time flip).

Loss (`deen_loss_bundle`): CE over the 3B rows + triplet (`loss.triplet_kind`, batch-hard margin
0.3, un-normalised in DEEN; FSC-Net normalises) + cpm_weight x [CPM(orig, b1) + CPM(orig, b2)]
(`losses.cpm_loss`, margin 0.2) + ort_weight x orthogonality.

Initialisation, as the official `DEEN/model.py` (`tests/test_initializers.py`): the MFA blocks'
1x1 convolutions at torch's Conv2d default and their W BatchNorm at zero; DEE's dilated and
expansion kernels N(0, 2 / fan_in) (`weights_init_kaiming`, which leaves the expansion's bias at
torch's default); the BNNeck scale N(1, 0.01); the classifier N(0, 0.001). Gradients and
optimiser steps are not compared against the official code here.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from facenet_jax import batches
from facenet_jax import losses
from facenet_jax.linalg import l2_normalize
from facenet_jax.models import agw
from facenet_jax.models import facenet
from facenet_jax.models import heads
from facenet_jax.models import initializers
from facenet_jax.models import registry
from facenet_jax.models import resnet
from facenet_jax.models import two_stem_resnet

_check_choice = facenet._check_choice  # pylint: disable=protected-access
BRANCH = 'pool'


def _nchw_view(x: jax.Array, rows: int) -> jax.Array:
  """`[B, H, W, C]` -> torch's `x.view(B, rows, -1)` of the NCHW tensor: `[B, rows, C H W / rows]`."""
  b = x.shape[0]
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(b, rows, -1)


def _from_nchw(y: jax.Array, channels: int, h: int, w: int) -> jax.Array:
  """torch's `y.view(B, channels, h, w)` of a [B, ...] tensor, returned as NHWC."""
  return jnp.transpose(y.reshape(y.shape[0], channels, h, w), (0, 2, 3, 1))


def _conv1x1(features: int, in_features: int, dtype, name: str, stride: int = 1) -> nn.Conv:
  """The MFA blocks' 1x1 convolutions, with torch's default init as in the official code."""
  return initializers.torch_conv(features, (1, 1), in_features, strides=(stride, stride),
                                 padding='VALID', dtype=dtype, param_dtype=jnp.float32, name=name)


class CNL(nn.Module):
  """Channel non-local: `(x_h [B, Hh, Wh, Ch], x_l [B, Hl, Wl, Cl]) -> [B, Hh, Wh, Ch]`."""
  high_dim: int
  low_dim: int
  downsample: bool = False     # the official flag 1: x_l is twice the size of x_h
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_h, x_l, train: bool):
    stride = 2 if self.downsample else 1
    _, hl, wl, _ = x_l.shape
    cl, ch = x_l.shape[-1], x_h.shape[-1]
    g = _nchw_view(_conv1x1(self.low_dim, cl, self.dtype, 'g')(x_l), self.low_dim)   # [B, Cl, Nl]
    theta = _nchw_view(_conv1x1(self.low_dim, ch, self.dtype, 'theta')(x_h), self.low_dim)
    phi = _nchw_view(_conv1x1(self.low_dim, cl, self.dtype, 'phi', stride)(x_l), self.low_dim)
    energy = jnp.einsum('bin,bjn->bij', theta, phi)                                 # [B, Cl, Cl]
    y = jnp.einsum('bij,bjn->bin', energy / energy.shape[-1], g)                    # [B, Cl, Nl]
    y = _from_nchw(y, self.low_dim, hl, wl)
    w_y = _conv1x1(self.high_dim, self.low_dim, self.dtype, 'w', stride)(y)
    return x_h + resnet.zero_init_batch_norm(train, self.dtype, 'w_bn')(w_y)


class PNL(nn.Module):
  """Position non-local (r = 2) with the official views: `(x_h, x_l) -> [B, Hh, Wh, Ch]`."""
  high_dim: int
  low_dim: int
  reduction: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_h, x_l, train: bool):
    _, hh, wh, _ = x_h.shape
    inter = self.low_dim // self.reduction
    cl, ch = x_l.shape[-1], x_h.shape[-1]
    g = _nchw_view(_conv1x1(inter, cl, self.dtype, 'g')(x_l), self.low_dim)        # [B, Cl, Nl/2]
    theta = _nchw_view(_conv1x1(inter, ch, self.dtype, 'theta')(x_h), self.low_dim)  # [B, Cl, Nh/2]
    phi = _nchw_view(_conv1x1(inter, cl, self.dtype, 'phi')(x_l), self.low_dim)    # [B, Cl, Nl/2]
    energy = jnp.einsum('bci,bcj->bij', theta, phi)                                 # [B, Nh/2, Nl/2]
    y = jnp.einsum('bij,bcj->bic', energy / energy.shape[-1], g)                    # [B, Nh/2, Cl]
    y = _from_nchw(jnp.transpose(y, (0, 2, 1)), inter, hh, wh)
    w_y = _conv1x1(self.high_dim, inter, self.dtype, 'w')(y)
    return x_h + resnet.zero_init_batch_norm(train, self.dtype, 'w_bn')(w_y)


class MFA(nn.Module):
  """Multi-feature aggregation: CNL then PNL of the stage output with the previous map."""
  high_dim: int
  low_dim: int
  downsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_h, x_l, train: bool):
    z = CNL(self.high_dim, self.low_dim, self.downsample, self.dtype, name='cnl')(x_h, x_l, train)
    return PNL(self.high_dim, self.low_dim, dtype=self.dtype, name='pnl')(z, x_l, train)


class DEEBranch(nn.Module):
  """One embedding-expansion branch: `[B, h, w, C] -> [B, h, w, C]` (module docstring).

  `refine(u, train)`, when given, maps the C/4-channel map u before the ReLU (FSC-Net's
  FSA -> GCA -> SPT, `fscnet.FSCRefinement`); DEEN has none.
  """
  dtype: Any = jnp.float32
  refine: Any = None    # a module factory: () -> nn.Module with __call__(u, train)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = x.shape[-1]
    u = sum(nn.Conv(c // 4, (3, 3), padding=((d, d), (d, d)), kernel_dilation=(d, d),
                    use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=initializers.KAIMING_NORMAL_FAN_IN, name=f'dilated_{d}')(x)
            for d in (1, 2, 3)) / 3.0
    if self.refine is not None:
      u = self.refine(name='refine')(u, train)
    # weights_init_kaiming sets a conv's kernel only: the bias keeps torch's default.
    return nn.Conv(c, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=initializers.KAIMING_NORMAL_FAN_IN,
                   bias_init=initializers.torch_uniform(c // 4), name='expand')(nn.relu(u))


class DEE(nn.Module):
  """`[B, h, w, C] -> [3B, h, w, C]`: the input, then branch 1's and branch 2's embeddings."""
  dropout: float = 0.01
  dtype: Any = jnp.float32
  refine: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = jnp.concatenate([x, DEEBranch(self.dtype, self.refine, name='branch_1')(x, train),
                           DEEBranch(self.dtype, self.refine, name='branch_2')(x, train)])
    return nn.Dropout(self.dropout, deterministic=not train)(out)


# The MFA blocks after stages 1..3 (high = stage output, low = previous map), ResNet-50 widths.
def _mfa_dims(depth: int, width_multiplier: float) -> tuple[tuple[int, int], ...]:
  stem = resnet.scaled_width(resnet.STEM_WIDTH, width_multiplier)
  stages = resnet.stage_channels(depth, width_multiplier)
  return ((stages[0], stem), (stages[1], stages[0]), (stages[2], stages[1]))


class DEEN(nn.Module):
  """See the module docstring. `apply(variables, image, modality, train, rngs={'dropout'})`."""
  num_classes: int
  depth: int = 50
  last_stride: int = 1
  width_multiplier: float = 1.0
  dtype: str = 'float32'
  dee_after_stage: int = 3          # 3: SYSU-MM01 / LLCM; 2: RegDB (no MFA3, no layer4)
  dee_dropout: float = 0.01

  def __post_init__(self):
    _check_choice(self.dtype, tuple(facenet.DTYPES), 'dtype')
    _check_choice(self.dee_after_stage, (2, 3), 'dee_after_stage')
    _check_choice(self.last_stride, (1, 2), 'last_stride')
    resnet.check_depth(self.depth)
    resnet.check_width_multiplier(self.width_multiplier)
    if not 0 <= self.dee_dropout < 1:
      raise ValueError(f'config.model.dee_dropout={self.dee_dropout!r} must be in [0, 1)')
    if self.num_classes < 1:
      raise ValueError(f'num_classes={self.num_classes!r} must be >= 1')
    super().__post_init__()

  def branch_refinement(self, dtype):
    """What runs inside each DEE branch on the C/4 map: nothing in DEEN (FSC-Net overrides)."""
    del dtype
    return None

  @nn.compact
  def __call__(self, image: jax.Array, modality: jax.Array, train: bool = False) -> dict[str, Any]:
    dtype = facenet.DTYPES[self.dtype]
    backbone = two_stem_resnet.TwoStemResNet(self.depth, self.last_stride, self.width_multiplier,
                                             dtype=dtype, name='backbone')
    dims = _mfa_dims(self.depth, self.width_multiplier)
    low = backbone.forward_stem(image, modality, train)
    for stage in range(1, self.dee_after_stage + 1):
      high = backbone.forward_stage(stage, low, train)
      low = MFA(*dims[stage - 1], downsample=stage > 1, dtype=dtype,
                name=f'mfa{stage}')(high, low, train)
    x = DEE(self.dee_dropout, dtype, self.branch_refinement(dtype), name='dee')(low, train)
    for stage in range(self.dee_after_stage + 1, 4 if self.dee_after_stage == 2 else 5):
      x = backbone.forward_stage(stage, x, train)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))                          # GAP [3B, C]
    head = {BRANCH: heads.BNNeckHead(self.num_classes, dtype, scale_init='torch_kaiming',
                                     name='head')}
    out = heads.branch_outputs({BRANCH: pooled}, head, 'before', train)
    b = image.shape[0]
    b1, b2 = pooled[b:2 * b], pooled[2 * b:]
    out['orthogonality'] = jnp.sum(b1 * b2) / pooled.shape[0]
    rows = [pooled[i * b:(i + 1) * b] for i in range(3)] + \
        [out['bn_features'][BRANCH][i * b:(i + 1) * b] for i in range(3)]
    out['embedding'] = jnp.concatenate([l2_normalize(r) for r in rows], axis=-1)
    return out


def deen_loss_bundle(outputs: Mapping[str, Any], batch: Mapping[str, jax.Array],
                     loss_config: ml_collections.ConfigDict
                     ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """'id', 'triplet' over the 3B rows, 'cpm' (orig vs each branch) and 'orthogonality'.

  batch['pid']: [B] labels, B = 2 N with the N modality-0 rows first and the N modality-1 rows of
  the same ids in the same order after them (the cross-modality stream's layout, which CPM's
  per-identity centres rely on, as the official code's chunking).
  """
  facenet.check_single_branch_loss(loss_config, 'DEEN')
  labels = batch['pid']
  tiled = jnp.concatenate([labels] * 3)
  terms, metrics = facenet.reid_terms(outputs, tiled, loss_config, (BRANCH,))
  f = outputs['features'][BRANCH]
  b = labels.shape[0]
  orig, br1, br2 = f[:b], f[b:2 * b], f[2 * b:]
  cpm = (losses.cpm_loss(jnp.concatenate([orig, br1]), jnp.concatenate([labels, labels]),
                         loss_config.cpm_margin) +
         losses.cpm_loss(jnp.concatenate([orig, br2]), jnp.concatenate([labels, labels]),
                         loss_config.cpm_margin))
  metrics['cpm'] = cpm
  metrics['orthogonality'] = outputs['orthogonality']
  terms['cpm'] = loss_config.cpm_weight * cpm
  terms['orthogonality'] = loss_config.ort_weight * outputs['orthogonality']
  return facenet.float32_terms(terms, metrics)


registry.register(registry.ModelSpec(
    name='deen', module=DEEN, loss_bundle=deen_loss_bundle, batch=batches.CROSS_MODAL_IMAGES,
    load_pretrained=agw.load_imagenet_backbone,
    description='DEEN: two-stem ResNet-50, MFA blocks, DEE (batch x3); CE + triplet + CPM + ort'))
