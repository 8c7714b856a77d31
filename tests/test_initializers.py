"""Every family starts where its official code starts: each added layer's initial distribution.

Each family's table below is its official code's initialisation written out leaf by leaf (file and
line in the comments), as NumPy checks on the drawn values: bounds, mean and standard deviation
(and, for torch's untruncated normals, the share of values beyond 2.5 standard deviations, which a
truncated normal has none of). The parameters are drawn `DRAWS` times (one compiled init) and
pooled per leaf. Every parameter outside the pretrained ImageNet backbone must be claimed by
exactly one rule, so a new layer cannot slip in with flax's defaults unnoticed.
"""

import math
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import _dndm_recipe
from facenet_jax.models import initializers
from tests.tiny import initial_variables

DRAWS = 8


# --------------------------------------------------------------------------------- the checks
def _moments_agree(values: np.ndarray, mean: float, std: float, what: str) -> None:
  """Sample mean / std of n draws within ~5 standard errors of the rule's."""
  n = values.size
  got_mean, got_std = float(values.mean()), float(values.std())
  assert abs(got_mean - mean) <= 5 * std / math.sqrt(n) + 1e-7, (what, got_mean, mean)
  if std > 0:
    assert abs(got_std / std - 1) <= 5 / math.sqrt(2 * n) + 1e-3, (what, got_std, std)


def uniform(bound_of):
  """U(-b, b), b = bound_of(kernel shape)."""
  def check(values, kernel_shape, what):
    bound = bound_of(kernel_shape)
    assert np.abs(values).max() <= bound * (1 + 1e-6), (what, np.abs(values).max(), bound)
    # max |x| / b of n uniform draws is below 1 - 10 / n with probability ~exp(-10).
    assert np.abs(values).max() > bound * (1 - 10 / values.size), (what, 'U(-b, b) nears b')
    _moments_agree(values, 0.0, bound / math.sqrt(3), what)
  return check


def normal(mean, std_of):
  """N(mean, s^2), s = std_of(kernel shape); torch's normals are not truncated."""
  def check(values, kernel_shape, what):
    std = std_of(kernel_shape)
    _moments_agree(values, mean, std, what)
    if values.size >= 5000:
      # P(|z| > 2.5) = 1.24 %; JAX's truncated normal of the same variance stops at 2.27 std.
      tail = float(np.mean(np.abs(values - mean) > 2.5 * std))
      assert abs(tail - 0.0124) <= 5 * math.sqrt(0.0124 / values.size), (what, tail)
  return check


def constant(value):
  def check(values, kernel_shape, what):
    del kernel_shape
    np.testing.assert_array_equal(values, value, err_msg=what)
  return check


def _fan_in(kernel_shape):     # torch: weight [out, in / groups, kh, kw] -> (in / groups) kh kw
  return math.prod(kernel_shape[:-1])


def _fan_out(kernel_shape):    # torch: out kh kw (Linear: out)
  return kernel_shape[-1] * math.prod(kernel_shape[:-2])


# torch's Conv2d / Linear left alone: kernel and bias U(+-1/sqrt(fan_in)).
TORCH_DEFAULT = uniform(lambda k: 1 / math.sqrt(_fan_in(k)))
# init.kaiming_normal_(a=0, mode='fan_in' | 'fan_out'): N(0, 2 / fan).
KAIMING_FAN_IN = normal(0.0, lambda k: math.sqrt(2 / _fan_in(k)))
KAIMING_FAN_OUT = normal(0.0, lambda k: math.sqrt(2 / _fan_out(k)))
# weights_init_kaiming on a BatchNorm1d: weight N(1, 0.01), bias 0.
BN1D_KAIMING = normal(1.0, lambda k: 0.01)
# weights_init_classifier: N(0, 0.001), bias 0.
CLASSIFIER = normal(0.0, lambda k: 0.001)
ONE, ZERO = constant(1.0), constant(0.0)

# The non-local / MFA blocks: 1x1 convs at torch's default, W's BatchNorm at zero
# (`nn.init.constant_(self.W[1].weight / .bias, 0.0)`).
NON_LOCAL = [(r'/(g|theta|phi|w)/(kernel|bias)$', TORCH_DEFAULT),
             (r'/w_bn/(scale|bias)$', ZERO)]
# AGW-family head (AGW `model.py` 177-178, DEEN `model.py` 165-169): bottleneck.apply(
# weights_init_kaiming) (its bias frozen at 0: ours has none), classifier N(0, 0.001).
BNNECK_HEAD = [(r'^head/bnneck/scale$', BN1D_KAIMING),
               (r'^head/classifier/kernel$', CLASSIFIER)]
