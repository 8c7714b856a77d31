"""Tests for facenet_jax/optim.py: schedules, parameter groups, SGD/Adam against NumPy and torch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default as default_config
from facenet_jax import optim


def make_optim_config(**overrides):
  config = default_config.get_config().optim
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def small_params():
  """Flax-style names: conv/dense kernels and biases, BatchNorm/LayerNorm scale and bias."""
  rng = np.random.default_rng(0)
  shapes = {
      'Conv_0': {'kernel': (3, 3, 2, 4), 'bias': (4,)},
      'BatchNorm_0': {'scale': (4,), 'bias': (4,)},
      'stage1': {'LayerNorm_0': {'scale': (4,), 'bias': (4,)},
                 'Dense_0': {'kernel': (4, 3), 'bias': (3,)}},
      'bnneck': {'scale': (3,)},
      'classifier': {'kernel': (3, 5)},
      'unused': {'kernel': (2, 2)},
  }
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                                is_leaf=lambda x: isinstance(x, tuple))


DECAYED = {'Conv_0/kernel', 'stage1/Dense_0/kernel', 'classifier/kernel', 'unused/kernel'}
BIASES = {'Conv_0/bias', 'BatchNorm_0/bias', 'stage1/LayerNorm_0/bias', 'stage1/Dense_0/bias'}


def flat(tree):
  return {optim.path_to_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


# ------------------------------------------------------------------------------ schedules


def test_multistep_schedule_hand_worked():
  # Paper: 3.5e-4, x0.1 at epochs 40 and 70. 3 steps per epoch: epoch e = step // 3.
  config = make_optim_config(schedule='multistep', base_lr=3.5e-4, decay_epochs=(40, 70))
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=3, num_epochs=120)
  cases = {0: 3.5e-4, 119: 3.5e-4,          # epochs 0..39 (last step of epoch 39 is 119)
           120: 3.5e-5, 209: 3.5e-5,        # epochs 40..69
           210: 3.5e-6, 359: 3.5e-6}        # epochs 70..119
  for step, want in cases.items():
    np.testing.assert_allclose(lr(step), want, rtol=1e-6, err_msg=str(step))
  # Bias group with factor 2 is simply doubled.
  lr_bias = optim.create_learning_rate_fn(config, 3, 120, lr_factor=2.0)
  np.testing.assert_allclose(lr_bias(150), 7e-5, rtol=1e-6)
  # Works on traced steps.
  np.testing.assert_allclose(jax.jit(lr)(jnp.int32(130)), 3.5e-5, rtol=1e-6)


def test_multistep_with_warmup():
  # w = 4, lr0 = 0.01 x 1e-3 = 1e-5; t = e + 1: t = 1 -> 1e-5 + (1e-3 - 1e-5) / 4 = 2.575e-4;
  # t = 3 -> 1e-5 + 3 x 2.475e-4 = 7.525e-4; t = 4 (epoch 3) -> base.
  config = make_optim_config(schedule='multistep', base_lr=1e-3, warmup_epochs=4,
                             decay_epochs=(10,))
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=2, num_epochs=20)
  np.testing.assert_allclose([lr(0), lr(1), lr(4), lr(6), lr(19), lr(20)],
                             [2.575e-4, 2.575e-4, 7.525e-4, 1e-3, 1e-3, 1e-4], rtol=1e-6)


def test_cosine_schedule_matches_reference_numbers():
  # WMVeID863 official: base 3e-3, 5 warmup epochs, 120 epochs, bias factor 2.
  # lr0 = 3e-5, lr_min = 6e-6. t = 1..4: 3e-5 + t (3e-3 - 3e-5) / 5.
  # t = 5: 6e-6 + (3e-3 - 6e-6)(1 + cos(5 pi / 120)) / 2 = 2.98719e-3. t = 120: 6e-6.
  config = make_optim_config(schedule='cosine', base_lr=3e-3, warmup_epochs=5)
  spe = 7
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=spe, num_epochs=120)
  got = [float(lr(spe * e)) for e in range(5)]
  np.testing.assert_allclose(got[:4], [6.24e-4, 1.218e-3, 1.812e-3, 2.406e-3], rtol=1e-6)
  np.testing.assert_allclose(got[4], 2.987e-3, rtol=2e-4)
  np.testing.assert_allclose(got[4], 6e-6 + 0.5 * (3e-3 - 6e-6) * (1 + math.cos(math.pi / 24)),
                             rtol=1e-6)
  # Constant within an epoch.
  np.testing.assert_allclose([lr(spe * 2 + k) for k in range(spe)], 1.812e-3, rtol=1e-6)
  # Halfway (t = 60): cos(pi / 2) = 0 -> 6e-6 + (3e-3 - 6e-6) / 2 = 1.503e-3.
  np.testing.assert_allclose(lr(spe * 59), 1.503e-3, rtol=1e-6)
  # Last epoch (t = 120) and anything after it: lr_min.
  np.testing.assert_allclose([lr(spe * 119), lr(spe * 119 + 6), lr(spe * 500)], 6e-6, rtol=1e-6)


def test_cosine_bias_group_shares_absolute_lr0_and_lr_min():
  # Bias base 6e-3 but lr0 = 3e-5 and lr_min = 6e-6 stay absolute:
  # t = 1: 3e-5 + (6e-3 - 3e-5) / 5 = 1.224e-3 (not 2 x 6.24e-4).
  config = make_optim_config(schedule='cosine', base_lr=3e-3, warmup_epochs=5)
  lr_bias = optim.create_learning_rate_fn(config, 1, 120, lr_factor=2.0)
  np.testing.assert_allclose(lr_bias(0), 1.224e-3, rtol=1e-6)
  np.testing.assert_allclose(lr_bias(59), 6e-6 + 0.5 * (6e-3 - 6e-6), rtol=1e-6)
  np.testing.assert_allclose(lr_bias(119), 6e-6, rtol=1e-6)


def test_schedule_bad_config_names_the_field():
  cases = [({'schedule': 'linear'}, 'optim.schedule'),
           ({'decay_epochs': (70, 40)}, 'optim.decay_epochs'),
           ({'warmup_epochs': -1}, 'optim.warmup_epochs'),
           ({'base_lr': 0.0}, 'optim.base_lr')]
  for overrides, field in cases:
    with pytest.raises(ValueError, match=field):
      optim.create_learning_rate_fn(make_optim_config(**overrides), 10, 120)
  with pytest.raises(ValueError, match='steps_per_epoch'):
    optim.create_learning_rate_fn(make_optim_config(), 0, 120)
  with pytest.raises(ValueError, match='train.num_epochs'):
    optim.create_learning_rate_fn(make_optim_config(), 10, 0)


# ------------------------------------------------------------------------------ masks


def test_decay_and_bias_masks():
  params = small_params()
  decay = flat(optim.decay_mask(params))
  assert {k for k, v in decay.items() if v} == DECAYED
  bias = flat(optim.bias_mask(params))
  assert {k for k, v in bias.items() if v} == BIASES
  frozen = flat(optim.frozen_mask(params, lambda p: p.startswith('unused/')))
  assert {k for k, v in frozen.items() if v} == {'unused/kernel'}
  assert not any(flat(optim.frozen_mask(params, None)).values())


def one_update(config, params, grads, freeze=None, steps_per_epoch=10):
  tx = optim.create_optimizer(config, params, steps_per_epoch, 120, freeze=freeze)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return flat(updates)


def test_weight_decay_only_on_kernels():
  # Zero gradients: the first SGD update is -lr * wd * p on decayed leaves and 0 elsewhere.
  params = small_params()
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  config = make_optim_config(optimizer='sgd', base_lr=0.1, weight_decay=0.01, decay_epochs=())
  updates = one_update(config, params, zeros)
  for name, p in flat(params).items():
    want = -0.1 * 0.01 * p if name in DECAYED else np.zeros_like(p)
    np.testing.assert_allclose(updates[name], want, rtol=1e-6, err_msg=name)
  # decay_all_params: every leaf is decayed (official code).
  config.decay_all_params = True
  updates = one_update(config, params, zeros)
  for name, p in flat(params).items():
    np.testing.assert_allclose(updates[name], -0.1 * 0.01 * p, rtol=1e-6, err_msg=name)


def test_bias_lr_factor_and_frozen_leaves():
  # Gradients of ones, no decay: weights move by -lr, 'bias' leaves by -2 lr, frozen by 0.
  params = small_params()
  ones = jax.tree_util.tree_map(jnp.ones_like, params)
  config = make_optim_config(optimizer='sgd', base_lr=0.1, weight_decay=0.01, bias_lr_factor=2.0,
                             decay_all_params=True, decay_epochs=())
  zero_wd = make_optim_config(**{**config.to_dict(), 'weight_decay': 0.0})
  updates = one_update(zero_wd, params, ones, freeze=lambda p: p.startswith('unused/'))
  for name, u in updates.items():
    want = 0.0 if name == 'unused/kernel' else (-0.2 if name in BIASES else -0.1)
    np.testing.assert_allclose(u, np.full_like(u, want), rtol=1e-6, err_msg=name)
  # Frozen leaves get no weight decay either, even with decay_all_params.
  updates = one_update(config, params, ones, freeze=lambda p: p.startswith('unused/'))
  np.testing.assert_array_equal(updates['unused/kernel'], 0.0)


def test_grad_clipping_ignores_frozen_leaves():
  params = {'a': {'kernel': jnp.zeros((2,))}, 'frozen': {'kernel': jnp.zeros((1,))}}
  # Trainable gradient (3, 4): norm 5; the frozen leaf's huge gradient must not count.
  grads = {'a': {'kernel': jnp.array([3.0, 4.0])}, 'frozen': {'kernel': jnp.array([100.0])}}
  config = make_optim_config(optimizer='sgd', base_lr=1.0, weight_decay=0.0, grad_clip_norm=1.0,
                             decay_epochs=())
  updates = one_update(config, params, grads, freeze=lambda p: p.startswith('frozen/'))
  np.testing.assert_allclose(updates['a/kernel'], [-0.6, -0.8], rtol=1e-6)
  np.testing.assert_array_equal(updates['frozen/kernel'], [0.0])


def test_create_optimizer_bad_config_names_the_field():
  params = small_params()
  cases = [({'optimizer': 'rmsprop'}, 'optim.optimizer'),
           ({'weight_decay': -1.0}, 'optim.weight_decay'),
           ({'grad_clip_norm': -1.0}, 'optim.grad_clip_norm'),
           ({'bias_lr_factor': 0.0}, 'optim.bias_lr_factor'),
           ({'schedule': 'step'}, 'optim.schedule')]
  for overrides, field in cases:
    with pytest.raises(ValueError, match=field):
      optim.create_optimizer(make_optim_config(**overrides), params, 10, 120)


# ------------------------------------------------------------------------------ NumPy torch steps


def numpy_torch_sgd(params, grads_seq, lrs, momentum, wd, decayed):
  """torch.optim.SGD (dampening 0, no nesterov) re-implemented leaf by leaf."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  bufs = {}
  for step, grads in enumerate(grads_seq):
    for name in params:
      d = grads[name] + (wd * params[name] if name in decayed else 0.0)
      bufs[name] = d.copy() if step == 0 else momentum * bufs[name] + d
      params[name] = params[name] - lrs[name][step] * bufs[name]
  return params


