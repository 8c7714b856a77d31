"""MFMP (FMI, mask maps, SMP) and FCE on tiny feature maps, against NumPy references."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facenet_jax.models import mfmp as modules
from tests import fake_trees

B, H, W, C = 4, 3, 2, 8


def _maps(seed, n=3, positive=True):
  rng = np.random.default_rng(seed)
  maps = [rng.normal(size=(B, H, W, C)).astype(np.float32) for _ in range(n)]
  return [np.maximum(m, 0) if positive else m for m in maps]  # backbone maps are post-ReLU


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def random_variables(module, *args, seed=0, **kwargs):
  """Variables of `module` with NumPy-drawn values (`fake_trees.numpy_variables`)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))
  return fake_trees.numpy_variables(shapes, seed)


# --------------------------------------------------------------------------------- masks / SMP


def test_sigmoid_mask_is_the_relaxed_threshold():
  m = np.random.default_rng(0).normal(size=(B, H, W, C)).astype(np.float32)
  got = modules.estimate_mask(jnp.asarray(m), jnp.float32(0.3), 'sigmoid', 0.5, False)
  np.testing.assert_allclose(np.asarray(got), _sigmoid((m - 0.3) / 0.5), rtol=1e-6, atol=1e-6)


def test_straight_through_is_hard_forward_with_the_sigmoid_gradient():
  m = jnp.asarray(np.random.default_rng(1).normal(size=(B, H, W, C)), jnp.float32)
  delta, t = 0.2, 2.0
  hard = modules.estimate_mask(m, jnp.float32(delta), 'straight_through', t, False)
  np.testing.assert_array_equal(np.asarray(hard), (np.asarray(m) > delta).astype(np.float32))
  grad_st = jax.grad(lambda d: jnp.sum(
      modules.estimate_mask(m, d, 'straight_through', t, False) * m))(jnp.float32(delta))
  s = _sigmoid((np.asarray(m) - delta) / t)
  expected = np.sum(np.asarray(m) * (-s * (1 - s) / t))  # d/dDelta of sum(sigmoid(.) * m)
  assert abs(float(grad_st)) > 1e-3
  np.testing.assert_allclose(float(grad_st), expected, rtol=1e-4)


def test_dead_threshold_is_the_sign_pattern_with_no_gradient():
  m = jnp.asarray(np.random.default_rng(2).normal(size=(B, H, W, C)), jnp.float32)
  for estimator in modules.MASK_ESTIMATORS:
    mask = modules.estimate_mask(m, jnp.float32(0.7), estimator, 1.0, True)
    np.testing.assert_array_equal(np.asarray(mask), (np.asarray(m) > 0).astype(np.float32))
    g_delta, g_m = jax.grad(
        lambda d, m: jnp.sum(modules.estimate_mask(m, d, estimator, 1.0, True) * m),
        argnums=(0, 1))(jnp.float32(0.7), m)
    assert float(g_delta) == 0.0
    np.testing.assert_array_equal(np.asarray(g_m), (np.asarray(m) > 0).astype(np.float32))


def test_unknown_mask_estimator_names_the_field():
  with pytest.raises(ValueError, match='model.mask_estimator'):
    modules.estimate_mask(jnp.zeros((1,)), jnp.float32(0), 'gumbel', 1.0, False)


@pytest.mark.parametrize('similarity', modules.MASK_SIMILARITIES)
def test_mask_logits_follow_eqs_5_and_6_then_standardise(similarity):
  f_c, f_s = _maps(3, n=2)
  module = modules.MaskLogits(C, similarity)
  variables = random_variables(module, f_c, f_s, train=True)
  got, _ = module.apply(variables, f_c, f_s, train=True, mutable=['batch_stats'])
  wq = np.asarray(variables['params']['proj_common']['kernel'])[0, 0]
  wk = np.asarray(variables['params']['proj_modality']['kernel'])[0, 0]
  qk = (f_c @ wq) * (f_s @ wk)
  m_com = _sigmoid(qk) if similarity == 'sigmoid' else 2 * np.tanh(qk)
  affine = m_com * f_s + f_s                            # Eq. 5
  m = f_s * affine + f_s                                # Eq. 6
  mean, var = m.mean(axis=(0, 1, 2)), m.var(axis=(0, 1, 2))
  np.testing.assert_allclose(np.asarray(got), (m - mean) / np.sqrt(var + 1e-5), rtol=1e-4,
                             atol=1e-4)


