"""DNDM: day-night dual-domain modulation for day-night vehicle re-id (Chen et al., CVPR 2024).

    image [B, H, W, 3], modality [B] (0 day, 1 night), glare [B, H, W], pid [B]
    -> stems per domain (`two_stem_resnet`) -> T0 [B, H/4, W/4, C0]
    -> NGS(T0, glare)                                   night-domain glare suppression, Eq. 4-6
    -> for s in 1..4: T_s = layer_s(T); DSE(T_s); CCA_s(T_s)   (at `enhance_stages`), Eq. 7-13
    -> GAP (paper) | GeM (code) -> f [B, C4] -> (BNNeck) -> shared classifier -> logits

The paper's equations are the default (every module docstring cites its equation); the official
code's operations (reference §2.2-2.4) are switches, all collected in `configs/dndm_code_dn348.py`:

| field | paper (default) | code |
|---|---|---|
| `stem_pool` | '2x2' max-pool (Eq. 3) | '3x3' (torchvision) |
| glare mask (`data.glare_mask`) | 'paper': grey > 220, regions | 'code': BGR weights, 3x3 opening |
| `ngs_relu` | False: A = sigmoid(V [T; M]) | True: sigmoid(ReLU(.)), A in [0.5, 1) |
| `dse_rule` | 'paper': gradient-weighted S, T + beta S | 'code': 0.9 T + 0.25 ReLU(mean24 T - T) |
| `cca_rule` | 'paper': BN(conv) projection, label's map, exchange, back-projection | 'code': argmax class map, 0.05 / 0.1 products |
| `pooling` | 'avg' (GAP) | 'gem' (p = 3) |
| `bnneck` | True (see below) | True |
| `loss.triplet_kind` | 'cross_domain' (Eq. 2) | 'batch_hard' |
| `loss.ngs_attention_weight` | 0 (Eq. 14 has none) | 1 (attention loss) |

Not reproduced by any switch: the official test script's stem swap and its "/10" print (README);
the non-local blocks and the U-Net the official model builds but never calls (dead parameters).

Glare mask to features: `data.glare_mask` makes the pipeline compute a [H, W] mask per night image
on the host (`input_pipeline.glare_mask`; zeros for day images, paper Eq. 5), and this module
max-pools it to the stem resolution with the stem's pooling (two 2x2/2 or two 3x3/2 pad-1
max-pools: a cell is glare when any of its pixels is). The mask is data, so no gradient exists to
stop; everything else is differentiable (argmax picks an integer, as in the code).

Choices where the paper is silent (ours, each a field or documented where it acts):
* CCA's exchange partner: a row's map is exchanged with the mean map of the rows of the other
  domain with the same identity in the batch (the code averages the four same-identity images of
  the other domain the same way); a row without such a partner keeps its own map.
* DSE pads with zeros (features are post-ReLU, so an outside neighbour adds no gradient).
* A BNNeck before the classifier (`bnneck=True`), although Eq. 1 writes FC_class(f): the paper
  trains "following BOT [25]", whose head is a BNNeck, and without it the recipe's head LR of 0.1
  collapses the features on the synthetic day/night set (20 epochs, seed 0: mAP 8.0, the CE stuck
  at ln(60), against 15.8 with it; `bnneck=False` remains available).
* The test embedding: the BNNeck output (`neck_feat='after'`), or f without a BNNeck.

Initialisation (`tests/test_initializers.py`): NGS's V at torch's Linear default, the code rule's
CCA projection and the classifier N(0, 0.001) (`weights_init_classifier`), the BNNeck scale
N(1, 0.01) (`weights_init_kaiming`), as the official code; the paper rule's CCA convolutions have
no official code and start at torch's Conv2d default (ours). Gradients and optimiser steps are
not compared against the official code here.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from facenet_jax import batches
from facenet_jax.models import agw
from facenet_jax.models import batch_norm
from facenet_jax.models import facenet
from facenet_jax.models import initializers
from facenet_jax.models import heads
from facenet_jax.models import registry
from facenet_jax.models import resnet
from facenet_jax.models import two_stem_resnet

_check_choice = facenet._check_choice  # pylint: disable=protected-access
BRANCH = 'pool'
RULES = ('paper', 'code')
POOLINGS = ('avg', 'gem')
# Official DSE (code): T <- CODE_DSE_KEEP T + beta S; official CCA products.
CODE_DSE_KEEP = 0.9
CODE_CCA_TRAIN = 0.05
CODE_CCA_TEST = 0.1


# ----------------------------------------------------------------------------- glare mask


def pool_glare(glare: jax.Array, stem_pool: str) -> jax.Array:
  """`[B, H, W] -> [B, H/4, W/4]`: the stem's two downsamplings as max-pools of the mask.

  '2x2': two 2x2/2 max-pools (the paper's Mxp2x2 after a stride-2 conv); '3x3': two 3x3/2 pad-1
  max-pools (the official `thermal_module`).
  """
  x = glare[..., None].astype(jnp.float32)
  for _ in range(2):
    if stem_pool == '2x2':
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
    else:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  return x[..., 0]


# ----------------------------------------------------------------------------- NGS


class NGS(nn.Module):
  """Night-domain glare suppression (Eq. 4-6), shared by both domains.

  `(t [B, h, w, C], mask [B, h, w]) -> (t' [B, h, w, C], a [B, h, w])`:
  a = sigmoid([t; mask] V) with V in R^{C+1} (no bias; `relu=True`: sigmoid(ReLU(.)) as coded),
  t' = t - alpha a t. Day rows carry an all-zero mask (Eq. 5).
  """
  alpha: float = 0.5
  relu: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    z = jnp.concatenate([t, mask[..., None].astype(t.dtype)], axis=-1)
    logit = nn.Dense(1, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=initializers.TORCH_DEFAULT_KERNEL, name='v')(z)[..., 0]
    if self.relu:
      logit = nn.relu(logit)
    a = jax.nn.sigmoid(logit.astype(jnp.float32))
    return t - (self.alpha * a[..., None]).astype(t.dtype) * t, a


# ----------------------------------------------------------------------------- DSE


def _neighbours(t: jax.Array, window: int):
  """Yields t(x + d) for every offset d of the window (zero padding), `[B, h, w, C]` each."""
  r = (window - 1) // 2
  _, h, w, _ = t.shape
  padded = jnp.pad(t, ((0, 0), (r, r), (r, r), (0, 0)))
  for dy in range(window):
    for dx in range(window):
      yield padded[:, dy:dy + h, dx:dx + w, :]


def dse_paper(t: jax.Array, window: int = 5, beta: float = 0.25) -> jax.Array:
  """Eq. 7-9: `[B, h, w, C] -> [B, h, w, C]`.

  G(x, c, d) = max(0, t(x + d, c) - t(x, c)); S(x, c) = sum_d G(x, c, d) t(x + d, c) /
  (1 + sum_d G(x, c, d)); returns t + beta S. d runs over the window x window offsets (N = 5).
  """
  x = t.astype(jnp.float32)
  weighted, total = jnp.zeros_like(x), jnp.zeros_like(x)
  for n in _neighbours(x, window):
    g = nn.relu(n - x)
    weighted, total = weighted + g * n, total + g
  return (x + beta * weighted / (1.0 + total)).astype(t.dtype)


def dse_code(t: jax.Array, window: int = 5, beta: float = 0.25) -> jax.Array:
  """The official `GradientComputation4`: `0.9 t + beta ReLU(mean of the other window-1
  neighbours - t)` per channel (a fixed depthwise 5x5 kernel of ones with -24 at the centre, / 24,
  zero padding). `[B, h, w, C] -> [B, h, w, C]`."""
  x = t.astype(jnp.float32)
  others = sum(_neighbours(x, window)) - x
  s = nn.relu(others / (window * window - 1) - x)
  return (CODE_DSE_KEEP * x + beta * s).astype(t.dtype)


# ----------------------------------------------------------------------------- CCA


def exchange_maps(maps: jax.Array, modality: jax.Array, pid: jax.Array) -> jax.Array:
  """`[B, h, w]` -> `[B, h, w]`: each row gets the mean map of the other-domain rows of its
  identity in the batch (its own map when it has none). The CCA exchange partner (module doc)."""
  partner = (pid[:, None] == pid[None, :]) & (modality[:, None] != modality[None, :])
  weights = partner.astype(maps.dtype)
  count = jnp.sum(weights, axis=1)
  mean = jnp.einsum('ij,jhw->ihw', weights, maps) / jnp.maximum(count, 1.0)[:, None, None]
  return jnp.where((count > 0)[:, None, None], mean, maps)


class ClassifierHead(nn.Module):
  """The shared identity classifier FC_class (Eq. 1, 11), with an optional BNNeck before it.

  `__call__(f [B, D], train) -> (b [B, D], logits [B, n])`; `class_maps(p [B, h, w, D], classes
  [B]) -> [B, h, w]` the logit map of one class per row; `class_scores(x [B, D]) -> [B, n]`.
  Parameters: 'classifier' [D, n] (N(0, 0.001), no bias), 'bnneck' (no bias) when used.
  """
  num_classes: int
  features: int
  bnneck: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.classifier = self.param('classifier', initializers.CLASSIFIER,
                                 (self.features, self.num_classes), jnp.float32)
    if self.bnneck:
      self.neck = batch_norm.BatchNorm(use_bias=False, scale_init=initializers.bnneck_scale,
                                       dtype=self.dtype, name='bnneck')

  def class_scores(self, x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32) @ self.classifier

  def class_maps(self, p: jax.Array, classes: jax.Array) -> jax.Array:
    columns = jnp.take(self.classifier, classes, axis=1).T                 # [B, D]
    return jnp.einsum('bhwd,bd->bhw', p.astype(jnp.float32), columns)

  def __call__(self, f: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    b = self.neck(f, use_running_average=not train) if self.bnneck else f
    b = b.astype(jnp.float32)
    return b, self.class_scores(b)


class CCA(nn.Module):
  """Cross-domain class awareness at one stage. `t [B, h, w, C] -> [B, h, w, C]`.

  rule 'paper' (Eq. 10-13): P = BN(conv1x1(t)) with D channels (the classifier's input width);
  A = sigmoid(FC_class(P)) of the label's class; in training P' = P * A of the other domain
  (`exchange_maps`), at test P' = P; t + ReLU(BN(conv1x1(P'))).
  rule 'code' (reference §2.4): M = FC_class(W_s t) per pixel (W_s bias-free, N(0, 0.001), no
  BN); the class k = argmax of M's spatial mean (the predicted class, computed as the classifier
  of the projected spatial mean: the same numbers, the map is linear); A = sigmoid(ReLU(M_k));
  training t + 0.05 t * A(other domain, identity mean) + 0.05 t * A, test t + 0.1 t * A.
  Works for any h, w (the code's avg_pool(kernel=h) needs square maps).

  Measured (README, DNDM study): the paper's rule gates training features with a map computed
  from the label, so the network can read the label through it: on the synthetic day/night set
  the training CE falls to ~0.02 while the test features (no exchange) stay at chance. The 'code'
  rule (predicted class) does not have that path.
  """
  features: int                     # D, the classifier input width
  rule: str = 'paper'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array, head: ClassifierHead, modality: jax.Array, pid: jax.Array,
               train: bool) -> jax.Array:
    c = t.shape[-1]
    if self.rule == 'paper':
      # No official code for this rule: its convs start as torch's Conv2d would (the house
      # rule for layers without one), as every other added layer of the family does.
      p = initializers.torch_conv(self.features, (1, 1), c, use_bias=False, dtype=self.dtype,
                                  param_dtype=jnp.float32, name='project')(t)
      p = resnet.batch_norm(train, self.dtype, 'project_bn')(p)
      if train:
        a = jax.nn.sigmoid(head.class_maps(p, pid))                        # label's map [B, h, w]
        p = p * exchange_maps(a, modality, pid)[..., None].astype(p.dtype)
      back = initializers.torch_conv(c, (1, 1), self.features, use_bias=False, dtype=self.dtype,
                                     param_dtype=jnp.float32, name='back_project')(p)
      return t + nn.relu(resnet.batch_norm(train, self.dtype, 'back_project_bn')(back))
    project = nn.Dense(self.features, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=initializers.CLASSIFIER, name='project')
    p = project(t)
    k = jnp.argmax(head.class_scores(project(jnp.mean(t, axis=(1, 2)))), axis=-1)
    a = jax.nn.sigmoid(nn.relu(head.class_maps(p, k)))                   # [B, h, w] in [0.5, 1)
    own = a[..., None].astype(t.dtype)
    if not train:
      return t + CODE_CCA_TEST * own * t
    other = exchange_maps(a, modality, pid)[..., None].astype(t.dtype)
    return t + CODE_CCA_TRAIN * t * other + CODE_CCA_TRAIN * t * own


# ----------------------------------------------------------------------------- model


class DNDM(nn.Module):
  """See the module docstring. `apply(variables, image, modality, glare, pid, train)`."""
  num_classes: int
  depth: int = 50
  last_stride: int = 1
  width_multiplier: float = 1.0
  dtype: str = 'float32'
  stem_pool: str = '2x2'            # '2x2' paper Eq. 3 | '3x3' code
  ngs: bool = True                  # Table 3 switches
  dse: bool = True
  cca: bool = True
  enhance_stages: tuple[int, ...] = (1, 2, 3, 4)   # stages followed by DSE + CCA (Table 4)
  ngs_alpha: float = 0.5            # alpha of Eq. 6 (Fig. 4)
  ngs_relu: bool = False            # code: ReLU before the sigmoid
  dse_rule: str = 'paper'
  dse_window: int = 5               # N of Eq. 7
  dse_beta: float = 0.25            # beta of Eq. 9 (Fig. 4)
  cca_rule: str = 'paper'
  pooling: str = 'avg'              # 'avg' (GAP, paper) | 'gem' (code)
  gem_p: float = 3.0
  bnneck: bool = True               # BNNeck before the classifier (BOT / code; docstring)
  neck_feat: str = 'after'          # test embedding with a BNNeck: 'after' | 'before'

  def __post_init__(self):
    _check_choice(self.dtype, tuple(facenet.DTYPES), 'dtype')
    _check_choice(self.stem_pool, resnet.STEM_POOLS, 'stem_pool')
    _check_choice(self.dse_rule, RULES, 'dse_rule')
    _check_choice(self.cca_rule, RULES, 'cca_rule')
    _check_choice(self.pooling, POOLINGS, 'pooling')
    _check_choice(self.neck_feat, heads.NECK_FEATS, 'neck_feat')
    _check_choice(self.last_stride, (1, 2), 'last_stride')
    resnet.check_depth(self.depth)
    resnet.check_width_multiplier(self.width_multiplier)
    stages = tuple(self.enhance_stages)
    if any(s not in (1, 2, 3, 4) for s in stages) or len(set(stages)) != len(stages):
      raise ValueError(f'config.model.enhance_stages={stages!r}: distinct stages from 1..4')
    if self.dse_window < 3 or self.dse_window % 2 == 0:
      raise ValueError(f'config.model.dse_window={self.dse_window!r} must be odd and >= 3')
    if self.num_classes < 1:
      raise ValueError(f'num_classes={self.num_classes!r} must be >= 1')
    super().__post_init__()

  @nn.compact
  def __call__(self, image: jax.Array, modality: jax.Array, glare: jax.Array, pid: jax.Array,
               train: bool = False) -> dict[str, Any]:
    dtype = facenet.DTYPES[self.dtype]
    backbone = two_stem_resnet.TwoStemResNet(self.depth, self.last_stride, self.width_multiplier,
                                             dtype=dtype, stem_pool=self.stem_pool,
                                             name='backbone')
    width = resnet.stage_channels(self.depth, self.width_multiplier)[3]
    head = ClassifierHead(self.num_classes, width, self.bnneck, dtype, name='head')
    x = backbone.forward_stem(image, modality, train)
    out: dict[str, Any] = {}
    if self.ngs:
      mask = pool_glare(glare, self.stem_pool)
      if mask.shape != x.shape[:3]:
        raise ValueError(f'glare mask pooled to {mask.shape[1:]} but the stem output is '
                         f'{x.shape[1:3]}: config.data.image_size must be divisible by 4')
      x, out['ngs_map'] = NGS(self.ngs_alpha, self.ngs_relu, dtype, name='ngs')(x, mask)
    dse = dse_paper if self.dse_rule == 'paper' else dse_code
    for stage in range(1, 5):
      x = backbone.forward_stage(stage, x, train)
      if stage in self.enhance_stages:
        if self.dse:
          x = dse(x, self.dse_window, self.dse_beta)
        if self.cca:
          x = CCA(width, self.cca_rule, dtype, name=f'cca{stage}')(x, head, modality, pid, train)
    if self.pooling == 'gem':
      f = two_stem_resnet.gem_pool(x, self.gem_p)
    else:
      f = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    b, logits = head(f, train)
    chosen = b if (self.bnneck and self.neck_feat == 'after') else f
    out.update(features={BRANCH: f}, bn_features={BRANCH: b}, logits={BRANCH: logits},
               embedding=chosen)
    return out


def attention_loss(ngs_map: jax.Array, modality: jax.Array) -> jax.Array:
  """The official `AttentionLoss` (not in the paper): with a second sigmoid,
  1/2 [-mean log(1 - sigmoid(a_day)) - mean log sigmoid(a_night)], means over the pixels of the
  day / night rows. `ngs_map [B, h, w], modality [B] -> scalar`."""
  a = ngs_map.astype(jnp.float32)
  night = (modality == 1).astype(jnp.float32)[:, None, None] * jnp.ones_like(a)
  day = 1.0 - night
  day_term = jnp.sum(day * jax.nn.softplus(a)) / jnp.maximum(jnp.sum(day), 1.0)       # -log(1-s(a))
  night_term = jnp.sum(night * jax.nn.softplus(-a)) / jnp.maximum(jnp.sum(night), 1.0)  # -log s(a)
  return 0.5 * (day_term + night_term)


def dndm_loss_bundle(outputs: Mapping[str, Any], batch: Mapping[str, jax.Array],
                     loss_config: ml_collections.ConfigDict
                     ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """'id' (CE), 'triplet' (`loss.triplet_kind`: 'cross_domain' paper Eq. 2, 'batch_hard' code)
  and, with `loss.ngs_attention_weight` > 0 and NGS on, 'attention' (`attention_loss`)."""
  facenet.check_single_branch_loss(loss_config, 'DNDM')
  terms, metrics = facenet.reid_terms(outputs, batch['pid'], loss_config, (BRANCH,),
                                      domains=batch['modality'])
  if loss_config.ngs_attention_weight > 0 and 'ngs_map' in outputs:
    metrics['attention'] = attention_loss(outputs['ngs_map'], batch['modality'])
    terms['attention'] = loss_config.ngs_attention_weight * metrics['attention']
  return facenet.float32_terms(terms, metrics)


registry.register(registry.ModelSpec(
    name='dndm', module=DNDM, loss_bundle=dndm_loss_bundle, batch=batches.DAY_NIGHT_IMAGES,
    load_pretrained=agw.load_imagenet_backbone,
    description='DNDM: two-stem ResNet-50 + NGS, DSE, CCA; CE + cross-domain triplet'))
