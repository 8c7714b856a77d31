"""FACENet and its training step in PyTorch, for throughput comparison only (not part of the package).

Mirrors the JAX model layer by layer so both do the same work on the same shapes:
  * three ResNet v1.5 streams (torchvision layout: 7x7/2 stem, max-pool, layer1..4, stride on the
    bottleneck's 3x3, projection shortcut only when stride or width change, `last_stride`),
    written here because torchvision is not a dependency;
  * MFMP after layer `plugin_layer` (`facenet_jax/models/mfmp.py`): FMI conv stack 3x3, 1x1,
    3x3, 3x3 with BN + ReLU, SE channel attention (biased 1x1 convs), f_C = att * f_C' + f_C';
    per modality the bias-free 1x1 projections, M_com = sigmoid(q * k), A = M_com f_S + f_S,
    m = f_S A + f_S standardised by an affine-free BN in float32, mask = sigmoid((m - Delta) / T),
    flare head GAP(mask) -> BN (no bias) -> bias-free Linear(C, 2);
  * FCE (Eq. 7) gated per sample by its flare bit;
  * GAP -> BNNeck (BN without bias) -> bias-free classifier per stream;
  * losses: CE + batch-hard triplet (margin, pre-BNNeck features) per stream, 2-way flare CE on
    RGB and NI, IC = min of the two batch-mean KLs between the RGB and NI identity posteriors;
  * Adam with coupled weight decay on conv / linear weights only (as `facenet_jax.optim`).

Written the way a PyTorch user would for speed: channels_last memory format, bf16 autocast when
asked (`dtype='bfloat16'`), optional `torch.compile`. Only the default FACENet switches are
mirrored (mfmp, fmi, fce on; sigmoid mask estimator; paper losses); `build_torch_model` rejects
other settings rather than silently timing a different model.
"""

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from input_pipeline.records import MODALITIES

RESNET_SPECS = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
                50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3))}
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = {'basic': 1, 'bottleneck': 4}
STREAMS = MODALITIES