def numpy_torch_adam(params, grads_seq, lrs, wd, decayed, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.Adam with (coupled) weight_decay, leaf by leaf."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  for step, grads in enumerate(grads_seq):
    t = step + 1
    for name in params:
      g = grads[name] + (wd * params[name] if name in decayed else 0.0)
      m[name] = b1 * m[name] + (1 - b1) * g
      v[name] = b2 * v[name] + (1 - b2) * g * g
      denom = np.sqrt(v[name]) / math.sqrt(1 - b2 ** t) + eps
      params[name] = params[name] - lrs[name][step] / (1 - b1 ** t) * m[name] / denom
  return params


def run_optax(tx, params, grads_seq):
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for grads in grads_seq:
    params, state = step(params, state, grads)
  return flat(params)


def random_grads(params, num_steps, seed=1):
  rng = np.random.default_rng(seed)
  return [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32),
                                 params) for _ in range(num_steps)]


def group_lrs(config, steps_per_epoch, num_steps):
  weight = optim.create_learning_rate_fn(config, steps_per_epoch, 4)
  bias = optim.create_learning_rate_fn(config, steps_per_epoch, 4, config.bias_lr_factor)
  return {'weight': [float(weight(s)) for s in range(num_steps)],
          'bias': [float(bias(s)) for s in range(num_steps)]}


