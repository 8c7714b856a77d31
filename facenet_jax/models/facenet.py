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

from facenet_jax.models import modules
from facenet_jax.models import resnet

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
        gate_rgb, gate_ni = modules.fce_gates(flare, self.bug_batch_level_gating)
        masks = mf['masks']
        # Official code (bug): RGB keeps f_R * (1 - M_N) instead of f_R * (1 - M_R).
        rgb_remain = masks['ni'] if self.bug_rgb_uses_ni_mask else masks['rgb']
        x = {
            'rgb': modules.flare_aware_enhancement(x['rgb'], x['ti'], masks['rgb'], rgb_remain,
                                                   gate_rgb),
            'ni': modules.flare_aware_enhancement(x['ni'], x['ti'], masks['ni'], masks['ni'],
                                                  gate_ni),
            'ti': x['ti'],
        }

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


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> FACENet:
  """FACENet from `config.model` (fields of configs/default.py) and the number of train ids."""
  if model_config.backbone == 'vit_b16':
    raise NotImplementedError(
        "config.model.backbone='vit_b16' is not implemented yet; use config.model.backbone="
        "'resnet'.")
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
