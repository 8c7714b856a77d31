"""Vector helpers shared by the models, the losses and the evaluator (jit-able, any float dtype)."""

import jax
import jax.numpy as jnp

# Rows shorter than this are divided by it instead (torch.nn.functional.normalize's eps).
NORMALIZE_EPS = 1e-12
# Squared norms are floored here inside the square root, so the gradient at x = 0 stays finite.
_SQUARED_NORM_FLOOR = 1e-30


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
  """L2 norm along `axis` whose gradient is finite at x = 0 (jnp.linalg.norm's is NaN there).

  Equal to the plain norm whenever the squared norm exceeds 1e-30.
  """
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=keepdims), _SQUARED_NORM_FLOOR))


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / max(||x||, 1e-12) along `axis`, as torch.nn.functional.normalize. `[..., D] -> [..., D]`.

  The one normalisation of the project: the test embedding, the triplet option
  `loss.triplet_normalize` and the evaluator's 'euclidean_normalized' / 'cosine' distances. (The
  official triplet helper divides by ||x|| + 1e-12; the two differ by a relative 1e-12 / ||x||.)
  """
  return x / jnp.maximum(safe_norm(x, axis=axis, keepdims=True), NORMALIZE_EPS)
