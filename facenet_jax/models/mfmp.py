"""MFMP (FMI + SMP) and FCE, paper Sec. 3.2-3.3 (Eqs. 2-7), on NHWC feature maps `[B, h, w, C]`.

Where the paper is silent or its notation is circular (Eqs. 4 and 6 use the output on both sides),
the choice made here is stated below and next to the code:

  * FMI conv stack (Eq. 3): kernels 3x3 -> 1x1 -> 3x3 -> 3x3 (Eq. 3 read inside-out; the prose
    order differs), widths 2C -> hC -> hC -> hC -> C with h = `model.fmi_hidden_ratio`, each conv
    followed by BatchNorm and ReLU (the paper only says "maintaining non-linear"; BN + ReLU keeps
    f_C' on the same footing as the post-ReLU backbone maps it is combined with).
  * Channel attention (Eq. 4): SE style, f_att = sigmoid(conv1x1(relu(conv1x1(AAP(f_C'))))) with
    global AAP and a bottleneck of `model.fmi_attention_ratio` * C; Eq. 4 is read as
    f_C = f_att * f_C' + f_C'.
  * M_com (Eq. 5, not specified): per modality S, two bias-free 1x1 convs project the common
    feature f_C and the modality feature f_S; M_com is their element-wise (per position, per
    channel) similarity, matching the stated B x C x HW shape of the affine matrix.
    Eq. 5: A = M_com * f_S + f_S. `model.mask_similarity` says which similarity:
      'sigmoid'  M_com = sigmoid(q * k) in (0, 1) (default). Then FMI can at most double f_S^2:
                 the masks are nearly those of f_S alone whatever FMI computes (tests/test_mfmp.py:
                 a few % of mask cells change between two unrelated common features).
      'signed'   M_com = 2 tanh(q * k) in (-2, 2). Then m_S = f_S^2 (1 + M_com) + f_S: where the
                 interaction says so (tanh(q k) < -1/2) the squared term flips sign, so FMI can
                 switch the mask on or off at any active position (the same test: over 10% of
                 cells). Not the default yet: training with it is numerically touchy (the grad
                 norm after 3 steps differed by 0.6-1.2% between 1 and 4 devices or 2 processes,
                 against < 0.1% with 'sigmoid'); the synthetic study is to decide.
  * Eq. 6 (circular) is read as m_S = f_S * A + f_S. Because f_S is post-ReLU, m_S >= 0, so a
    threshold Delta = 0 would flag every active position; m_S is therefore standardised per channel
    by a BatchNorm without scale or bias before thresholding (Delta = 0 then splits each channel at
    its mean, much like the official sign pattern, and Delta moves that split).
  * SMP mask (Sec. 3.2 "adaptive threshold Delta, initialised to zero"): one scalar Delta shared by
    RGB and NI. `model.mask_estimator` decides how Delta gets a gradient:
      'sigmoid':          M = sigmoid((m - Delta) / T)
      'straight_through': forward 1[m > Delta], backward the gradient of the sigmoid above.
    `model.bug_dead_threshold` reproduces the official 1[m > 0] with no gradient to anything.
  * SMP flare classifier (Eq. 1, input not specified): GAP over space of the mask M_S
    (`model.flare_head_input='mask'`, so L_f supervises the mask itself and Delta) or of the
    pre-threshold map m_S ('mask_logits', like the official label heads that read the feature the
    mask thresholds), then a BNNeck-style BatchNorm (no bias) and a 2-way Dense, N(0, 0.001^2).
    `model.flare_head_bias` (default on) gives that Dense a bias so the classifier can learn the
    flare prior (most images are clean); off is the official label heads' bias-free layer.
  * fmi off (Table 2 "MFMP w/o FMI"): no concatenation, conv stack or attention; each modality's
    mask is predicted from that modality alone (f_S plays the role of f_C in Eqs. 5-6).
  * FCE (Eq. 7) on flare-free samples returns the sample's own feature unchanged (journal figure,
    delta = 0 keeps f_R / f_N). `model.fce_gate='all'` is a control, not the paper: every sample
    is enhanced whatever its label, which separates the effect of the replacement from the effect
    of gating it by the pseudo-label.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from facenet_jax import batches
from facenet_jax.models import resnet

MASK_ESTIMATORS = ('sigmoid', 'straight_through')
MASK_SIMILARITIES = ('signed', 'sigmoid')
FLARE_HEAD_INPUTS = ('mask', 'mask_logits')
# Which samples FCE enhances (`model.fce_gate`): 'label' each sample's own pseudo-label bit
# (Sec. 3.3), 'all' every sample (control).
FCE_GATES = ('label', 'all')
MODALITIES = batches.FLARE_MODALITIES


def _conv(features: int, kernel: int, dtype: Any, name: str, use_bias: bool = False) -> nn.Conv:
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=resnet.conv_kernel_init,
                 name=name)


def hidden_width(channels: int, ratio: float) -> int:
  """Width of an FMI hidden layer: round(ratio * channels), at least 1."""
  return max(1, int(round(channels * ratio)))


class FMIConvStack(nn.Module):
  """Eq. 3: `f_C: [B, h, w, 2C] -> f_C': [B, h, w, C]`, kernels 3x3, 1x1, 3x3, 3x3 (inside-out).

  Widths 2C -> hidden -> hidden -> hidden -> C; every conv is followed by BatchNorm and ReLU.
  """
  features: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x.astype(self.dtype)
    plan = ((self.hidden, 3), (self.hidden, 1), (self.hidden, 3), (self.features, 3))
    for i, (width, kernel) in enumerate(plan):
      # TorchConv: same parameters as nn.Conv, fast on the small layer-4 maps and on XLA:CPU.
      x = resnet.TorchConv(width, kernel, 1, self.dtype, name=f'conv{i}')(x)
      x = nn.relu(resnet.batch_norm(train, self.dtype, f'bn{i}')(x))
    return x


class ChannelAttention(nn.Module):
  """Eq. 4's f_att: sigmoid(conv1x1(relu(conv1x1(AAP(x))))). `[B, h, w, C] -> [B, 1, 1, C]`.

  AAP is global average pooling (SE-Net style); the 1x1 convs have biases; bottleneck `hidden`.
  """
  features: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    a = _conv(self.hidden, 1, self.dtype, 'reduce', use_bias=True)(pooled)
    a = _conv(self.features, 1, self.dtype, 'expand', use_bias=True)(nn.relu(a))
    return nn.sigmoid(a)


class FMI(nn.Module):
  """Flare-susceptible Mutual Interaction, Eqs. 2-4. `f_R, f_N: [B,h,w,C] -> f_C: [B,h,w,C]`."""
  features: int
  hidden_ratio: float
  attention_ratio: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f_r: jax.Array, f_n: jax.Array, train: bool) -> jax.Array:
    x = jnp.concatenate([f_r, f_n], axis=-1)  # Eq. 2: [B, h, w, 2C]
    common = FMIConvStack(self.features, hidden_width(self.features, self.hidden_ratio),
                          self.dtype, name='conv_stack')(x, train)  # Eq. 3: f_C'
    f_att = ChannelAttention(self.features, hidden_width(self.features, self.attention_ratio),
                             self.dtype, name='attention')(common)
    return f_att * common + common  # Eq. 4 read as f_C = f_att * f_C' + f_C'


class MaskLogits(nn.Module):
  """Per-modality mask map before thresholding, Eqs. 5-6. `f_C, f_S: [B,h,w,C] -> m_S: [B,h,w,C]`.

  Returns float32: the standardised map m_S that Delta thresholds (see module docstring);
  `similarity` is `model.mask_similarity`.
  """
  features: int
  similarity: str = 'sigmoid'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, common: jax.Array, f_s: jax.Array, train: bool) -> jax.Array:
    f_s = f_s.astype(self.dtype)
    q = _conv(self.features, 1, self.dtype, 'proj_common')(common.astype(self.dtype))
    k = _conv(self.features, 1, self.dtype, 'proj_modality')(f_s)
    # M_com: per-position, per-channel similarity of the common and the modality feature.
    m_com = nn.sigmoid(q * k) if self.similarity == 'sigmoid' else 2.0 * jnp.tanh(q * k)
    affine = m_com * f_s + f_s                     # Eq. 5: Mtrx_A = M_com * f_S + f_S
    m = f_s * affine + f_s                         # Eq. 6 (read as M_S = f_S * Mtrx_A + f_S)
    # Standardise per channel (no learned scale/shift: Delta is the only learned offset).
    m = resnet.batch_norm(train, jnp.float32, 'standardize', use_bias=False, use_scale=False)(
        m.astype(jnp.float32))
    return m


def estimate_mask(mask_logits: jax.Array, threshold: jax.Array, estimator: str,
                  temperature: float, dead_threshold: bool) -> jax.Array:
  """SMP: the flare mask from `mask_logits: [B, h, w, C]` and the scalar Delta. Float32 in [0, 1].

  'sigmoid':          sigmoid((m - Delta) / T)                 (soft; Delta gets a gradient)
  'straight_through': 1[m > Delta] forward, sigmoid gradient    (hard; Delta gets a gradient)
  dead_threshold:     1[m > 0], no gradient at all              (official: `bug_dead_threshold`)
  """
  if estimator not in MASK_ESTIMATORS:
    raise ValueError(f'model.mask_estimator={estimator!r} must be one of {MASK_ESTIMATORS}')
  if dead_threshold:
    return jax.lax.stop_gradient((mask_logits > 0).astype(jnp.float32))
  soft = nn.sigmoid((mask_logits - threshold) / temperature)
  if estimator == 'sigmoid':
    return soft
  hard = (mask_logits > threshold).astype(jnp.float32)
  return soft + jax.lax.stop_gradient(hard - soft)


class FlareHead(nn.Module):
  """SMP flare classifier (Eq. 1's y_hat). `[B, h, w, C] -> [B, 2]` float32 logits (1 = flared)."""
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # GAP: [B, C]
    pooled = resnet.batch_norm(train, self.dtype, 'bn', use_bias=False)(pooled)
    logits = nn.Dense(2, use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.normal(0.001), name='classifier')(pooled)
    return logits.astype(jnp.float32)


class MFMP(nn.Module):
  """Mutual Flare Mask Prediction (Sec. 3.2): FMI (Eqs. 2-4) + per-modality masks (Eqs. 5-6) + SMP.

  `f_R, f_N: [B, h, w, C]` -> dict with
    'mask_logits': {'rgb', 'ni'}: [B, h, w, C] float32, the maps m_S that Delta thresholds;
    'masks':       {'rgb', 'ni'}: [B, h, w, C] float32, the masks M_S used by FCE;
    'flare_logits': {'rgb', 'ni'}: [B, 2] float32, the SMP flare classifier outputs;
    'threshold':   scalar float32 Delta (a parameter initialised to 0).
  """
  features: int
  fmi: bool = True
  hidden_ratio: float = 0.25
  attention_ratio: float = 0.0625
  mask_estimator: str = 'sigmoid'
  mask_temperature: float = 1.0
  flare_head_input: str = 'mask'
  dead_threshold: bool = False
  mask_similarity: str = 'sigmoid'
  flare_head_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f_r: jax.Array, f_n: jax.Array, train: bool) -> dict[str, Any]:
    feats = {'rgb': f_r, 'ni': f_n}
    if self.fmi:
      common = FMI(self.features, self.hidden_ratio, self.attention_ratio, self.dtype,
                   name='fmi')(f_r, f_n, train)
      commons = {'rgb': common, 'ni': common}
    else:
      commons = feats  # SMP without interaction: each mask from its own modality.
    threshold = self.param('threshold', nn.initializers.zeros, (), jnp.float32)
    out = {'mask_logits': {}, 'masks': {}, 'flare_logits': {}, 'threshold': threshold}
    for s in MODALITIES:
      m = MaskLogits(self.features, self.mask_similarity, self.dtype, name=f'mask_{s}')(
          commons[s], feats[s], train)
      mask = estimate_mask(m, threshold, self.mask_estimator, self.mask_temperature,
                           self.dead_threshold)
      head_input = mask if self.flare_head_input == 'mask' else m
      out['mask_logits'][s] = m
      out['masks'][s] = mask
      out['flare_logits'][s] = FlareHead(self.flare_head_bias, self.dtype,
                                         name=f'flare_head_{s}')(head_input, train)
    return out


