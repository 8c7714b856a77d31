"""ImageNet ResNet (and ViT-B/16) weights for the three FACENet streams.

ViT weights (`config.model.name='facenet_vit'`): see the "ViT-B/16" section at the end.

Formats read by `load_pretrained_backbone(path, depth)`:
  * `.pth` / `.pt`   a torchvision-layout state dict saved by torch (needs torch, imported lazily);
  * `.safetensors`   the same state dict in safetensors (read with safetensors' numpy API);
  * `.npz`           either the same torchvision state dict, or a converted Flax backbone.

Converted Flax backbone format (written by `save_backbone` and `scripts/convert_weights.py`): a
plain `.npz` whose keys are the flattened variable paths, e.g. `params/layer1/block_0/conv1/kernel`
and `batch_stats/stem/bn/mean`. A plain array file needs no orbax, no restore target and no
framework to inspect (`numpy.load`), which suits a 100 MB read-only backbone better than a
training checkpoint directory.

torchvision name -> `facenet_jax.models.resnet.ResNet` variable:
    conv1.weight [O, I, kh, kw]            params/stem/conv/kernel [kh, kw, I, O]
    bn1.weight / bn1.bias                  params/stem/bn/scale / bias
    bn1.running_mean / running_var         batch_stats/stem/bn/mean / var
    layer{i}.{j}.conv{k}.weight            params/layer{i}/block_{j}/conv{k}/kernel
    layer{i}.{j}.bn{k}.*                   .../block_{j}/bn{k}/...
    layer{i}.{j}.downsample.0.weight       .../block_{j}/downsample_conv/kernel
    layer{i}.{j}.downsample.1.*            .../block_{j}/downsample_bn/...
`fc.*` and `*.num_batches_tracked` are ignored. Any other missing, unexpected or mis-shaped key
is an error that lists the keys.
"""

import functools
import math
import os
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from facenet_jax.models import facenet
from facenet_jax.models import resnet
from facenet_jax.models import vit

COLLECTIONS = ('params', 'batch_stats')
_BN_TORCH = {('params', 'scale'): 'weight', ('params', 'bias'): 'bias',
             ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}


def _is_ignored_torch_key(name: str) -> bool:
  return name.startswith('fc.') or name.endswith('num_batches_tracked')


@functools.lru_cache(maxsize=None)
def backbone_shapes(depth: int) -> dict[str, dict[str, Any]]:
  """Expected `{'params', 'batch_stats'}` tree of `ResNet(depth)` as ShapeDtypeStructs (cached:
  treat as read-only)."""
  resnet.check_depth(depth)
  model = resnet.ResNet(depth=depth)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  return {c: flax.core.unfreeze(shapes[c]) for c in COLLECTIONS}


def torch_name(collection: str, path: tuple[str, ...]) -> str:
  """torchvision state-dict name of the ResNet variable `collection/path` (see module docstring)."""
  *modules, leaf = path
  parts = []
  for m in modules:
    if m == 'stem':
      continue
    if m.startswith('block_'):
      parts.append(m[len('block_'):])
    elif m == 'downsample_conv':
      parts.append('downsample.0')
    elif m == 'downsample_bn':
      parts.append('downsample.1')
    elif m == 'conv' and modules[0] == 'stem':
      parts.append('conv1')
    elif m == 'bn' and modules[0] == 'stem':
      parts.append('bn1')
    else:
      parts.append(m)
  if leaf == 'kernel':
    parts.append('weight')
  else:
    parts.append(_BN_TORCH[(collection, leaf)])
  return '.'.join(parts)