def test_channel_attention_is_se_on_the_pooled_map():
  (x,) = _maps(4, n=1)
  module = modules.ChannelAttention(C, hidden=2)
  variables = random_variables(module, x)
  got = module.apply(variables, x)
  p = variables['params']
  pooled = x.mean(axis=(1, 2))
  a = np.maximum(pooled @ np.asarray(p['reduce']['kernel'])[0, 0] + p['reduce']['bias'], 0)
  a = a @ np.asarray(p['expand']['kernel'])[0, 0] + p['expand']['bias']
  np.testing.assert_allclose(np.asarray(got)[:, 0, 0], _sigmoid(a), rtol=1e-5, atol=1e-6)


def test_fmi_concatenates_runs_the_conv_stack_and_adds_attention_residually():
  f_r, f_n = _maps(5, n=2)
  fmi = modules.FMI(C, hidden_ratio=0.5, attention_ratio=0.25)
  variables = random_variables(fmi, f_r, f_n, train=False)
  kernels = {k: v['kernel'].shape for k, v in variables['params']['conv_stack'].items()
             if k.startswith('conv')}
  # Eq. 3 inside-out: 3x3, 1x1, 3x3, 3x3; 2C -> hC -> hC -> hC -> C.
  assert kernels == {'conv0': (3, 3, 2 * C, 4), 'conv1': (1, 1, 4, 4), 'conv2': (3, 3, 4, 4),
                     'conv3': (3, 3, 4, C)}
  got = fmi.apply(variables, f_r, f_n, train=False)
  stack = modules.FMIConvStack(C, 4).apply(
      {'params': variables['params']['conv_stack'],
       'batch_stats': variables['batch_stats']['conv_stack']},
      jnp.concatenate([f_r, f_n], axis=-1), train=False)
  att = modules.ChannelAttention(C, 2).apply({'params': variables['params']['attention']}, stack)
  np.testing.assert_allclose(np.asarray(got), np.asarray(att * stack + stack), rtol=1e-6)
  assert float(jnp.abs(got).max()) > 0


@pytest.mark.parametrize('use_bias', [True, False])
def test_flare_head_is_gap_bnneck_and_a_two_way_classifier(use_bias):
  (x,) = _maps(6, n=1)
  head = modules.FlareHead(use_bias)
  variables = random_variables(head, x, train=True)
  assert set(variables['params']['bn']) == {'scale'}  # no BN bias
  assert set(variables['params']['classifier']) == ({'kernel', 'bias'} if use_bias else {'kernel'})
  kernel = np.asarray(variables['params']['classifier']['kernel'])
  bias = np.asarray(variables['params']['classifier']['bias']) if use_bias else np.zeros(2)
  assert kernel.shape == (C, 2)
  got, _ = head.apply(variables, x, train=True, mutable=['batch_stats'])
  pooled = x.mean(axis=(1, 2))
  normed = (pooled - pooled.mean(0)) / np.sqrt(pooled.var(0) + 1e-5)
  normed = normed * np.asarray(variables['params']['bn']['scale'])
  np.testing.assert_allclose(np.asarray(got), normed @ kernel + bias, rtol=1e-4, atol=1e-6)
  # The BatchNorm centres the pooled features over the batch, so without a bias the batch-mean
  # logit is 0 for any kernel: a bias-free head cannot learn that most images are clean.
  mean_logits = np.asarray(got).mean(axis=0)
  np.testing.assert_allclose(mean_logits, bias, atol=1e-5)


def test_signed_similarity_lets_fmi_switch_mask_cells_the_sigmoid_one_barely():
  """Two unrelated common features f_C, one modality map f_S, strong projections: the fraction
  of mask cells (m_S > 0 after standardising) that differ between the two."""
  rng = np.random.default_rng(0)
  shape = (8, 8, 4, C)
  f_s = np.maximum(rng.normal(size=shape), 0).astype(np.float32)
  commons = [np.maximum(rng.normal(size=shape), 0).astype(np.float32) for _ in range(2)]
  changed = {}
  for similarity in modules.MASK_SIMILARITIES:
    module = modules.MaskLogits(C, similarity)
    variables = random_variables(module, commons[0], f_s, train=True)
    variables = jax.tree.map(lambda x: 10 * x, variables)   # a trained, strong interaction
    masks = [np.asarray(module.apply(variables, jnp.asarray(c), jnp.asarray(f_s), train=True,
                                     mutable=['batch_stats'])[0]) > 0 for c in commons]
    changed[similarity] = float(np.mean(masks[0] != masks[1]))
  assert changed['signed'] > 0.1, changed      # FMI decides a good share of the active cells
  assert changed['sigmoid'] < 0.05, changed    # the mask is nearly f_S's whatever FMI says


