"""Analytic FLOP count of FACENet, for model-FLOPs utilisation (MFU) in the train benchmark.

Only the matrix products are counted: convolutions and dense layers, 2 FLOPs per multiply-add
(`2 * h_out * w_out * k * k * c_in * c_out` per image). BatchNorm, activations, pooling, masks,
losses and the optimiser are left out, as MFU conventionally does: they are memory-bound and a
few percent of the total. A training step is counted as 3 forward passes (the backward pass
computes the gradients of the activations and of the weights, each as costly as the forward).

The walk below mirrors `facenet_jax.models.resnet` / `modules` / `facenet` layer by layer (the
same output-size formula, `(n + 2 pad - k) // stride + 1`, torch's symmetric padding), so a layout
change there must be repeated here; tests/test_benchmark.py checks the count against a hand count
and against XLA's own `cost_analysis()` of the compiled forward pass.
"""

from typing import Any

from facenet_jax.models import mfmp as modules
from facenet_jax.models import resnet

# Backward ~ 2x forward: gradient w.r.t. the input and w.r.t. the weights.
TRAIN_FLOPS_PER_FORWARD = 3


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
  """Output length of a convolution / pooling window along one axis."""
  return (size + 2 * pad - kernel) // stride + 1


def conv_flops(height: int, width: int, c_in: int, c_out: int, kernel: int,
               stride: int = 1) -> tuple[int, int, int]:
  """(FLOPs per image, out height, out width) of a k x k conv with torch padding (k - 1) // 2."""
  pad = (kernel - 1) // 2
  h = conv_output_size(height, kernel, stride, pad)
  w = conv_output_size(width, kernel, stride, pad)
  return 2 * h * w * kernel * kernel * c_in * c_out, h, w


def dense_flops(d_in: int, d_out: int) -> int:
  """FLOPs per row of a dense layer `[d_in] -> [d_out]`."""
  return 2 * d_in * d_out


def stem_flops(height: int, width: int) -> tuple[int, int, int]:
  """Stem: 7x7/2 conv 3 -> 64, then the 3x3/2 max-pool (no FLOPs counted). (flops, h, w)."""
  flops, h, w = conv_flops(height, width, 3, 64, 7, 2)
  return flops, conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)


def block_flops(block: str, height: int, width: int, c_in: int, features: int,
                stride: int) -> tuple[int, int, int, int]:
  """One basic / bottleneck block. Returns (flops, out h, out w, out channels)."""
  if block == 'basic':
    c_out = features
    f1, h, w = conv_flops(height, width, c_in, features, 3, stride)
    f2, _, _ = conv_flops(h, w, features, features, 3)
    total = f1 + f2
  else:
    c_out = features * resnet.EXPANSION['bottleneck']
    f1, _, _ = conv_flops(height, width, c_in, features, 1)
    f2, h, w = conv_flops(height, width, features, features, 3, stride)  # v1.5: stride here
    f3, _, _ = conv_flops(h, w, features, c_out, 1)
    total = f1 + f2 + f3
  if stride != 1 or c_in != c_out:
    total += conv_flops(height, width, c_in, c_out, 1, stride)[0]  # projection shortcut
  return total, h, w, c_out


def stage_flops(depth: int, index: int, height: int, width: int, c_in: int,
                last_stride: int) -> tuple[int, int, int, int]:
  """ResNet stage `index` (1..4). Returns (flops, out h, out w, out channels)."""
  block, counts = resnet.RESNET_SPECS[depth]
  stride = (1, 2, 2, last_stride)[index - 1]
  total = 0
  h, w, c = height, width, c_in
  for i in range(counts[index - 1]):
    f, h, w, c = block_flops(block, h, w, c, resnet.STAGE_WIDTHS[index - 1],
                             stride if i == 0 else 1)
    total += f
  return total, h, w, c


def resnet_flops(depth: int, height: int, width: int, last_stride: int = 1) -> dict[str, Any]:
  """Per-image forward FLOPs of one ResNet stream: {'stem', 'layer1'..'layer4', 'total'} plus
  'shapes': the (h, w, c) after each stage (index 0 = stem)."""
  resnet.check_depth(depth)
  out: dict[str, Any] = {}
  out['stem'], h, w = stem_flops(height, width)
  c = 64
  shapes = [(h, w, c)]
  for index in range(1, 5):
    out[f'layer{index}'], h, w, c = stage_flops(depth, index, h, w, c, last_stride)
    shapes.append((h, w, c))
  out['total'] = sum(out[k] for k in ('stem', 'layer1', 'layer2', 'layer3', 'layer4'))
  out['shapes'] = shapes
  return out


