"""MFMP of the official code: token cross-attention, flare masks, flare heads (reference Sec. 1.2).

On the patch tokens Z_R, Z_N `[B, n, D]` of the ViT streams (the CLS tokens are split off before
and re-attached after), two cross-attention modules give

    Z_hat_R = Z_R + Drop_0.5(W_o A(LN_b(LN_a(Z_R)), Z_N) + b_o)      (RGB <- NI)
    Z_hat_N = Z_N + Drop_0.5(W_o A(LN_b(LN_a(Z_N)), Z_R) + b_o)      (NI <- RGB)

  * the query is normalised twice (the code's PreNorm LayerNorm, then the attention's own), both
    eps 1e-5; keys and values come from the raw tokens of the other modality;
  * q, k, v: bias-free `D -> heads * dim_head` projections (16 x 768 = 12288 in the code), scale
    dim_head^-1/2; the output projection `heads * dim_head -> D` has a bias; dropout 0.5 acts on
    that output, not on the attention weights;
  * `split='official'` splits heads as the code does, a plain row-major reshape
    `[B, n, H * Dh] -> [B, H, n, Dh]` without a transpose. "Head" h then holds the Dh-wide chunks
    of the n / H consecutive tokens h * n / H .. (h + 1) * n / H - 1, so it is windowed attention
    over sub-vectors (half a grid row at 8 x 16, one row at 16 x 8). `split='standard'` is the
    usual multi-head split (`[B, n, H, Dh]` transposed to `[B, H, n, Dh]`);
  * both directions start from identical weights (the code deep-copies the first module): they
    are one `nn.vmap`-ed module whose parameters carry a leading axis of 2 (0 = RGB <- NI,
    1 = NI <- RGB), initialised with one shared rng;
  * PyTorch default initialisation (kernels and biases U(+-1/sqrt(fan_in)), LayerNorms 1 / 0);
  * the code's unused `Attention.to_out` projection is not created.

Masks (`estimate_mask`, the same switches as the ResNet path): M_S = 1[Z_hat_S > Delta] with the
relaxed or straight-through estimator so Delta learns; `bug_dead_threshold` gives the code's
1[Z_hat_S > 0] with no gradient. Masks are returned on the token grid `[B, gh, gw, D]` (row-major
tokens), the layout of the ResNet path's `[B, h, w, C]` maps, so FCE and the mask pictures are
shared. In training they come from the dropout-perturbed Z_hat, as in the code.

Flare heads (code `b_R_label`, `b_N_label`): a copy of the last ViT block + final LayerNorm on
[c_S; X_S], CLS output -> BatchNorm (no bias) -> bias-free Linear(D, 2), N(0, 0.001^2). X_S is
Z_hat_S as in the code (`model.flare_head_input='mask_logits'`), or M_S * Z_hat_S ('mask': the
head sees only the tokens the mask selects, so the flare loss reaches the mask and Delta).
With `fmi` off (no cross-modal interaction) Z_hat_S = Z_S: each mask from its own modality.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from facenet_jax import batches
from facenet_jax.models import initializers
from facenet_jax.models import mfmp
from facenet_jax.models import resnet
from facenet_jax.models import vit

SPLITS = ('official', 'standard')
LAYER_NORM_EPS = 1e-5  # torch nn.LayerNorm default, used by the code's cross-attention
DIRECTIONS = batches.FLARE_MODALITIES  # vmap index 0: RGB <- NI, 1: NI <- RGB


def split_heads(x: jax.Array, heads: int, split: str) -> jax.Array:
  """`[B, n, H * Dh] -> [B, H, n, Dh]`: 'official' plain reshape, 'standard' reshape + transpose."""
  b, n, inner = x.shape
  if split == 'official':
    return x.reshape(b, heads, n, inner // heads)
  return x.reshape(b, n, heads, inner // heads).transpose(0, 2, 1, 3)


def merge_heads(x: jax.Array, split: str) -> jax.Array:
  """Inverse of `split_heads`: `[B, H, n, Dh] -> [B, n, H * Dh]`."""
  b, h, n, dh = x.shape
  if split == 'official':
    return x.reshape(b, n, h * dh)
  return x.transpose(0, 2, 1, 3).reshape(b, n, h * dh)


class CrossAttention(nn.Module):
  """One direction: `x: [B, n, D]` attends to `context: [B, m, D]`; returns `[B, n, D]`."""
  heads: int = 16
  dim_head: int = 768
  split: str = 'official'
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, train: bool) -> jax.Array:
    if self.split not in SPLITS:
      raise ValueError(f'model.cross_attention_split={self.split!r} must be one of {SPLITS}')
    d = x.shape[-1]
    inner = self.heads * self.dim_head

    def dense(features, fan_in, name, use_bias):
      return nn.Dense(features, use_bias=use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=initializers.torch_uniform(fan_in),
                      bias_init=initializers.torch_uniform(fan_in),
                      name=name)

    def layer_norm(name):
      return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, param_dtype=jnp.float32,
                          name=name)

    query = layer_norm('norm_attn')(layer_norm('norm_pre')(x))  # two LNs on the query only
    context = context.astype(self.dtype)
    q = split_heads(dense(inner, d, 'to_q', False)(query), self.heads, self.split)
    k = split_heads(dense(inner, d, 'to_k', False)(context), self.heads, self.split)
    v = split_heads(dense(inner, d, 'to_v', False)(context), self.heads, self.split)
    logits = jnp.einsum('bhqd,bhkd->bhqk', q, k) * self.dim_head ** -0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = merge_heads(jnp.einsum('bhqk,bhkd->bhqd', weights, v), self.split)
    out = dense(d, inner, 'out', True)(out)
    out = nn.Dropout(self.dropout, deterministic=not train)(out)
    return x.astype(self.dtype) + out


# Two directions, one module: parameters stacked on axis 0 and initialised with the SAME rng
# (split_rngs params=False) -> identical starting weights, as the code's deepcopy. Dropout rngs
# are split so the two directions draw independent masks.
MutualCrossAttention = nn.vmap(
    CrossAttention, in_axes=(0, 0, None), out_axes=0,
    variable_axes={'params': 0}, split_rngs={'params': False, 'dropout': True})


class FlareTokenHead(nn.Module):
  """Flare classifier: TokenHead on `[B, 1 + n, D]` -> BN (no bias) -> Linear(D, 2) -> `[B, 2]`.

  The Linear has a bias when `use_bias` (`model.flare_head_bias`, so the flare prior can be
  learned); the official code's is bias-free.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool) -> jax.Array:
    h = vit.TokenHead(self.num_heads, self.mlp_ratio, self.drop_path, self.dtype,
                      name='token_head')(tokens, train)
    h = resnet.batch_norm(train, self.dtype, 'bn', use_bias=False)(h)
    logits = nn.Dense(2, use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.normal(0.001), name='classifier')(h)
    return logits.astype(jnp.float32)