def _flatten(tree: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _key_error(what: str, missing, unexpected, mismatched) -> ValueError:
  lines = [f'{what} does not match the expected layout:']
  if missing:
    lines.append(f'  missing keys ({len(missing)}): {sorted(missing)}')
  if unexpected:
    lines.append(f'  unexpected keys ({len(unexpected)}): {sorted(unexpected)}')
  if mismatched:
    lines.append(f'  shape mismatches ({len(mismatched)}): '
                 + ', '.join(f'{k}: got {g}, expected {e}' for k, g, e in sorted(mismatched)))
  return ValueError('\n'.join(lines))


def convert_torchvision_resnet(state_dict: Mapping[str, np.ndarray], depth: int = 50,
                               source: str = 'state dict') -> dict[str, dict[str, Any]]:
  """torchvision-layout ResNet state dict (numpy arrays) -> `{'params', 'batch_stats'}` of `ResNet`.

  Conv weights are transposed OIHW -> HWIO; every array becomes float32 numpy. Raises ValueError
  listing every missing, unexpected or mis-shaped key (`source` names the file in the message).
  """
  expected = {c: _flatten(t) for c, t in backbone_shapes(depth).items()}
  wanted = {}
  for collection, leaves in expected.items():
    for path, shape in leaves.items():
      wanted[torch_name(collection, path)] = (collection, path, shape.shape)
  given = {k for k in state_dict if not _is_ignored_torch_key(k)}
  missing = set(wanted) - given
  unexpected = given - set(wanted)
  mismatched = []
  out = {c: {} for c in COLLECTIONS}
  for name in set(wanted) & given:
    collection, path, shape = wanted[name]
    value = np.asarray(state_dict[name], dtype=np.float32)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.shape != tuple(shape):
      mismatched.append((name, value.shape, tuple(shape)))
      continue
    out[collection][path] = value
  if missing or unexpected or mismatched:
    raise _key_error(f'ResNet-{depth} {source}', missing, unexpected, mismatched)
  return {c: flax.traverse_util.unflatten_dict(out[c]) for c in COLLECTIONS}


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """`.pth`/`.pt` state dict -> numpy arrays. Needs torch (optional dependency)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'Reading {path} needs PyTorch (pip install torch), which is optional. Without it, '
        'convert the file elsewhere to .safetensors or .npz (scripts/convert_weights.py).') from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise _unreadable(path, e) from None
  if isinstance(state, Mapping) and 'state_dict' in state:
    state = state['state_dict']
  if not isinstance(state, Mapping):
    raise ValueError(f'{path} does not hold a state dict (got {type(state).__name__})')
  return {k: v.detach().cpu().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


class PretrainedWeightsError(ValueError):
  """A pretrained weights file that cannot be read as what its suffix says."""


def read_weights(path: str) -> dict[str, np.ndarray]:
  """Flat name -> array dict from `.pth`/`.pt`, `.safetensors` or `.npz`.

  A file that is not what its suffix says (a text file, a truncated download) raises
  `PretrainedWeightsError` naming the file; nothing is ever loaded with pickle.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'pretrained weights file {path} does not exist')
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in ('.pth', '.pt', '.safetensors', '.npz'):
    raise ValueError(f'{path}: unknown weights format {suffix!r}; expected .pth, .pt, '
                     '.safetensors or .npz')
  if suffix in ('.pth', '.pt'):
    return read_torch_checkpoint(path)
  try:
    if suffix == '.safetensors':
      from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
      return dict(safetensors_numpy.load_file(path))
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except ImportError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _unreadable(path, e) from None


def _unreadable(path: str, error: Exception) -> PretrainedWeightsError:
  # Readers fail on a wrong file with unrelated messages (a bare KeyError from torch's zip
  # reader, numpy suggesting allow_pickle=True); say what the file is not instead.
  suffix = os.path.splitext(path)[1].lower()
  return PretrainedWeightsError(
      f'{path} is not a readable {suffix} weights file (the reader raised '
      f'{type(error).__name__}); check that it is the downloaded or converted weights, not a text '
      'or HTML page or a partial download')


def _is_flax_layout(arrays: Mapping[str, np.ndarray]) -> bool:
  return bool(arrays) and all(k.split('/', 1)[0] in COLLECTIONS and '/' in k for k in arrays)


def _check_against(tree: Mapping[str, Any], expected: Mapping[str, Any], what: str) -> None:
  """Raises ValueError listing keys/shapes where `tree` differs from `expected` (same nesting)."""
  got = {'/'.join(k): np.shape(v) for k, v in _flatten(tree).items()}
  want = {'/'.join(k): tuple(v.shape) for k, v in _flatten(expected).items()}
  mismatched = [(k, got[k], want[k]) for k in set(got) & set(want) if got[k] != want[k]]
  if set(got) != set(want) or mismatched:
    raise _key_error(what, set(want) - set(got), set(got) - set(want), mismatched)