def fce_gates(flare: jax.Array, batch_level: bool,
              gate: str = 'label') -> tuple[jax.Array, jax.Array]:
  """Which samples FCE enhances. `flare: [B, 2]` int (col 0 RGB, col 1 NI) -> two bool `[B]`.

  gate='label' (paper Sec. 3.3): RGB uses its own bit, NI its own. `batch_level` reproduces the
  official gate (`model.bug_batch_level_gating`): every sample of both modalities is enhanced as
  soon as any bit in the batch is set. gate='all' (`model.fce_gate`, a control): every sample of
  both modalities is enhanced, whatever the labels (so `batch_level` changes nothing).
  """
  if gate not in FCE_GATES:
    raise ValueError(f'model.fce_gate={gate!r} must be one of {FCE_GATES}')
  flare = flare.astype(bool)
  if gate == 'all':
    everyone = jnp.ones(flare.shape[:1], bool)
    return everyone, everyone
  if batch_level:
    gate = jnp.broadcast_to(jnp.any(flare), flare.shape[:1])
    return gate, gate
  return flare[:, 0], flare[:, 1]


def flare_aware_enhancement(f_s: jax.Array, f_t: jax.Array, mask: jax.Array,
                            remain_mask: jax.Array, gate: jax.Array) -> jax.Array:
  """FCE, Eq. 7: `f_T * M_S + f_S * (1 - M_S)` where `gate` is set, else `f_S` unchanged.

  f_s, f_t: [B, h, w, C]; mask, remain_mask: [B, h, w, C] in [0, 1] (remain_mask is M_S, or M_N
  for RGB under `model.bug_rgb_uses_ni_mask`); gate: bool [B]. Returns [B, h, w, C] in f_s's dtype.
  """
  mask = mask.astype(f_s.dtype)
  remain_mask = remain_mask.astype(f_s.dtype)
  enhanced = f_t.astype(f_s.dtype) * mask + f_s * (1 - remain_mask)
  return jnp.where(gate[:, None, None, None], enhanced, f_s)


