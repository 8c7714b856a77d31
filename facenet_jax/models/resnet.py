"""ResNet v1.5 backbone (depth 18/34/50/101) in flax.linen, numerically matching torchvision.

Layout (NHWC throughout):

    stem    7x7/2 conv (pad 3) -> BN -> ReLU -> 3x3/2 max-pool (pad 1)      [B, H/4, W/4, 64]
    layer1  blocks at stride 1                                               [B, H/4,  W/4,  64 e]
    layer2  first block stride 2                                             [B, H/8,  W/8,  128 e]
    layer3  first block stride 2                                             [B, H/16, W/16, 256 e]
    layer4  first block stride `last_stride` (re-id uses 1)                  [B, H/16, W/16, 512 e]

with e = 1 for basic blocks (depth 18/34) and e = 4 for bottlenecks (depth 50/101). A
`width_multiplier` m scales the stem's 64 and every stage width w to max(8, round(w m))
(`scaled_width`), for small studies; m = 1 is torchvision's network, the only one pretrained
weights fit.

torchvision details that are matched exactly (so converted ImageNet weights give the same
feature map, see `facenet_jax.pretrained` and tests/test_pretrained.py):
  * explicit symmetric padding (torch pads 3 / 1 on both sides; 'SAME' would pad (2, 3) for the
    stride-2 7x7 conv on even inputs);
  * the max-pool pads with -inf and sends its gradient to the first maximum of each window
    (`max_pool`);
  * v1.5: the bottleneck puts the stride on the 3x3 conv, not on the first 1x1;
  * the projection shortcut (1x1 conv with stride + BN) exists only when the stride or the width
    changes; BatchNorm eps 1e-5 and momentum 0.1 in torch terms (0.9 in flax terms).
  * BatchNorm in training as well (`facenet_jax.models.batch_norm`): batch statistics in float32
    with the two-pass variance, the running variance updated with the unbiased batch variance.
  What still differs from torch is float summation order (convolution algorithms, reductions).

The stages are separate submodules (`stem`, `layer1` .. `layer4`) with the methods
`forward_stem` / `forward_stage`, so `facenet.py` can run stages 1..L, plug MFMP/FCE in after stage
L (paper Table 4) and then run the remaining stages.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from facenet_jax.models import batch_norm as batch_norm_lib

# depth -> (block type, blocks per stage), as in torchvision.
RESNET_SPECS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
STEM_WIDTH = 64
MIN_WIDTH = 8  # narrowest scaled width (`width_multiplier`): no stage collapses to a few channels
EXPANSION = {'basic': 1, 'bottleneck': 4}

BN_MOMENTUM = batch_norm_lib.MOMENTUM  # 0.9 in flax terms: torch momentum 0.1
BN_EPSILON = batch_norm_lib.EPSILON

# torchvision initialises convs with kaiming_normal(mode='fan_out', nonlinearity='relu'); jax's
# variance_scaling 'normal' is the same untruncated normal.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def scaled_width(width: int, width_multiplier: float) -> int:
  """`width` channels scaled by `width_multiplier`, rounded, at least MIN_WIDTH."""
  return max(MIN_WIDTH, int(round(width * width_multiplier)))


def stage_channels(depth: int, width_multiplier: float = 1.0) -> tuple[int, int, int, int]:
  """Output channels of layer1..layer4 for a ResNet of this depth and width multiplier."""
  check_depth(depth)
  check_width_multiplier(width_multiplier)
  block, _ = RESNET_SPECS[depth]
  return tuple(scaled_width(w, width_multiplier) * EXPANSION[block] for w in STAGE_WIDTHS)


def check_depth(depth: int) -> None:
  if depth not in RESNET_SPECS:
    raise ValueError(
        f'model.depth={depth!r} is not a supported ResNet depth; choose one of '
        f'{sorted(RESNET_SPECS)}.')


def check_width_multiplier(width_multiplier: float) -> None:
  # `not > 0` also rejects NaN.
  if not width_multiplier > 0:
    raise ValueError(f'config.model.width_multiplier={width_multiplier!r} must be > 0 '
                     '(1 = the standard ResNet widths).')


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str,
          formulation: str = 'auto') -> 'TorchConv':
  return TorchConv(features, kernel, stride, dtype, formulation, name=name)


def _window_slices(padded: jax.Array, k: int, stride: int) -> list[jax.Array]:
  """The k*k strided views of an already padded `[B, H, W, C]` map, row-major over the window
  offsets: view (i, j)[b, y, x] = padded[b, stride y + i, stride x + j], each `[B, H', W', C]`
  with H' = (H - k) // stride + 1 (the output grid of a k x k / stride window)."""
  out_h = (padded.shape[1] - k) // stride + 1
  out_w = (padded.shape[2] - k) // stride + 1
  return [padded[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
          for i in range(k) for j in range(k)]


def _patches(x: jax.Array, k: int, stride: int, pad: int) -> jax.Array:
  """`[B, H, W, C] -> [B, H', W', k*k*C]`: each output position's k x k window (zero padding),
  ordered (row, column, channel) to match a `[k, k, C, D]` kernel reshaped to `[k*k*C, D]`."""
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return jnp.concatenate(_window_slices(padded, k, stride), axis=-1)


class TorchConv(nn.Module):
  """A bias-free k x k convolution with torch's symmetric padding and `nn.Conv`'s parameter tree.

  `[B, H, W, Cin] -> [B, H', W', features]`, H' = (H + 2 ((k - 1) // 2) - k) // stride + 1.
  The same `kernel` [k, k, Cin, features] (so converted weights load unchanged) is applied in the
  formulation that is fastest where it runs; all compute the same sums (in another order):
    * accelerators: `lax.conv_general_dilated` (cuDNN), except on maps smaller than the kernel;
    * XLA:CPU: 1x1 kernels as a matrix product, larger ones as patches @ kernel. XLA:CPU's own
      convolutions are slow to differentiate: forward + backward of a [8, 64, 32, 256] -> 64 1x1
      convolution took 216 ms as a convolution and 30 ms as a product, a 3x3 64 -> 64 one on
      [8, 64, 32, 64] 195 ms vs 119 ms as patches (2-core x86 VM, jax 0.10.2; torch's oneDNN:
      35 and 60 ms). The patches cost k*k times the input's memory while they are alive;
    * maps smaller than the kernel (layer3/4 at 4x2 for 64x32 inputs), any backend: patches. A
      padded convolution there ran ~40x slower on XLA:CPU (forward + backward of [32, 4, 2, 512]
      -> 512 channels: 1.77 s vs 0.04 s; a pre-padded input does not help, XLA folds the pad
      back into the convolution).
  The backend is read when the function is traced (`jax.default_backend()`). `formulation`
  overrides the choice on accelerators (`conv_formulation`'s `policy`).
  """
  features: int
  kernel: int
  stride: int = 1
  dtype: Any = jnp.float32
  formulation: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel
    kernel = self.param('kernel', conv_kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    how = conv_formulation(k, x.shape[1:3], jax.default_backend(), self.formulation)
    return torch_padded_conv(x, kernel, self.stride, how)


# `model.conv_formulation` (FACENet's streams): which form the convolutions take on accelerators.
#   'auto'        cuDNN convolutions (XLA:CPU: products, see `TorchConv`);
#   'matmul_1x1'  1x1 kernels as matrix products (cuBLAS / fused GEMMs), larger ones as 'auto';
#   'matmul'      every kernel as a product, k x k ones as patches @ kernel (k*k times the input's
#                 memory while the patches are alive).
# Why a choice: on an H200 the ResNet-50 step was bound by host launches, and XLA captures GEMMs
# and fusions in CUDA graphs but launches each cuDNN convolution on its own (BENCHMARKS.md, GPU
# profile); ResNet-50 has 36 1x1 convolutions of 53 per stream. Which form is fastest there is
# measured by `benchmarks/gpu.sh` (VARIANTS), not assumed. On XLA:CPU all three are the same.
CONV_FORMULATIONS = ('auto', 'matmul_1x1', 'matmul')


def check_conv_formulation(policy: str) -> None:
  if policy not in CONV_FORMULATIONS:
    raise ValueError(f'config.model.conv_formulation={policy!r} must be one of '
                     f'{CONV_FORMULATIONS}')


def conv_formulation(kernel_size: int, map_hw: tuple[int, int], backend: str,
                     policy: str = 'auto') -> str:
  """Which formulation `TorchConv` uses (its docstring says why): 'matmul' | 'patches' | 'conv'.

  `policy` is one of `CONV_FORMULATIONS`; it changes the choice on accelerators only.
  """
  check_conv_formulation(policy)
  if backend == 'cpu' or policy == 'matmul' or (policy == 'matmul_1x1' and kernel_size == 1):
    return 'matmul' if kernel_size == 1 else 'patches'
  return 'patches' if min(map_hw) < kernel_size else 'conv'


def torch_padded_conv(x: jax.Array, kernel: jax.Array, stride: int, how: str) -> jax.Array:
  """`[B, H, W, Cin]`, `[k, k, Cin, D]` -> `[B, H', W', D]`: torch's bias-free `Conv2d` with
  padding (k - 1) // 2, computed as `how` ('conv', 'patches', or 'matmul' for k = 1)."""
  k, features = kernel.shape[0], kernel.shape[-1]
  pad = (k - 1) // 2
  if how == 'matmul':
    if k != 1:
      raise ValueError(f"the 'matmul' formulation is for 1x1 kernels, got {k}x{k}")
    return x[:, ::stride, ::stride] @ kernel[0, 0]
  if how == 'patches':
    return _patches(x, k, stride, pad) @ kernel.reshape(-1, features)
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """torch's `MaxPool2d(window, stride, padding)`: `[B, H, W, C] -> [B, H', W', C]`, padding with
  -inf, H' = (H + 2 padding - window) // stride + 1.

  Written as a max over the window's `window**2` strided slices rather than `nn.max_pool`,
  because the latter's gradient is XLA's select-and-scatter, a scatter kernel that took 0.42 ms
  per stream and step on an H200 for the stem map of the 32x4 ResNet-50 batch ([128, 128, 64,
  64] bf16, ~5 % of the whole step with its forward window reduction); here forward and
  backward are elementwise passes that XLA fuses. The gradient goes to the first maximal element
  of each window in row-major order, as torch's and select-and-scatter's do (not split among
  ties as `jnp.maximum`'s would be: ties are common after ReLU and in bfloat16). A NaN in a
  window gives NaN, as in torch.
  """
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                constant_values=-jnp.inf)
  slices = _window_slices(x, window, stride)                          # each [B, H', W', C]
  best = slices[0]
  for s in slices[1:]:
    best = jnp.maximum(best, s)
  best = jax.lax.stop_gradient(best)
  out = jnp.zeros_like(best)
  taken = jnp.zeros(best.shape, bool)
  for s in slices:                  # route the value (and so the gradient) from the first max
    chosen = (s == best) & ~taken
    out = jnp.where(chosen, s, out)
    taken = taken | chosen
  return jnp.where(taken, out, best)  # no element equals a NaN maximum: keep the NaN


def batch_norm(train: bool, dtype: Any, name: str, **kwargs) -> batch_norm_lib.BatchNorm:
  """The library's one BatchNorm maker: torch's BatchNorm2d / 1d (momentum 0.1, eps 1e-5; batch
  statistics in float32 with the two-pass variance, the running variance updated unbiased; see
  `facenet_jax.models.batch_norm`), float32 parameters; `kwargs` go to the module (e.g.
  `use_bias=False`, initialisers)."""
  return batch_norm_lib.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                  epsilon=BN_EPSILON, dtype=dtype, param_dtype=jnp.float32,
                                  name=name, **kwargs)