def _mfmp_grads(estimator, dead, fmi=True, head_input='mask'):
  f_r, f_n, f_t = _maps(7)
  module = modules.MFMP(C, fmi=fmi, hidden_ratio=0.5, attention_ratio=0.5,
                        mask_estimator=estimator, flare_head_input=head_input,
                        dead_threshold=dead)
  variables = random_variables(module, f_r, f_n, train=True)
  labels = jnp.array([1, 0, 1, 0])

  def loss(params):
    out, _ = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, f_r, f_n,
                          train=True, mutable=['batch_stats'])
    total = 0.0
    for s in modules.MODALITIES:  # flare CE plus a term that uses the masks like FCE does
      logp = jax.nn.log_softmax(out['flare_logits'][s])
      total -= jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
      total += jnp.mean(jnp.square(f_t * out['masks'][s] + f_r * (1 - out['masks'][s]) - 1))
    return total

  return variables, jax.jit(jax.grad(loss))(variables['params'])


def test_mfmp_initialisation_threshold_zero_and_bias_free_official_flare_classifiers():
  f_r, f_n = _maps(11, n=2)
  module = modules.MFMP(C, fmi=False, flare_head_bias=False)
  init = jax.jit(lambda key: module.init(key, f_r, f_n, train=False))
  params = init(jax.random.key(0, impl='rbg'))['params']
  assert float(params['threshold']) == 0.0  # Sec. 3.2: Delta is initialised to zero
  for s in modules.MODALITIES:
    head = params[f'flare_head_{s}']
    assert set(head['bn']) == {'scale'} and set(head['classifier']) == {'kernel'}
    assert 0.0003 < float(np.std(head['classifier']['kernel'])) < 0.003  # N(0, 0.001^2)


def test_mfmp_gradients_reach_every_leaf_and_delta():
  _, grads = _mfmp_grads('sigmoid', dead=False)
  assert abs(float(grads['threshold'])) > 1e-4
  flat = flax.traverse_util.flatten_dict(grads)
  dead_leaves = [k for k, g in flat.items() if not np.any(np.asarray(g))]
  assert not dead_leaves


@pytest.mark.parametrize('estimator,dead', [('straight_through', False), ('sigmoid', True)])
def test_mfmp_hard_masks_threshold_the_mask_logits(estimator, dead):
  # Gradients of these estimators are tested on estimate_mask above; here the wiring.
  f_r, f_n = _maps(12, n=2)
  module = modules.MFMP(C, fmi=False, mask_estimator=estimator, dead_threshold=dead)
  variables = random_variables(module, f_r, f_n, train=False)
  variables['params']['threshold'] = np.float32(0.25)
  out = module.apply(variables, f_r, f_n, train=False)
  for s in modules.MODALITIES:
    m = np.asarray(out['mask_logits'][s])
    expected = m > (0.0 if dead else 0.25)  # the official mask ignores Delta
    np.testing.assert_array_equal(np.asarray(out['masks'][s]), expected.astype(np.float32))
    assert 0 < expected.mean() < 1


def test_mfmp_outputs_and_fmi_off_predicts_each_mask_from_its_own_modality():
  f_r, f_n = _maps(8, n=2)
  for fmi in (True, False):
    module = modules.MFMP(C, fmi=fmi, hidden_ratio=0.5, attention_ratio=0.25)
    variables = random_variables(module, f_r, f_n, train=False)
    assert ('fmi' in variables['params']) == fmi
    out = module.apply(variables, f_r, f_n, train=False)
    for s in modules.MODALITIES:
      assert out['masks'][s].shape == out['mask_logits'][s].shape == (B, H, W, C)
      assert out['flare_logits'][s].shape == (B, 2)
      assert out['flare_logits'][s].dtype == jnp.float32
    if not fmi:  # the RGB mask cannot depend on NI without FMI
      other = module.apply(variables, f_r, f_n + 5.0, train=False)
      np.testing.assert_array_equal(np.asarray(other['masks']['rgb']),
                                    np.asarray(out['masks']['rgb']))
    else:
      other = module.apply(variables, f_r, f_n + 5.0, train=False)
      assert not np.allclose(np.asarray(other['masks']['rgb']), np.asarray(out['masks']['rgb']))


def test_flare_head_input_switch_and_its_error():
  f_r, f_n = _maps(9, n=2)
  module = modules.MFMP(C, fmi=False, flare_head_input='mask_logits')
  variables = random_variables(module, f_r, f_n, train=False)
  out = module.apply(variables, f_r, f_n, train=False)
  head = modules.FlareHead().apply({'params': variables['params']['flare_head_rgb'],
                                    'batch_stats': variables['batch_stats']['flare_head_rgb']},
                                   out['mask_logits']['rgb'], train=False)
  np.testing.assert_allclose(np.asarray(out['flare_logits']['rgb']), np.asarray(head), rtol=1e-6)


# ----------------------------------------------------------------------------------------- FCE


