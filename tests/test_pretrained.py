"""torchvision-layout weights -> Flax ResNet: names, readers, errors, stream copies, parity."""

import functools
import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facenet_jax import models
from facenet_jax import pretrained
from facenet_jax.models import facenet
from facenet_jax.models import resnet

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Written from the torchvision architecture, independently of facenet_jax.pretrained's mapping.
_TV_BLOCKS = {18: ('basic', (2, 2, 2, 2)), 50: ('bottleneck', (3, 4, 6, 3))}


def torchvision_resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
  """Every state-dict name of torchvision's resnet{depth} and its shape."""
  block, counts = _TV_BLOCKS[depth]
  expansion = 1 if block == 'basic' else 4
  shapes = {'conv1.weight': (64, 3, 7, 7)}

  def bn(prefix, c):
    shapes.update({f'{prefix}.weight': (c,), f'{prefix}.bias': (c,),
                   f'{prefix}.running_mean': (c,), f'{prefix}.running_var': (c,),
                   f'{prefix}.num_batches_tracked': ()})

  bn('bn1', 64)
  in_c = 64
  for i, (width, n) in enumerate(zip((64, 128, 256, 512), counts)):
    for j in range(n):
      p = f'layer{i + 1}.{j}'
      stride = 2 if (i > 0 and j == 0) else 1
      if block == 'basic':
        convs = [(width, in_c, 3), (width, width, 3)]
      else:
        convs = [(width, in_c, 1), (width, width, 3), (width * expansion, width, 1)]
      for k, (o, ci, ks) in enumerate(convs):
        shapes[f'{p}.conv{k + 1}.weight'] = (o, ci, ks, ks)
        bn(f'{p}.bn{k + 1}', o)
      out_c = width * expansion
      if stride != 1 or in_c != out_c:
        shapes[f'{p}.downsample.0.weight'] = (out_c, in_c, 1, 1)
        bn(f'{p}.downsample.1', out_c)
      in_c = out_c
  shapes['fc.weight'] = (1000, in_c)
  shapes['fc.bias'] = (1000,)
  return shapes


