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
`mfmp` is off. FCE needs the MFMP masks, so fce without mfmp is rejected by `build_model`.

`model.backbone='vit_b16'` builds `FACENetViT` instead: the official code's three ViT-B/16 streams
with token cross-attention MFMP and copied last-block heads (see its docstring), with the same
switches, outputs and drivers.

FCE gate at test time (`test_time_fce`): each sample's own pseudo-label decides, so an embedding
never depends on the rest of its batch (unless `bug_batch_level_gating` reproduces the official
any-sample-in-the-batch gate).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from facenet_jax.models import cross_attention
from facenet_jax.models import modules
from facenet_jax.models import resnet
from facenet_jax.models import vit

STREAMS = ('rgb', 'ni', 'ti')
# Names of each stream's ResNet in the parameter tree (used by facenet_jax.pretrained).
BACKBONE_NAMES = {s: f'backbone_{s}' for s in STREAMS}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
NECK_FEATS = ('before', 'after')
BACKBONES = ('resnet', 'vit_b16')


class BNNeckHead(nn.Module):
  """BNNeck + classifier. `g: [B, D] -> (b: [B, D], logits: [B, num_classes])`, both float32.

  The BNNeck's bias is frozen at zero in the reference implementations (torch: bias 0 with
  requires_grad False). Here the BatchNorm simply has no bias parameter (`use_bias=False`), so no
  optimiser, weight decay or gradient can move it. Momentum 0.9 (torch 0.1), eps 1e-5.
  """
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, g: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    b = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=True,
                     momentum=resnet.BN_MOMENTUM, epsilon=resnet.BN_EPSILON, dtype=self.dtype,
                     param_dtype=jnp.float32, name='bnneck')(g)
    logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype,
                      param_dtype=jnp.float32, kernel_init=nn.initializers.normal(0.001),
                      name='classifier')(b)
    return b.astype(jnp.float32), logits.astype(jnp.float32)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Row-wise x / max(||x||, eps), like torch.nn.functional.normalize. `[B, D] -> [B, D]`."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


class FACENet(nn.Module):
  """The multi-spectral re-id model. See the module docstring; build it with `build_model`.

  Call: `apply(variables, rgb, ni, ti, flare, train, mutable=['batch_stats'] when train)` with
  rgb/ni/ti: [B, H, W, 3] float32 and flare: [B, 2] int32 (col 0 RGB bit, col 1 NI bit). Returns
    'features':     {'rgb','ni','ti'}: [B, D]  GAP features before the BNNeck (float32)
    'bn_features':  {'rgb','ni','ti'}: [B, D]  after the BNNeck
    'logits':       {'rgb','ni','ti'}: [B, num_classes]
    'embedding':    [B, 3D]  L2-normalised concat of the three features (per `neck_feat`)
  and, when `mfmp` is on,
    'flare_logits': {'rgb','ni'}: [B, 2]        SMP flare classifier (trained by L_f, Eq. 1)
    'masks':        {'rgb','ni'}: [B, h, w, C]  the masks used by FCE
    'threshold':    scalar                      Delta
  """
  num_classes: int
  depth: int = 50
  last_stride: int = 1
  dtype: Any = jnp.float32
  mfmp: bool = True
  fmi: bool = True
  fce: bool = True
  plugin_layer: int = 4
  fmi_hidden_ratio: float = 0.25
  fmi_attention_ratio: float = 0.0625
  mask_estimator: str = 'sigmoid'
  mask_temperature: float = 1.0
  flare_head_input: str = 'mask'
  test_time_fce: bool = True
  neck_feat: str = 'before'
  bug_rgb_uses_ni_mask: bool = False
  bug_batch_level_gating: bool = False
  bug_dead_threshold: bool = False

  def setup(self):
    if self.fce and not self.mfmp:
      raise ValueError('model.fce=True needs model.mfmp=True: FCE (Eq. 7) uses the MFMP masks.')
    if self.plugin_layer not in (1, 2, 3, 4):
      raise ValueError(f'model.plugin_layer={self.plugin_layer!r} must be 1, 2, 3 or 4.')
    if self.neck_feat not in NECK_FEATS:
      raise ValueError(f'model.neck_feat={self.neck_feat!r} must be one of {NECK_FEATS}')
    self.backbones = {s: resnet.ResNet(self.depth, self.last_stride, self.dtype,
                                       name=BACKBONE_NAMES[s]) for s in STREAMS}
    if self.mfmp:
      channels = resnet.stage_channels(self.depth)[self.plugin_layer - 1]
      self.mfmp_module = modules.MFMP(
          features=channels, fmi=self.fmi, hidden_ratio=self.fmi_hidden_ratio,
          attention_ratio=self.fmi_attention_ratio, mask_estimator=self.mask_estimator,
          mask_temperature=self.mask_temperature, flare_head_input=self.flare_head_input,
          dead_threshold=self.bug_dead_threshold, dtype=self.dtype, name='mfmp')
    self.heads = {s: BNNeckHead(self.num_classes, self.dtype, name=f'head_{s}') for s in STREAMS}

  def __call__(self, rgb: jax.Array, ni: jax.Array, ti: jax.Array, flare: jax.Array,
               train: bool = False) -> dict[str, Any]:
    x = {'rgb': rgb, 'ni': ni, 'ti': ti}
    x = {s: self.backbones[s].forward_stem(x[s], train) for s in STREAMS}
    for index in range(1, self.plugin_layer + 1):
      x = {s: self.backbones[s].forward_stage(index, x[s], train) for s in STREAMS}

    outputs: dict[str, Any] = {}
    if self.mfmp:
      mf = self.mfmp_module(x['rgb'], x['ni'], train)
      outputs['flare_logits'] = mf['flare_logits']
      outputs['masks'] = mf['masks']
      outputs['threshold'] = mf['threshold']
      if self.fce and (train or self.test_time_fce):
        x = modules.enhance_streams(x, mf['masks'], flare, self.bug_rgb_uses_ni_mask,
                                    self.bug_batch_level_gating)

    for index in range(self.plugin_layer + 1, 5):
      x = {s: self.backbones[s].forward_stage(index, x[s], train) for s in STREAMS}

    features = {s: jnp.mean(x[s].astype(jnp.float32), axis=(1, 2)) for s in STREAMS}  # GAP
    bn_features, logits = {}, {}
    for s in STREAMS:
      bn_features[s], logits[s] = self.heads[s](features[s], train)
    chosen = features if self.neck_feat == 'before' else bn_features
    outputs.update(
        features=features,
        bn_features=bn_features,
        logits=logits,
        embedding=l2_normalize(jnp.concatenate([chosen[s] for s in STREAMS], axis=-1)),
    )
    return outputs


