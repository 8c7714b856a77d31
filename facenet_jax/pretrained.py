"""ImageNet ResNet weights for the three FACENet streams.

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
import os
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from facenet_jax.models import facenet
from facenet_jax.models import resnet

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
  state = torch.load(path, map_location='cpu', weights_only=True)
  if isinstance(state, Mapping) and 'state_dict' in state:
    state = state['state_dict']
  if not isinstance(state, Mapping):
    raise ValueError(f'{path} does not hold a state dict (got {type(state).__name__})')
  return {k: v.detach().cpu().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_weights(path: str) -> dict[str, np.ndarray]:
  """Flat name -> array dict from `.pth`/`.pt`, `.safetensors` or `.npz`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'pretrained weights file {path} does not exist')
  suffix = os.path.splitext(path)[1].lower()
  if suffix in ('.pth', '.pt'):
    return read_torch_checkpoint(path)
  if suffix == '.safetensors':
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    return dict(safetensors_numpy.load_file(path))
  if suffix == '.npz':
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  raise ValueError(f'{path}: unknown weights format {suffix!r}; expected .pth, .pt, '
                   '.safetensors or .npz')


def _is_flax_layout(arrays: Mapping[str, np.ndarray]) -> bool:
  return bool(arrays) and all(k.split('/', 1)[0] in COLLECTIONS and '/' in k for k in arrays)


def _check_against(tree: Mapping[str, Any], expected: Mapping[str, Any], what: str) -> None:
  """Raises ValueError listing keys/shapes where `tree` differs from `expected` (same nesting)."""
  got = {'/'.join(k): np.shape(v) for k, v in _flatten(tree).items()}
  want = {'/'.join(k): tuple(v.shape) for k, v in _flatten(expected).items()}
  mismatched = [(k, got[k], want[k]) for k in set(got) & set(want) if got[k] != want[k]]
  if set(got) != set(want) or mismatched:
    raise _key_error(what, set(want) - set(got), set(got) - set(want), mismatched)


def load_pretrained_backbone(path: str, depth: int) -> dict[str, dict[str, Any]]:
  """`{'params', 'batch_stats'}` of `ResNet(depth)` (float32 numpy) from any supported file."""
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


def init_streams_from_pretrained(variables: Mapping[str, Any],
                                 backbone_vars: Mapping[str, Any]) -> dict[str, Any]:
  """Copies one ResNet's `{'params', 'batch_stats'}` into all three FACENet streams.

  `variables` are FACENet variables (from `model.init`); the result is a new dict (the input is not
  modified) in which `backbone_rgb`, `backbone_ni` and `backbone_ti` hold float32 copies of the
  backbone, as the official code deep-copies one pretrained backbone into every stream. Heads, MFMP
  and everything else keep their initial values. Raises ValueError listing mismatched keys.
  """
  variables = flax.core.unfreeze(variables)
  new = {c: dict(v) for c, v in variables.items()}
  for collection in COLLECTIONS:
    if collection not in backbone_vars:
      raise ValueError(f'pretrained backbone has no {collection!r} collection; it has '
                       f'{sorted(backbone_vars)}')
    for stream, name in facenet.BACKBONE_NAMES.items():
      if name not in new.get(collection, {}):
        raise ValueError(f'FACENet variables have no {collection}/{name} to initialise')
      _check_against({collection: backbone_vars[collection]},
                     {collection: new[collection][name]},
                     f'pretrained backbone vs FACENet {stream} stream ({collection}/{name})')
      new[collection][name] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                                           backbone_vars[collection])
  return new
