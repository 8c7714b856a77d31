"""A single-stream re-id model: one ResNet on one modality (missing-modality / ordering studies).

`SingleStream` takes FACENet's inputs (the aligned-triplet batch contract, so the same data,
trainer and evaluator serve both) but looks at one image only, `config.model.modality`:

  1. the modality's image [B, H, W, 3] -> ResNet (`backbone_{modality}`) -> [B, h, w, C];
  2. GAP -> feature g [B, C]; BNNeck (no bias) -> b; bias-free classifier -> logits
     (`head_{modality}`, `heads.BNNeckHead`).

The other two images and the flare bits are never read. Outputs follow the registry's output
contract with a single branch named by the modality: 'features', 'bn_features', 'logits'
{modality: ...} and 'embedding' [B, C] (g, or b with `neck_feat='after'`). Parameter names match
FACENet's stream of that modality (`backbone_rgb`, `head_rgb`, ...).

Loss (`single_stream_loss_bundle`): the identity CE and batch-hard triplet of the one branch,
the same terms FACENet sums over its three (`facenet.reid_terms`). There is no flare term (no
MFMP, as FACENet with `mfmp=False`); IC and the relation losses compare branches and are refused.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from facenet_jax import batches
from facenet_jax.models import facenet
from facenet_jax.models import heads
from facenet_jax.models import registry
from facenet_jax.models import resnet

_check_choice = facenet._check_choice  # pylint: disable=protected-access


class SingleStream(nn.Module):
  """One ResNet stream and its BNNeck head on `modality`. See the module docstring.

  Call: `apply(variables, rgb, ni, ti, flare, train, mutable=['batch_stats'] when train)` with
  rgb/ni/ti: [B, H, W, 3] float32 and flare: [B, 2] int32 (unused). Returns 'features',
  'bn_features' {modality: [B, C]}, 'logits' {modality: [B, num_classes]}, 'embedding' [B, C];
  C = `resnet.stage_channels(depth, width_multiplier)[-1]`.
  """
  num_classes: int
  modality: str = 'rgb'             # the one image the model sees: 'rgb' | 'ni' | 'ti'
  depth: int = 50                   # ResNet depth: 18 | 34 | 50 | 101
  last_stride: int = 1
  width_multiplier: float = 1.0     # scales every ResNet width; 1 = the standard ResNet
  dtype: str = 'float32'            # computation dtype; parameters stay float32
  neck_feat: str = 'before'

  def __post_init__(self):
    _check_choice(self.modality, batches.MODALITIES, 'modality')
    _check_choice(self.dtype, tuple(facenet.DTYPES), 'dtype')
    _check_choice(self.neck_feat, heads.NECK_FEATS, 'neck_feat')
    _check_choice(self.last_stride, (1, 2), 'last_stride')
    resnet.check_depth(self.depth)
    resnet.check_width_multiplier(self.width_multiplier)
    if self.num_classes < 1:
      raise ValueError(f'num_classes={self.num_classes!r} must be >= 1')
    super().__post_init__()

  @nn.compact
  def __call__(self, rgb: jax.Array, ni: jax.Array, ti: jax.Array, flare: jax.Array,
               train: bool = False) -> dict[str, Any]:
    del flare  # no FCE: the flare bits have nothing to gate
    dtype = facenet.DTYPES[self.dtype]
    image = {'rgb': rgb, 'ni': ni, 'ti': ti}[self.modality]
    x = resnet.ResNet(self.depth, self.last_stride, dtype, self.width_multiplier,
                      name=facenet.BACKBONE_NAMES[self.modality])(image, train)
    pooled = {self.modality: jnp.mean(x.astype(jnp.float32), axis=(1, 2))}  # GAP: [B, C]
    head = {self.modality: heads.BNNeckHead(self.num_classes, dtype,
                                            name=f'head_{self.modality}')}
    return heads.branch_outputs(pooled, head, self.neck_feat, train)


def single_stream_loss_bundle(outputs: Mapping[str, Any], batch: Mapping[str, jax.Array],
                              loss_config: ml_collections.ConfigDict
                              ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """The one branch's weighted 'id' and 'triplet' terms (`facenet.reid_terms`).

  outputs: the output contract of one branch; batch: 'pid' [B] int labels. `metrics` are the
  branch's 'id_<s>', 'triplet_<s>' and 'acc_<s>'. Refuses `loss.ic` and `loss.relation`, which
  need the RGB and NI (and TI) branches: silently dropping a configured term would mislead.
  """
  if loss_config.ic:
    raise ValueError('config.loss.ic=True: the IC loss (Eq. 8) compares the RGB and NI branches, '
                     'and a single-stream model has one branch; set config.loss.ic=False.')
  if loss_config.relation != 'none':
    raise ValueError(f'config.loss.relation={loss_config.relation!r} relates several modality '
                     "branches; a single-stream model has one: set config.loss.relation='none'.")
  branches = tuple(outputs['logits'])
  if len(branches) != 1:
    raise ValueError(f'single_stream_loss_bundle expects one branch, got {branches}')
  terms, metrics = facenet.reid_terms(outputs, batch['pid'], loss_config, branches)
  return ({k: v.astype(jnp.float32) for k, v in terms.items()},
          {k: v.astype(jnp.float32) for k, v in metrics.items()})


def _load_resnet_stream(variables, path, model_config, image_size):
  """ImageNet ResNet weights (`config.model.pretrained_path`) into the one stream."""
  del image_size
  from facenet_jax import pretrained  # pylint: disable=g-import-not-at-top
  pretrained.check_standard_width(model_config)
  backbone = pretrained.load_pretrained_backbone(path, model_config.depth)
  names = {model_config.modality: facenet.BACKBONE_NAMES[model_config.modality]}
  return pretrained.init_backbones_from_pretrained(variables, backbone, names)


registry.register(registry.ModelSpec(
    name='single_stream', module=SingleStream, loss_bundle=single_stream_loss_bundle,
    batch=batches.ALIGNED_TRIPLETS, load_pretrained=_load_resnet_stream,
    description='One ResNet stream on one modality (config.model.modality), BNNeck head'))
