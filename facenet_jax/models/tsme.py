"""TSME stage 2: the re-id network around the frozen DSGAN generators (reference §3.2-3.5).

    image [B, H, W, 3] (ImageNet-normalised), modality [B] (0 visible, 1 infrared)
    -> fake = G_m(gray(image))  (frozen stage-1 generator of the row's modality, no gradient:
                                 visible -> fake infrared, infrared -> fake visible)
    -> real stream of modality m: ResNet -> SE after layer3 and layer4 -> x_r [B, h, w, C]
       generated stream of modality m: ResNet on the fake image, no SE -> x_g
       (four unshared ResNets: real / generated x visible / infrared)
    -> x_f = (x_r + x_g) / 2                                          fusion ("PwIF")
    -> 6 horizontal stripes of x_f, 2 of x_r, 2 of x_g (avg over the stripe and the width)
    -> 10 heads: Linear(C -> 512) + BN1d = y_k, LeakyReLU(0.1) + Linear(512 -> classes)
       (heads 1-6: fused stripes; 7-8: real stripes; 9-10: generated stripes, "IAI")

SE is parameter-free: SE(x) = sigmoid(GAP(x) + GMP(x)) * x. Stripes follow the official pooling:
stride s = floor(h / n), window h - (n - 1) s, so for h = 18 the six stripes are rows 0-2, 3-5, ...
Heads are shared by the two modalities. Loss (`tsme_loss_bundle`): sum over the 10 heads of
CE + 0.5 HC(l2(y_k)), HC the hetero-centre loss between the visible and infrared rows of each
identity (squared distance, summed over identities, margin 0), as coded; no triplet, no BNNeck.

Test embedding (`test_feature`): 'fc' the concatenated l2(y_1..y_6) (3072-d, the official model
selection feature) or 'pool5' the concatenated l2 of the six fused stripes.

Generators: held in the parameter tree as `generator_visible_to_infrared` and
`generator_infrared_to_visible` (loaded from `generator_workdir`, the stage-1 workdir of
`scripts/train_dsgan.py`, when the state is created: `load_generators`; a missing or mismatched
checkpoint is an error naming it, never the official code's silent random decoder), frozen by the
optimiser (`frozen_parameter`) and run with their BatchNorm statistics fixed. Deliberate
differences from the official code: its generators' BatchNorm runs in training mode during stage 2
(the statistics drift although the weights are frozen); its test-time transform flips images at
random; our grey input is computed from the normalised float image (0.299 R + 0.587 G + 0.114 B)
rather than PIL's integer conversion of the uint8 image.

Initialisation, as the official `model.py` (`tests/test_initializers.py`): each head's Linear
N(0, 2 / 512) (kaiming fan-out) with bias 0, its BatchNorm1d scale N(1, 0.01), its classifier
N(0, 0.001) with bias 0; the streams from ImageNet, the generators from stage 1. Gradients and
optimiser steps are not compared against the official code here.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from facenet_jax import batches
from facenet_jax import losses
from facenet_jax.linalg import l2_normalize
from facenet_jax.models import dsgan
from facenet_jax.models import facenet
from facenet_jax.models import initializers
from facenet_jax.models import registry
from facenet_jax.models import resnet
from facenet_jax.models import two_stem_resnet

_check_choice = facenet._check_choice  # pylint: disable=protected-access
IMAGENET_MEAN, IMAGENET_STD = dsgan.IMAGENET_MEAN, dsgan.IMAGENET_STD
GENERATORS = ('visible_to_infrared', 'infrared_to_visible')   # applied to modality 0, 1 rows
GENERATOR_PREFIX = 'generator_'
TEST_FEATURES = ('fc', 'pool5')
NUM_PARTS, NUM_PAIR_PARTS, HEAD_DIM = 6, 2, 512


def parameter_free_se(x: jax.Array) -> jax.Array:
  """`[B, h, w, C] -> [B, h, w, C]`: sigmoid(GAP(x) + GMP(x)) * x (the official SEModule)."""
  gate = jax.nn.sigmoid(jnp.mean(x, axis=(1, 2), keepdims=True) +
                        jnp.max(x, axis=(1, 2), keepdims=True))
  return x * gate


def stripes(x: jax.Array, parts: int) -> jax.Array:
  """`[B, h, w, C] -> [B, parts, C]`: the official avg_pool2d over (window, w) with stride s =
  floor(h / parts) and window h - (parts - 1) s (overlapping or whole-map stripes when h < parts)."""
  h = x.shape[1]
  s = h // parts
  window = h - (parts - 1) * s
  x = x.astype(jnp.float32)
  return jnp.stack([jnp.mean(x[:, i * s:i * s + window], axis=(1, 2)) for i in range(parts)], 1)


def to_gray_input(x: jax.Array) -> jax.Array:
  """Normalised RGB `[B, H, W, 3]` -> the generators' input: its 3-channel grey, normalised."""
  mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
  rgb = x.astype(jnp.float32) * std + mean
  gray = rgb @ jnp.asarray([0.299, 0.587, 0.114])
  return (gray[..., None] - mean) / std


