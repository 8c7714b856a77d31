"""The initialisers of the official PyTorch code, named once and used by every model family.

Flax's defaults (LeCun-normal kernels, zero biases) are not what any of the official codes start
from; each layer a paper adds on top of its ImageNet backbone takes one of these instead, as its
official code initialises it (the module docstrings say which). torch's rules, per layer:

* `nn.Conv2d` / `nn.Linear` left alone: kernel U(+-1/sqrt(fan_in)) (`kaiming_uniform_` with
  a = sqrt(5)), bias U(+-1/sqrt(fan_in)): `TORCH_DEFAULT_KERNEL` and `torch_uniform(fan_in)`,
  or whole layers from `torch_conv` / `torch_dense`.
* `weights_init_kaiming` (the AGW family's module-wide rule): Conv kernels `kaiming_normal_(a=0,
  mode='fan_in')` = N(0, 2 / fan_in), biases untouched (so still torch's default); Linear kernels
  `kaiming_normal_(mode='fan_out')` = N(0, 2 / fan_out), bias 0; BatchNorm1d weight N(1, 0.01),
  bias 0: `KAIMING_NORMAL_FAN_IN`, `KAIMING_NORMAL_FAN_OUT`, `bnneck_scale`.
* `weights_init_classifier`: Linear N(0, 0.001), bias 0: `CLASSIFIER`.

torch's normal draws are not truncated, nor are JAX's variance-scaling 'normal' ones (its
'truncated_normal', the ViT's rule, has no value beyond 2 standard deviations). fan_in of a
convolution is (input channels / groups) x kernel area, as flax's variance scaling computes it
from the kernel shape [kh, kw, in / groups, out].
"""

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

# torch nn.Conv2d / nn.Linear kernels: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_DEFAULT_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# torch init.kaiming_normal_(a=0, mode='fan_in' | 'fan_out'): N(0, 2 / fan).
KAIMING_NORMAL_FAN_IN = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
KAIMING_NORMAL_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# weights_init_classifier: N(0, 0.001).
CLASSIFIER = nn.initializers.normal(0.001)


def torch_uniform(fan_in: int) -> Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) of any shape: torch's default bias of a Conv2d / Linear
  with `fan_in` inputs (and its kernel, where `fan_in` is given rather than read from a shape)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def bnneck_scale(key, shape, dtype=jnp.float32) -> jax.Array:
  """weights_init_kaiming's BatchNorm1d weight: N(1, 0.01)."""
  return 1.0 + 0.01 * jax.random.normal(key, shape, dtype)


# A BNNeck's scale per official code: 'torch_kaiming' N(1, 0.01) (AGW and its descendants apply
# weights_init_kaiming to the neck), 'ones' (FACENet's official head leaves BatchNorm1d alone).
BNNECK_SCALE_INITS = {'torch_kaiming': bnneck_scale, 'ones': nn.initializers.ones}


def torch_conv(features: int, kernel_size: Sequence[int], in_features: int, *,
               groups: int = 1, use_bias: bool = True, **kwargs: Any) -> nn.Conv:
  """An `nn.Conv` that starts as torch's `nn.Conv2d(in_features, features, kernel_size,
  groups=groups)` does (kernel and bias U(+-1/sqrt(fan_in)))."""
  fan_in = in_features // groups * math.prod(kernel_size)
  return nn.Conv(features, tuple(kernel_size), feature_group_count=groups, use_bias=use_bias,
                 kernel_init=TORCH_DEFAULT_KERNEL, bias_init=torch_uniform(fan_in), **kwargs)


def torch_dense(features: int, in_features: int, *, use_bias: bool = True,
                **kwargs: Any) -> nn.Dense:
  """An `nn.Dense` that starts as torch's `nn.Linear(in_features, features)` does."""
  return nn.Dense(features, use_bias=use_bias, kernel_init=TORCH_DEFAULT_KERNEL,
                  bias_init=torch_uniform(in_features), **kwargs)