# DEEN `model.py` 110-137: DEE's dilated convs and its 1x1 expansion through weights_init_kaiming,
# which sets a conv's weight only; the expansion's bias stays at torch's default.
DEE = [(r'^dee/branch_\d/dilated_\d/kernel$', KAIMING_FAN_IN),
       (r'^dee/branch_\d/expand/kernel$', KAIMING_FAN_IN),
       (r'^dee/branch_\d/expand/bias$', TORCH_DEFAULT)]
# FSC-Net `model_FSC.py` at a2dcc76, 103-208: FSA / GCA / SPT at torch's defaults (LayerNorm and
# BatchNorm2d weight 1, bias 0), not passed through weights_init_kaiming.
FSC_BLOCKS = [(r'/refine/fsa/(conv_reduce|mlp_1|mlp_2)/(kernel|bias)$', TORCH_DEFAULT),
              (r'/refine/gca/(fc1|conv|fc2)/(kernel|bias)$', TORCH_DEFAULT),
              (r'/refine/gca/norm/scale$', ONE), (r'/refine/gca/norm/bias$', ZERO),
              (r'/refine/spt/conv/(kernel|bias)$', TORCH_DEFAULT),
              (r'/refine/spt/norm/scale$', ONE), (r'/refine/spt/norm/bias$', ZERO)]

# The pretrained ImageNet parts: not initialised by the papers' code (weights loaded).
IMAGENET = r'^(backbone/(stem_\d|layer\d/block_\d+)|(real|generated)_\d/resnet|generator_)'

# The official code's model switches (configs/dndm_code_dn348.py), read from its recipe.
DNDM_CODE = {field: _dndm_recipe.get_code_config('dn348').model[field]
             for field in ('stem_pool', 'ngs_relu', 'dse_rule', 'cca_rule', 'pooling', 'bnneck')}

# {case: (registered model, its config fields, [(leaf pattern, official rule)])}.
FAMILIES = {
    # AGW `model.py` (mangye16 e817a26) 17-34, 177-178.
    'agw': ('agw', {}, [(r'^backbone/layer\d/nonlocal_\d+' + p, r) for p, r in NON_LOCAL] +
            BNNECK_HEAD),
    # DEEN: LLCM `DEEN/model.py` 101-169.
    'deen': ('deen', {}, [(r'^mfa\d/(cnl|pnl)' + p, r) for p, r in NON_LOCAL] + DEE + BNNECK_HEAD),
    'fsc_net': ('fsc_net', {}, [(r'^mfa\d/(cnl|pnl)' + p, r) for p, r in NON_LOCAL] + DEE +
                [(r'^dee/branch_\d' + p, r) for p, r in FSC_BLOCKS] + BNNECK_HEAD),
    # DNDM `model.py` / `Net.py` (DN-ReID 62b033f), the code variant: NGS's Linear(65, 1,
    # bias=False) at torch's default, CCA's classifier projections and the classifier through
    # weights_init_classifier, the bottleneck through weights_init_kaiming.
    'dndm': ('dndm', DNDM_CODE, [(r'^ngs/v/kernel$', TORCH_DEFAULT),
                                 (r'^cca\d/project/kernel$', CLASSIFIER),
                                 (r'^head/classifier$', CLASSIFIER),
                                 (r'^head/bnneck/scale$', BN1D_KAIMING)]),
    # The paper rule's CCA has no official code: torch's default Conv2d (ours, `dndm.CCA`).
    'dndm_paper': ('dndm', {}, [(r'^ngs/v/kernel$', TORCH_DEFAULT),
                                (r'^cca\d/(project|back_project)/kernel$', TORCH_DEFAULT),
                                (r'^cca\d/(project|back_project)_bn/scale$', ONE),
                                (r'^cca\d/(project|back_project)_bn/bias$', ZERO),
                                (r'^head/classifier$', CLASSIFIER),
                                (r'^head/bnneck/scale$', BN1D_KAIMING)]),
    # TSME stage 2 (`model.py` at 99bc54c): FeatureBlock Linear kaiming fan_out with bias 0,
    # BatchNorm1d N(1, 0.01) / 0; ClassBlock N(0, 0.001) / 0.
    'tsme': ('tsme', {}, [(r'^head_\d+/feature/kernel$', KAIMING_FAN_OUT),
                          (r'^head_\d+/feature/bias$', ZERO),
                          (r'^head_\d+/feature_bn/scale$', BN1D_KAIMING),
                          (r'^head_\d+/feature_bn/bias$', ZERO),
                          (r'^head_\d+/classifier/kernel$', CLASSIFIER),
                          (r'^head_\d+/classifier/bias$', ZERO)]),
}