class FACENetViT(nn.Module):
  """The official code's FACENet: three ViT-B/16 streams, token MFMP/FCE, block-12 heads.

  Same call and outputs as `FACENet` (reference Sec. 1.2-1.3):
    1. Each stream runs its own ViT (`backbone_{s}`, `vit.ViT`) up to block depth-2: all tokens
       [B, 1 + n, D]; split into CLS c_s [B, 1, D] and the patch grid Z_s [B, gh, gw, D].
    2. MFMP (`cross_attention.TokenMFMP`, name 'mfmp'): RGB <- NI and NI <- RGB cross-attention
       gives Z_hat_s; masks M_s from Z_hat_s and Delta; flare heads on [c_s; Z_hat_s].
    3. FCE (Eq. 7, the shared `modules.flare_aware_enhancement`) on the token grid, with the same
       gates and bug switches as the ResNet path; TI is unchanged.
    4. Branch head s (`vit_head_{s}`, a copy of the last block + final LayerNorm) on
       [c_s; Z'_s]; its CLS output is the feature g_s -> BNNeck + classifier (`head_{s}`).
  'masks' are [B, gh, gw, D] (the row-major patch grid; D = vit_embed_dim) and the features
  [B, D]. `fmi=False` skips the cross-attention (Z_hat_s = Z_s); `mfmp=False` is three plain ViT
  streams with their heads. Dropout and drop path draw from the 'dropout' rng in training.
  """
  num_classes: int
  dtype: Any = jnp.float32
  mfmp: bool = True
  fmi: bool = True
  fce: bool = True
  mask_estimator: str = 'sigmoid'
  mask_temperature: float = 1.0
  flare_head_input: str = 'mask'
  test_time_fce: bool = True
  neck_feat: str = 'before'
  bug_rgb_uses_ni_mask: bool = False
  bug_batch_level_gating: bool = False
  bug_dead_threshold: bool = False
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  drop_path: float = 0.1
  cross_attention_heads: int = 16
  cross_attention_dim_head: int = 768
  cross_attention_split: str = 'official'
  cross_attention_dropout: float = 0.5

  @nn.compact
  def __call__(self, rgb: jax.Array, ni: jax.Array, ti: jax.Array, flare: jax.Array,
               train: bool = False) -> dict[str, Any]:
    if self.fce and not self.mfmp:
      raise ValueError('model.fce=True needs model.mfmp=True: FCE (Eq. 7) uses the MFMP masks.')
    if self.neck_feat not in NECK_FEATS:
      raise ValueError(f'model.neck_feat={self.neck_feat!r} must be one of {NECK_FEATS}')
    gh, gw = vit.grid_size(rgb.shape[1:3], self.patch_size)
    # The heads copy the last block, which keeps the last (largest) drop-path rate.
    head_rate = vit.drop_path_rate(self.depth - 1, self.depth, self.drop_path)
    x = {'rgb': rgb, 'ni': ni, 'ti': ti}
    tokens = {s: vit.ViT(self.embed_dim, self.depth, self.num_heads, self.mlp_ratio,
                         self.patch_size, self.drop_path, self.dtype,
                         name=BACKBONE_NAMES[s])(x[s], train) for s in STREAMS}
    b = rgb.shape[0]
    cls = {s: tokens[s][:, :1] for s in STREAMS}
    grid = {s: tokens[s][:, 1:].reshape(b, gh, gw, self.embed_dim) for s in STREAMS}

    outputs: dict[str, Any] = {}
    if self.mfmp:
      mf = cross_attention.TokenMFMP(
          self.num_heads, self.mlp_ratio, head_rate, self.fmi, self.cross_attention_heads,
          self.cross_attention_dim_head, self.cross_attention_split,
          self.cross_attention_dropout, self.mask_estimator, self.mask_temperature,
          self.flare_head_input, self.bug_dead_threshold, self.dtype, name='mfmp')(
              {s: cls[s] for s in ('rgb', 'ni')}, {s: grid[s] for s in ('rgb', 'ni')}, train)
      outputs['flare_logits'] = mf['flare_logits']
      outputs['masks'] = mf['masks']
      outputs['threshold'] = mf['threshold']
      if self.fce and (train or self.test_time_fce):
        grid = modules.enhance_streams(grid, mf['masks'], flare, self.bug_rgb_uses_ni_mask,
                                       self.bug_batch_level_gating)

    features, bn_features, logits = {}, {}, {}
    for s in STREAMS:
      seq = jnp.concatenate([cls[s], grid[s].reshape(b, gh * gw, self.embed_dim)], axis=1)
      features[s] = vit.TokenHead(self.num_heads, self.mlp_ratio, head_rate, self.dtype,
                                  name=f'vit_head_{s}')(seq, train)
      bn_features[s], logits[s] = BNNeckHead(self.num_classes, self.dtype,
                                             name=f'head_{s}')(features[s], train)
    chosen = features if self.neck_feat == 'before' else bn_features
    outputs.update(
        features=features,
        bn_features=bn_features,
        logits=logits,
        embedding=l2_normalize(jnp.concatenate([chosen[s] for s in STREAMS], axis=-1)),
    )
    return outputs


