"""Tests for facenet_jax/losses.py: hand-worked cases, NumPy loop references, torch parity."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from facenet_jax import losses
from facenet_jax.batches import MODALITIES
from facenet_jax.models import facenet

RTOL = 1e-5
ATOL = 1e-6


# ------------------------------------------------------------------------------ NumPy references


def np_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_cross_entropy(logits, labels, eps=0.0):
  log_p = np_log_softmax(logits)
  num_classes = log_p.shape[1]
  total = 0.0
  for b in range(log_p.shape[0]):
    for k in range(num_classes):
      q = (1.0 - eps) * (k == labels[b]) + eps / num_classes
      total -= q * log_p[b, k]
  return total / log_p.shape[0]


def np_triplet(features, labels, margin, normalize=False):
  x = np.asarray(features, np.float64)
  if normalize:
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
  per_anchor = []
  for i in range(len(x)):
    d_ap, d_an = -np.inf, np.inf
    for j in range(len(x)):
      d = math.sqrt(max(float(np.sum((x[i] - x[j]) ** 2)), 1e-12))
      if labels[j] == labels[i]:
        d_ap = max(d_ap, d)
      else:
        d_an = min(d_an, d)
    if d_an == np.inf:
      continue
    if margin is None:
      per_anchor.append(math.log1p(math.exp(d_ap - d_an)))
    else:
      per_anchor.append(max(0.0, margin + d_ap - d_an))
  return float(np.mean(per_anchor)) if per_anchor else 0.0


def np_kl(p_logits, q_logits, reduction):
  """KL(p || q) with a loop over rows and classes."""
  log_p, log_q = np_log_softmax(p_logits), np_log_softmax(q_logits)
  total = 0.0
  for b in range(log_p.shape[0]):
    for k in range(log_p.shape[1]):
      total += math.exp(log_p[b, k]) * (log_p[b, k] - log_q[b, k])
  denom = log_p.shape[0] * (log_p.shape[1] if reduction == 'mean' else 1)
  return total / denom


def np_kl_min(a, b, reduction):
  return min(np_kl(a, b, reduction), np_kl(b, a, reduction))


def np_centers(features, labels, pid):
  rows = [i for i in range(len(labels)) if labels[i] == pid]
  return np.mean(np.asarray(features, np.float64)[rows], axis=0), rows


def np_three_m(f_r, f_n, f_t, labels, margin=3.0):
  total = 0.0
  for pid in sorted(set(labels.tolist())):
    c_r, _ = np_centers(f_r, labels, pid)
    c_n, _ = np_centers(f_n, labels, pid)
    c_t, _ = np_centers(f_t, labels, pid)
    d = lambda a, b: float(np.sum((a - b) ** 2))
    total += max(abs(margin - d(c_r, c_n)), abs(margin - d(c_n, c_t)), abs(margin - d(c_r, c_t)))
  return total


def np_cdc(f_r, f_n, f_t, labels, margin=0.1):
  d = lambda a, b: float(np.sum((a - b) ** 2))
  h = lambda x: max(0.0, x - margin)
  ids = sorted(set(labels.tolist()))
  cdc_m, cdc_s, ids_with_pairs = 0.0, 0.0, 0
  for pid in ids:
    centers = [np_centers(f, labels, pid)[0] for f in (f_r, f_n, f_t)]
    cdc_m += sum(h(d(centers[i], centers[j])) for i in range(3) for j in range(i + 1, 3)) / 3
    rows = np_centers(f_r, labels, pid)[1]
    sample_centers = [(np.float64(f_r[r]) + f_n[r] + f_t[r]) / 3 for r in rows]
    n = len(rows)
    if n >= 2:
      pair_values = [h(d(sample_centers[i], sample_centers[j]))
                     for i in range(n) for j in range(i + 1, n)]
      cdc_s += float(np.mean(pair_values))
      ids_with_pairs += 1
  return cdc_m / len(ids) + (cdc_s / ids_with_pairs if ids_with_pairs else 0.0)


def np_hc(f_a, f_b, labels, distance):
  total = 0.0
  for pid in sorted(set(labels.tolist())):
    c_a, _ = np_centers(f_a, labels, pid)
    c_b, _ = np_centers(f_b, labels, pid)
    if distance == 'l2':
      total += float(np.sum((c_a - c_b) ** 2))
    else:
      total += 1.0 - float(c_a @ c_b / (np.linalg.norm(c_a) * np.linalg.norm(c_b)))
  return total


def random_pk(seed, num_ids=4, num_instances=3, dim=8, num_classes=6):
  rng = np.random.default_rng(seed)
  labels = np.repeat(rng.permutation(num_classes)[:num_ids], num_instances).astype(np.int32)
  b = len(labels)
  feats = {s: rng.normal(size=(b, dim)).astype(np.float32) for s in MODALITIES}
  logits = {s: (2 * rng.normal(size=(b, num_classes))).astype(np.float32)
            for s in MODALITIES}
  flare_logits = {s: rng.normal(size=(b, 2)).astype(np.float32) for s in ('rgb', 'ni')}
  flare = rng.integers(0, 2, size=(b, 2)).astype(np.int32)
  outputs = {'features': feats, 'logits': logits, 'flare_logits': flare_logits}
  batch = {'pid': labels, 'flare': flare}
  return outputs, batch


# ------------------------------------------------------------------------------ cross-entropy


def test_cross_entropy_hand_worked():
  # logits (ln 3, 0) -> p = (3/4, 1/4). Label 0: CE = -ln(3/4).
  logits = jnp.array([[math.log(3.0), 0.0]])
  labels = jnp.array([0])
  np.testing.assert_allclose(losses.cross_entropy_loss(logits, labels), -math.log(0.75), rtol=RTOL)
  # eps = 0.2, K = 2: q = (0.9, 0.1): CE = -(0.9 ln 3/4 + 0.1 ln 1/4) = 0.397543...
  expected = -(0.9 * math.log(0.75) + 0.1 * math.log(0.25))
  np.testing.assert_allclose(losses.cross_entropy_loss(logits, labels, 0.2), expected, rtol=RTOL)
  np.testing.assert_allclose(expected, 0.3975433, rtol=1e-6)


@pytest.mark.parametrize('eps', [0.0, 0.1])
def test_cross_entropy_random_vs_loop(eps):
  rng = np.random.default_rng(0)
  logits = (3 * rng.normal(size=(7, 5))).astype(np.float32)
  labels = rng.integers(0, 5, size=7).astype(np.int32)
  got = losses.cross_entropy_loss(jnp.asarray(logits), jnp.asarray(labels), eps)
  np.testing.assert_allclose(got, np_cross_entropy(logits, labels, eps), rtol=RTOL)


def test_cross_entropy_bfloat16_input_reduces_in_float32():
  logits = jnp.array([[math.log(3.0), 0.0]], jnp.bfloat16)
  got = losses.cross_entropy_loss(logits, jnp.array([0]))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_cross_entropy(np.float32(logits), [0]), rtol=1e-6)


def test_cross_entropy_bad_shapes_name_the_argument():
  with pytest.raises(ValueError, match='labels'):
    losses.cross_entropy_loss(jnp.zeros((3, 2)), jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match='logits'):
    losses.cross_entropy_loss(jnp.zeros((3,)), jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match='label_smoothing'):
    losses.cross_entropy_loss(jnp.zeros((3, 2)), jnp.zeros((3,), jnp.int32), 1.0)


# ------------------------------------------------------------------------------ triplet


def test_triplet_hand_worked():
  # 1-D features x = (0, 1, 3, 7), labels (0, 0, 1, 1).
  #   anchor 0: d_ap = |0-1| = 1, d_an = min(3, 7) = 3   -> d_ap - d_an = -2
  #   anchor 1: d_ap = 1,         d_an = min(2, 6) = 2   -> -1
  #   anchor 2: d_ap = |3-7| = 4, d_an = min(3, 2) = 2   -> +2
  #   anchor 3: d_ap = 4,         d_an = min(7, 6) = 6   -> -2
  x = jnp.array([[0.0], [1.0], [3.0], [7.0]])
  labels = jnp.array([0, 0, 1, 1])
  # margin 3: hinge terms 1, 2, 5, 1 -> mean 9/4.
  np.testing.assert_allclose(losses.batch_hard_triplet_loss(x, labels, 3.0), 2.25, rtol=RTOL)
  # margin 0.3: only anchor 2 is active: 0.3 + 2 = 2.3 -> mean 2.3 / 4.
  np.testing.assert_allclose(losses.batch_hard_triplet_loss(x, labels, 0.3), 0.575, rtol=RTOL)
  # soft margin: mean of log(1 + e^g) over g = (-2, -1, 2, -2).
  expected = (2 * math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) +
              math.log1p(math.exp(2))) / 4
  np.testing.assert_allclose(losses.batch_hard_triplet_loss(x, labels, None), expected, rtol=RTOL)


def test_triplet_positive_includes_self_at_1e_minus_6():
  # Identity 0 has a single row: its hardest positive is itself at sqrt(1e-12) = 1e-6.
  # x = (0, 5, 6): anchor 0: d_ap = 1e-6, d_an = 5 -> soft term log(1 + e^(1e-6 - 5)).
  x = jnp.array([[0.0], [5.0], [6.0]])
  labels = jnp.array([0, 1, 1])
  d = losses.pairwise_euclidean_distance(x)
  np.testing.assert_allclose(np.diag(d), 1e-6, rtol=1e-3)
  d_ap, d_an, has_neg = losses.hardest_pair_distances(d, labels)
  np.testing.assert_allclose(d_ap, [1e-6, 1.0, 1.0], rtol=1e-3, atol=1e-9)
  np.testing.assert_allclose(d_an, [5.0, 5.0, 6.0], rtol=RTOL)
  assert np.all(np.asarray(has_neg))


@pytest.mark.parametrize('margin,normalize', [(0.3, False), (None, False), (0.3, True),
                                              (None, True)])
def test_triplet_random_vs_loop(margin, normalize):
  outputs, batch = random_pk(1)
  x, labels = outputs['features']['rgb'], batch['pid']
  got = losses.batch_hard_triplet_loss(jnp.asarray(x), jnp.asarray(labels), margin, normalize)
  np.testing.assert_allclose(got, np_triplet(x, labels, margin, normalize), rtol=1e-4, atol=1e-6)


def test_triplet_uneven_and_shuffled_identities():
  # 3 + 1 + 2 rows, interleaved: masked mining needs no equal positives nor grouping.
  rng = np.random.default_rng(2)
  labels = np.array([4, 1, 4, 9, 4, 1], np.int32)
  x = rng.normal(size=(6, 5)).astype(np.float32)
  for margin in (0.3, None):
    got = losses.batch_hard_triplet_loss(jnp.asarray(x), jnp.asarray(labels), margin)
    np.testing.assert_allclose(got, np_triplet(x, labels, margin), rtol=1e-4)


def test_triplet_single_identity_is_zero():
  x = jnp.arange(6.0).reshape(3, 2)
  assert float(losses.batch_hard_triplet_loss(x, jnp.zeros(3, jnp.int32), None)) == 0.0


@pytest.mark.parametrize('margin', [0.3, None])
def test_triplet_gradient_finite_with_duplicate_features(margin):
  # Rows 0 and 1 coincide (distance at the clamp), row 2 duplicates row 3 across identities.
  x = jnp.array([[1.0, 2.0], [1.0, 2.0], [0.5, 0.5], [0.5, 0.5]])
  labels = jnp.array([0, 0, 1, 2])
  grad = jax.jit(jax.grad(lambda f: losses.batch_hard_triplet_loss(f, labels, margin)))(x)
  assert np.all(np.isfinite(np.asarray(grad)))
  # A zero row with normalisation: the norm's gradient at 0 must not produce NaN.
  zero_row = x.at[0].set(0.0)
  grad = jax.jit(jax.grad(lambda f: losses.batch_hard_triplet_loss(f, labels, margin, True)))(
      zero_row)
  assert np.all(np.isfinite(np.asarray(grad)))
  # All rows identical: every distance is at the clamp.
  grad = jax.jit(jax.grad(lambda f: losses.batch_hard_triplet_loss(f, labels, margin, True)))(
      jnp.ones((4, 3)))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_triplet_jit_and_bfloat16():
  outputs, batch = random_pk(3)
  x = jnp.asarray(outputs['features']['ni'], jnp.bfloat16)
  got = jax.jit(losses.batch_hard_triplet_loss, static_argnums=(2, 3))(
      x, jnp.asarray(batch['pid']), None, False)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_triplet(np.float32(x), batch['pid'], None), rtol=1e-4)


# ------------------------------------------------------------------------------ KL / IC / flare


def test_kl_min_hand_worked():
  # p = softmax(ln 3, 0) = (3/4, 1/4), q = softmax(0, 0) = (1/2, 1/2).
  # KL(p||q) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812;  KL(q||p) = 1/2 ln(2/3) + 1/2 ln 2 = 0.143841.
  a = jnp.array([[math.log(3.0), 0.0]])
  b = jnp.zeros((1, 2))
  kl_pq = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
  kl_qp = 0.5 * math.log(2.0 / 3.0) + 0.5 * math.log(2.0)
  assert kl_pq < kl_qp
  np.testing.assert_allclose(losses.kl_min(a, b, 'batchmean'), kl_pq, rtol=RTOL)
  np.testing.assert_allclose(losses.kl_min(b, a, 'batchmean'), kl_pq, rtol=RTOL)
  # torch 'mean' divides by B x K = 2.
  np.testing.assert_allclose(losses.kl_min(a, b, 'mean'), kl_pq / 2, rtol=RTOL)
  np.testing.assert_allclose(losses.ic_loss(a, b), kl_pq, rtol=RTOL)


@pytest.mark.parametrize('reduction', ['batchmean', 'mean'])
def test_kl_min_random_vs_loop(reduction):
  outputs, _ = random_pk(4)
  a, b = outputs['logits']['rgb'], outputs['logits']['ni']
  np.testing.assert_allclose(losses.kl_min(jnp.asarray(a), jnp.asarray(b), reduction),
                             np_kl_min(a, b, reduction), rtol=1e-5)


def test_kl_min_gradient_flows_through_the_smaller_direction_only():
  outputs, _ = random_pk(5)
  a, b = jnp.asarray(outputs['logits']['rgb']), jnp.asarray(outputs['logits']['ti'])

  def direction(x, y):  # KL(softmax(x) || softmax(y)), batchmean
    lx, ly = jax.nn.log_softmax(x), jax.nn.log_softmax(y)
    return jnp.mean(jnp.sum(jnp.exp(lx) * (lx - ly), axis=-1))

  smaller = (lambda x, y: direction(x, y)) if direction(a, b) <= direction(b, a) else (
      lambda x, y: direction(y, x))
  got = jax.grad(losses.kl_min, argnums=(0, 1))(a, b)
  want = jax.grad(smaller, argnums=(0, 1))(a, b)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_kl_min_extreme_logits_finite():
  # softmax underflows to 0 for one class: log_softmax keeps everything finite.
  a = jnp.array([[200.0, -200.0]])
  b = jnp.array([[-200.0, 200.0]])
  value, grads = jax.value_and_grad(losses.kl_min, argnums=(0, 1))(a, b)
  np.testing.assert_allclose(value, 400.0, rtol=1e-5)  # KL = 1 * (200 - (-200)) + ~0
  assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_official_ic_loss_is_sum_of_two_kl_min_mean():
  outputs, _ = random_pk(6)
  r, n, t = (outputs['logits'][s] for s in MODALITIES)
  want = np_kl_min(r, n, 'mean') + np_kl_min(t, n, 'mean')
  got = losses.official_ic_loss(jnp.asarray(r), jnp.asarray(n), jnp.asarray(t))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_kl_min_bad_reduction_and_shapes():
  with pytest.raises(ValueError, match='reduction'):
    losses.kl_min(jnp.zeros((2, 3)), jnp.zeros((2, 3)), 'sum')
  with pytest.raises(ValueError, match='logits_a and logits_b'):
    losses.kl_min(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_flare_loss_hand_worked_and_official_variant():
  # Row 0: logits (ln 3, 0), label 1 -> -ln(1/4); row 1: logits (0, 0), label 0 -> ln 2.
  logits = jnp.array([[math.log(3.0), 0.0], [0.0, 0.0]])
  got = losses.flare_loss(logits, jnp.array([1, 0]))
  np.testing.assert_allclose(got, (math.log(4.0) + math.log(2.0)) / 2, rtol=RTOL)
  # The official term ignores labels: KLmin with the 'mean' (/ B x 2) reduction.
  other = jnp.array([[0.0, 0.0], [math.log(3.0), 0.0]])
  np.testing.assert_allclose(losses.official_flare_loss(logits, other),
                             np_kl_min(logits, other, 'mean'), rtol=RTOL)
  with pytest.raises(ValueError, match=r'flare_logits must have shape \[B, 2\]'):
    losses.flare_loss(jnp.zeros((2, 3)), jnp.array([0, 1]))
  with pytest.raises(ValueError, match='flare_labels'):
    losses.flare_loss(jnp.zeros((2, 2)), jnp.array([0, 1, 1]))


# ------------------------------------------------------------------------------ Table 5 losses


def test_three_m_hand_worked():
  # D = 1. Identity 0 (rows 0, 1): centres R = mean(0, 2) = 1, N = 1, T = 3.
  #   d(R,N) = 0, d(N,T) = 4, d(R,T) = 4 -> max(|3-0|, |3-4|, |3-4|) = 3.
  # Identity 1 (rows 2, 3): R = 0, N = 1, T = -2.
  #   d(R,N) = 1, d(N,T) = 9, d(R,T) = 4 -> max(2, 6, 1) = 6.     L_3M = 3 + 6 = 9.
  f_r = jnp.array([[0.0], [2.0], [0.0], [0.0]])
  f_n = jnp.array([[1.0], [1.0], [1.0], [1.0]])
  f_t = jnp.array([[3.0], [3.0], [-2.0], [-2.0]])
  labels = jnp.array([0, 0, 1, 1])
  np.testing.assert_allclose(losses.three_m_loss(f_r, f_n, f_t, labels), 9.0, rtol=RTOL)


def test_cdc_hand_worked():
  # D = 1, margin 0.1, h(d) = max(0, d - 0.1), d squared distance.
  # Identity 0 (rows 0, 1): R = (0, 2) -> 1, N = (0, 0) -> 0, T = (3, 3) -> 3.
  #   CdC-M: h(1) + h(9) + h(4) = 0.9 + 8.9 + 3.9 = 13.7, / 3.
  #   sample centres: row 0 (0+0+3)/3 = 1, row 1 (2+0+3)/3 = 5/3: d = 4/9 -> h = 4/9 - 0.1.
  # Identity 1 (row 2 only): R = N = T = 0 -> CdC-M 0; no pairs for CdC-S.
  # L = (13.7/3 + 0) / 2 + (4/9 - 0.1) / 1.
  f_r = jnp.array([[0.0], [2.0], [0.0]])
  f_n = jnp.array([[0.0], [0.0], [0.0]])
  f_t = jnp.array([[3.0], [3.0], [0.0]])
  labels = jnp.array([0, 0, 1])
  expected = (13.7 / 3) / 2 + (4 / 9 - 0.1)
  np.testing.assert_allclose(losses.cdc_loss(f_r, f_n, f_t, labels), expected, rtol=RTOL)


def test_hetero_center_hand_worked():
  # Identity 0: centre a = mean((1,0),(3,0)) = (2,0), centre b = (0,2): ||a-b||^2 = 8, cos = 0.
  # Identity 1: a = (1,1), b = (2,2): ||a-b||^2 = 2, cos = 1.
  f_a = jnp.array([[1.0, 0.0], [3.0, 0.0], [1.0, 1.0]])
  f_b = jnp.array([[0.0, 2.0], [0.0, 2.0], [2.0, 2.0]])
  labels = jnp.array([0, 0, 1])
  np.testing.assert_allclose(losses.hetero_center_loss(f_a, f_b, labels, 'l2'), 10.0, rtol=RTOL)
  np.testing.assert_allclose(losses.hetero_center_loss(f_a, f_b, labels, 'cos'), 1.0, atol=1e-6)
  with pytest.raises(ValueError, match='loss.hc_distance'):
    losses.hetero_center_loss(f_a, f_b, labels, 'l1')


def test_relation_losses_random_vs_loop_and_permutation_invariant():
  rng = np.random.default_rng(7)
  labels = np.array([3, 3, 3, 0, 0, 5, 5, 5, 5, 2], np.int32)  # uneven, one singleton
  f_r, f_n, f_t = (rng.normal(size=(10, 6)).astype(np.float32) for _ in range(3))
  perm = rng.permutation(10)
  cases = [
      (losses.three_m_loss, (f_r, f_n, f_t), np_three_m(f_r, f_n, f_t, labels)),
      (losses.cdc_loss, (f_r, f_n, f_t), np_cdc(f_r, f_n, f_t, labels)),
      (lambda a, b, y: losses.hetero_center_loss(a, b, y, 'l2'), (f_r, f_n),
       np_hc(f_r, f_n, labels, 'l2')),
      (lambda a, b, y: losses.hetero_center_loss(a, b, y, 'cos'), (f_r, f_n),
       np_hc(f_r, f_n, labels, 'cos')),
  ]
  for fn, feats, want in cases:
    fn = jax.jit(fn)
    got = fn(*(jnp.asarray(f) for f in feats), jnp.asarray(labels))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    shuffled = fn(*(jnp.asarray(f[perm]) for f in feats), jnp.asarray(labels[perm]))
    np.testing.assert_allclose(shuffled, want, rtol=1e-4)
    grads = jax.jit(jax.grad(lambda x: fn(x, *(jnp.asarray(f) for f in feats[1:]),
                                  jnp.asarray(labels))))(jnp.asarray(feats[0]))
    assert np.all(np.isfinite(np.asarray(grads)))


# ------------------------------------------------------------------------- FACENet loss bundle
# `facenet_loss_bundle` (facenet_jax/models/facenet.py) picks and weights the terms above; the train
# step's loss is the sum of its terms.


def make_config(**loss_overrides):
  config = default_config.get_config()
  for key, value in loss_overrides.items():
    setattr(config.loss, key, value)
  return config


def bundle(outputs, batch, config):
  terms, logged = facenet.facenet_loss_bundle(outputs, batch, config.loss)
  return sum(terms.values()), terms, logged


def test_loss_bundle_paper_default_matches_independent_sum():
  config = make_config(id_weight=0.7, triplet_weight=1.3, flare_weight=0.4, ic_weight=2.0)
  outputs, batch = random_pk(8)
  total, terms, logged = jax.jit(lambda o, b: bundle(o, b, config))(outputs, batch)
  labels = batch['pid']
  want = {}
  for s in MODALITIES:
    want[f'id_{s}'] = np_cross_entropy(outputs['logits'][s], labels)
    want[f'triplet_{s}'] = np_triplet(outputs['features'][s], labels, 0.3)
    want[f'acc_{s}'] = np.mean(np.argmax(outputs['logits'][s], 1) == labels)
  flare = (np_cross_entropy(outputs['flare_logits']['rgb'], batch['flare'][:, 0]) +
           np_cross_entropy(outputs['flare_logits']['ni'], batch['flare'][:, 1]))
  ic = np_kl_min(outputs['logits']['rgb'], outputs['logits']['ni'], 'batchmean')
  want_terms = {'id': 0.7 * sum(want[f'id_{s}'] for s in MODALITIES),
                'triplet': 1.3 * sum(want[f'triplet_{s}'] for s in MODALITIES),
                'flare': 0.4 * flare, 'ic': 2.0 * ic}
  assert set(terms) == set(want_terms)   # no relation term when loss.relation='none'
  for key, value in want_terms.items():
    np.testing.assert_allclose(terms[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
  for key, value in want.items():
    np.testing.assert_allclose(logged[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(total, sum(want_terms.values()), rtol=1e-4)
  flare_acc_rgb = np.mean(np.argmax(outputs['flare_logits']['rgb'], 1) == batch['flare'][:, 0])
  np.testing.assert_allclose(logged['flare_acc_rgb'], flare_acc_rgb)
  assert all(v.dtype == jnp.float32 and v.shape == () for v in {**terms, **logged}.values())


def test_loss_bundle_official_variants():
  config = make_config(triplet_soft_margin=True, flare_loss='official_kl', flare_weight=0.8,
                       ic_variant='official')
  outputs, batch = random_pk(9)
  total, terms, logged = bundle(outputs, batch, config)
  r, n, t = (outputs['logits'][s] for s in MODALITIES)
  np.testing.assert_allclose(terms['ic'], np_kl_min(r, n, 'mean') + np_kl_min(t, n, 'mean'),
                             rtol=1e-5)
  np.testing.assert_allclose(
      terms['flare'],
      0.8 * np_kl_min(outputs['flare_logits']['rgb'], outputs['flare_logits']['ni'], 'mean'),
      rtol=1e-5)
  np.testing.assert_allclose(logged['triplet_ti'],
                             np_triplet(outputs['features']['ti'], batch['pid'], None), rtol=1e-4)
  want = terms['id'] + terms['triplet'] + terms['flare'] + terms['ic']
  np.testing.assert_allclose(total, want, rtol=1e-6)


@pytest.mark.parametrize('relation', ['3m', 'cdc', 'hc'])
def test_loss_bundle_relation_term(relation):
  config = make_config(relation=relation, relation_weight=0.5, ic=False)
  outputs, batch = random_pk(10)
  del outputs['flare_logits']  # a model without MFMP has no flare heads, hence no flare term
  total, terms, logged = bundle(outputs, batch, config)
  f = outputs['features']
  want = {'3m': lambda: np_three_m(f['rgb'], f['ni'], f['ti'], batch['pid']),
          'cdc': lambda: np_cdc(f['rgb'], f['ni'], f['ti'], batch['pid']),
          'hc': lambda: np_hc(f['rgb'], f['ni'], batch['pid'], 'l2')}[relation]()
  np.testing.assert_allclose(terms['relation'], 0.5 * want, rtol=1e-4)
  assert set(terms) == {'id', 'triplet', 'relation'} and 'flare_acc' not in logged
  np.testing.assert_allclose(total, terms['id'] + terms['triplet'] + terms['relation'],
                             rtol=1e-6)


def test_loss_bundle_gradients_finite_and_reach_all_outputs():
  config = make_config(relation='cdc')
  outputs, batch = random_pk(11)
  outputs = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), outputs)
  grads = jax.jit(jax.grad(lambda o: bundle(o, batch, config)[0]))(outputs)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    g = np.asarray(g, np.float32)
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), path


def test_loss_bundle_bad_config_names_the_field():
  outputs, batch = random_pk(12)
  for field, value in (('flare_loss', 'focal'), ('ic_variant', 'journal'), ('relation', 'mmd')):
    config = make_config(**{field: value})
    with pytest.raises(ValueError, match=f'config.loss.{field}'):
      bundle(outputs, batch, config)


def test_loss_bundle_missing_inputs_name_the_key():
  config = make_config()
  outputs, batch = random_pk(13)
  with pytest.raises(KeyError, match="'flare'"):
    bundle(outputs, {'pid': batch['pid']}, config)
  with pytest.raises(ValueError, match=r"batch\['flare'\]"):
    bundle(outputs, {'pid': batch['pid'], 'flare': batch['flare'][:, 0]}, config)
  with pytest.raises(KeyError, match='ti'):
    bad = dict(outputs, logits={k: v for k, v in outputs['logits'].items() if k != 'ti'})
    bundle(bad, batch, config)


# ------------------------------------------------------------------------------ torch parity


def torch_official_soft_triplet(torch, feats, labels):
  """The official computation: addmm distances, clamp 1e-12, sqrt, reshape mining, soft margin."""
  n = feats.shape[0]
  xx = feats.pow(2).sum(1, keepdim=True).expand(n, n)
  dist = xx + xx.t()
  dist = dist.addmm(feats, feats.t(), beta=1, alpha=-2)
  dist = dist.clamp(min=1e-12).sqrt()
  is_pos = labels.expand(n, n).eq(labels.expand(n, n).t())
  is_neg = labels.expand(n, n).ne(labels.expand(n, n).t())
  dist_ap, _ = torch.max(dist[is_pos].contiguous().view(n, -1), 1, keepdim=True)
  dist_an, _ = torch.min(dist[is_neg].contiguous().view(n, -1), 1, keepdim=True)
  dist_ap, dist_an = dist_ap.squeeze(1), dist_an.squeeze(1)
  y = torch.ones_like(dist_an)
  return torch.nn.SoftMarginLoss()(dist_an - dist_ap, y)


@pytest.mark.parity
@pytest.mark.filterwarnings('ignore:reduction:UserWarning')
def test_parity_with_torch():
  torch = pytest.importorskip('torch')
  outputs, batch = random_pk(14, num_ids=4, num_instances=4, dim=16, num_classes=9)
  labels = batch['pid']
  logits = outputs['logits']['rgb']

  # CE with label smoothing.
  want = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels).long(),
                                           label_smoothing=0.1)
  np.testing.assert_allclose(losses.cross_entropy_loss(jnp.asarray(logits), labels, 0.1),
                             want.item(), rtol=1e-5)

  # Soft-margin triplet as the official code computes it: value and gradient.
  feats = outputs['features']['ni']
  t_feats = torch.tensor(feats, dtype=torch.float64, requires_grad=True)
  t_loss = torch_official_soft_triplet(torch, t_feats, torch.tensor(labels).long())
  t_loss.backward()
  value, grad = jax.value_and_grad(
      lambda f: losses.batch_hard_triplet_loss(f, jnp.asarray(labels), None))(jnp.asarray(feats))
  np.testing.assert_allclose(value, t_loss.item(), rtol=1e-5)
  np.testing.assert_allclose(grad, t_feats.grad.numpy(), rtol=1e-4, atol=1e-6)

  # kl_div 'mean' (the official KL_loss): min over the two directions.
  a, b = (torch.tensor(outputs['logits'][s]) for s in ('ti', 'ni'))
  kl = torch.nn.functional.kl_div
  want = min(kl(a.softmax(dim=-1).log(), b.softmax(dim=-1)),
             kl(b.softmax(dim=-1).log(), a.softmax(dim=-1)))
  got = losses.kl_min(jnp.asarray(outputs['logits']['ti']), jnp.asarray(outputs['logits']['ni']),
                      'mean')
  np.testing.assert_allclose(got, want.item(), rtol=1e-5)