class TokenMFMP(nn.Module):
  """Cross-attention + masks + flare heads on ViT tokens (see the module docstring).

  cls: {'rgb', 'ni'}: [B, 1, D]; patches: {'rgb', 'ni'}: [B, gh, gw, D] (row-major token grid).
  Returns
    'mask_logits':  {'rgb', 'ni'}: [B, gh, gw, D] float32, Z_hat_S (what Delta thresholds);
    'masks':        {'rgb', 'ni'}: [B, gh, gw, D] float32, M_S used by FCE;
    'flare_logits': {'rgb', 'ni'}: [B, 2] float32;
    'threshold':    scalar float32 Delta (a parameter initialised to 0).
  """
  num_heads: int
  mlp_ratio: float = 4.0
  head_drop_path: float = 0.0
  fmi: bool = True
  cross_attention_heads: int = 16
  cross_attention_dim_head: int = 768
  cross_attention_split: str = 'official'
  cross_attention_dropout: float = 0.5
  mask_estimator: str = 'sigmoid'
  mask_temperature: float = 1.0
  flare_head_input: str = 'mask'
  dead_threshold: bool = False
  flare_head_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cls: dict[str, jax.Array], patches: dict[str, jax.Array],
               train: bool) -> dict[str, Any]:
    b, gh, gw, d = patches['rgb'].shape
    flat = {s: patches[s].reshape(b, gh * gw, d) for s in DIRECTIONS}
    if self.fmi:
      queries = jnp.stack([flat['rgb'], flat['ni']]).astype(self.dtype)   # [2, B, n, D]
      contexts = jnp.stack([flat['ni'], flat['rgb']]).astype(self.dtype)
      attended = MutualCrossAttention(
          self.cross_attention_heads, self.cross_attention_dim_head, self.cross_attention_split,
          self.cross_attention_dropout, self.dtype, name='cross_attention')(
              queries, contexts, train)
      hat = {'rgb': attended[0], 'ni': attended[1]}
    else:
      hat = flat  # no interaction: each mask from its own modality's tokens
    threshold = self.param('threshold', nn.initializers.zeros, (), jnp.float32)
    out = {'mask_logits': {}, 'masks': {}, 'flare_logits': {}, 'threshold': threshold}
    for s in DIRECTIONS:
      z_hat = hat[s].astype(jnp.float32)
      mask = mfmp.estimate_mask(z_hat, threshold, self.mask_estimator, self.mask_temperature,
                                   self.dead_threshold)
      head_tokens = z_hat if self.flare_head_input == 'mask_logits' else mask * z_hat
      head_in = jnp.concatenate([cls[s].astype(jnp.float32), head_tokens], axis=1)
      out['flare_logits'][s] = FlareTokenHead(
          self.num_heads, self.mlp_ratio, self.head_drop_path, self.flare_head_bias, self.dtype,
          name=f'flare_head_{s}')(head_in.astype(self.dtype), train)
      out['mask_logits'][s] = z_hat.reshape(b, gh, gw, d)
      out['masks'][s] = mask.reshape(b, gh, gw, d)
    return out
