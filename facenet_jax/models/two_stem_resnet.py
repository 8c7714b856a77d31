"""The cross-modality backbone: modality-specific ResNet stems, shared stages, optional non-local.

The AGW family (AGW, DEEN, DNDM, FSC-Net) builds on one routing pattern (reference §1.1, §6.2):

    modality 0 image -> stem_0 ┐
                               ├-> joint batch -> layer1 .. layer4 (shared) -> [B, h, w, C]
    modality 1 image -> stem_1 ┘

`stem_m` is torchvision's conv1 / bn1 / relu / maxpool; the stages are its layer1..4 (last stride 1
for re-id). In training the two stems see only their own images and the shared stages see the
joint batch, so every shared BatchNorm normalises with statistics over both modalities, exactly
as the official code concatenates the stem outputs. Rows are routed by the per-row `modality`
input, never by position: a training batch must hold as many modality-0 as modality-1 rows (the
two-pool sampler guarantees it), which is the only layout assumption. In evaluation (running
statistics) each row simply goes through its own stem.

Non-local blocks (AGW, `nonlocal_blocks=True`): after blocks 2 and 3 (0-based) of layer2 and
blocks 3, 4 and 5 of layer3 of ResNet-50 (the last `NONLOCAL_COUNTS[stage]` blocks of a stage).
Each block is z = x + BN(W y), y = (1/N) theta(x) phi(x)^T g(x) over the N = h w positions, with
1x1 convolutions g, theta, phi: C -> C', W: C' -> C, and BN's scale and bias starting at zero (the
block starts as the identity). The paper's (and the non-local literature's) C' is C / 2; the
official AGW code computes `reduc_ratio // reduc_ratio` = 1, i.e. C' = 1, a one-channel attention.
That bug is reproduced only with `bug_nonlocal_one_channel=True` (the published AGW numbers were
obtained with it).

Parameter names follow the ResNet module (`stem_0`, `stem_1`, `layer1`..`layer4`/`block_j`), so
torchvision ImageNet weights load into both stems and the shared stages; the non-local blocks are
`layer{s}/nonlocal_{j}` (after block j).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from facenet_jax.models import initializers
from facenet_jax.models import resnet

# Non-local blocks per stage (AGW `non_layers = [0, 2, 3, 0]`), placed after the last blocks.
NONLOCAL_COUNTS = (0, 2, 3, 0)


def nonlocal_positions(num_blocks: int, count: int) -> tuple[int, ...]:
  """0-based blocks after which a non-local block follows: the last `count` of the stage (all of
  a shorter stage, e.g. ResNet-18's two-block layer3)."""
  return tuple(range(max(num_blocks - count, 0), num_blocks))


def gem_pool(x: jax.Array, p: float = 3.0, eps: float = 1e-12) -> jax.Array:
  """Generalised-mean pooling with a fixed p (AGW): `[B, h, w, C] -> [B, C]`, float32.

  (mean over positions of x^p + eps)^(1/p), eps inside the root as the official code. The input
  is post-ReLU (non-negative).
  """
  x = x.astype(jnp.float32)
  return (jnp.mean(x ** p, axis=(1, 2)) + eps) ** (1.0 / p)


class NonLocal(nn.Module):
  """Non-local block (module docstring). `[B, h, w, C] -> [B, h, w, C]`."""
  inter_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    b, h, w, c = x.shape
    # torch's default Conv2d init for g, theta, phi and W, as the official code leaves them.
    conv = lambda name, features, in_features: initializers.torch_conv(  # noqa: E731
        features, (1, 1), in_features, dtype=self.dtype, param_dtype=jnp.float32, name=name)
    n = h * w
    # Row-major flattening of (h, w) is the order of torch's NCHW `view(b, c, -1)`.
    g = conv('g', self.inter_channels, c)(x).reshape(b, n, self.inter_channels)
    theta = conv('theta', self.inter_channels, c)(x).reshape(b, n, self.inter_channels)
    phi = conv('phi', self.inter_channels, c)(x).reshape(b, n, self.inter_channels)
    affinity = jnp.einsum('bic,bjc->bij', theta, phi) / n          # [B, N, N], no softmax
    y = jnp.einsum('bij,bjc->bic', affinity, g).reshape(b, h, w, self.inter_channels)
    y = conv('w', c, self.inter_channels)(y)
    y = resnet.zero_init_batch_norm(train, self.dtype, 'w_bn')(y)
    return x + y


class NonLocalStage(nn.Module):
  """A ResNet stage (`resnet.Stage` parameter layout) with non-local blocks after `nonlocal_after`."""
  block: str
  features: int
  num_blocks: int
  stride: int
  nonlocal_after: tuple[int, ...] = ()
  one_channel: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    block_cls = resnet.BasicBlock if self.block == 'basic' else resnet.Bottleneck
    for i in range(self.num_blocks):
      x = block_cls(self.features, self.stride if i == 0 else 1, self.dtype,
                    name=f'block_{i}')(x, train)
      if i in self.nonlocal_after:
        inter = 1 if self.one_channel else max(x.shape[-1] // 2, 1)
        x = NonLocal(inter, self.dtype, name=f'nonlocal_{i}')(x, train)
    return x


def route_stems(x: jax.Array, modality: jax.Array, stems: Sequence[nn.Module],
                train: bool) -> jax.Array:
  """Each row through the stem of its modality: `[B, H, W, 3], [B] -> [B, h, w, C]`, row order kept.

  Training: the rows of each modality form one batch for their stem (BatchNorm statistics per
  modality, as the official separate stems); a batch must hold B/2 rows of each. Evaluation:
  every stem runs on every row and each row keeps its own stem's output (running statistics, so
  this is exact; the stem is a few percent of the network's cost).
  """
  if not train:
    outputs = [stem(x, train) for stem in stems]
    pick = modality.reshape(-1, 1, 1, 1)
    return jnp.where(pick == 0, outputs[0], outputs[1])
  half = x.shape[0] // 2
  order = jnp.argsort(modality, stable=True)               # modality-0 rows first
  y = jnp.concatenate([stems[0](x[order[:half]], train), stems[1](x[order[half:]], train)])
  inverse = jnp.argsort(order)
  return y[inverse]


class TwoStemResNet(nn.Module):
  """Stems per modality + shared stages. `(x [B, H, W, 3], modality [B] int) -> [B, h, w, C]`.

  With `return_stages` the outputs of layer1..layer4 come back as a tuple. Shapes as `ResNet`.
  """
  depth: int = 50
  last_stride: int = 1
  width_multiplier: float = 1.0
  nonlocal_blocks: bool = False
  bug_nonlocal_one_channel: bool = False
  dtype: Any = jnp.float32
  stem_pool: str = '3x3'            # `resnet.Stem.pool`: '3x3' torchvision | '2x2' (DNDM Eq. 3)

  def setup(self):
    resnet.check_depth(self.depth)
    resnet.check_width_multiplier(self.width_multiplier)
    block, counts = resnet.RESNET_SPECS[self.depth]
    widths = [resnet.scaled_width(w, self.width_multiplier) for w in resnet.STAGE_WIDTHS]
    stem_width = resnet.scaled_width(resnet.STEM_WIDTH, self.width_multiplier)
    self.stem_0 = resnet.Stem(self.dtype, stem_width, self.stem_pool)
    self.stem_1 = resnet.Stem(self.dtype, stem_width, self.stem_pool)
    strides = (1, 2, 2, self.last_stride)
    stages = []
    for s in range(4):
      after = nonlocal_positions(counts[s], NONLOCAL_COUNTS[s]) if self.nonlocal_blocks else ()
      stages.append(NonLocalStage(block, widths[s], counts[s], strides[s], after,
                                  self.bug_nonlocal_one_channel, self.dtype,
                                  name=f'layer{s + 1}'))
    self.stages = stages

  def forward_stem(self, x: jax.Array, modality: jax.Array, train: bool) -> jax.Array:
    """`[B, H, W, 3], [B] -> [B, H/4, W/4, 64 m]`: each row through its modality's stem."""
    return route_stems(x.astype(self.dtype), modality, (self.stem_0, self.stem_1), train)

  def forward_stage(self, index: int, x: jax.Array, train: bool) -> jax.Array:
    """Shared stage `index` (1..4, torchvision's `layer{index}`); plug-ins go between calls."""
    if not 1 <= index <= 4:
      raise ValueError(f'stage index {index!r} must be in 1..4')
    return self.stages[index - 1](x, train)

  def __call__(self, x: jax.Array, modality: jax.Array, train: bool = False,
               return_stages: bool = False):
    x = self.forward_stem(x, modality, train)
    outputs = []
    for index in range(1, 5):
      x = self.forward_stage(index, x, train)
      outputs.append(x)
    return tuple(outputs) if return_stages else x