def zero_init_batch_norm(train: bool, dtype: Any, name: str) -> batch_norm_lib.BatchNorm:
  """`batch_norm` with scale and bias starting at zero: a residual branch ending in it starts as
  the identity (non-local blocks)."""
  return batch_norm(train, dtype, name, scale_init=nn.initializers.zeros,
                    bias_init=nn.initializers.zeros)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34). `[B, H, W, Cin] -> [B, H/s, W/s, features]`."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  conv_formulation: str = 'auto'   # see CONV_FORMULATIONS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = _conv(self.features, 3, self.stride, self.dtype, 'conv1', self.conv_formulation)(x)
    y = nn.relu(batch_norm(train, self.dtype, 'bn1')(y))
    y = _conv(self.features, 3, 1, self.dtype, 'conv2', self.conv_formulation)(y)
    y = batch_norm(train, self.dtype, 'bn2')(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, self.stride, self.dtype, 'downsample_conv',
                       self.conv_formulation)(x)
      shortcut = batch_norm(train, self.dtype, 'downsample_bn')(shortcut)
    return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride here: v1.5) -> 1x1 (x4). `[B, H, W, Cin] -> [B, H/s, W/s, 4 features]`."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  conv_formulation: str = 'auto'   # see CONV_FORMULATIONS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out_features = self.features * EXPANSION['bottleneck']
    y = _conv(self.features, 1, 1, self.dtype, 'conv1', self.conv_formulation)(x)
    y = nn.relu(batch_norm(train, self.dtype, 'bn1')(y))
    y = _conv(self.features, 3, self.stride, self.dtype, 'conv2', self.conv_formulation)(y)
    y = nn.relu(batch_norm(train, self.dtype, 'bn2')(y))
    y = _conv(out_features, 1, 1, self.dtype, 'conv3', self.conv_formulation)(y)
    y = batch_norm(train, self.dtype, 'bn3')(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_features:
      shortcut = _conv(out_features, 1, self.stride, self.dtype, 'downsample_conv',
                       self.conv_formulation)(x)
      shortcut = batch_norm(train, self.dtype, 'downsample_bn')(shortcut)
    return nn.relu(y + shortcut)


STEM_POOLS = ('3x3', '2x2')


class Stem(nn.Module):
  """7x7/2 conv (pad 3), BN, ReLU, max-pool: 3x3/2 pad 1 (torchvision) or 2x2/2 (`pool='2x2'`,
  DNDM's Eq. 3; same output size for even inputs, no parameters, so weights load either way).

  `[B, H, W, 3] -> [B, H/4, W/4, features]` (features 64 in the standard ResNet).
  """
  dtype: Any = jnp.float32
  features: int = STEM_WIDTH
  pool: str = '3x3'
  conv_formulation: str = 'auto'   # see CONV_FORMULATIONS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = _conv(self.features, 7, 2, self.dtype, 'conv', self.conv_formulation)(
        x.astype(self.dtype))
    x = nn.relu(batch_norm(train, self.dtype, 'bn')(x))
    if self.pool == '2x2':
      return max_pool(x, 2, 2)
    return max_pool(x, 3, 2, padding=1)  # torch's MaxPool2d(3, 2, padding=1)


