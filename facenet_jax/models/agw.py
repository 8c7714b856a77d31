"""AGW: the cross-modality re-id baseline (Ye et al., TPAMI 2021) the AGW family builds on.

    image [B, H, W, 3], modality [B] -> two-stem ResNet-50 (last stride 1; non-local blocks in
    layer2 / layer3, `two_stem_resnet`) -> [B, h, w, 2048] -> GeM (p = 3) -> f [B, 2048]
    -> BNNeck (no bias) -> b -> bias-free classifier -> logits

Outputs follow the registry's output contract with one branch 'pool': 'features' {pool: f},
'bn_features' {pool: b}, 'logits' {pool: ...}, 'embedding' = b (`neck_feat='after'`, the feature
the official scripts select models with and report) or f ('before'). Normalising is the distance's
job: the official evaluation ranks by cosine similarity, which `eval.distance` 'cosine' and
'euclidean_normalized' reproduce.

Loss (`agw_loss_bundle`, `facenet.reid_terms`): CE on the logits + the weighted regularisation
triplet (`loss.triplet_kind='wrt'`) on f, both weight 1 (official `--method agw`); 'batch_hard'
with margin 0.3 is the official `--method base`.

Initialisation, as the official `model.py` (tested leaf by leaf in `tests/test_initializers.py`):
the non-local g / theta / phi / W convolutions at torch's Conv2d default, W's BatchNorm at zero,
the BNNeck scale N(1, 0.01) (`weights_init_kaiming`), the classifier N(0, 0.001); the stems and
stages from ImageNet. Training steps: the recipe's first three SGD steps (optimiser, groups,
warm-up, CE + WRT) equal the official `train.py`'s within torch's own float32 error, float64
being the reference (`tests/test_agw.py`); later epochs' schedule is checked in
`tests/test_optim.py`.
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
from facenet_jax.models import two_stem_resnet

_check_choice = facenet._check_choice  # pylint: disable=protected-access
POOLINGS = ('gem', 'avg')
BRANCH = 'pool'


class AGW(nn.Module):
  """See the module docstring. `apply(variables, image, modality, train)`; C = 2048 m for depth 50."""
  num_classes: int
  depth: int = 50                   # ResNet depth: 18 | 34 | 50 | 101
  last_stride: int = 1
  width_multiplier: float = 1.0     # scales every ResNet width; 1 = the standard ResNet
  dtype: str = 'float32'            # computation dtype; parameters stay float32
  nonlocal_blocks: bool = True      # AGW's non-local attention in layer2 / layer3
  bug_nonlocal_one_channel: bool = False  # official code: C' = 1 instead of C / 2
  pooling: str = 'gem'              # 'gem' (p = gem_p, fixed) | 'avg'
  gem_p: float = 3.0
  neck_feat: str = 'after'          # test embedding: BNNeck output ('after', official) | 'before'

  def __post_init__(self):
    _check_choice(self.dtype, tuple(facenet.DTYPES), 'dtype')
    _check_choice(self.pooling, POOLINGS, 'pooling')
    _check_choice(self.neck_feat, heads.NECK_FEATS, 'neck_feat')
    _check_choice(self.last_stride, (1, 2), 'last_stride')
    resnet.check_depth(self.depth)
    resnet.check_width_multiplier(self.width_multiplier)
    if self.gem_p <= 0:
      raise ValueError(f'config.model.gem_p={self.gem_p!r} must be positive')
    if self.num_classes < 1:
      raise ValueError(f'num_classes={self.num_classes!r} must be >= 1')
    super().__post_init__()

  @nn.compact
  def __call__(self, image: jax.Array, modality: jax.Array, train: bool = False) -> dict[str, Any]:
    dtype = facenet.DTYPES[self.dtype]
    x = two_stem_resnet.TwoStemResNet(
        self.depth, self.last_stride, self.width_multiplier, self.nonlocal_blocks,
        self.bug_nonlocal_one_channel, dtype, name='backbone')(image, modality, train)
    if self.pooling == 'gem':
      pooled = two_stem_resnet.gem_pool(x, self.gem_p)
    else:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    head = {BRANCH: heads.BNNeckHead(self.num_classes, dtype, scale_init='torch_kaiming',
                                     name='head')}
    return heads.branch_outputs({BRANCH: pooled}, head, self.neck_feat, train)


def agw_loss_bundle(outputs: Mapping[str, Any], batch: Mapping[str, jax.Array],
                    loss_config: ml_collections.ConfigDict
                    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """'id' (CE) and 'triplet' (`loss.triplet_kind`) of the one branch (`facenet.reid_terms`).

  Refuses the FACENet-only terms (IC, relation), which need several modality branches.
  """
  facenet.check_single_branch_loss(loss_config, 'AGW')
  terms, metrics = facenet.reid_terms(outputs, batch['pid'], loss_config, (BRANCH,))
  return facenet.float32_terms(terms, metrics)


def load_imagenet_backbone(variables, path, model_config, image_size):
  """torchvision ResNet weights into both stems and the shared stages (non-local blocks keep init).

  The official code builds every part from the same ImageNet ResNet-50.
  """
  del image_size
  from facenet_jax import pretrained  # pylint: disable=g-import-not-at-top
  pretrained.check_standard_width(model_config)
  backbone = pretrained.load_pretrained_backbone(path, model_config.depth)
  return copy_resnet_into_two_stems(variables, backbone)


def copy_resnet_into_two_stems(variables: Mapping[str, Any], backbone: Mapping[str, Any]
                               ) -> dict[str, Any]:
  """`variables` with `backbone/stem_{0,1}` and `backbone/layer*/block_*` from a ResNet's tree."""
  import flax  # pylint: disable=g-import-not-at-top
  new = {c: dict(v) for c, v in flax.core.unfreeze(variables).items()}
  for collection in ('params', 'batch_stats'):
    source = backbone[collection]
    target = dict(new[collection]['backbone'])
    for name in ('stem_0', 'stem_1'):
      _assign(target, name, source['stem'], f'{collection}/stem')
    for s in range(1, 5):
      if f'layer{s}' not in target:   # a model without this stage (DEEN for RegDB: no layer4)
        continue
      layer = dict(target[f'layer{s}'])
      for block, value in source[f'layer{s}'].items():
        _assign(layer, block, value, f'{collection}/layer{s}/{block}')
      target[f'layer{s}'] = layer
    new[collection]['backbone'] = target
  return new


def _assign(target: dict, name: str, value: Any, what: str) -> None:
  if name not in target:
    raise ValueError(f'pretrained {what}: the model has no {name} there')
  old_shapes = jax.tree.map(jnp.shape, target[name])
  new_shapes = jax.tree.map(jnp.shape, value)
  if old_shapes != new_shapes:
    raise ValueError(f'pretrained {what}: shapes differ from the model\'s {name}')
  target[name] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), value)


registry.register(registry.ModelSpec(
    name='agw', module=AGW, loss_bundle=agw_loss_bundle, batch=batches.CROSS_MODAL_IMAGES,
    load_pretrained=load_imagenet_backbone,
    description='AGW: two-stem ResNet-50, non-local, GeM, BNNeck; CE + WRT'))