@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_optimizer_matches_numpy_torch_reimplementation(optimizer):
  # Cosine with warmup over 4 epochs of 2 steps: the LR changes every other step; biases x2.
  params = small_params()
  num_steps, spe = 6, 2
  config = make_optim_config(optimizer=optimizer, schedule='cosine', base_lr=0.05,
                             warmup_epochs=2, weight_decay=1e-2, bias_lr_factor=2.0)
  grads_seq = random_grads(params, num_steps)
  tx = optim.create_optimizer(config, params, spe, 4)
  got = run_optax(tx, params, grads_seq)
  per_group = group_lrs(config, spe, num_steps)
  lrs = {name: per_group['bias' if name in BIASES else 'weight'] for name in got}
  flat_grads = [flat(g) for g in grads_seq]
  if optimizer == 'sgd':
    want = numpy_torch_sgd(flat(params), flat_grads, lrs, 0.9, 1e-2, DECAYED)
  else:
    want = numpy_torch_adam(flat(params), flat_grads, lrs, 1e-2, DECAYED)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
  # The schedule really changed within the run (warmup then cosine).
  assert len(set(per_group['weight'])) == 3


@pytest.mark.parity
@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_parity_with_torch_optim(optimizer):
  torch = pytest.importorskip('torch')
  params = small_params()
  num_steps, spe = 6, 2
  config = make_optim_config(optimizer=optimizer, schedule='cosine', base_lr=0.05,
                             warmup_epochs=2, weight_decay=1e-2, bias_lr_factor=2.0)
  grads_seq = random_grads(params, num_steps, seed=3)
  got = run_optax(optim.create_optimizer(config, params, spe, 4), params, grads_seq)

  # One torch param group per (decay, bias) combination, as the official make_optimizer.
  tensors = {k: torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True)
             for k, v in flat(params).items()}
  groups = []
  for name, t in tensors.items():
    groups.append({'params': [t], 'weight_decay': 1e-2 if name in DECAYED else 0.0,
                   'is_bias': name in BIASES})
  if optimizer == 'sgd':
    opt = torch.optim.SGD(groups, lr=0.0, momentum=0.9)
  else:
    opt = torch.optim.Adam(groups, lr=0.0)
  per_group = group_lrs(config, spe, num_steps)
  for step, grads in enumerate(grads_seq):
    for group in opt.param_groups:
      group['lr'] = per_group['bias' if group['is_bias'] else 'weight'][step]
    for name, g in flat(grads).items():
      tensors[name].grad = torch.tensor(np.asarray(g), dtype=torch.float64)
    opt.step()
  for name, t in tensors.items():
    np.testing.assert_allclose(got[name], t.detach().numpy(), rtol=1e-5, atol=1e-5, err_msg=name)