def load_pretrained_backbone(path: str, depth: int,
                             backbone: str = 'resnet') -> dict[str, dict[str, Any]]:
  """`{'params', 'batch_stats'}` of `ResNet(depth)` (float32 numpy) from any supported file.

  `backbone='vit_b16'` (`convert_weights.py --backbone`) reads ViT weights instead
  (`load_pretrained_vit`: `{'params': full ViT tree}`; `depth` is then unused).
  """
  if backbone == VIT_BACKBONE:
    return load_pretrained_vit(path)
  if backbone != 'resnet':
    raise ValueError(f"backbone={backbone!r} must be 'resnet' or {VIT_BACKBONE!r}")
  arrays = read_weights(path)
  if not _is_flax_layout(arrays):
    return convert_torchvision_resnet(arrays, depth, source=path)
  flat = {tuple(k.split('/')): np.asarray(v, np.float32) for k, v in arrays.items()}
  tree = flax.traverse_util.unflatten_dict(flat)
  tree = {c: tree.get(c, {}) for c in COLLECTIONS}
  _check_against(tree, backbone_shapes(depth), f'ResNet-{depth} backbone in {path}')
  return tree


def save_backbone(backbone_vars: Mapping[str, Any], path: str) -> None:
  """Writes `{'params', 'batch_stats'}` as the flat `.npz` that `load_pretrained_backbone` reads."""
  if not path.endswith('.npz'):
    raise ValueError(f'{path}: converted backbones are written as .npz')
  flat = {'/'.join(k): np.asarray(v, np.float32) for k, v in _flatten(backbone_vars).items()}
  np.savez(path, **flat)


def check_standard_width(model_config: Any) -> None:
  """Refuses a scaled ResNet (`config.model.width_multiplier` != 1) before any file is read.

  ImageNet weights exist for torchvision's widths only; a narrower stream has other shapes.
  """
  width = model_config.get('width_multiplier', 1.0)
  if width != 1:
    raise ValueError(
        f'config.model.width_multiplier={width!r}: pretrained ResNet weights '
        f'(config.model.pretrained_path={model_config.get("pretrained_path", "")!r}) fit only '
        "width 1; set config.model.width_multiplier=1.0 or config.model.pretrained_path=''.")


def init_streams_from_pretrained(variables: Mapping[str, Any], backbone_vars: Mapping[str, Any],
                                 image_size: tuple[int, int] | None = None) -> dict[str, Any]:
  """Copies one ResNet's `{'params', 'batch_stats'}` into all three FACENet streams.

  A ViT from `load_pretrained_backbone(..., backbone='vit_b16')` (its params hold 'pos_embed')
  goes to `init_vit_streams_from_pretrained`, which needs the network's `image_size` (H, W).

  `variables` are FACENet variables (from `model.init`); the result is a new dict (the input is not
  modified) in which `backbone_rgb`, `backbone_ni` and `backbone_ti` hold float32 copies of the
  backbone, as the official code deep-copies one pretrained backbone into every stream. Heads, MFMP
  and everything else keep their initial values. Raises ValueError listing mismatched keys.
  """
  if 'pos_embed' in backbone_vars.get('params', {}):
    if image_size is None:
      raise ValueError('init_streams_from_pretrained needs image_size (config.data.image_size) '
                       'for ViT weights: the position embedding is resized to the patch grid.')
    return init_vit_streams_from_pretrained(variables, backbone_vars['params'], image_size)
  return init_backbones_from_pretrained(variables, backbone_vars, facenet.BACKBONE_NAMES)


def init_backbones_from_pretrained(variables: Mapping[str, Any], backbone_vars: Mapping[str, Any],
                                   names: Mapping[str, str]) -> dict[str, Any]:
  """Copies one ResNet's `{'params', 'batch_stats'}` into the backbones `names` {stream: name}.

  A new dict (the input is not modified); everything but those backbones keeps its values.
  Raises ValueError when a collection or a backbone is missing, or listing mismatched keys.
  """
  variables = flax.core.unfreeze(variables)
  new = {c: dict(v) for c, v in variables.items()}
  for collection in COLLECTIONS:
    if collection not in backbone_vars:
      raise ValueError(f'pretrained backbone has no {collection!r} collection; it has '
                       f'{sorted(backbone_vars)}')
    for stream, name in names.items():
      if name not in new.get(collection, {}):
        raise ValueError(f'the model variables have no {collection}/{name} to initialise')
      _check_against({collection: backbone_vars[collection]},
                     {collection: new[collection][name]},
                     f'pretrained backbone vs the {stream} stream ({collection}/{name})')
      new[collection][name] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                                           backbone_vars[collection])
  return new