def enhance_streams(features: dict[str, jax.Array], masks: dict[str, jax.Array], flare: jax.Array,
                    rgb_uses_ni_mask: bool, batch_level_gating: bool,
                    gate: str = 'label') -> dict[str, jax.Array]:
  """FCE (Eq. 7) on both flare-susceptible streams; TI passes through as the condition.

  features: {'rgb','ni','ti'}: [B, h, w, C] (ResNet maps or ViT token grids); masks:
  {'rgb','ni'}: [B, h, w, C]; flare: [B, 2] pseudo-label bits. `rgb_uses_ni_mask` and
  `batch_level_gating` reproduce the official code's bugs (`model.bug_*`); `gate` is
  `model.fce_gate` (see `fce_gates`).
  """
  gate_rgb, gate_ni = fce_gates(flare, batch_level_gating, gate)
  # Official code (bug): RGB keeps f_R * (1 - M_N) instead of f_R * (1 - M_R).
  rgb_remain = masks['ni'] if rgb_uses_ni_mask else masks['rgb']
  return {
      'rgb': flare_aware_enhancement(features['rgb'], features['ti'], masks['rgb'], rgb_remain,
                                     gate_rgb),
      'ni': flare_aware_enhancement(features['ni'], features['ti'], masks['ni'], masks['ni'],
                                    gate_ni),
      'ti': features['ti'],
  }
