"""Re-id heads shared by the models: BNNeck + classifier per branch, and the test embedding."""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from facenet_jax.models import initializers
from facenet_jax.models import resnet

NECK_FEATS = ('before', 'after')


class BNNeckHead(nn.Module):
  """BNNeck + classifier. `g: [B, D] -> (b: [B, D], logits: [B, num_classes])`, both float32.

  The BNNeck's bias is frozen at zero in the reference implementations (torch: bias 0 with
  requires_grad False). Here the BatchNorm simply has no bias parameter (`use_bias=False`), so no
  optimiser, weight decay or gradient can move it. Momentum 0.9 (torch 0.1), eps 1e-5.
  The classifier starts N(0, 0.001) (`weights_init_classifier`); the neck's scale as the family's
  official code starts it (`scale_init`, a key of `initializers.BNNECK_SCALE_INITS`): N(1, 0.01)
  in AGW and the models built on it, 1 in FACENet.
  """
  num_classes: int
  dtype: Any = jnp.float32
  scale_init: str = 'ones'

  @nn.compact
  def __call__(self, g: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    b = resnet.batch_norm(train, self.dtype, 'bnneck', use_bias=False,
                          scale_init=initializers.BNNECK_SCALE_INITS[self.scale_init])(g)
    logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype,
                      param_dtype=jnp.float32, kernel_init=initializers.CLASSIFIER,
                      name='classifier')(b)
    return b.astype(jnp.float32), logits.astype(jnp.float32)


def branch_outputs(features: Mapping[str, jax.Array], heads: Mapping[str, BNNeckHead],
                   neck_feat: str, train: bool) -> dict[str, Any]:
  """The output tail of a multi-branch re-id model (the models' output contract).

  features: {branch: [B, D]} pooled features, in branch order; heads: {branch: BNNeckHead}.
  Returns
    'features':    {branch: [B, D]} float32, before the BNNeck (the triplet input)
    'bn_features': {branch: [B, D]} after the BNNeck
    'logits':      {branch: [B, num_classes]}
    'embedding':   [B, n_branches * D], the test embedding: the concatenation of the features
                   before (`neck_feat='before'`) or after the BNNeck, as it is. Normalising is the
                   distance's job (`config.eval.distance`): 'euclidean_normalized' (default, the
                   official evaluation) L2-normalises the whole vector, 'euclidean' is the paper's
                   plain Euclidean distance on the concatenation.
  """
  features = {s: f.astype(jnp.float32) for s, f in features.items()}
  bn_features, logits = {}, {}
  for s, f in features.items():
    bn_features[s], logits[s] = heads[s](f, train)
  chosen = features if neck_feat == 'before' else bn_features
  return {'features': features, 'bn_features': bn_features, 'logits': logits,
          'embedding': jnp.concatenate(list(chosen.values()), axis=-1)}