def test_fce_gates_per_sample_and_batch_level():
  flare = jnp.array([[1, 0], [0, 0], [0, 1], [1, 1]], jnp.int32)
  rgb, ni = modules.fce_gates(flare, batch_level=False)
  assert rgb.tolist() == [True, False, False, True]
  assert ni.tolist() == [False, False, True, True]
  rgb, ni = modules.fce_gates(flare, batch_level=True)
  assert rgb.tolist() == ni.tolist() == [True] * 4
  rgb, ni = modules.fce_gates(jnp.zeros((3, 2), jnp.int32), batch_level=True)
  assert rgb.tolist() == ni.tolist() == [False] * 3


def test_fce_gate_all_enhances_every_sample_whatever_the_labels():
  flare = jnp.array([[1, 0], [0, 0], [0, 1]], jnp.int32)
  for batch_level in (False, True):
    rgb, ni = modules.fce_gates(flare, batch_level, gate='all')
    assert rgb.tolist() == ni.tolist() == [True] * 3
  rgb, ni = modules.fce_gates(jnp.zeros((2, 2), jnp.int32), False, gate='all')
  assert rgb.tolist() == ni.tolist() == [True] * 2
  assert [g.tolist() for g in modules.fce_gates(flare, False, gate='label')] == [
      [True, False, False], [False, False, True]]
  with pytest.raises(ValueError, match='model.fce_gate'):
    modules.fce_gates(flare, False, gate='none')


@pytest.mark.parametrize('gate', ['label', 'all'])
def test_enhance_streams_on_a_flare_free_sample_only_with_gate_all(gate):
  """Sample 1 has flare bits (0, 0): 'label' keeps its RGB / NI maps, 'all' replaces the masked
  content by TI (Eq. 7) as for a flared sample."""
  f_r, f_n, f_t = _maps(20)
  masks = {'rgb': np.zeros((B, H, W, C), np.float32), 'ni': np.zeros((B, H, W, C), np.float32)}
  for m in masks.values():
    m[:, 0, 0, :] = 1.0  # the mask is on at one position, off elsewhere
  f_t = f_t + 1.0        # TI differs from RGB / NI wherever the mask is on
  flare = jnp.array([[1, 1], [0, 0], [1, 0], [0, 1]], jnp.int32)
  out = modules.enhance_streams({'rgb': f_r, 'ni': f_n, 'ti': f_t}, masks, flare, False, False,
                                gate)
  for s, f_s in (('rgb', f_r), ('ni', f_n)):
    got = np.asarray(out[s])[1]
    if gate == 'all':
      assert np.all(got[0, 0] != f_s[1, 0, 0])
      np.testing.assert_allclose(got[0, 0], f_t[1, 0, 0])
      np.testing.assert_array_equal(got[1:], f_s[1, 1:])   # mask off: unchanged
    else:
      np.testing.assert_array_equal(got, f_s[1])
  np.testing.assert_array_equal(np.asarray(out['ti']), f_t)
  # The flared sample 0 is enhanced under both gates.
  np.testing.assert_allclose(np.asarray(out['rgb'])[0, 0, 0], f_t[0, 0, 0])


def test_fce_hand_worked_case():
  # One position, two channels; sample 0 flared, sample 1 not.
  f_s = jnp.array([[[[2.0, 4.0]]], [[[2.0, 4.0]]]])
  f_t = jnp.array([[[[10.0, 20.0]]], [[[10.0, 20.0]]]])
  mask = jnp.array([[[[1.0, 0.25]]], [[[1.0, 0.25]]]])
  remain = jnp.array([[[[0.5, 0.0]]], [[[0.5, 0.0]]]])
  out = modules.flare_aware_enhancement(f_s, f_t, mask, mask, jnp.array([True, False]))
  # Eq. 7: 10*1 + 2*0 = 10; 20*0.25 + 4*0.75 = 8. The unflared sample is returned unchanged.
  np.testing.assert_allclose(np.asarray(out)[:, 0, 0], [[10.0, 8.0], [2.0, 4.0]])
  out = modules.flare_aware_enhancement(f_s, f_t, mask, remain, jnp.array([True, True]))
  # Official RGB bug: keep f_R * (1 - M_N): 10 + 2*0.5 = 11; 5 + 4*1 = 9.
  np.testing.assert_allclose(np.asarray(out)[:, 0, 0], [[11.0, 9.0], [11.0, 9.0]])


def test_fce_matches_numpy_on_random_maps_and_keeps_the_dtype():
  f_s, f_t, m = _maps(10)
  m = _sigmoid(m)
  gate = np.array([True, False, True, True])
  out = modules.flare_aware_enhancement(jnp.asarray(f_s, jnp.bfloat16), f_t, m, m, gate)
  assert out.dtype == jnp.bfloat16
  out = modules.flare_aware_enhancement(f_s, f_t, m, m, gate)
  expected = np.where(gate[:, None, None, None], f_t * m + f_s * (1 - m), f_s)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)