def _bn2d(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


def _bn_no_bias(c: int) -> nn.BatchNorm1d:
  """BatchNorm1d with a scale but no bias parameter (BNNeck, flare head)."""
  bn = nn.BatchNorm1d(c, eps=1e-5, momentum=0.1)
  bn.register_parameter('bias', None)
  return bn


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
  return nn.Conv2d(c_in, c_out, k, stride, padding=(k - 1) // 2, bias=bias)


class BasicBlock(nn.Module):

  def __init__(self, c_in: int, features: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = _conv(c_in, features, 3, stride), _bn2d(features)
    self.conv2, self.bn2 = _conv(features, features, 3), _bn2d(features)
    self.downsample = None
    if stride != 1 or c_in != features:
      self.downsample = nn.Sequential(_conv(c_in, features, 1, stride), _bn2d(features))
    self.out_channels = features

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):

  def __init__(self, c_in: int, features: int, stride: int):
    super().__init__()
    c_out = features * EXPANSION['bottleneck']
    self.conv1, self.bn1 = _conv(c_in, features, 1), _bn2d(features)
    self.conv2, self.bn2 = _conv(features, features, 3, stride), _bn2d(features)
    self.conv3, self.bn3 = _conv(features, c_out, 1), _bn2d(c_out)
    self.downsample = None
    if stride != 1 or c_in != c_out:
      self.downsample = nn.Sequential(_conv(c_in, c_out, 1, stride), _bn2d(c_out))
    self.out_channels = c_out

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  """Stem + layer1..layer4; `forward_stage(i, x)` runs one stage (1..4)."""

  def __init__(self, depth: int, last_stride: int):
    super().__init__()
    block, counts = RESNET_SPECS[depth]
    block_cls = BasicBlock if block == 'basic' else Bottleneck
    self.stem = nn.Sequential(_conv(3, 64, 7, 2), _bn2d(64), nn.ReLU(inplace=True),
                              nn.MaxPool2d(3, 2, 1))
    c = 64
    stages = []
    for width, count, stride in zip(STAGE_WIDTHS, counts, (1, 2, 2, last_stride)):
      blocks = []
      for i in range(count):
        blocks.append(block_cls(c, width, stride if i == 0 else 1))
        c = blocks[-1].out_channels
      stages.append(nn.Sequential(*blocks))
    self.stages = nn.ModuleList(stages)
    self.channels = [s[-1].out_channels for s in stages]
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward_stage(self, index: int, x):
    return self.stages[index - 1](x)


def _hidden(c: int, ratio: float) -> int:
  return max(1, int(round(c * ratio)))


class MFMP(nn.Module):
  """FMI (Eqs. 2-4) + per-modality mask logits (Eqs. 5-6) + SMP mask and flare heads."""

  def __init__(self, c: int, hidden_ratio: float, attention_ratio: float, temperature: float):
    super().__init__()
    h = _hidden(c, hidden_ratio)
    layers = []
    for c_in, c_out, k in ((2 * c, h, 3), (h, h, 1), (h, h, 3), (h, c, 3)):
      layers += [_conv(c_in, c_out, k), _bn2d(c_out), nn.ReLU(inplace=True)]
    self.conv_stack = nn.Sequential(*layers)
    a = _hidden(c, attention_ratio)
    self.att_reduce, self.att_expand = _conv(c, a, 1, bias=True), _conv(a, c, 1, bias=True)
    self.threshold = nn.Parameter(torch.zeros(()))
    self.temperature = temperature
    self.proj_common = nn.ModuleDict({s: _conv(c, c, 1) for s in ('rgb', 'ni')})
    self.proj_modality = nn.ModuleDict({s: _conv(c, c, 1) for s in ('rgb', 'ni')})
    self.standardize = nn.ModuleDict(
        {s: nn.BatchNorm2d(c, eps=1e-5, momentum=0.1, affine=False) for s in ('rgb', 'ni')})
    self.flare_bn = nn.ModuleDict({s: _bn_no_bias(c) for s in ('rgb', 'ni')})
    self.flare_fc = nn.ModuleDict({s: nn.Linear(c, 2) for s in ('rgb', 'ni')})
    for fc in self.flare_fc.values():
      nn.init.normal_(fc.weight, std=0.001)
      nn.init.zeros_(fc.bias)

  def forward(self, f_r, f_n):
    common = self.conv_stack(torch.cat([f_r, f_n], dim=1))              # Eqs. 2-3
    att = torch.sigmoid(self.att_expand(F.relu(self.att_reduce(
        F.adaptive_avg_pool2d(common, 1)))))
    common = att * common + common                                       # Eq. 4
    masks, flare_logits = {}, {}
    for s, f_s in (('rgb', f_r), ('ni', f_n)):
      m_com = torch.sigmoid(self.proj_common[s](common) * self.proj_modality[s](f_s))
      affine = m_com * f_s + f_s                                         # Eq. 5
      m = f_s * affine + f_s                                             # Eq. 6
      with torch.autocast(m.device.type, enabled=False):
        m = self.standardize[s](m.float())
        mask = torch.sigmoid((m - self.threshold) / self.temperature)
      masks[s] = mask
      pooled = mask.mean(dim=(2, 3))
      flare_logits[s] = self.flare_fc[s](self.flare_bn[s](pooled)).float()
    return masks, flare_logits


class TorchFACENet(nn.Module):
  """Three ResNet streams, MFMP + FCE after `plugin_layer`, BNNeck heads."""

  def __init__(self, num_classes: int, depth: int = 50, last_stride: int = 1,
               plugin_layer: int = 4, hidden_ratio: float = 0.25,
               attention_ratio: float = 0.0625, temperature: float = 1.0):
    super().__init__()
    self.backbones = nn.ModuleDict({s: ResNet(depth, last_stride) for s in STREAMS})
    self.plugin_layer = plugin_layer
    c = self.backbones['rgb'].channels[plugin_layer - 1]
    self.mfmp = MFMP(c, hidden_ratio, attention_ratio, temperature)
    d = self.backbones['rgb'].channels[-1]
    self.bnneck = nn.ModuleDict({s: _bn_no_bias(d) for s in STREAMS})
    self.classifier = nn.ModuleDict({s: nn.Linear(d, num_classes, bias=False) for s in STREAMS})
    for fc in self.classifier.values():
      nn.init.normal_(fc.weight, std=0.001)

  def forward(self, images: dict, flare):
    x = {s: self.backbones[s].stem(images[s]) for s in STREAMS}
    for index in range(1, self.plugin_layer + 1):
      x = {s: self.backbones[s].forward_stage(index, x[s]) for s in STREAMS}
    masks, flare_logits = self.mfmp(x['rgb'], x['ni'])
    for col, s in enumerate(('rgb', 'ni')):                             # FCE, Eq. 7
      gate = flare[:, col].bool()[:, None, None, None]
      mask = masks[s].to(x[s].dtype)
      enhanced = x['ti'] * mask + x[s] * (1 - mask)
      x[s] = torch.where(gate, enhanced, x[s])
    for index in range(self.plugin_layer + 1, 5):
      x = {s: self.backbones[s].forward_stage(index, x[s]) for s in STREAMS}
    features = {s: x[s].float().mean(dim=(2, 3)) for s in STREAMS}
    logits = {s: self.classifier[s](self.bnneck[s](features[s])).float() for s in STREAMS}
    return {'features': features, 'logits': logits, 'flare_logits': flare_logits}


def batch_hard_triplet(features, labels, margin: float):
  f = features.float()
  sq = (f * f).sum(1)
  d = (sq[:, None] + sq[None, :] - 2 * f @ f.t()).clamp_min(1e-12).sqrt()
  same = labels[:, None] == labels[None, :]
  d_ap = d.masked_fill(~same, float('-inf')).amax(1)
  d_an = d.masked_fill(same, float('inf')).amin(1)
  return F.relu(margin + d_ap - d_an).mean()


def kl_min(a, b):
  la, lb = F.log_softmax(a.float(), -1), F.log_softmax(b.float(), -1)
  kl_ab = (la.exp() * (la - lb)).sum(-1).mean()
  kl_ba = (lb.exp() * (lb - la)).sum(-1).mean()
  return torch.minimum(kl_ab, kl_ba)


def total_loss(outputs, pid, flare, margin: float = 0.3):
  loss = 0.0
  for s in STREAMS:
    loss = loss + F.cross_entropy(outputs['logits'][s], pid)
    loss = loss + batch_hard_triplet(outputs['features'][s], pid, margin)
  loss = loss + F.cross_entropy(outputs['flare_logits']['rgb'], flare[:, 0])
  loss = loss + F.cross_entropy(outputs['flare_logits']['ni'], flare[:, 1])
  return loss + kl_min(outputs['logits']['rgb'], outputs['logits']['ni'])


def build_torch_model(model_config: Any, num_classes: int) -> TorchFACENet:
  """The torch mirror of `models.build_model(config.model, num_classes)` (default switches)."""
  unsupported = {'name': 'facenet', 'mfmp': True, 'fmi': True, 'fce': True,
                 'mask_estimator': 'sigmoid', 'flare_head_input': 'mask',
                 'mask_similarity': 'sigmoid', 'flare_head_bias': True,
                 'bug_rgb_uses_ni_mask': False, 'bug_batch_level_gating': False,
                 'bug_dead_threshold': False}
  for field, value in unsupported.items():
    if model_config[field] != value:
      raise ValueError(f'the torch benchmark mirrors only config.model.{field}={value!r}, got '
                       f'{model_config[field]!r}')
  return TorchFACENet(num_classes, model_config.depth, model_config.last_stride,
                      model_config.plugin_layer, model_config.fmi_hidden_ratio,
                      model_config.fmi_attention_ratio, model_config.mask_temperature)


def parameter_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Adam:
  """Adam (coupled L2 like torch's weight_decay) on conv / linear weights; none on BN, biases,
  Delta (as `facenet_jax.optim.decay_mask`)."""
  decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
  decay = [p for p in model.parameters() if id(p) in decay_ids]
  no_decay = [p for p in model.parameters() if id(p) not in decay_ids]
  return torch.optim.Adam([{'params': decay, 'weight_decay': weight_decay},
                           {'params': no_decay, 'weight_decay': 0.0}], lr=lr)


def benchmark_torch(model_config: Any, num_classes: int, batch: dict[str, np.ndarray],
                    steps: int, dtype: str, lr: float = 3.5e-4, weight_decay: float = 5e-4,
                    margin: float = 0.3, compile_model: bool = False,
                    device: str | None = None, seed: int = 0) -> dict[str, Any]:
  """Time `steps` training steps (after 2 warm-up steps) on one device-resident batch.

  batch: NumPy `{'rgb','ni','ti': [B, H, W, 3] float32, 'pid': [B], 'flare': [B, 2]}`.
  Returns {'step_times': [s] (waiting for each step), 'median_s', 'pipelined_s' (mean of `steps`
  steps launched back to back, one wait at the end), 'warmup_s', 'params', 'device', 'threads'}.
  """
  torch.manual_seed(seed)
  device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
  model = build_torch_model(model_config, num_classes).to(device)
  model = model.to(memory_format=torch.channels_last)
  params = parameter_count(model)
  opt = make_optimizer(model, lr, weight_decay)
  images = {s: torch.from_numpy(np.ascontiguousarray(batch[s].transpose(0, 3, 1, 2))).to(device)
                 .contiguous(memory_format=torch.channels_last) for s in STREAMS}
  pid = torch.from_numpy(np.asarray(batch['pid'], np.int64)).to(device)
  flare = torch.from_numpy(np.asarray(batch['flare'], np.int64)).to(device)
  use_amp = dtype == 'bfloat16'
  forward = torch.compile(model) if compile_model else model
  model.train()

  def step():
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_amp):
      outputs = forward(images, flare)
      loss = total_loss(outputs, pid, flare, margin)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  def sync():
    if device == 'cuda':
      torch.cuda.synchronize()

  t = time.perf_counter()
  for _ in range(2):  # warm-up (and compilation with --torch_compile)
    loss = step()
  loss.detach().item()
  sync()
  warmup = time.perf_counter() - t
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    loss = step()
    sync()
    times.append(time.perf_counter() - t)
  t = time.perf_counter()
  for _ in range(steps):  # back to back, one wait at the end (as the JAX figure)
    loss = step()
  sync()
  pipelined = (time.perf_counter() - t) / steps
  loss = loss.detach()
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f'torch loss is not finite: {float(loss)}')
  result = {'step_times': times, 'median_s': float(np.median(times)), 'pipelined_s': pipelined,
            'warmup_s': warmup,
            'params': params, 'device': device, 'threads': torch.get_num_threads(),
            'loss': float(loss)}
  if device == 'cuda':
    result['peak_bytes'] = int(torch.cuda.max_memory_allocated())
  return result
