"""BatchNorm as torch computes it, in training and at test time (every model's one BatchNorm).

torch's `nn.BatchNorm1d / 2d` in training normalises with the batch mean and the biased batch
variance, and updates its running variance with the unbiased one (n / (n - 1), n = the values per
channel). flax's `nn.BatchNorm` differs in both, by default: it computes the batch variance as
E[x^2] - E[x]^2, which cancels catastrophically where a channel's |mean| / std is large (relative
errors of 1e-3 in train-mode outputs of the official AGW with its one-channel non-local blocks,
whose BatchNorm inputs reach |mean| / std ~ 3e5), and it updates the running variance with the
biased variance. `BatchNorm` here computes the statistics in float32 whatever the compute dtype,
the variance in two passes (mean((x - mean)^2)), both over values shifted by each channel's
first value (`batch_statistics`), normalises as flax does and updates the running
statistics as torch does. At test time (running averages) it is flax's computation, operation for
operation. Its parameters ('scale', 'bias') and statistics ('mean', 'var') have flax's names and
shapes, so checkpoints written before load unchanged.

Under jit with the batch sharded over devices, the means are over the global batch (XLA inserts
the reductions), so the statistics do not depend on the device count.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

MOMENTUM = 0.9   # flax convention (running = m * running + (1 - m) * batch): torch momentum 0.1
EPSILON = 1e-5   # torch's default


def batch_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array, int]:
  """`[..., C]` -> float32 mean `[C]`, biased two-pass variance `[C]`, values per channel n.

  Both sums run over values shifted by each channel's first value, so their terms are of the
  size of the spread, not of the mean: a float32 mean of values ~1e5 with spread ~1 is otherwise
  off by a good fraction of the spread (torch's CPU kernels accumulate these sums in float64).
  mean = pivot + mean(x - pivot) exactly in real arithmetic, so the gradient is unchanged.
  """
  x = jnp.asarray(x, jnp.float32)
  axes = tuple(range(x.ndim - 1))
  pivot = jax.lax.stop_gradient(x[(0,) * (x.ndim - 1)])
  shifted = x - pivot
  mean_shifted = jnp.mean(shifted, axes)
  var = jnp.mean(jnp.square(shifted - mean_shifted), axes)
  return pivot + mean_shifted, var, x.size // x.shape[-1]


def unbiased(var: jax.Array, n: int) -> jax.Array:
  """torch's running-variance input: var * n / (n - 1). n = 1 keeps var (torch refuses n = 1 in
  training; a one-value channel has variance 0 either way)."""
  return var * (n / (n - 1)) if n > 1 else var


class BatchNorm(nn.Module):
  """`[..., C] -> [..., C]`, normalised over every axis but the last (torch's BatchNorm1d on
  `[B, C]`, BatchNorm2d on `[B, H, W, C]`). Parameters are `param_dtype`; the output is `dtype`.
  """
  use_running_average: bool | None = None   # set here or at the call, as with flax's
  momentum: float = MOMENTUM
  epsilon: float = EPSILON
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  scale_init: Callable[..., jax.Array] = nn.initializers.ones
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_running_average = nn.merge_param('use_running_average', self.use_running_average,
                                         use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var, n = batch_statistics(x)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased(var, n)
    y = x - mean                                   # float32: the statistics are float32
    mul = jax.lax.rsqrt(var + self.epsilon)
    if self.use_scale:
      mul = mul * self.param('scale', self.scale_init, features, self.param_dtype)
    y = y * mul
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, features, self.param_dtype)
    return jnp.asarray(y, self.dtype)
