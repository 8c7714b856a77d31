"""TSME stage 1 networks: shapes, ImageNet-layout encoder, and the forward against PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facenet_jax import pretrained
from facenet_jax.models import dsgan
from facenet_jax.models import resnet


def test_shapes_and_the_encoder_takes_resnet50_weights():
  g = dsgan.Generator()
  x = jnp.zeros((1, 64, 32, 3))
  variables = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), x))
  assert jax.eval_shape(lambda v: g.apply(v, x), variables).shape == (1, 64, 32, 3)
  # The encoder's tree is a ResNet-50's (stem, layer1-4), so converted ImageNet weights fit.
  reference = jax.eval_shape(lambda: resnet.ResNet(50).init(jax.random.PRNGKey(0), x))
  for name in ('stem', 'layer1', 'layer2', 'layer3', 'layer4'):
    assert jax.tree.map(lambda a: a.shape, variables['params'][name]) == \
        jax.tree.map(lambda a: a.shape, reference['params'][name]), name
  small = dsgan.Generator(width_multiplier=0.125, depth=18)   # the test / study size
  sv = jax.eval_shape(lambda: small.init(jax.random.PRNGKey(0), x))
  assert jax.eval_shape(lambda v: small.apply(v, x), sv).shape == (1, 64, 32, 3)
  d = dsgan.Discriminator()
  big = jnp.zeros((1, 288, 144, 3))
  dv = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), big))
  assert jax.eval_shape(lambda v: d.apply(v, big), dv).shape == (1, 18, 9, 1)


def _torch_modules(torch):
  from tests.test_pretrained import _torch_resnet  # pylint: disable=g-import-not-at-top
  nn = torch.nn

  class DecBottleneck(nn.Module):
    def __init__(self, c_in, width):
      super().__init__()
      self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(4 * width)
      self.proj = None
      if c_in != 4 * width:
        self.proj = nn.Sequential(nn.Conv2d(c_in, 4 * width, 1, bias=False),
                                  nn.BatchNorm2d(4 * width))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = torch.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return torch.relu(y + (x if self.proj is None else self.proj(x)))

  class Gen(nn.Module):
    def __init__(self):
      super().__init__()
      self.enc = _torch_resnet(torch, 50, 1)
      self.dec = nn.ModuleList([nn.Sequential(DecBottleneck(c, c // 4), DecBottleneck(c, c // 8))
                                for c in (2048, 1024, 512, 256)])
      self.up = nn.ModuleList([nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)
                               for c_in, c_out in ((512, 512), (256, 256), (128, 64))])
      self.out = nn.ConvTranspose2d(64, 3, 4, 2, 1, bias=False)

    def forward(self, x):
      e = self.enc
      x1 = e.relu(e.bn1(e.conv1(x)))
      x2 = e.layer1(e.maxpool(x1))
      x3 = e.layer2(x2)
      x4 = e.layer3(x3)
      x5 = e.layer4(x4)
      d = self.dec[0](x5) + x4
      for k, skip in ((1, x3), (2, x2), (3, x1)):
        d = torch.relu(self.up[k - 1](self.dec[k](d))) + skip
      return self.out(d)

  class Disc(nn.Module):
    def __init__(self):
      super().__init__()
      chans = ((3, 128), (128, 128), (128, 256), (256, 512))
      self.convs = nn.ModuleList([nn.Conv2d(a, b, 4, 2, 1) for a, b in chans])
      self.score = nn.Conv2d(512, 1, 4, padding=1)

    def forward(self, x):
      for i, conv in enumerate(self.convs):
        x = conv(x)
        if i > 0:
          x = torch.nn.functional.instance_norm(x, eps=1e-5)
        x = torch.nn.functional.leaky_relu(x, 0.2)
      return self.score(torch.nn.functional.pad(x, (1, 0, 1, 0)))

  return Gen(), Disc()


def _conv(m):
  return {'kernel': m.weight.detach().numpy().transpose(2, 3, 1, 0)}


def _bn(m):
  return ({'scale': m.weight.detach().numpy(), 'bias': m.bias.detach().numpy()},
          {'mean': m.running_mean.numpy(), 'var': m.running_var.numpy()})


def _bottleneck_vars(b):
  params, stats = {}, {}
  for i in (1, 2, 3):
    params[f'conv{i}'] = _conv(getattr(b, f'conv{i}'))
    params[f'bn{i}'], stats[f'bn{i}'] = _bn(getattr(b, f'bn{i}'))
  if b.proj is not None:
    params['downsample_conv'] = _conv(b.proj[0])
    params['downsample_bn'], stats['downsample_bn'] = _bn(b.proj[1])
  return params, stats


@pytest.mark.parity
def test_generator_and_discriminator_match_pytorch():
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  gen, disc = _torch_modules(torch)
  gen.eval()
  with torch.no_grad():
    for m in gen.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  enc = pretrained.convert_torchvision_resnet(
      {k: v.numpy() for k, v in gen.enc.state_dict().items()}, depth=50)
  params = {k: v for k, v in enc['params'].items()}
  stats = {k: v for k, v in enc['batch_stats'].items()}
  for k in range(4):
    params[f'dec{k + 1}'], stats[f'dec{k + 1}'] = {}, {}
    for j in range(2):
      p, s = _bottleneck_vars(gen.dec[k][j])
      params[f'dec{k + 1}'][f'block_{j}'], stats[f'dec{k + 1}'][f'block_{j}'] = p, s
  for k, up in zip((2, 3, 4), gen.up):
    params[f'up{k}'] = {'kernel': up.weight.detach().numpy().transpose(2, 3, 1, 0)}
  params['out'] = {'kernel': gen.out.weight.detach().numpy().transpose(2, 3, 1, 0)}
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 32)).astype(np.float32)
  with torch.no_grad():
    expected = gen(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  got = dsgan.Generator().apply({'params': params, 'batch_stats': stats},
                                x.transpose(0, 2, 3, 1), train=False)
  assert np.abs(expected).max() > 0.1
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
  # Discriminator
  dparams = {f'conv{i}': {'kernel': c.weight.detach().numpy().transpose(2, 3, 1, 0),
                          'bias': c.bias.detach().numpy()} for i, c in enumerate(disc.convs)}
  dparams['score'] = {'kernel': disc.score.weight.detach().numpy().transpose(2, 3, 1, 0),
                      'bias': disc.score.bias.detach().numpy()}
  with torch.no_grad():
    expected = disc(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  got = dsgan.Discriminator().apply({'params': dparams}, x.transpose(0, 2, 3, 1))
  assert got.shape == expected.shape == (2, 4, 2, 1)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
