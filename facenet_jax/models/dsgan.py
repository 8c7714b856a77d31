"""TSME stage 1 (DSGAN): the style-transfer generator and the PatchGAN discriminator.

As the only available code defines them (`generatemodel.py`, reference §3.1); NHWC here.

Generator (grayscale visible <-> infrared, one network per direction):
  encoder  torchvision ResNet-50 with layer4's first block at stride 1 (the `resnet.ResNet`
           parameter layout, so ImageNet weights load): skips
           x1 = ReLU(BN(conv1(x)))  [B, H/2, W/2, 64]   (before the max-pool)
           x2 = layer1  [B, H/4, W/4, 256];  x3 = layer2  [B, H/8, W/8, 512]
           x4 = layer3  [B, H/16, W/16, 1024];  x5 = layer4  [B, H/16, W/16, 2048]
  decoder  stage k: two decoder bottlenecks (1x1 -> BN -> ReLU -> 3x3 -> BN -> ReLU -> 1x1 (x4)
           -> BN, + identity or a 1x1 + BN projection, ReLU), the second halving the width;
           then (except the first) ReLU(ConvTranspose 4x4 / 2, pad 1, no bias) and the skip:
             d1 = dec1(x5) + x4                          [H/16, 1024]
             d2 = ReLU(up(dec2(d1))) + x3                [H/8, 512]
             d3 = ReLU(up(dec3(d2))) + x2                [H/4, 256]
             d4 = ReLU(up(dec4(d3))) + x1 (up to 64 ch)  [H/2, 64]
             out = ConvTranspose(64 -> 3, 4x4 / 2, pad 1, no bias)(d4)   [H, W, 3], linear
  The official file also defines an unused `up1` and an init function it never applies; neither
  is reproduced.

Discriminator (PatchGAN): Conv4x4/2 blocks 3 -> 128 (no norm), 128 -> 128, 128 -> 256, 256 -> 512
(InstanceNorm without affine), LeakyReLU(0.2) after each, then zero padding (left 1, right 0,
top 1, bottom 0) and Conv4x4 (512 -> 1, pad 1): `[B, H, W, 3] -> [B, H/16, W/16, 1]`.

Transposed convolutions follow torch's `ConvTranspose2d(k=4, s=2, p=1)` exactly (output 2H), with
kernels stored as Flax `ConvTranspose(transpose_kernel=True)` expects; tests/test_dsgan.py checks
both networks against PyTorch computations of the same layers.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from facenet_jax.models import resnet

# The generators' input normalisation: a 3-channel grey image with the ImageNet mean / std (stage 1
# trains on it, stage 2 feeds it).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_transpose_torch(features: int, name: str, dtype=jnp.float32) -> nn.ConvTranspose:
  """torch `ConvTranspose2d(kernel 4, stride 2, padding 1, bias=False)`: H -> 2H."""
  # A transposed conv with torch padding p is a dilated conv padded by k - 1 - p on each side.
  return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                          use_bias=False, transpose_kernel=True, dtype=dtype,
                          param_dtype=jnp.float32, name=name)


class DecoderBottleneck(nn.Module):
  """1x1 -> BN -> ReLU -> 3x3 -> BN -> ReLU -> 1x1 (4 width) -> BN, + shortcut, ReLU."""
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = 4 * self.width
    y = nn.Conv(self.width, (1, 1), use_bias=False, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(resnet.batch_norm(train, self.dtype, 'bn1')(y))
    y = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                name='conv2')(y)
    y = nn.relu(resnet.batch_norm(train, self.dtype, 'bn2')(y))
    y = nn.Conv(out, (1, 1), use_bias=False, dtype=self.dtype, name='conv3')(y)
    y = resnet.batch_norm(train, self.dtype, 'bn3')(y)
    shortcut = x
    if x.shape[-1] != out:
      shortcut = nn.Conv(out, (1, 1), use_bias=False, dtype=self.dtype, name='downsample_conv')(x)
      shortcut = resnet.batch_norm(train, self.dtype, 'downsample_bn')(shortcut)
    return nn.relu(y + shortcut)


class DecoderStage(nn.Module):
  """Two decoder bottlenecks: width `in/4` (identity shortcut) then `in/8` (projection)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    x = DecoderBottleneck(c // 4, self.dtype, name='block_0')(x, train)
    return DecoderBottleneck(c // 8, self.dtype, name='block_1')(x, train)


class EncoderStem(nn.Module):
  """ResNet stem that also returns the pre-pool map: `x -> (x1 [H/2], pooled [H/4])`.

  Named like `resnet.Stem` ('conv', 'bn'), so converted ImageNet weights load unchanged.
  """
  dtype: Any = jnp.float32
  features: int = resnet.STEM_WIDTH

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    x = nn.Conv(self.features, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, name='conv')(x)
    x1 = nn.relu(resnet.batch_norm(train, self.dtype, 'bn')(x))
    return x1, resnet.max_pool(x1, 3, 2, padding=1)


class Generator(nn.Module):
  """DSGAN generator: `[B, H, W, 3] -> [B, H, W, 3]` (module docstring). H, W divisible by 16.

  `width_multiplier` < 1 scales every width (`resnet.scaled_width`) and `depth` 18 swaps the
  encoder for a ResNet-18 (the decoder follows its widths), for tests and small studies; width 1
  and depth 50 are the official network, the only one ImageNet ResNet-50 weights fit.
  """
  dtype: Any = jnp.float32
  width_multiplier: float = 1.0
  depth: int = 50                   # encoder depth: 50 is the official one; 18 for fast tests

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    resnet.check_depth(self.depth)
    block, counts = resnet.RESNET_SPECS[self.depth]
    m = self.width_multiplier
    x1, x = EncoderStem(self.dtype, resnet.scaled_width(resnet.STEM_WIDTH, m),
                        name='stem')(x.astype(self.dtype), train)
    skips = [x1]
    for i, (width, stride) in enumerate(zip(resnet.STAGE_WIDTHS, (1, 2, 2, 1))):
      x = resnet.Stage(block, resnet.scaled_width(width, m), counts[i], stride, self.dtype,
                       name=f'layer{i + 1}')(x, train)
      skips.append(x)
    x1, x2, x3, x4, x5 = skips
    d = DecoderStage(self.dtype, name='dec1')(x5, train) + x4
    for k, skip in ((2, x3), (3, x2), (4, x1)):
      d = DecoderStage(self.dtype, name=f'dec{k}')(d, train)
      d = nn.relu(conv_transpose_torch(skip.shape[-1], f'up{k}', self.dtype)(d)) + skip
    return conv_transpose_torch(3, 'out', self.dtype)(d).astype(jnp.float32)


class Discriminator(nn.Module):
  """PatchGAN: `[B, H, W, 3] -> [B, H/16, W/16, 1]` scores (module docstring)."""
  dtype: Any = jnp.float32
  width_multiplier: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    for i, (features, norm) in enumerate(((128, False), (128, True), (256, True), (512, True))):
      x = nn.Conv(resnet.scaled_width(features, self.width_multiplier), (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                  param_dtype=jnp.float32, name=f'conv{i}')(x)
      if norm:   # InstanceNorm2d(affine=False), eps 1e-5: per sample and channel over (h, w)
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        var = jnp.var(x, axis=(1, 2), keepdims=True)
        x = (x - mean) / jnp.sqrt(var + 1e-5)
      x = nn.leaky_relu(x, 0.2)
    x = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))   # torch ZeroPad2d((1, 0, 1, 0))
    return nn.Conv(1, (4, 4), padding=((1, 1), (1, 1)), dtype=self.dtype,
                   param_dtype=jnp.float32, name='score')(x).astype(jnp.float32)