def test_the_smp_threshold_is_never_weight_decayed():
  params = {'mfmp': {'threshold': jnp.zeros(()), 'fmi': {'conv': {'kernel': jnp.ones((1, 1, 2, 2))}}}}
  mask = optim.decay_mask(params)
  assert not mask['mfmp']['threshold']
  assert mask['mfmp']['fmi']['conv']['kernel']


# ------------------------------------------------------------------ the AGW family's recipe
def test_agw_schedule_hand_worked():
  """lr(e) = peak (e + 1) / 10 for e < 10, peak until 20, x0.1 until 50, x0.01 after."""
  config = make_optim_config(optimizer='sgd', base_lr=0.1, schedule='multistep', warmup_epochs=10,
                             warmup_init_factor=0.0, decay_epochs=(20, 50), decay_factor=0.1)
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=3, num_epochs=81)
  expected = {0: 0.01, 4: 0.05, 9: 0.1, 10: 0.1, 19: 0.1, 20: 0.01, 49: 0.01, 50: 0.001, 80: 0.001}
  for epoch, want in expected.items():
    for step in (3 * epoch, 3 * epoch + 2):
      assert float(lr(step)) == pytest.approx(want, rel=1e-6), (epoch, step)


def test_feature_lr_factor_spares_only_the_heads():
  params = {'backbone': {'conv': {'kernel': jnp.ones((2, 2))}},
            'mfa1': {'w': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}},
            'head': {'classifier': {'kernel': jnp.ones((2, 2))}},
            'head_rgb': {'bnneck': {'scale': jnp.ones(2)}}}
  ones = jax.tree_util.tree_map(jnp.ones_like, params)
  config = make_optim_config(optimizer='sgd', base_lr=0.1, weight_decay=0.0, decay_epochs=(),
                             feature_lr_factor=0.1, bias_lr_factor=2.0)
  updates = one_update(config, params, ones)
  want = {'backbone/conv/kernel': -0.01, 'mfa1/w/kernel': -0.01, 'mfa1/w/bias': -0.02,
          'head/classifier/kernel': -0.1, 'head_rgb/bnneck/scale': -0.1}
  for name, value in want.items():
    np.testing.assert_allclose(updates[name], np.full_like(updates[name], value), rtol=1e-6,
                               err_msg=name)
  with pytest.raises(ValueError, match='optim.feature_lr_factor'):
    optim.create_optimizer(make_optim_config(feature_lr_factor=0.0), params, 1, 1)


def test_nesterov_sgd_matches_torch_formula():
  """torch SGD(nesterov=True): buf = m buf + d; p -= lr (d + m buf)."""
  params = {'w': jnp.asarray(np.random.default_rng(3).normal(size=(4,)), jnp.float32)}
  grads_seq = random_grads(params, 3)
  config = make_optim_config(optimizer='sgd', base_lr=0.05, weight_decay=0.01, nesterov=True,
                             decay_epochs=(), decay_all_params=True)
  got = run_optax(optim.create_optimizer(config, params, 10, 4), params, grads_seq)
  p = np.array(params['w'], np.float64)
  buf = None
  for g in grads_seq:
    d = np.asarray(g['w'], np.float64) + 0.01 * p
    buf = d if buf is None else 0.9 * buf + d
    p = p - 0.05 * (d + 0.9 * buf)
  np.testing.assert_allclose(got['w'], p, rtol=1e-5)