def mfmp_flops(height: int, width: int, channels: int, fmi: bool, hidden_ratio: float,
               attention_ratio: float) -> int:
  """Per-image forward FLOPs of MFMP on `[h, w, C]` maps (FMI, two mask branches, flare heads)."""
  total = 0
  if fmi:
    hidden = modules.hidden_width(channels, hidden_ratio)
    plan = ((2 * channels, hidden, 3), (hidden, hidden, 1), (hidden, hidden, 3),
            (hidden, channels, 3))                                  # Eq. 3 conv stack
    total += sum(conv_flops(height, width, a, b, k)[0] for a, b, k in plan)
    att = modules.hidden_width(channels, attention_ratio)
    total += dense_flops(channels, att) + dense_flops(att, channels)  # Eq. 4 SE on [1, 1, C]
  for _ in modules.MODALITIES:
    total += 2 * conv_flops(height, width, channels, channels, 1)[0]  # Eq. 5 projections
    total += dense_flops(channels, 2)                                  # SMP flare head
  return total


def vit_block_flops(tokens: int, dim: int, mlp_ratio: float) -> int:
  """One ViT block on `[tokens, dim]`: qkv, q k^T, attention x v, proj, and the two MLP layers."""
  hidden = int(dim * mlp_ratio)
  return (3 * dense_flops(dim, dim) * tokens + 2 * 2 * tokens * tokens * dim
          + dense_flops(dim, dim) * tokens + 2 * dense_flops(dim, hidden) * tokens)


def vit_facenet_forward_flops(model_config: Any, num_classes: int,
                              image_size: tuple[int, int]) -> dict[str, int]:
  """`facenet_forward_flops` for `model.name='facenet_vit'` (`facenet.FACENetViT`)."""
  p, d = model_config.patch_size, model_config.embed_dim
  n = (image_size[0] // p) * (image_size[1] // p)
  block = vit_block_flops(1 + n, d, model_config.mlp_ratio)
  stream = dense_flops(p * p * 3, d) * n + (model_config.depth - 1) * block
  out = {'backbones': 3 * stream, 'mfmp': 0}
  if model_config.mfmp:
    out['mfmp'] = 2 * (block + dense_flops(d, 2))               # flare heads (block copies)
    if model_config.fmi:
      inner = model_config.cross_attention_heads * model_config.cross_attention_dim_head
      out['mfmp'] += 2 * (3 * dense_flops(d, inner) * n + 2 * 2 * n * n * inner
                          + dense_flops(inner, d) * n)         # two cross-attention directions
  out['heads'] = 3 * (block + dense_flops(d, num_classes))
  out['total'] = out['backbones'] + out['mfmp'] + out['heads']
  return out


def facenet_forward_flops(model_config: Any, num_classes: int,
                          image_size: tuple[int, int]) -> dict[str, int]:
  """Per-image forward FLOPs of FACENet from `config.model`: {'backbones', 'mfmp', 'heads',
  'total'} (three streams; MFMP when `model.mfmp`)."""
  if model_config.name == 'facenet_vit':
    return vit_facenet_forward_flops(model_config, num_classes, image_size)
  h, w = image_size
  backbone = resnet_flops(model_config.depth, h, w, model_config.last_stride)
  out = {'backbones': 3 * backbone['total'], 'mfmp': 0}
  if model_config.mfmp:
    mh, mw, mc = backbone['shapes'][model_config.plugin_layer]
    out['mfmp'] = mfmp_flops(mh, mw, mc, model_config.fmi, model_config.fmi_hidden_ratio,
                             model_config.fmi_attention_ratio)
  feature_dim = backbone['shapes'][4][2]
  out['heads'] = 3 * dense_flops(feature_dim, num_classes)
  out['total'] = out['backbones'] + out['mfmp'] + out['heads']
  return out


def train_step_flops(model_config: Any, num_classes: int, image_size: tuple[int, int],
                     batch_size: int) -> int:
  """Model FLOPs of one training step on `batch_size` triplets: 3 x forward x batch."""
  per_image = facenet_forward_flops(model_config, num_classes, image_size)['total']
  return TRAIN_FLOPS_PER_FORWARD * per_image * batch_size


def xla_flops(compiled) -> float | None:
  """FLOPs that XLA reports for a compiled function (`jit(f).lower(...).compile()`), or None.

  XLA counts every op (elementwise too), so it is an upper reference for the analytic count.
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or 'flops' not in analysis:
    return None
  return float(analysis['flops'])