def _build_vit_model(model_config: ml_collections.ConfigDict, num_classes: int) -> FACENetViT:
  """`FACENetViT` from `config.model` after checking the ViT and cross-attention fields."""
  for field in ('vit_patch_size', 'vit_embed_dim', 'vit_depth', 'vit_num_heads',
                'cross_attention_heads', 'cross_attention_dim_head'):
    value = model_config[field]
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'config.model.{field}={value!r} must be a positive integer.')
  if model_config.vit_depth < 2:
    raise ValueError(f'config.model.vit_depth={model_config.vit_depth!r} must be >= 2: the '
                     'streams run blocks 0..depth-2 and the heads copy the last block.')
  if model_config.vit_embed_dim % model_config.vit_num_heads:
    raise ValueError(f'config.model.vit_embed_dim={model_config.vit_embed_dim} must be a '
                     f'multiple of config.model.vit_num_heads={model_config.vit_num_heads}.')
  if model_config.cross_attention_split not in cross_attention.SPLITS:
    raise ValueError(f'config.model.cross_attention_split={model_config.cross_attention_split!r}'
                     f' must be one of {cross_attention.SPLITS}')
  for field in ('vit_drop_path', 'cross_attention_dropout'):
    if not 0.0 <= model_config[field] < 1.0:
      raise ValueError(f'config.model.{field}={model_config[field]!r} must be in [0, 1).')
  return FACENetViT(
      num_classes=num_classes,
      dtype=DTYPES[model_config.dtype],
      mfmp=model_config.mfmp,
      fmi=model_config.fmi,
      fce=model_config.fce,
      mask_estimator=model_config.mask_estimator,
      mask_temperature=model_config.mask_temperature,
      flare_head_input=model_config.flare_head_input,
      test_time_fce=model_config.test_time_fce,
      neck_feat=model_config.neck_feat,
      bug_rgb_uses_ni_mask=model_config.bug_rgb_uses_ni_mask,
      bug_batch_level_gating=model_config.bug_batch_level_gating,
      bug_dead_threshold=model_config.bug_dead_threshold,
      patch_size=model_config.vit_patch_size,
      embed_dim=model_config.vit_embed_dim,
      depth=model_config.vit_depth,
      num_heads=model_config.vit_num_heads,
      mlp_ratio=model_config.vit_mlp_ratio,
      drop_path=model_config.vit_drop_path,
      cross_attention_heads=model_config.cross_attention_heads,
      cross_attention_dim_head=model_config.cross_attention_dim_head,
      cross_attention_split=model_config.cross_attention_split,
      cross_attention_dropout=model_config.cross_attention_dropout,
  )