class Stage(nn.Module):
  """One ResNet stage (torchvision `layerN`): `num_blocks` blocks, the first with `stride`."""
  block: str
  features: int
  num_blocks: int
  stride: int
  dtype: Any = jnp.float32
  conv_formulation: str = 'auto'   # see CONV_FORMULATIONS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    block_cls = BasicBlock if self.block == 'basic' else Bottleneck
    for i in range(self.num_blocks):
      x = block_cls(self.features, self.stride if i == 0 else 1, self.dtype,
                    self.conv_formulation, name=f'block_{i}')(x, train)
    return x


class ResNet(nn.Module):
  """ResNet v1.5 feature extractor without the classifier.

  `ResNet(depth=50, last_stride=1).apply(variables, x, train=False)` with `x: [B, H, W, 3]` returns
  the layer4 map `[B, H/16, W/16, 2048]` (`[B, H/32, W/32, 2048]` with last_stride=2).
  Parameters are float32; convolutions and BatchNorm compute in `dtype`. `width_multiplier`
  scales the stem and every stage (`stage_channels` gives the output widths), e.g. 0.5 gives
  `[B, H/16, W/16, 1024]` for depth 50. `conv_formulation` (`CONV_FORMULATIONS`) picks how the
  convolutions are computed on accelerators; the parameters and the function are the same.
  """
  depth: int = 50
  last_stride: int = 1
  dtype: Any = jnp.float32
  width_multiplier: float = 1.0
  conv_formulation: str = 'auto'

  def setup(self):
    check_depth(self.depth)
    check_width_multiplier(self.width_multiplier)
    check_conv_formulation(self.conv_formulation)
    if self.last_stride not in (1, 2):
      raise ValueError(f'model.last_stride={self.last_stride!r} must be 1 or 2.')
    block, counts = RESNET_SPECS[self.depth]
    strides = (1, 2, 2, self.last_stride)
    widths = [scaled_width(w, self.width_multiplier) for w in STAGE_WIDTHS]
    self.stem = Stem(self.dtype, scaled_width(STEM_WIDTH, self.width_multiplier),
                     conv_formulation=self.conv_formulation)
    # Explicit attribute names keep the parameter tree readable: stem, layer1..layer4.
    stage = lambda i: Stage(block, widths[i], counts[i], strides[i], self.dtype,  # noqa: E731
                            self.conv_formulation)
    self.layer1 = stage(0)
    self.layer2 = stage(1)
    self.layer3 = stage(2)
    self.layer4 = stage(3)

  def forward_stem(self, x: jax.Array, train: bool) -> jax.Array:
    """`[B, H, W, 3] -> [B, H/4, W/4, 64 m]` (m the width multiplier, see `scaled_width`)."""
    return self.stem(x, train)

  def forward_stage(self, index: int, x: jax.Array, train: bool) -> jax.Array:
    """Runs stage `index` (1..4, torchvision's `layer{index}`) on the previous stage's output."""
    stages = (self.layer1, self.layer2, self.layer3, self.layer4)
    if not 1 <= index <= 4:
      raise ValueError(f'stage index {index!r} must be in 1..4')
    return stages[index - 1](x, train)

  def __call__(self, x: jax.Array, train: bool = False,
               return_stages: bool = False) -> jax.Array | Sequence[jax.Array]:
    """`[B, H, W, 3]` -> the layer4 map, or the outputs of layer1..layer4 if `return_stages`."""
    x = self.forward_stem(x, train)
    outputs = []
    for index in range(1, 5):
      x = self.forward_stage(index, x, train)
      outputs.append(x)
    return tuple(outputs) if return_stages else x
