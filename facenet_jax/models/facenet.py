"""FACENet: three unshared ResNet streams + MFMP/FCE + BNNeck heads (paper Sec. 3, Fig. 2).

Forward pass (`FACENet.__call__`), all maps NHWC:

  1. Each stream s in (rgb, ni, ti) runs its own ResNet (`backbone_{s}`) up to stage
     `plugin_layer` (paper Table 4; 4 = after layer4, the default).
  2. MFMP (Sec. 3.2, Eqs. 2-6, `modules.MFMP`) predicts the RGB and NI flare masks and the SMP flare
     logits from the RGB and NI maps.
  3. FCE (Sec. 3.3, Eq. 7, `modules.flare_aware_enhancement`) replaces the masked RGB / NI content
     with the TI map for flared samples; flare-free samples keep their own maps. TI is unchanged.
  4. The remaining stages plugin_layer+1..4 run on the (enhanced) maps.
  5. Per stream: GAP -> feature g_s [B, D]; BNNeck (BatchNorm with no bias) -> b_s; bias-free
     classifier -> logits_s. The test-time embedding is concat(g_R, g_N, g_T) (or of b_s with
     `neck_feat='after'`), L2-normalised as one 3D vector (official evaluation).

Switches (paper Table 2 / Table 4 ablations): `mfmp`, `fmi`, `fce`, `plugin_layer`. The baseline
(mfmp = fce = False) is three plain ResNet streams with BNNeck heads; `fmi` is ignored when
`mfmp` is off. FCE needs the MFMP masks, so fce without mfmp is rejected.

Two registered models (`config.model.name`):
  'facenet'      `FACENet`, the paper's ResNet streams (configs/default.py);
  'facenet_vit'  `FACENetViT`, the official code's three ViT-B/16 streams with token
                 cross-attention MFMP and copied last-block heads (configs/official_*.py).
Both share the switches, the output contract, the loss bundle (`facenet_loss_bundle`) and the
aligned-triplet batch contract. Every module field is a `config.model` field of the same name,
checked once in `__post_init__`.

FCE gate at test time (`test_time_fce`): each sample's own pseudo-label decides, so an embedding
never depends on the rest of its batch (unless `bug_batch_level_gating` reproduces the official
any-sample-in-the-batch gate). `fce_gate='all'` is a control for studies: FCE enhances every RGB
and NI sample whatever its label, in training and at test time.

`FACENet.width_multiplier` scales the ResNet streams (and so MFMP's C) for small studies; the
pretrained loader takes only 1 (ImageNet weights have the standard widths).
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from facenet_jax import batches
from facenet_jax import losses
from facenet_jax.models import heads
from facenet_jax.models import mfmp as mfmp_lib
from facenet_jax.models import registry
from facenet_jax.models import resnet
from facenet_jax.models import vit
from facenet_jax.models import vit_mfmp

STREAMS = batches.MODALITIES
# Names of each stream's backbone in the parameter tree (used by facenet_jax.pretrained).
BACKBONE_NAMES = {s: f'backbone_{s}' for s in STREAMS}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _check_choice(value: Any, choices: tuple[Any, ...], field: str) -> None:
  if value not in choices:
    raise ValueError(f'config.model.{field}={value!r} must be one of {choices}')


def _check_flare_switches(m: nn.Module) -> None:
  """The checks both FACENet variants share (their fields of the same names)."""
  _check_choice(m.dtype, tuple(DTYPES), 'dtype')
  if m.fce and not m.mfmp:
    raise ValueError('config.model.fce=True needs config.model.mfmp=True: FCE (Eq. 7) uses the '
                     'masks predicted by MFMP.')
  _check_choice(m.mask_estimator, mfmp_lib.MASK_ESTIMATORS, 'mask_estimator')
  _check_choice(m.flare_head_input, mfmp_lib.FLARE_HEAD_INPUTS, 'flare_head_input')
  _check_choice(m.neck_feat, heads.NECK_FEATS, 'neck_feat')
  _check_choice(m.fce_gate, mfmp_lib.FCE_GATES, 'fce_gate')
  if not m.mask_temperature > 0:
    raise ValueError(f'config.model.mask_temperature={m.mask_temperature!r} must be > 0.')
  if m.num_classes < 1:
    raise ValueError(f'num_classes={m.num_classes!r} must be >= 1')


def _flare_outputs(mf: Mapping[str, Any]) -> dict[str, Any]:
  return {'flare_logits': mf['flare_logits'], 'masks': mf['masks'], 'threshold': mf['threshold']}


class FACENet(nn.Module):
  """The multi-spectral re-id model. See the module docstring.

  Call: `apply(variables, rgb, ni, ti, flare, train, mutable=['batch_stats'] when train)` with
  rgb/ni/ti: [B, H, W, 3] float32 and flare: [B, 2] int32 (col 0 RGB bit, col 1 NI bit). Returns
  the output contract of `heads.branch_outputs` ('features', 'bn_features', 'logits' per stream,
  'embedding' [B, 3D]) and, when `mfmp` is on,
    'flare_logits': {'rgb','ni'}: [B, 2]        SMP flare classifier (trained by L_f, Eq. 1)
    'masks':        {'rgb','ni'}: [B, h, w, C]  the masks used by FCE
    'threshold':    scalar                      Delta
  """
  num_classes: int
  depth: int = 50                   # ResNet depth: 18 | 34 | 50 | 101
  last_stride: int = 1
  width_multiplier: float = 1.0     # scales every ResNet width (and MFMP's C); 1 = the paper's
  dtype: str = 'float32'            # computation dtype; parameters stay float32
  mfmp: bool = True
  fmi: bool = True
  fce: bool = True
  fce_gate: str = 'label'           # FCE on flared samples ('label') or on every sample ('all')
  plugin_layer: int = 4
  fmi_hidden_ratio: float = 0.25
  fmi_attention_ratio: float = 0.0625
  mask_estimator: str = 'sigmoid'
  mask_temperature: float = 1.0
  flare_head_input: str = 'mask'
  test_time_fce: bool = True
  neck_feat: str = 'before'
  mask_similarity: str = 'sigmoid'
  flare_head_bias: bool = True
  identical_stream_init: bool = True
  bug_rgb_uses_ni_mask: bool = False
  bug_batch_level_gating: bool = False
  bug_dead_threshold: bool = False
  conv_formulation: str = 'auto'    # how the streams' convolutions run on accelerators (resnet.py)

  def __post_init__(self):
    _check_flare_switches(self)
    _check_choice(self.mask_similarity, mfmp_lib.MASK_SIMILARITIES, 'mask_similarity')
    resnet.check_depth(self.depth)
    resnet.check_width_multiplier(self.width_multiplier)
    resnet.check_conv_formulation(self.conv_formulation)
    _check_choice(self.plugin_layer, (1, 2, 3, 4), 'plugin_layer')
    _check_choice(self.last_stride, (1, 2), 'last_stride')
    super().__post_init__()

  def setup(self):
    dtype = DTYPES[self.dtype]
    self.backbones = {s: resnet.ResNet(self.depth, self.last_stride, dtype,
                                       self.width_multiplier, self.conv_formulation,
                                       name=BACKBONE_NAMES[s])
                      for s in STREAMS}
    if self.mfmp:
      channels = resnet.stage_channels(self.depth, self.width_multiplier)[self.plugin_layer - 1]
      self.mfmp_module = mfmp_lib.MFMP(
          features=channels, fmi=self.fmi, hidden_ratio=self.fmi_hidden_ratio,
          attention_ratio=self.fmi_attention_ratio, mask_estimator=self.mask_estimator,
          mask_temperature=self.mask_temperature, flare_head_input=self.flare_head_input,
          dead_threshold=self.bug_dead_threshold, mask_similarity=self.mask_similarity,
          flare_head_bias=self.flare_head_bias, dtype=dtype, name='mfmp')
    self.heads = {s: heads.BNNeckHead(self.num_classes, dtype, name=f'head_{s}')
                  for s in STREAMS}

  def __call__(self, rgb: jax.Array, ni: jax.Array, ti: jax.Array, flare: jax.Array,
               train: bool = False) -> dict[str, Any]:
    x = {'rgb': rgb, 'ni': ni, 'ti': ti}
    x = {s: self.backbones[s].forward_stem(x[s], train) for s in STREAMS}
    for index in range(1, self.plugin_layer + 1):
      x = {s: self.backbones[s].forward_stage(index, x[s], train) for s in STREAMS}

    outputs: dict[str, Any] = {}
    if self.mfmp:
      mf = self.mfmp_module(x['rgb'], x['ni'], train)
      outputs.update(_flare_outputs(mf))
      if self.fce and (train or self.test_time_fce):
        x = mfmp_lib.enhance_streams(x, mf['masks'], flare, self.bug_rgb_uses_ni_mask,
                                     self.bug_batch_level_gating, self.fce_gate)

    for index in range(self.plugin_layer + 1, 5):
      x = {s: self.backbones[s].forward_stage(index, x[s], train) for s in STREAMS}
    pooled = {s: jnp.mean(x[s].astype(jnp.float32), axis=(1, 2)) for s in STREAMS}  # GAP
    outputs.update(heads.branch_outputs(pooled, self.heads, self.neck_feat, train))
    return outputs


class FACENetViT(nn.Module):
  """The official code's FACENet: three ViT-B/16 streams, token MFMP/FCE, block-12 heads.

  Same call and outputs as `FACENet` (reference Sec. 1.2-1.3):
    1. Each stream runs its own ViT (`backbone_{s}`, `vit.ViT`) up to block depth-2: all tokens
       [B, 1 + n, D]; split into CLS c_s [B, 1, D] and the patch grid Z_s [B, gh, gw, D].
    2. MFMP (`vit_mfmp.TokenMFMP`, name 'mfmp'): RGB <- NI and NI <- RGB cross-attention
       gives Z_hat_s; masks M_s from Z_hat_s and Delta; flare heads on [c_s; Z_hat_s].
    3. FCE (Eq. 7, the shared `mfmp.enhance_streams`) on the token grid, with the same gates and
       bug switches as the ResNet path; TI is unchanged.
    4. Branch head s (`vit_head_{s}`, a copy of the last block + final LayerNorm) on
       [c_s; Z'_s]; its CLS output is the feature g_s -> BNNeck + classifier (`head_{s}`).
  'masks' are [B, gh, gw, D] (the row-major patch grid) and the features [B, D]. `fmi=False`
  skips the cross-attention (Z_hat_s = Z_s); `mfmp=False` is three plain ViT streams with their
  heads. Dropout and drop path draw from the 'dropout' rng in training.
  """
  num_classes: int
  dtype: str = 'float32'
  mfmp: bool = True
  fmi: bool = True
  fce: bool = True
  fce_gate: str = 'label'           # FCE on flared samples ('label') or on every sample ('all')
  mask_estimator: str = 'sigmoid'
  mask_temperature: float = 1.0
  flare_head_input: str = 'mask'
  test_time_fce: bool = True
  neck_feat: str = 'before'
  flare_head_bias: bool = True
  identical_stream_init: bool = True
  bug_rgb_uses_ni_mask: bool = False
  bug_batch_level_gating: bool = False
  bug_dead_threshold: bool = False
  patch_size: int = 16              # patch side and stride (non-overlapping patches)
  embed_dim: int = 768              # token width D
  depth: int = 12                   # blocks; streams run 0..depth-2, heads copy the last one
  num_heads: int = 12
  mlp_ratio: float = 4.0
  drop_path: float = 0.1            # stochastic depth of the last block (linear from 0)
  cross_attention_heads: int = 16
  cross_attention_dim_head: int = 768
  cross_attention_split: str = 'official'
  cross_attention_dropout: float = 0.5

  def __post_init__(self):
    _check_flare_switches(self)
    for field in ('patch_size', 'embed_dim', 'depth', 'num_heads', 'cross_attention_heads',
                  'cross_attention_dim_head'):
      value = getattr(self, field)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f'config.model.{field}={value!r} must be a positive integer.')
    if self.depth < 2:
      raise ValueError(f'config.model.depth={self.depth!r} must be >= 2: the streams run blocks '
                       '0..depth-2 and the heads copy the last block.')
    if self.embed_dim % self.num_heads:
      raise ValueError(f'config.model.embed_dim={self.embed_dim} must be a multiple of '
                       f'config.model.num_heads={self.num_heads}.')
    _check_choice(self.cross_attention_split, vit_mfmp.SPLITS, 'cross_attention_split')
    for field in ('drop_path', 'cross_attention_dropout'):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise ValueError(f'config.model.{field}={getattr(self, field)!r} must be in [0, 1).')
    super().__post_init__()

  @nn.compact
  def __call__(self, rgb: jax.Array, ni: jax.Array, ti: jax.Array, flare: jax.Array,
               train: bool = False) -> dict[str, Any]:
    dtype = DTYPES[self.dtype]
    gh, gw = vit.grid_size(rgb.shape[1:3], self.patch_size)
    # The heads copy the last block, which keeps the last (largest) drop-path rate.
    head_rate = vit.drop_path_rate(self.depth - 1, self.depth, self.drop_path)
    x = {'rgb': rgb, 'ni': ni, 'ti': ti}
    tokens = {s: vit.ViT(self.embed_dim, self.depth, self.num_heads, self.mlp_ratio,
                         self.patch_size, self.drop_path, dtype,
                         name=BACKBONE_NAMES[s])(x[s], train) for s in STREAMS}
    b = rgb.shape[0]
    cls = {s: tokens[s][:, :1] for s in STREAMS}
    grid = {s: tokens[s][:, 1:].reshape(b, gh, gw, self.embed_dim) for s in STREAMS}

    outputs: dict[str, Any] = {}
    if self.mfmp:
      flare_streams = batches.FLARE_MODALITIES
      mf = vit_mfmp.TokenMFMP(
          self.num_heads, self.mlp_ratio, head_rate, self.fmi, self.cross_attention_heads,
          self.cross_attention_dim_head, self.cross_attention_split,
          self.cross_attention_dropout, self.mask_estimator, self.mask_temperature,
          self.flare_head_input, self.bug_dead_threshold, self.flare_head_bias, dtype,
          name='mfmp')(
              {s: cls[s] for s in flare_streams}, {s: grid[s] for s in flare_streams}, train)
      outputs.update(_flare_outputs(mf))
      if self.fce and (train or self.test_time_fce):
        grid = mfmp_lib.enhance_streams(grid, mf['masks'], flare, self.bug_rgb_uses_ni_mask,
                                        self.bug_batch_level_gating, self.fce_gate)

    pooled = {}
    for s in STREAMS:
      seq = jnp.concatenate([cls[s], grid[s].reshape(b, gh * gw, self.embed_dim)], axis=1)
      pooled[s] = vit.TokenHead(self.num_heads, self.mlp_ratio, head_rate, dtype,
                                name=f'vit_head_{s}')(seq, train)
    branch_heads = {s: heads.BNNeckHead(self.num_classes, dtype, name=f'head_{s}')
                    for s in STREAMS}
    outputs.update(heads.branch_outputs(pooled, branch_heads, self.neck_feat, train))
    return outputs


# ----------------------------------------------------------------------------------- loss bundle
FLARE_LOSSES = ('bce', 'official_kl')
IC_VARIANTS = ('paper', 'official')
RELATIONS = ('none', '3m', 'cdc', 'hc')


def _flare_term(flare_logits: Mapping[str, jax.Array], flare_labels: jax.Array,
                loss_config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_f (Eq. 1, or the official KL) and the flare heads' accuracies against the pseudo-label."""
  rgb_flare, ni_flare = flare_logits['rgb'], flare_logits['ni']
  flare_labels = flare_labels.astype(jnp.int32)
  if flare_labels.ndim != 2 or flare_labels.shape[1] != 2:
    raise ValueError(f"batch['flare'] must have shape [B, 2], got {tuple(flare_labels.shape)}")
  if loss_config.flare_loss == 'bce':
    # Eq. 1 on each flare-susceptible modality with its own pseudo-label, summed.
    flare = (losses.flare_loss(rgb_flare, flare_labels[:, 0]) +
             losses.flare_loss(ni_flare, flare_labels[:, 1]))
  else:
    flare = losses.official_flare_loss(rgb_flare, ni_flare)
  metrics = {'flare_acc_rgb': losses.top1_accuracy(rgb_flare, flare_labels[:, 0]),
             'flare_acc_ni': losses.top1_accuracy(ni_flare, flare_labels[:, 1])}
  metrics['flare_acc'] = 0.5 * (metrics['flare_acc_rgb'] + metrics['flare_acc_ni'])
  return flare, metrics


def _relation_term(features: Mapping[str, jax.Array], labels: jax.Array,
                   loss_config: ml_collections.ConfigDict) -> jax.Array:
  """The Table 5 relation loss named by `loss.relation` ('3m', 'cdc' or 'hc')."""
  f_r, f_n, f_t = features['rgb'], features['ni'], features['ti']
  if loss_config.relation == '3m':
    return losses.three_m_loss(f_r, f_n, f_t, labels)
  if loss_config.relation == 'cdc':
    return losses.cdc_loss(f_r, f_n, f_t, labels)
  return losses.hetero_center_loss(f_r, f_n, labels, distance=loss_config.hc_distance)


def check_single_branch_loss(loss_config: ml_collections.ConfigDict, model: str) -> None:
  """Refuses the FACENet-only terms (IC, relation) for a model without modality branches."""
  if loss_config.ic:
    raise ValueError(f'config.loss.ic=True: the IC loss compares FACENet branches; {model} has '
                     'none: set config.loss.ic=False.')
  if loss_config.relation != 'none':
    raise ValueError(f'config.loss.relation={loss_config.relation!r} needs several modality '
                     f"branches; {model} has one: set config.loss.relation='none'.")


def float32_terms(terms: Mapping[str, jax.Array], metrics: Mapping[str, jax.Array]
                  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """A loss bundle's (terms, metrics) as float32 scalars."""
  return ({k: v.astype(jnp.float32) for k, v in terms.items()},
          {k: v.astype(jnp.float32) for k, v in metrics.items()})


def reid_terms(outputs: Mapping[str, Any], labels: jax.Array,
               loss_config: ml_collections.ConfigDict, branches: tuple[str, ...],
               domains: jax.Array | None = None
               ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """The re-id terms every model shares, over the model's `branches` (s):

    id      = id_weight * sum_s CE_s         (Eq. 9, label-smoothed by `loss.label_smoothing`)
    triplet = triplet_weight * sum_s Tri_s   (Eq. 11, batch-hard, on the pre-BNNeck features;
                                              `loss.triplet_kind='wrt'`: AGW's weighted triplet)

  outputs: 'features' {s: [B, D]} and 'logits' {s: [B, num_classes]} (a missing branch is a
  KeyError naming it); labels: [B] int identities; domains: [B] modality per row, needed by
  `loss.triplet_kind='cross_domain'` only. Returns (terms, metrics) with the unweighted
  'id_<s>', 'triplet_<s>' and top-1 accuracies 'acc_<s>' of every branch as metrics.
  """
  features, logits = outputs['features'], outputs['logits']
  margin = None if loss_config.triplet_soft_margin else loss_config.triplet_margin
  metrics: dict[str, jax.Array] = {}
  for s in branches:
    metrics[f'id_{s}'] = losses.cross_entropy_loss(logits[s], labels,
                                                    loss_config.label_smoothing)
    metrics[f'triplet_{s}'] = losses.triplet_loss(
        features[s], labels, loss_config.triplet_kind, margin,
        normalize=loss_config.triplet_normalize, domains=domains)
    metrics[f'acc_{s}'] = losses.top1_accuracy(logits[s], labels)
  terms = {
      'id': loss_config.id_weight * sum(metrics[f'id_{s}'] for s in branches),
      'triplet': loss_config.triplet_weight * sum(metrics[f'triplet_{s}'] for s in branches),
  }
  return terms, metrics


def facenet_loss_bundle(outputs: Mapping[str, Any], batch: Mapping[str, jax.Array],
                        loss_config: ml_collections.ConfigDict
                        ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """The training objective (Eq. 13) as weighted terms; the loss is their sum.

    id       = id_weight * sum_s CE_s            (Eq. 9, s in rgb, ni, ti)
    triplet  = triplet_weight * sum_s Tri_s       (Eq. 11, on the pre-BNNeck features)
    flare    = flare_weight * L_f                 (Eq. 1; present when the model has MFMP)
    ic       = ic_weight * L_IC                   (Eq. 8; when loss.ic)
    relation = relation_weight * L_rel            (Table 5; when loss.relation != 'none')

  Args:
    outputs: the model's output contract; 'flare_logits' {rgb, ni}: [B, 2] when it has MFMP.
    batch: 'pid' [B] int labels; 'flare' [B, 2] int pseudo-labels (column 0 RGB, column 1 NI).
    loss_config: `config.loss`.

  Returns:
    (terms, metrics): `terms` the weighted scalars above (only those switched on); `metrics` the
    unweighted per-branch 'id_<s>', 'triplet_<s>', top-1 accuracies 'acc_<s>' and, with MFMP,
    'flare_acc_rgb', 'flare_acc_ni' and their mean 'flare_acc' against the pseudo-label.
  """
  for field, choices in (('flare_loss', FLARE_LOSSES), ('ic_variant', IC_VARIANTS),
                         ('relation', RELATIONS)):
    if loss_config[field] not in choices:
      raise ValueError(f'config.loss.{field} must be one of {choices}, got '
                       f'{loss_config[field]!r}')
  labels = batch['pid']
  features, logits = outputs['features'], outputs['logits']
  terms, metrics = reid_terms(outputs, labels, loss_config, STREAMS)

  if 'flare_logits' in outputs:
    flare, flare_metrics = _flare_term(outputs['flare_logits'], batch['flare'], loss_config)
    terms['flare'] = loss_config.flare_weight * flare
    metrics.update(flare_metrics)

  if loss_config.ic:
    if loss_config.ic_variant == 'paper':
      ic = losses.ic_loss(logits['rgb'], logits['ni'])
    else:
      ic = losses.official_ic_loss(logits['rgb'], logits['ni'], logits['ti'])
    terms['ic'] = loss_config.ic_weight * ic

  if loss_config.relation != 'none':
    terms['relation'] = loss_config.relation_weight * _relation_term(features, labels,
                                                                     loss_config)
  return ({k: v.astype(jnp.float32) for k, v in terms.items()},
          {k: v.astype(jnp.float32) for k, v in metrics.items()})


# -------------------------------------------------------------------------------- registration
def _identical_streams(model: nn.Module, variables: dict[str, Any]) -> dict[str, Any]:
  """With `model.identical_stream_init`, the NI and TI streams start as copies of the RGB one.

  The paper starts all three streams from the same ImageNet weights and the official code deep-
  copies one stream; Eq. 7 swaps TI channel c into RGB/NI channel c, which only means something
  when the streams start alike. Random initialisation would otherwise give three unrelated
  streams. (Pretrained weights, loaded afterwards, are the same for all three anyway.)
  """
  if not model.identical_stream_init:
    return variables
  out = dict(variables)
  for collection, tree in variables.items():
    if BACKBONE_NAMES['rgb'] in tree:
      tree = dict(tree)
      for s in STREAMS[1:]:
        tree[BACKBONE_NAMES[s]] = tree[BACKBONE_NAMES['rgb']]
      out[collection] = tree
  return out


# pretrained imports this module (stream names), so it is imported when weights are loaded.
def _load_resnet_streams(variables, path, model_config, image_size):
  from facenet_jax import pretrained  # pylint: disable=g-import-not-at-top
  pretrained.check_standard_width(model_config)
  backbone = pretrained.load_pretrained_backbone(path, model_config.depth)
  return pretrained.init_streams_from_pretrained(variables, backbone, image_size)


def _load_vit_streams(variables, path, model_config, image_size):
  del model_config
  from facenet_jax import pretrained  # pylint: disable=g-import-not-at-top
  vit_params = pretrained.load_pretrained_vit(path)['params']
  return pretrained.init_vit_streams_from_pretrained(variables, vit_params, image_size)


registry.register(registry.ModelSpec(
    name='facenet', module=FACENet, loss_bundle=facenet_loss_bundle,
    batch=batches.ALIGNED_TRIPLETS, load_pretrained=_load_resnet_streams,
    finalize_init=_identical_streams, description='FACENet (paper): three ResNet streams, MFMP + FCE, BNNeck heads'))
registry.register(registry.ModelSpec(
    name='facenet_vit', module=FACENetViT, loss_bundle=facenet_loss_bundle,
    batch=batches.ALIGNED_TRIPLETS, load_pretrained=_load_vit_streams,
    finalize_init=_identical_streams, description='FACENet (official code): three ViT-B/16 streams, token cross-attention MFMP'))