class PartHead(nn.Module):
  """`FeatureBlock` + `ClassBlock`: `[B, C] -> (y [B, 512], logits [B, classes])`."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    y = nn.Dense(HEAD_DIM, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=initializers.KAIMING_NORMAL_FAN_OUT, bias_init=nn.initializers.zeros,
                 name='feature')(x)
    y = resnet.batch_norm(train, self.dtype, 'feature_bn', scale_init=initializers.bnneck_scale)(y)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=initializers.CLASSIFIER, bias_init=nn.initializers.zeros,
                      name='classifier')(nn.leaky_relu(y, 0.1))
    return y.astype(jnp.float32), logits.astype(jnp.float32)


class Stream(nn.Module):
  """One ResNet (`resnet.ResNet` layout) with the optional parameter-free SE after layer3/4."""
  depth: int
  width_multiplier: float
  se: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    net = resnet.ResNet(self.depth, 1, self.dtype, self.width_multiplier, name='resnet')
    x = net.forward_stem(x, train)
    for stage in range(1, 5):
      x = net.forward_stage(stage, x, train)
      if self.se and stage >= 3:
        x = parameter_free_se(x)
    return x


class TSME(nn.Module):
  """See the module docstring. `apply(variables, image, modality, train)`."""
  num_classes: int
  depth: int = 50
  width_multiplier: float = 1.0
  dtype: str = 'float32'
  generator_workdir: str = ''       # stage-1 workdir (scripts/train_dsgan.py); required to train
  generator_depth: int = 50         # must match the stage-1 run (checked when loading)
  generator_width_multiplier: float = 1.0
  test_feature: str = 'fc'          # 'fc' (3072-d) | 'pool5' (6 x C)

  def __post_init__(self):
    _check_choice(self.dtype, tuple(facenet.DTYPES), 'dtype')
    _check_choice(self.test_feature, TEST_FEATURES, 'test_feature')
    resnet.check_depth(self.depth)
    resnet.check_width_multiplier(self.width_multiplier)
    resnet.check_depth(self.generator_depth)
    if self.num_classes < 1:
      raise ValueError(f'num_classes={self.num_classes!r} must be >= 1')
    super().__post_init__()

  @nn.compact
  def __call__(self, image: jax.Array, modality: jax.Array, train: bool = False) -> dict[str, Any]:
    dtype = facenet.DTYPES[self.dtype]
    h, w = image.shape[1:3]
    if h % 16 or w % 16:
      raise ValueError(f'TSME: config.data.image_size {(h, w)} must be divisible by 16 '
                       '(the generators down- and up-sample by 16)')
    generators = [dsgan.Generator(jnp.float32, self.generator_width_multiplier,
                                  self.generator_depth, name=GENERATOR_PREFIX + g)
                  for g in GENERATORS]
    gray = to_gray_input(image)
    fake = jax.lax.stop_gradient(two_stem_resnet.route_stems(
        gray, modality, [lambda x, _, g=g: g(x, False) for g in generators], train))
    real_streams = [Stream(self.depth, self.width_multiplier, True, dtype, name=f'real_{m}')
                    for m in (0, 1)]
    fake_streams = [Stream(self.depth, self.width_multiplier, False, dtype, name=f'generated_{m}')
                    for m in (0, 1)]
    x_r = two_stem_resnet.route_stems(image.astype(dtype), modality, real_streams, train)
    x_g = two_stem_resnet.route_stems(fake.astype(dtype), modality, fake_streams, train)
    x_f = (x_r + x_g) / 2
    parts = ([p for p in jnp.unstack(stripes(x_f, NUM_PARTS), axis=1)] +
             [p for p in jnp.unstack(stripes(x_r, NUM_PAIR_PARTS), axis=1)] +
             [p for p in jnp.unstack(stripes(x_g, NUM_PAIR_PARTS), axis=1)])
    features, logits = {}, {}
    for k, part in enumerate(parts, start=1):
      features[f'part{k}'], logits[f'part{k}'] = PartHead(self.num_classes, dtype,
                                                          name=f'head_{k}')(part, train)
    if self.test_feature == 'fc':
      chosen = [l2_normalize(features[f'part{k}']) for k in range(1, NUM_PARTS + 1)]
    else:
      chosen = [l2_normalize(p) for p in parts[:NUM_PARTS]]
    return {'features': features, 'bn_features': features, 'logits': logits,
            'embedding': jnp.concatenate(chosen, axis=-1), 'generated': fake}


def tsme_loss_bundle(outputs: Mapping[str, Any], batch: Mapping[str, jax.Array],
                     loss_config: ml_collections.ConfigDict
                     ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """'id' = sum_k CE_k and 'hc' = hc_weight sum_k HC(l2(y_k)) over the 10 heads (module doc).

  HC pairs the visible and infrared rows by a stable sort on 'modality': the training stream's
  halves hold the same identities in the same order (also across processes), which the HC
  centres rely on as the official chunking does.
  """
  facenet.check_single_branch_loss(loss_config, 'TSME')
  labels, modality = batch['pid'], batch['modality']
  order = jnp.argsort(modality, stable=True)
  half = labels.shape[0] // 2
  first, second = order[:half], order[half:]
  metrics: dict[str, jax.Array] = {}
  ids, hcs = [], []
  for k in sorted(outputs['logits'], key=lambda s: int(s[4:])):
    ce = losses.cross_entropy_loss(outputs['logits'][k], labels, loss_config.label_smoothing)
    y = l2_normalize(outputs['features'][k])
    hc = losses.hetero_center_loss(y[first], y[second], labels[first], 'l2')
    metrics[f'id_{k}'], metrics[f'hc_{k}'] = ce, hc
    ids.append(ce)
    hcs.append(hc)
  metrics['acc_part1'] = losses.top1_accuracy(outputs['logits']['part1'], labels)
  terms = {'id': loss_config.id_weight * sum(ids), 'hc': loss_config.hc_weight * sum(hcs)}
  return facenet.float32_terms(terms, metrics)


def frozen_parameter(path: str) -> bool:
  """The stage-1 generators never change in stage 2 (no gradient, decay, momentum or LR)."""
  return path.split('/')[0].startswith(GENERATOR_PREFIX)


def load_generators(variables: Mapping[str, Any], config: ml_collections.ConfigDict
                    ) -> dict[str, Any]:
  """`variables` with both generators from `config.model.generator_workdir` (module docstring)."""
  from facenet_jax import dsgan_training  # pylint: disable=g-import-not-at-top
  model = config.model
  if not model.generator_workdir:
    raise ValueError('config.model.generator_workdir is empty: TSME stage 2 needs the stage-1 '
                     'generators (train them with scripts/train_dsgan.py and pass its workdir)')
  if tuple(config.data.mean) != IMAGENET_MEAN or tuple(config.data.std) != IMAGENET_STD:
    raise ValueError(f'config.data.mean/std {tuple(config.data.mean)}/{tuple(config.data.std)}: '
                     'TSME expects the ImageNet normalisation its generators were trained with')
  generators, settings = dsgan_training.load_generators(model.generator_workdir)
  if (settings.depth, settings.width_multiplier) != (model.generator_depth,
                                                     model.generator_width_multiplier):
    raise ValueError(
        f'{model.generator_workdir}: its generators have depth {settings.depth} and width '
        f'{settings.width_multiplier}; config.model.generator_depth / '
        f'generator_width_multiplier say {model.generator_depth} / '
        f'{model.generator_width_multiplier}')
  new = {c: dict(v) for c, v in variables.items()}
  for name, tree in generators.items():
    for collection in ('params', 'batch_stats'):
      new[collection][GENERATOR_PREFIX + name] = tree[collection]
  return new


STREAMS = ('real_0', 'real_1', 'generated_0', 'generated_1')


def load_imagenet_streams(variables: Mapping[str, Any], path: str,
                          model_config: ml_collections.ConfigDict, image_size) -> dict[str, Any]:
  """torchvision ImageNet ResNet weights into the four streams (the official initialisation);
  the generators come from stage 1 (`load_generators`), the heads keep their init."""
  del image_size
  from facenet_jax import pretrained  # pylint: disable=g-import-not-at-top
  pretrained.check_standard_width(model_config)
  backbone = pretrained.load_pretrained_backbone(path, model_config.depth)
  new = {c: dict(v) for c, v in variables.items()}
  for collection in ('params', 'batch_stats'):
    for name in STREAMS:
      expected = jax.tree.map(jnp.shape, new[collection][name]['resnet'])
      if jax.tree.map(jnp.shape, backbone[collection]) != expected:
        raise ValueError(f'{path}: its {collection} do not fit TSME stream {name} '
                         f'(config.model.depth={model_config.depth})')
      new[collection][name] = {'resnet': backbone[collection]}
  return new


registry.register(registry.ModelSpec(
    name='tsme', module=TSME, loss_bundle=tsme_loss_bundle, batch=batches.CROSS_MODAL_IMAGES,
    load_pretrained=load_imagenet_streams, load_parts=load_generators, frozen=frozen_parameter,
    description='TSME stage 2: real + generated ResNet streams per modality, PCB heads; CE + HC'))