# ------------------------------------------------------------------------------------ ViT-B/16
# The official code's ViT weights (`jx_vit_base_p16_224`) in either of two layouts, converted to
# one "full ViT" tree of float32 numpy arrays (Flax layouts: kernels [in, out], patch kernel
# [p, p, 3, D]):
#   {'patch_embed': {'kernel', 'bias'}, 'cls_token': [1, 1, D], 'pos_embed': [1, 1 + g*g, D],
#    'block_{i}': {'norm1', 'attn': {'qkv', 'proj'}, 'norm2', 'mlp': {'fc1', 'fc2'}},
#    'norm': {'scale', 'bias'}}
#
# timm layout (`.pth`, or the same names in .safetensors/.npz)     full ViT tree
#   patch_embed.proj.weight [D, 3, p, p] / .bias                   patch_embed/kernel / bias
#   cls_token, pos_embed                                           cls_token, pos_embed
#   blocks.{i}.norm1/norm2.weight / .bias                          block_{i}/norm1/scale / bias
#   blocks.{i}.attn.qkv / attn.proj / mlp.fc1 / mlp.fc2 .weight    block_{i}/.../kernel (transposed)
#   norm.weight / .bias                                            norm/scale / bias
# Keys containing 'head' or 'dist' are skipped as the code's `load_param` does, and so is the
# unused 'pre_logits' layer of some checkpoints.
#
# Original JAX layout (`.npz` of the ViT paper's release)
#   embedding/kernel [p, p, 3, D], embedding/bias, cls, Transformer/posembed_input/pos_embedding
#   Transformer/encoderblock_{i}/LayerNorm_0, LayerNorm_2           norm1, norm2
#   .../MultiHeadDotProductAttention_1/{query,key,value}/kernel [D, H, Dh], bias [H, Dh]
#                                                                   attn/qkv (concatenated q|k|v)
#   .../MultiHeadDotProductAttention_1/out/kernel [H, Dh, D], bias  attn/proj
#   .../MlpBlock_3/Dense_0, Dense_1                                mlp/fc1, mlp/fc2
#   Transformer/encoder_norm                                       norm
# 'head/*' and 'pre_logits/*' are skipped.

VIT_BACKBONE = 'vit_b16'
_VIT_TIMM_LINEARS = ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')
_VIT_JAX_PREFIX = 'Transformer/'


def _is_ignored_vit_key(name: str) -> bool:
  return 'head' in name or 'dist' in name or 'pre_logits' in name


def _vit_block_count(names, pattern: str, source: str) -> int:
  indices = set()
  for name in names:
    if name.startswith(pattern):
      rest = name[len(pattern):]
      index = rest.split('.', 1)[0].split('/', 1)[0]
      if index.isdigit():
        indices.add(int(index))
  if not indices:
    raise ValueError(f'ViT weights in {source} have no transformer blocks ({pattern}N...)')
  if indices != set(range(len(indices))):
    raise ValueError(f'ViT weights in {source} have non-contiguous block indices {sorted(indices)}')
  return len(indices)


def _take(arrays: Mapping[str, np.ndarray], wanted: dict[str, Any], source: str,
          ignored) -> dict[tuple[str, ...], np.ndarray]:
  """`wanted`: file key -> (tree path, convert fn). Raises listing missing/unexpected keys."""
  given = {k for k in arrays if not ignored(k)}
  missing = set(wanted) - given
  unexpected = given - set(wanted)
  if missing or unexpected:
    raise _key_error(f'ViT weights in {source}', missing, unexpected, [])
  return {path: convert(np.asarray(arrays[k], np.float32)) for k, (path, convert) in wanted.items()}


def convert_timm_vit(state_dict: Mapping[str, np.ndarray],
                     source: str = 'state dict') -> dict[str, Any]:
  """timm-layout ViT state dict (numpy) -> full ViT tree (see the table above)."""
  depth = _vit_block_count(state_dict, 'blocks.', source)
  same = lambda a: a
  wanted = {
      'patch_embed.proj.weight': (('patch_embed', 'kernel'), lambda a: a.transpose(2, 3, 1, 0)),
      'patch_embed.proj.bias': (('patch_embed', 'bias'), same),
      'cls_token': (('cls_token',), same),
      'pos_embed': (('pos_embed',), same),
      'norm.weight': (('norm', 'scale'), same),
      'norm.bias': (('norm', 'bias'), same),
  }
  for i in range(depth):
    block = f'block_{i}'
    for norm in ('norm1', 'norm2'):
      wanted[f'blocks.{i}.{norm}.weight'] = ((block, norm, 'scale'), same)
      wanted[f'blocks.{i}.{norm}.bias'] = ((block, norm, 'bias'), same)
    for linear in _VIT_TIMM_LINEARS:
      module, layer = linear.split('.')
      wanted[f'blocks.{i}.{linear}.weight'] = ((block, module, layer, 'kernel'), lambda a: a.T)
      wanted[f'blocks.{i}.{linear}.bias'] = ((block, module, layer, 'bias'), same)
  flat = _take(state_dict, wanted, source, _is_ignored_vit_key)
  return flax.traverse_util.unflatten_dict(flat)