def _drawn_parameters(name: str, fields: dict) -> dict[str, np.ndarray]:
  """{path: [DRAWS, ...]} of the family's tiny model's parameters from DRAWS keys (the contract
  test's compiled initialisation, `tests/tiny.initial_variables`)."""
  draws = [initial_variables(name, key, **fields)['params']
           for key in jax.random.split(jax.random.PRNGKey(0), DRAWS)]
  flat = [flax.traverse_util.flatten_dict(flax.core.unfreeze(d), sep='/') for d in draws]
  return {path: np.stack([np.asarray(f[path], np.float64) for f in flat]) for path in flat[0]}


# Slow: each family's initialisation is a compiled program of ~15-25 s (in `make test` the model
# contract test, run before in the same worker (tests/conftest.py SHARED_PROGRAM_GROUPS), has
# compiled them all but DNDM's code variant).
@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_each_added_layer_starts_as_the_official_code_initialises_it(name):
  model, fields, rules = FAMILIES[name]
  params = _drawn_parameters(model, fields)
  added = {p: v for p, v in params.items() if not re.match(IMAGENET, p)}
  unclaimed = [p for p in added if not any(re.search(pattern, p) for pattern, _ in rules)]
  assert not unclaimed, f'{name}: parameters without an official rule: {unclaimed}'
  for pattern, _ in rules:
    assert any(re.search(pattern, p) for p in added), f'{name}: nothing matches {pattern}'
  for path, values in added.items():
    (check,) = [check for pattern, check in rules if re.search(pattern, path)]
    kernel = path.rsplit('/', 1)[0] + '/kernel'
    kernel_shape = params[kernel].shape[1:] if kernel in params else values.shape[1:]
    check(values.ravel(), kernel_shape, f'{name} {path}')


# ------------------------------------------------------------------ the named initialisers alone
def _draw(init, shape, seed=0):
  return np.asarray(init(jax.random.PRNGKey(seed), shape, jnp.float32), np.float64)


def test_torch_default_kernel_and_bias_are_uniform_in_one_over_sqrt_fan_in():
  kernel = _draw(initializers.TORCH_DEFAULT_KERNEL, (3, 3, 8, 64))   # fan_in 72
  TORCH_DEFAULT(kernel.ravel(), kernel.shape, 'kernel')
  bias = _draw(initializers.torch_uniform(72), (20000,))
  TORCH_DEFAULT(bias, (3, 3, 8, 64), 'bias')


def test_kaiming_normals_are_untruncated_with_torch_fans():
  kernel = _draw(initializers.KAIMING_NORMAL_FAN_IN, (3, 3, 16, 128))
  KAIMING_FAN_IN(kernel.ravel(), kernel.shape, 'fan_in')
  dense = _draw(initializers.KAIMING_NORMAL_FAN_OUT, (256, 64))
  KAIMING_FAN_OUT(dense.ravel(), dense.shape, 'fan_out')
  # A truncated normal of the same variance fails the tail check that torch's draws pass.
  truncated = _draw(jax.nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal'),
                    (256, 64))
  with pytest.raises(AssertionError):
    KAIMING_FAN_OUT(truncated.ravel(), truncated.shape, 'truncated')


def test_flax_defaults_fail_the_torch_rules():
  """What the families started from before: LeCun-normal kernels, zero biases, BNNeck scale 1."""
  lecun = _draw(jax.nn.initializers.lecun_normal(), (64, 256))
  with pytest.raises(AssertionError):
    TORCH_DEFAULT(lecun.ravel(), lecun.shape, 'lecun')
  with pytest.raises(AssertionError):
    TORCH_DEFAULT(np.zeros(256), (64, 256), 'zero bias')
  with pytest.raises(AssertionError):
    BN1D_KAIMING(np.ones(2048), (2048,), 'ones')


def test_bnneck_scale_is_one_plus_a_hundredth_normal():
  BN1D_KAIMING(_draw(initializers.bnneck_scale, (20000,)), (20000,), 'bnneck')


@pytest.mark.parametrize('layer, in_features, groups, kernel', [
    ('conv', 12, 1, (3, 3)), ('depthwise', 12, 12, (7, 7)), ('dense', 40, 1, None)])
def test_torch_layers_take_the_fan_in_torch_computes(layer, in_features, groups, kernel):
  if layer == 'dense':
    module, x = initializers.torch_dense(300, in_features), jnp.ones((1, in_features))
  else:
    module = initializers.torch_conv(in_features * (1 if groups > 1 else 25), kernel,
                                     in_features, groups=groups)
    x = jnp.ones((1, 8, 8, in_features))
  params = module.init(jax.random.PRNGKey(0), x)['params']
  fan_in = in_features // groups * math.prod(kernel or (1,))
  bound = 1 / math.sqrt(fan_in)
  for leaf in ('kernel', 'bias'):
    values = np.asarray(params[leaf], np.float64).ravel()
    assert np.abs(values).max() <= bound * (1 + 1e-6) and np.abs(values).max() > 0.8 * bound, leaf