def random_state_dict(depth: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A random torchvision-layout state dict (a fresh dict; the arrays are cached, read-only)."""
  return dict(_random_state_dict(depth, seed))


@functools.lru_cache(maxsize=None)
def _random_state_dict(depth: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in torchvision_resnet_shapes(depth).items():
    if name.endswith('num_batches_tracked'):
      out[name] = np.array(7, np.int64)
    elif name.endswith('running_var'):
      out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif name.endswith('running_mean') or name.endswith('bias'):
      out[name] = rng.normal(0, 0.1, shape).astype(np.float32)
    elif name.endswith('weight') and len(shape) == 1:
      out[name] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
    else:
      fan_in = int(np.prod(shape[1:]))
      out[name] = (rng.normal(size=shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)
    out[name].flags.writeable = False
  return out


def test_conversion_covers_every_torchvision_key_and_transposes_convs():
  sd = random_state_dict(18)
  variables = pretrained.convert_torchvision_resnet(sd, depth=18)
  params, stats = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(params['stem']['conv']['kernel'],
                                sd['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['layer2']['block_0']['downsample_conv']['kernel'][0, 0],
                                sd['layer2.0.downsample.0.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(stats['layer3']['block_1']['bn2']['var'],
                                sd['layer3.1.bn2.running_var'])
  np.testing.assert_array_equal(params['layer4']['block_1']['bn1']['bias'], sd['layer4.1.bn1.bias'])
  n_converted = sum(x.size for x in jax.tree.leaves(variables))
  n_torch = sum(v.size for k, v in sd.items()
                if not k.startswith('fc.') and not k.endswith('num_batches_tracked'))
  assert n_converted == n_torch


def test_converted_tree_matches_the_flax_model_exactly():
  shapes = jax.eval_shape(
      lambda x: resnet.ResNet(depth=50).init(jax.random.PRNGKey(0), x),
      jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  converted = pretrained.convert_torchvision_resnet(random_state_dict(50), depth=50)
  assert (jax.tree.map(lambda s: s.shape, dict(shapes))
          == jax.tree.map(np.shape, converted))


def test_missing_unexpected_and_misshaped_keys_are_listed():
  sd = random_state_dict(18)
  del sd['layer1.0.conv2.weight']
  sd['layer5.0.conv1.weight'] = np.zeros((1,), np.float32)
  sd['layer2.1.bn1.running_mean'] = np.zeros((3,), np.float32)
  with pytest.raises(ValueError) as e:
    pretrained.convert_torchvision_resnet(sd, depth=18, source='weights/r18.pth')
  msg = str(e.value)
  assert 'weights/r18.pth' in msg
  assert 'layer1.0.conv2.weight' in msg and 'missing' in msg
  assert 'layer5.0.conv1.weight' in msg and 'unexpected' in msg
  assert 'layer2.1.bn1.running_mean' in msg and '(3,)' in msg and '(128,)' in msg


def test_depth_mismatch_is_an_error_listing_keys():
  with pytest.raises(ValueError, match='layer1.2.conv1.weight'):
    pretrained.convert_torchvision_resnet(random_state_dict(18), depth=50)


def test_readers_npz_safetensors_pth_and_flax_npz_round_trip(tmp_path):
  torch = pytest.importorskip('torch')
  from safetensors import numpy as safetensors_numpy
  sd = random_state_dict(18)
  expected = pretrained.convert_torchvision_resnet(sd, depth=18)
  np.savez(tmp_path / 'tv.npz', **sd)
  safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in sd.items()},
                              str(tmp_path / 'tv.safetensors'))
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, tmp_path / 'tv.pth')
  for name in ('tv.npz', 'tv.safetensors', 'tv.pth'):
    got = pretrained.load_pretrained_backbone(str(tmp_path / name), depth=18)
    jax.tree.map(np.testing.assert_array_equal, got, expected)
  pretrained.save_backbone(expected, str(tmp_path / 'flax.npz'))
  got = pretrained.load_pretrained_backbone(str(tmp_path / 'flax.npz'), depth=18)
  jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_flax_npz_with_a_missing_key_is_an_error_naming_file_and_key(tmp_path):
  flat = {'/'.join(k): v for k, v in pretrained._flatten(
      pretrained.convert_torchvision_resnet(random_state_dict(18), depth=18)).items()}
  del flat['params/layer3/block_0/conv1/kernel']
  path = tmp_path / 'broken.npz'
  np.savez(path, **flat)
  with pytest.raises(ValueError) as e:
    pretrained.load_pretrained_backbone(str(path), depth=18)
  assert 'broken.npz' in str(e.value)
  assert 'params/layer3/block_0/conv1/kernel' in str(e.value)


def test_unknown_suffix_and_missing_file_name_the_file(tmp_path):
  bad = tmp_path / 'weights.ckpt'
  bad.write_bytes(b'x')
  with pytest.raises(ValueError, match='weights.ckpt'):
    pretrained.load_pretrained_backbone(str(bad), depth=18)
  with pytest.raises(FileNotFoundError, match='nowhere.pth'):
    pretrained.load_pretrained_backbone(str(tmp_path / 'nowhere.pth'), depth=18)


def test_pth_without_torch_is_a_clear_import_error(tmp_path, monkeypatch):
  path = tmp_path / 'r18.pth'
  path.write_bytes(b'not read')
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` raise ImportError
  with pytest.raises(ImportError, match='r18.pth.*PyTorch'):
    pretrained.load_pretrained_backbone(str(path), depth=18)


def test_pth_that_is_not_a_state_dict_names_the_file(tmp_path):
  torch = pytest.importorskip('torch')
  path = tmp_path / 'list.pth'
  torch.save([torch.zeros(2)], path)
  with pytest.raises(ValueError, match='list.pth does not hold a state dict'):
    pretrained.load_pretrained_backbone(str(path), depth=18)


def test_save_backbone_insists_on_npz(tmp_path):
  with pytest.raises(ValueError, match='r18.safetensors'):
    pretrained.save_backbone({'params': {}, 'batch_stats': {}}, str(tmp_path / 'r18.safetensors'))


def _load_script(name):
  spec = importlib.util.spec_from_file_location(name, REPO_ROOT / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_convert_weights_script_writes_a_loadable_flax_backbone(tmp_path, capsys):
  from safetensors import numpy as safetensors_numpy
  sd = random_state_dict(18)
  safetensors_numpy.save_file(sd, str(tmp_path / 'in.safetensors'))
  out = tmp_path / 'out' / 'r18.npz'
  script = _load_script('convert_weights')
  assert script.main([str(tmp_path / 'in.safetensors'), str(out), '--depth', '18']) == 0
  assert '11,176,512 parameters' in capsys.readouterr().out  # torchvision resnet18 minus fc
  with np.load(out) as data:
    assert 'params/stem/conv/kernel' in data.files
    assert 'batch_stats/layer4/block_1/bn2/mean' in data.files
  got = pretrained.load_pretrained_backbone(str(out), depth=18)
  jax.tree.map(np.testing.assert_array_equal, got,
               pretrained.convert_torchvision_resnet(sd, depth=18))


@functools.lru_cache(maxsize=None)
def _facenet_shapes(depth):
  model = facenet.FACENet(num_classes=5, depth=depth)
  return jax.eval_shape(lambda: models.init_variables(model, (32, 16), jax.random.PRNGKey(0)))


def _facenet_variables(depth):
  """FACENet variables filled with a constant (the values only need to differ from a backbone's)."""
  return jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32), _facenet_shapes(depth))


def test_init_streams_copies_the_backbone_into_all_three_streams_only():
  variables = _facenet_variables(18)
  before = jax.tree.map(np.array, variables)
  backbone = pretrained.convert_torchvision_resnet(random_state_dict(18), depth=18)
  new = pretrained.init_streams_from_pretrained(variables, backbone)
  for name in facenet.BACKBONE_NAMES.values():
    for c in ('params', 'batch_stats'):
      jax.tree.map(np.testing.assert_array_equal, new[c][name], backbone[c])
      assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new[c][name]))
  for name in ('head_rgb', 'mfmp'):
    jax.tree.map(np.testing.assert_array_equal, new['params'][name], before['params'][name])
  jax.tree.map(np.testing.assert_array_equal, variables, before)  # input left untouched