def convert_jax_vit(arrays: Mapping[str, np.ndarray], source: str = 'npz') -> dict[str, Any]:
  """Original JAX-layout ViT `.npz` arrays -> full ViT tree (see the table above)."""
  prefix = _VIT_JAX_PREFIX + 'encoderblock_'
  depth = _vit_block_count(arrays, prefix, source)
  same = lambda a: a
  wanted = {
      'embedding/kernel': (('patch_embed', 'kernel'), same),
      'embedding/bias': (('patch_embed', 'bias'), same),
      'cls': (('cls_token',), same),
      _VIT_JAX_PREFIX + 'posembed_input/pos_embedding': (('pos_embed',), same),
      _VIT_JAX_PREFIX + 'encoder_norm/scale': (('norm', 'scale'), same),
      _VIT_JAX_PREFIX + 'encoder_norm/bias': (('norm', 'bias'), same),
  }
  flat = {}
  for i in range(depth):
    block, p = f'block_{i}', f'{prefix}{i}/'
    for ours, theirs in (('norm1', 'LayerNorm_0'), ('norm2', 'LayerNorm_2')):
      for leaf in ('scale', 'bias'):
        wanted[f'{p}{theirs}/{leaf}'] = ((block, ours, leaf), same)
    for ours, theirs in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
      for leaf in ('kernel', 'bias'):
        wanted[f'{p}MlpBlock_3/{theirs}/{leaf}'] = ((block, 'mlp', ours, leaf), same)
    attn = f'{p}MultiHeadDotProductAttention_1/'
    # q, k, v become one fused [D, 3D] kernel (columns q|k|v, then head, then dim, as timm).
    for part in ('query', 'key', 'value'):
      for leaf in ('kernel', 'bias'):
        wanted[f'{attn}{part}/{leaf}'] = ((block, 'attn', part, leaf), same)
    wanted[f'{attn}out/kernel'] = ((block, 'attn', 'proj', 'kernel'),
                                   lambda a: a.reshape(-1, a.shape[-1]))
    wanted[f'{attn}out/bias'] = ((block, 'attn', 'proj', 'bias'), same)
  taken = _take(arrays, wanted, source, lambda k: k.startswith(('head/', 'pre_logits/')))
  for path, value in taken.items():
    if path[1:3] in (('attn', 'query'), ('attn', 'key'), ('attn', 'value')):
      continue
    flat[path] = value
  for i in range(depth):
    block = f'block_{i}'
    parts = [taken[(block, 'attn', part, 'kernel')] for part in ('query', 'key', 'value')]
    flat[(block, 'attn', 'qkv', 'kernel')] = np.concatenate(
        [k.reshape(k.shape[0], -1) for k in parts], axis=1)
    flat[(block, 'attn', 'qkv', 'bias')] = np.concatenate(
        [taken[(block, 'attn', part, 'bias')].reshape(-1) for part in ('query', 'key', 'value')])
  return flax.traverse_util.unflatten_dict(flat)


def load_pretrained_vit(path: str) -> dict[str, Any]:
  """`{'params': full ViT tree}` (float32 numpy) from a timm-layout or original JAX-layout file."""
  arrays = read_weights(path)
  if _is_flax_layout(arrays):  # written by `save_backbone` (e.g. scripts/convert_weights.py)
    flat = {tuple(k.split('/')): np.asarray(v, np.float32) for k, v in arrays.items()}
    tree = flax.traverse_util.unflatten_dict(flat)
    if set(tree) != {'params'} or 'pos_embed' not in tree['params']:
      raise ValueError(f'{path} holds converted weights that are not a ViT (no params/pos_embed)')
    return {'params': tree['params']}
  if any(k.startswith(_VIT_JAX_PREFIX) for k in arrays):
    return {'params': convert_jax_vit(arrays, source=path)}
  return {'params': convert_timm_vit(arrays, source=path)}


