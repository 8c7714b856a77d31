"""ViT-B/16 streams and token heads of the official code's FACENet (reference Sec. 1.2).

The official code builds each stream from a TransReID ViT-B/16 (timm layout) and uses it as:

  * stream s: patch embedding (16 x 16, stride 16) + CLS token + position embedding, then blocks
    0..depth-2 only, with no final LayerNorm: all tokens `[B, 1 + n, D]` (`ViT`);
  * per-branch heads: a copy of the pretrained last block followed by a copy of the pretrained
    final LayerNorm, read at the CLS position (`TokenHead`).

Each stream's own last block, final norm and 1000-way `fc` are never used by the code, so `ViT`
does not create them: nothing in the parameter tree is unused (no `freeze` predicate is needed).

Numerics follow the code: exact (erf) GELU, LayerNorm eps 1e-6, qkv with bias, no dropout inside
blocks (drop_rate = attn_drop = 0), stochastic depth (drop path) with the linear schedule
rate_i = drop_path * i / (depth - 1) over blocks i = 0..depth-1; the head copies of the last block
keep its rate. Drop path draws from the 'dropout' rng. Patch tokens are flattened row-major
(row = H index), as torch's `flatten(2)` of a `[B, D, h, w]` map.

Variable names mirror timm's (`blocks.{i}.attn.qkv` -> `block_{i}/attn/qkv`), which keeps the
weight conversion in `facenet_jax.pretrained` a plain renaming.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LAYER_NORM_EPS = 1e-6
# timm `_init_weights`: Linear kernels truncated-normal(0.02), biases 0; also the CLS token and the
# position embedding. Pretrained weights overwrite all of it.
TRUNC_NORMAL = nn.initializers.truncated_normal(0.02)


def drop_path_rate(block: int, depth: int, drop_path: float) -> float:
  """Stochastic-depth rate of block `block` (0-based): linear from 0 to `drop_path` at depth-1."""
  return drop_path * block / max(depth - 1, 1)


def grid_size(image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
  """Patch grid (gh, gw) of an (H, W) image; raises when a side is not a multiple of the patch."""
  h, w = image_size
  if h % patch_size or w % patch_size:
    raise ValueError(f'config.data.image_size=({h}, {w}) must be a multiple of '
                     f'config.model.patch_size={patch_size} on both sides.')
  return h // patch_size, w // patch_size


class DropPath(nn.Module):
  """Stochastic depth per sample: `x / keep * Bernoulli(keep)` in training, identity otherwise."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def _dense(features: int, dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=TRUNC_NORMAL, name=name)


def _layer_norm(dtype: Any, name: str, eps: float = LAYER_NORM_EPS) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)


class SelfAttention(nn.Module):
  """timm `Attention`: fused qkv (with bias), softmax(q k^T / sqrt(d)) v, output projection.

  `[B, N, D] -> [B, N, D]`; the fused qkv columns are ordered (q|k|v, head, dim) as in timm.
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    head_dim = d // self.num_heads
    qkv = _dense(3 * d, self.dtype, 'qkv')(x).reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = (qkv[:, :, i] for i in range(3))                       # [B, N, H, Dh]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) * head_dim ** -0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, n, d)
    return _dense(d, self.dtype, 'proj')(out)


class Mlp(nn.Module):
  """fc1 (D -> hidden) -> exact GELU -> fc2 (hidden -> D); no dropout (drop_rate 0)."""
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    x = nn.gelu(_dense(self.hidden, self.dtype, 'fc1')(x), approximate=False)
    return _dense(d, self.dtype, 'fc2')(x)


class Block(nn.Module):
  """Pre-norm block: x + DP(attn(LN(x))), then x + DP(mlp(LN(x))). `[B, N, D] -> [B, N, D]`."""
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    d = x.shape[-1]
    y = SelfAttention(self.num_heads, self.dtype, name='attn')(_layer_norm(self.dtype, 'norm1')(x))
    x = x + DropPath(self.drop_path, name='drop_path_attn')(y, train)
    y = Mlp(int(d * self.mlp_ratio), self.dtype, name='mlp')(_layer_norm(self.dtype, 'norm2')(x))
    return x + DropPath(self.drop_path, name='drop_path_mlp')(y, train)


class PatchEmbed(nn.Module):
  """Non-overlapping p x p patches -> linear embedding. `[B, H, W, 3] -> [B, gh * gw, D]`.

  Same parameters and result as a p x p, stride-p convolution (kernel `[p, p, 3, D]`, bias), done
  as a reshape and one matmul, which XLA:CPU runs much faster than a strided convolution.
  Tokens are row-major over the (gh, gw) grid.
  """
  embed_dim: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    p = self.patch_size
    gh, gw = grid_size((h, w), p)
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (p, p, c, self.embed_dim),
                        jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.embed_dim,), jnp.float32)
    patches = x.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)  # [B, gh, gw, p, p, C]
    patches = patches.reshape(b, gh * gw, p * p * c).astype(self.dtype)
    out = patches @ kernel.reshape(p * p * c, self.embed_dim).astype(self.dtype)
    return out + bias.astype(self.dtype)


class ViT(nn.Module):
  """One stream: embeddings + blocks 0..depth-2. `[B, H, W, 3] -> [B, 1 + gh * gw, D]` (CLS first).

  The position embedding is created at this image size's grid (`[1, 1 + gh * gw, D]`); pretrained
  14 x 14 embeddings are resized to it when loaded (`facenet_jax.pretrained.resize_pos_embed`).
  Camera/view embeddings (SIE) are off in every official config and are not built.
  """
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  patch_size: int = 16
  drop_path: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    tokens = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, name='patch_embed')(x)
    b, n, d = tokens.shape
    cls = self.param('cls_token', TRUNC_NORMAL, (1, 1, d), jnp.float32)
    pos = self.param('pos_embed', TRUNC_NORMAL, (1, 1 + n, d), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(self.dtype), tokens], axis=1)
    x = x + pos.astype(self.dtype)
    for i in range(self.depth - 1):  # the code returns the tokens before the last block
      x = Block(self.num_heads, self.mlp_ratio,
                drop_path_rate(i, self.depth, self.drop_path), self.dtype,
                name=f'block_{i}')(x, train)
    return x


class TokenHead(nn.Module):
  """A copy of the last ViT block + final LayerNorm, read at CLS. `[B, 1 + n, D] -> [B, D]` f32."""
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = Block(self.num_heads, self.mlp_ratio, self.drop_path, self.dtype, name='block')(x, train)
    return _layer_norm(self.dtype, 'norm')(x)[:, 0].astype(jnp.float32)