def test_init_streams_needs_both_collections_and_facenet_variables():
  backbone = pretrained.convert_torchvision_resnet(random_state_dict(18), depth=18)
  with pytest.raises(ValueError, match="no 'batch_stats' collection"):
    pretrained.init_streams_from_pretrained(_facenet_variables(18), {'params': backbone['params']})
  with pytest.raises(ValueError, match='params/backbone_rgb'):
    pretrained.init_streams_from_pretrained({'params': {}, 'batch_stats': {}}, backbone)


def test_init_streams_with_the_wrong_depth_lists_the_keys():
  backbone = pretrained.convert_torchvision_resnet(random_state_dict(50), depth=50)
  with pytest.raises(ValueError) as e:
    pretrained.init_streams_from_pretrained(_facenet_variables(18), backbone)
  assert 'backbone_rgb' in str(e.value)
  assert 'layer1/block_2/conv3/kernel' in str(e.value)  # only ResNet-50 has it


# ---------------------------------------------------------------------------------------------
# Parity with a torchvision-layout PyTorch ResNet (written here: torchvision is not installed).


def _torch_resnet(torch, depth: int, last_stride: int):
  nn = torch.nn

  class Basic(nn.Module):
    expansion = 1

    def __init__(self, in_c, width, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(in_c, width, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.relu = nn.ReLU()
      self.downsample = None
      if stride != 1 or in_c != width:
        self.downsample = nn.Sequential(nn.Conv2d(in_c, width, 1, stride, bias=False),
                                        nn.BatchNorm2d(width))

    def forward(self, x):
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return self.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Bottle(nn.Module):
    expansion = 4

    def __init__(self, in_c, width, stride):
      super().__init__()
      out_c = width * 4
      self.conv1 = nn.Conv2d(in_c, width, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.conv3 = nn.Conv2d(width, out_c, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(out_c)
      self.relu = nn.ReLU()
      self.downsample = None
      if stride != 1 or in_c != out_c:
        self.downsample = nn.Sequential(nn.Conv2d(in_c, out_c, 1, stride, bias=False),
                                        nn.BatchNorm2d(out_c))

    def forward(self, x):
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return self.relu(y + (x if self.downsample is None else self.downsample(x)))

  class TorchResNet(nn.Module):

    def __init__(self):
      super().__init__()
      kind, counts = _TV_BLOCKS[depth]
      block = Basic if kind == 'basic' else Bottle
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.relu = nn.ReLU()
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      in_c = 64
      for i, (width, n) in enumerate(zip((64, 128, 256, 512), counts)):
        stride = (1, 2, 2, last_stride)[i]
        blocks = []
        for j in range(n):
          blocks.append(block(in_c, width, stride if j == 0 else 1))
          in_c = width * block.expansion
        setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
      self.fc = nn.Linear(in_c, 1000)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  return TorchResNet()


@pytest.mark.parity
@pytest.mark.parametrize('depth', [18, 50])
def test_converted_weights_reproduce_the_torch_feature_map(depth):
  torch = pytest.importorskip('torch')
  torch.manual_seed(depth)
  model = _torch_resnet(torch, depth, last_stride=1).eval()
  # Random BN statistics and affine terms, so eval-mode BN is not the identity.
  sd = {k: v.clone() for k, v in model.state_dict().items()}
  sd.update({k: torch.from_numpy(v.copy()) for k, v in random_state_dict(depth).items()
             if k.split('.')[-1] in ('running_mean', 'running_var', 'bias')
             or (k.endswith('weight') and v.ndim == 1)})
  model.load_state_dict(sd)
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 32)).astype(np.float32)
  with torch.no_grad():
    expected = model(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  variables = pretrained.convert_torchvision_resnet(
      {k: v.numpy() for k, v in model.state_dict().items()}, depth=depth)
  got = resnet.ResNet(depth=depth, last_stride=1).apply(
      variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
  assert got.shape == expected.shape == (2, 4, 2, 512 if depth == 18 else 2048)
  assert np.abs(expected).max() > 0.1  # a meaningful, non-degenerate comparison
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('suffix', ['.npz', '.safetensors', '.pth'])
def test_a_text_file_as_weights_is_named_not_unpickled(tmp_path, suffix):
  if suffix == '.pth':
    pytest.importorskip('torch')  # without torch, reading .pth is a clear ImportError instead
  path = tmp_path / f'weights{suffix}'
  path.write_text('<html>404 Not Found</html>\n')
  with pytest.raises(pretrained.PretrainedWeightsError,
                     match=rf'weights{suffix} is not a readable \{suffix} weights file') as info:
    pretrained.read_weights(str(path))
  assert 'allow_pickle' not in str(info.value)