def _linear_resize_weights(n_in: int, n_out: int) -> np.ndarray:
  """`[n_out, n_in]` 1-D linear interpolation weights, half-pixel centres, no antialiasing.

  torch `F.interpolate(mode='bilinear', align_corners=False)`: source coordinate
  (i + 0.5) * n_in / n_out - 0.5, clamped below at 0; neighbours clamped to the last index.
  """
  src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * n_in / n_out - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  weights = np.zeros((n_out, n_in), np.float64)
  np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(n_out), hi), frac)
  return weights


def resize_pos_embed(pos_embed: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """`[1, 1 + g * g, D]` (square g x g grid, CLS first) -> `[1, 1 + gh * gw, D]`.

  The CLS entry is kept; the grid part is resized bilinearly (half-pixel centres, no antialias),
  as the code's `resize_pos_embed` with torch `F.interpolate(mode='bilinear')`.
  """
  pos_embed = np.asarray(pos_embed, np.float64)
  n = pos_embed.shape[1] - 1
  g = int(round(math.sqrt(n)))
  if g * g != n:
    raise ValueError(f'pretrained pos_embed has {n} patch positions, not a square grid')
  gh, gw = grid
  old = pos_embed[0, 1:].reshape(g, g, -1)
  new = np.einsum('ay,bx,yxd->abd', _linear_resize_weights(g, gh), _linear_resize_weights(g, gw),
                  old).reshape(gh * gw, -1)
  return np.concatenate([pos_embed[:, :1], new[None]], axis=1).astype(np.float32)


def init_vit_streams_from_pretrained(variables: Mapping[str, Any], vit_params: Mapping[str, Any],
                                     image_size: tuple[int, int]) -> dict[str, Any]:
  """Copies one full pretrained ViT into a `FACENetViT`'s streams and last-block heads.

  Streams `backbone_{rgb,ni,ti}` get the patch embedding, CLS token, the position embedding
  resized to this `image_size`'s patch grid, and blocks 0..depth-2; every branch head
  (`vit_head_s`) and flare head (`mfmp/flare_head_s/token_head`) gets its own copy of the last
  block and the final LayerNorm, as the code deep-copies them. Everything else (BNNecks,
  classifiers, cross-attention, Delta) keeps its initial values. Returns a new dict.
  """
  variables = flax.core.unfreeze(variables)
  new = {c: dict(v) for c, v in variables.items()}
  params = new['params']
  for name in facenet.BACKBONE_NAMES.values():
    if name not in params:
      raise ValueError(f'FACENet variables have no params/{name} to initialise')
  first = params[facenet.BACKBONE_NAMES['rgb']]
  model_depth = sum(k.startswith('block_') for k in first) + 1
  ckpt_depth = sum(k.startswith('block_') for k in vit_params)
  if ckpt_depth != model_depth:
    raise ValueError(f'the pretrained ViT has {ckpt_depth} blocks but the model has '
                     f'config.model.depth={model_depth}')
  patch = int(np.shape(first['patch_embed']['kernel'])[0])
  grid = vit.grid_size(tuple(image_size), patch)
  as_jnp = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)
  stream = {k: vit_params[k] for k in ('patch_embed', 'cls_token')}
  stream['pos_embed'] = resize_pos_embed(vit_params['pos_embed'], grid)
  stream.update({f'block_{i}': vit_params[f'block_{i}'] for i in range(model_depth - 1)})
  head = {'block': vit_params[f'block_{model_depth - 1}'], 'norm': vit_params['norm']}
  for stream_name, name in facenet.BACKBONE_NAMES.items():
    _check_against(stream, params[name], f'pretrained ViT vs FACENet {stream_name} stream '
                   f'(params/{name})')
    params[name] = as_jnp(stream)
  targets = [(f'vit_head_{s}',) for s in facenet.STREAMS]
  if 'mfmp' in params:
    params['mfmp'] = dict(params['mfmp'])
    targets += [('mfmp', f'flare_head_{s}') for s in ('rgb', 'ni')]
  for target in targets:
    parent = params
    for key in target[:-1]:
      parent = parent[key]
    module = dict(parent[target[-1]])
    current = module if target[0].startswith('vit_head') else module['token_head']
    _check_against(head, current, f'pretrained ViT last block vs FACENet params/'
                   f'{"/".join(target)}')
    if target[0].startswith('vit_head'):
      module = as_jnp(head)
    else:
      module['token_head'] = as_jnp(head)
    parent[target[-1]] = module
  return new