def build_model(model_config: ml_collections.ConfigDict,
                num_classes: int) -> FACENet | FACENetViT:
  """FACENet from `config.model` (fields of configs/default.py) and the number of train ids.

  `model.backbone='resnet'` gives the paper's model (`FACENet`), 'vit_b16' the official code's
  (`FACENetViT`); both share the heads, switches, outputs and drivers.
  """
  if model_config.backbone not in BACKBONES:
    raise ValueError(f'config.model.backbone={model_config.backbone!r} must be one of {BACKBONES}')
  resnet.check_depth(model_config.depth)
  if model_config.dtype not in DTYPES:
    raise ValueError(f'config.model.dtype={model_config.dtype!r} must be one of {tuple(DTYPES)}')
  if model_config.fce and not model_config.mfmp:
    raise ValueError('config.model.fce=True needs config.model.mfmp=True: FCE (Eq. 7) uses the '
                     'masks predicted by MFMP.')
  if model_config.plugin_layer not in (1, 2, 3, 4):
    raise ValueError(
        f'config.model.plugin_layer={model_config.plugin_layer!r} must be 1, 2, 3 or 4.')
  if model_config.last_stride not in (1, 2):
    raise ValueError(f'config.model.last_stride={model_config.last_stride!r} must be 1 or 2.')
  if model_config.mask_estimator not in modules.MASK_ESTIMATORS:
    raise ValueError(f'config.model.mask_estimator={model_config.mask_estimator!r} must be one '
                     f'of {modules.MASK_ESTIMATORS}')
  if model_config.flare_head_input not in modules.FLARE_HEAD_INPUTS:
    raise ValueError(f'config.model.flare_head_input={model_config.flare_head_input!r} must be '
                     f'one of {modules.FLARE_HEAD_INPUTS}')
  if model_config.neck_feat not in NECK_FEATS:
    raise ValueError(f'config.model.neck_feat={model_config.neck_feat!r} must be one of '
                     f'{NECK_FEATS}')
  if not model_config.mask_temperature > 0:
    raise ValueError(f'config.model.mask_temperature={model_config.mask_temperature!r} must be '
                     '> 0.')
  if num_classes < 1:
    raise ValueError(f'num_classes={num_classes!r} must be >= 1')
  if model_config.backbone == 'vit_b16':
    return _build_vit_model(model_config, num_classes)
  return FACENet(
      num_classes=num_classes,
      depth=model_config.depth,
      last_stride=model_config.last_stride,
      dtype=DTYPES[model_config.dtype],
      mfmp=model_config.mfmp,
      fmi=model_config.fmi,
      fce=model_config.fce,
      plugin_layer=model_config.plugin_layer,
      fmi_hidden_ratio=model_config.fmi_hidden_ratio,
      fmi_attention_ratio=model_config.fmi_attention_ratio,
      mask_estimator=model_config.mask_estimator,
      mask_temperature=model_config.mask_temperature,
      flare_head_input=model_config.flare_head_input,
      test_time_fce=model_config.test_time_fce,
      neck_feat=model_config.neck_feat,
      bug_rgb_uses_ni_mask=model_config.bug_rgb_uses_ni_mask,
      bug_batch_level_gating=model_config.bug_batch_level_gating,
      bug_dead_threshold=model_config.bug_dead_threshold,
  )


def parameter_counts(model: FACENet, image_size: tuple[int, int]) -> dict[str, int]:
  """Trainable parameter count per top-level component ('backbone_rgb', 'head_ni', 'mfmp', ...),
  per MFMP part ('mfmp/fmi', 'mfmp/mask_rgb', ...), plus 'total' and 'batch_stats'.

  Shapes only (jax.eval_shape): nothing is initialised or computed.
  """
  h, w = image_size
  shapes = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), (h, w)))

  def count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))

  params = shapes['params']
  counts = {name: count(params[name]) for name in sorted(params)}
  if 'mfmp' in params:
    counts.update({f'mfmp/{k}': count(v) for k, v in sorted(params['mfmp'].items())})
  counts['total'] = count(params)
  counts['batch_stats'] = count(shapes['batch_stats'])
  return counts


def init_variables(model: FACENet, rng: jax.Array, image_size: tuple[int, int],
                   batch_size: int = 2) -> dict[str, Any]:
  """Initial `{'params', 'batch_stats'}` for `model` at `image_size` (H, W)."""
  h, w = image_size
  image = jnp.zeros((batch_size, h, w, 3), jnp.float32)
  flare = jnp.zeros((batch_size, 2), jnp.int32)
  return dict(model.init(rng, image, image, image, flare, train=False))
