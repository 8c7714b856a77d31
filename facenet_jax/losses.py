"""Re-id loss terms: pure, jit-able functions of arrays.

Every function casts its inputs to float32 first, so bfloat16 model outputs are reduced in float32.
Batches are P x K (P identities, K rows each), but no function here relies on that: identity
structure is always read from `labels` through masks, so uneven or shuffled batches work too.

Paper terms (Sec. 3): per-branch identity CE (Eq. 9) and batch-hard triplet (Eq. 11), the flare
loss L_f (Eq. 1) and the Inter-modality Consistency loss L_IC (Eq. 8); the official code's
variants (soft-margin triplet, KL flare-head term, "MC" loss with the TI-NI term) and the Table 5
relation losses (3M, CdC, HC). Each model's loss bundle (e.g. `facenet_loss_bundle` in
facenet_jax/models/facenet.py) picks and weights them from `config.loss`.
"""

import jax
import jax.numpy as jnp

from facenet_jax.linalg import l2_normalize, safe_norm

Array = jax.Array

# The official triplet code clamps squared distances here before the square root. It also keeps
# the gradient of sqrt finite when two features coincide (the clamp cuts the gradient there).
SQUARED_DISTANCE_FLOOR = 1e-12

# Table 5 relation losses: margins of the losses they come from.
THREE_M_MARGIN = 3.0   # 3M loss [28] as the official code instantiates it (margin 3, squared L2)
CDC_MARGIN = 0.1       # CdC loss [34] (margin 0.1, squared L2)


def _check_labels(labels: Array, num_rows: int, name: str = 'labels') -> None:
  if labels.ndim != 1 or labels.shape[0] != num_rows:
    raise ValueError(
        f'{name} must have shape [B] = [{num_rows}], got {tuple(labels.shape)}')


def _check_matrix(x: Array, name: str) -> None:
  if x.ndim != 2:
    raise ValueError(f'{name} must have shape [B, D], got {tuple(x.shape)}')


def _check_pair(a: Array, b: Array, name_a: str, name_b: str) -> None:
  _check_matrix(a, name_a)
  _check_matrix(b, name_b)
  if a.shape != b.shape:
    raise ValueError(
        f'{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and '
        f'{tuple(b.shape)}')


# ------------------------------------------------------------------------------ classification


def cross_entropy_loss(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
  """Mean cross-entropy with optional label smoothing (Eq. 9, averaged over the batch).

  Smoothed targets are q = (1 - eps) * onehot(y) + eps / K, the loss is mean_b sum_k -q_k log p_k,
  which is both torch's `cross_entropy(label_smoothing=eps)` and the official
  `CrossEntropyLabelSmooth`.

  Args:
    logits: [B, K] class scores.
    labels: [B] int class indices in [0, K).
    label_smoothing: eps in [0, 1).

  Returns:
    Scalar float32 loss.
  """
  _check_matrix(logits, 'logits')
  _check_labels(labels, logits.shape[0])
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing > 0.0:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
  return -jnp.mean(jnp.sum(targets * log_probs, axis=-1))


def top1_accuracy(logits: Array, labels: Array) -> Array:
  """Fraction of rows whose arg-max class equals the label. logits [B, K], labels [B]."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


# ------------------------------------------------------------------------------ triplet


def pairwise_euclidean_distance(x: Array) -> Array:
  """D_ij = sqrt(max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 1e-12)) for x [B, D]; returns [B, B].

  The expanded form and the clamp follow the official code, so the diagonal is 1e-6, not 0.
  """
  x = x.astype(jnp.float32)
  sq_norms = jnp.sum(x * x, axis=-1)
  sq = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)
  return jnp.sqrt(jnp.maximum(sq, SQUARED_DISTANCE_FLOOR))


def hardest_pair_distances(distances: Array, labels: Array) -> tuple[Array, Array, Array]:
  """Batch-hard mining over the whole batch.

  Args:
    distances: [B, B] pairwise distances.
    labels: [B] identity labels.

  Returns:
    (d_ap, d_an, has_negative), each [B]: the largest distance to a row with the same label
    (the anchor itself included, as in the official code), the smallest distance to a row with a
    different label, and whether the anchor has any negative at all. Masked max/min: anchors may
    have different numbers of positives. Where there is no negative, d_an is 0.
  """
  same = labels[:, None] == labels[None, :]
  d_ap = jnp.max(jnp.where(same, distances, -jnp.inf), axis=1)
  has_negative = jnp.any(~same, axis=1)
  d_an = jnp.min(jnp.where(same, jnp.inf, distances), axis=1)
  # Replace the +inf of negative-free anchors so nothing downstream sees inf (nor its gradient).
  d_an = jnp.where(has_negative, d_an, 0.0)
  return d_ap, d_an, has_negative


def batch_hard_triplet_loss(features: Array, labels: Array, margin: float | None,
                            normalize: bool = False) -> Array:
  """Batch-hard triplet loss (Eq. 11), averaged over anchors.

  For anchor i: d_ap = max_{j: y_j = y_i} D_ij (self included), d_an = min_{j: y_j != y_i} D_ij,
  with the Euclidean D of `pairwise_euclidean_distance`.
    margin m:      mean_i max(0, m + d_ap - d_an)          (paper; hinge)
    margin None:   mean_i log(1 + exp(d_ap - d_an))        (official code's soft margin)
  The paper writes a sum over anchors; we take the mean (the official code and torch's
  MarginRankingLoss / SoftMarginLoss do), which only rescales the loss by B.
  Anchors without any negative (a batch of one identity) are left out of the mean; the loss is 0
  when no anchor has a negative.

  Args:
    features: [B, D] embeddings (the official code uses the pre-BNNeck features).
    labels: [B] identity labels.
    margin: hinge margin, or None for the soft margin.
    normalize: L2-normalise the rows before computing distances.

  Returns:
    Scalar float32 loss.
  """
  _check_matrix(features, 'features')
  _check_labels(labels, features.shape[0])
  features = features.astype(jnp.float32)
  if normalize:
    features = l2_normalize(features)
  d_ap, d_an, has_negative = hardest_pair_distances(
      pairwise_euclidean_distance(features), labels)
  if margin is None:
    per_anchor = jax.nn.softplus(d_ap - d_an)  # log(1 + exp(x)), overflow-safe
  else:
    per_anchor = jax.nn.relu(margin + d_ap - d_an)
  valid = has_negative.astype(jnp.float32)
  return jnp.sum(per_anchor * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def _softmax_weights(values: Array, mask: Array) -> Array:
  """Row-wise softmax of `values` over the entries where `mask` is 1 (AGW `softmax_weights`).

  As the official code: shifted by the row max of values * mask, normalised by the masked sum
  plus 1e-6, zero outside the mask.
  """
  shift = jnp.max(values * mask, axis=1, keepdims=True)
  exp = jnp.exp(values - shift) * mask
  return exp / (jnp.sum(exp, axis=1, keepdims=True) + 1e-6)


def weighted_regularized_triplet_loss(features: Array, labels: Array) -> Array:
  """Weighted regularisation triplet (WRT; AGW, Ye et al., TPAMI 2021), averaged over anchors.

  With D the Euclidean distances: for anchor i, positive weights w+_ij = softmax_j(D_ij) over
  j with y_j = y_i (the anchor itself included) and negative weights w-_ij = softmax_j(-D_ij)
  over y_j != y_i; d+ = sum_j w+ D, d- = sum_j w- D; loss = mean_i log(1 + exp(d+ - d-)).
  No margin and no mining: every pair contributes, hard ones most.

  Args:
    features: [B, D] embeddings (AGW: the pre-BNNeck pooled feature, not normalised).
    labels: [B] identity labels.
  Returns:
    Scalar float32 loss.
  """
  _check_matrix(features, 'features')
  _check_labels(labels, features.shape[0])
  distances = pairwise_euclidean_distance(features.astype(jnp.float32))
  same = (labels[:, None] == labels[None, :]).astype(jnp.float32)
  different = 1.0 - same
  d_ap = distances * same
  d_an = distances * different
  furthest_positive = jnp.sum(d_ap * _softmax_weights(d_ap, same), axis=1)
  closest_negative = jnp.sum(d_an * _softmax_weights(-d_an, different), axis=1)
  return jnp.mean(jax.nn.softplus(furthest_positive - closest_negative))


def _cross_euclidean(a: Array, b: Array) -> Array:
  """[N, D] x [M, D] -> [N, M] Euclidean distances, squared values clamped at 1e-12 (torch pdist)."""
  sq = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * (a @ b.T)
  return jnp.sqrt(jnp.maximum(sq, SQUARED_DISTANCE_FLOOR))


def cpm_loss(features: Array, labels: Array, margin: float = 0.2) -> Array:
  """Cross-modality prototype margin loss (DEEN `CPMLoss`), averaged over identities.

  features: [4N, D] = [c1 rows; c2 rows; c3 rows; c4 rows] (original modality 0, original
  modality 1, expanded modality 0, expanded modality 1), each chunk holding the same ids in the
  same order; labels: [4N]. Per chunk the identity centres c^k_i are the means of the id's rows.
  With d Euclidean, h(t) = max(0, t + margin), sg = stop-gradient:

    L123 = h(d(c2_i, c3_i) - sg d(c1_i, c3_i))
           + (h(d(c2_i, c3_i) - min_{j!=i} d(c3_i, c3_j)) + h(d(c2_i, c3_i) - min_{j!=i} d(c1_i, c1_j))) / 2
    L124 = the same with c4 and the roles of c1 / c2 exchanged
    CPM  = (mean_i L123 + mean_i L124) / 2

  Centres are computed per row (each row carries its id's centre), so no static id count is
  needed; with K rows per id (the two-pool sampler) the row mean is the id mean.
  """
  _check_matrix(features, 'features')
  _check_labels(labels, features.shape[0])
  if features.shape[0] % 4:
    raise ValueError(f'cpm_loss: {features.shape[0]} rows do not split into 4 chunks')
  features = features.astype(jnp.float32)
  chunks = jnp.split(features, 4)
  chunk_labels = jnp.split(labels, 4)[0]
  same = (chunk_labels[:, None] == chunk_labels[None, :]).astype(jnp.float32)
  centres = [same @ c / jnp.sum(same, axis=1, keepdims=True) for c in chunks]   # [N, D] each

  def own(a, b):          # d(a_i, b_i) of each row's own centres
    return jnp.sqrt(jnp.maximum(jnp.sum((a - b) ** 2, -1), SQUARED_DISTANCE_FLOOR))

  def nearest_other(a):   # min over other ids of d(a_i, a_j)
    return jnp.min(jnp.where(same > 0, jnp.inf, _cross_euclidean(a, a)), axis=1)

  def hinge(t):
    return jax.nn.relu(t + margin)

  c1, c2, c3, c4 = centres
  ap_123 = own(c2, c3)
  l123 = hinge(ap_123 - jax.lax.stop_gradient(own(c1, c3))) + 0.5 * (
      hinge(ap_123 - nearest_other(c3)) + hinge(ap_123 - nearest_other(c1)))
  ap_124 = own(c1, c4)
  l124 = hinge(ap_124 - jax.lax.stop_gradient(own(c2, c4))) + 0.5 * (
      hinge(ap_124 - nearest_other(c4)) + hinge(ap_124 - nearest_other(c2)))
  return 0.5 * (jnp.mean(l123) + jnp.mean(l124))


def cross_domain_triplet_loss(features: Array, labels: Array, domains: Array,
                              margin: float | None, normalize: bool = False) -> Array:
  """DNDM's triplet (DN-ReID Eq. 2): positives from the other domain, negatives from the anchor's.

  For anchor i: d_ap = max D_ij over j with y_j = y_i and domain_j != domain_i (a day anchor's
  hardest night positive and vice versa), d_an = min D_ik over k with y_k != y_i and domain_k =
  domain_i; then the hinge (or soft margin) and the mean of `batch_hard_triplet_loss`. Anchors
  lacking a cross-domain positive or a same-domain negative are left out of the mean.

  Args:
    features: [B, D]; labels: [B] identities; domains: [B] ints (0 day, 1 night).
    margin: hinge margin (paper 0.3) or None for the soft margin. normalize: L2 rows first.
  """
  _check_matrix(features, 'features')
  _check_labels(labels, features.shape[0])
  _check_labels(domains, features.shape[0], 'domains')
  features = features.astype(jnp.float32)
  if normalize:
    features = l2_normalize(features)
  distances = pairwise_euclidean_distance(features)
  same_id = labels[:, None] == labels[None, :]
  same_domain = domains[:, None] == domains[None, :]
  positive = same_id & ~same_domain
  negative = ~same_id & same_domain
  has_positive, has_negative = jnp.any(positive, axis=1), jnp.any(negative, axis=1)
  d_ap = jnp.where(has_positive, jnp.max(jnp.where(positive, distances, -jnp.inf), axis=1), 0.0)
  d_an = jnp.where(has_negative, jnp.min(jnp.where(negative, distances, jnp.inf), axis=1), 0.0)
  if margin is None:
    per_anchor = jax.nn.softplus(d_ap - d_an)
  else:
    per_anchor = jax.nn.relu(margin + d_ap - d_an)
  valid = (has_positive & has_negative).astype(jnp.float32)
  return jnp.sum(per_anchor * valid) / jnp.maximum(jnp.sum(valid), 1.0)


TRIPLET_KINDS = ('batch_hard', 'wrt', 'cross_domain')


def triplet_loss(features: Array, labels: Array, kind: str, margin: float | None,
                 normalize: bool = False, domains: Array | None = None) -> Array:
  """`kind` 'batch_hard' (`batch_hard_triplet_loss`), 'wrt' (no margin, no normalisation) or
  'cross_domain' (`cross_domain_triplet_loss`; needs `domains`, [B] modality per row)."""
  if kind == 'batch_hard':
    return batch_hard_triplet_loss(features, labels, margin, normalize=normalize)
  if kind == 'wrt':
    if normalize:
      raise ValueError('config.loss.triplet_normalize=True: the WRT loss (AGW) works on the '
                       'un-normalised features; set it to False')
    return weighted_regularized_triplet_loss(features, labels)
  if kind == 'cross_domain':
    if domains is None:
      raise ValueError("config.loss.triplet_kind='cross_domain' needs each row's domain: only "
                       'a day/night model (DNDM) provides it')
    return cross_domain_triplet_loss(features, labels, domains, margin, normalize=normalize)
  raise ValueError(f'config.loss.triplet_kind must be one of {TRIPLET_KINDS}, got {kind!r}')


# ------------------------------------------------------------------------------ KL terms


def _mean_kl(log_p: Array, log_q: Array, reduction: str) -> Array:
  """Batch-aggregated KL(p || q) from log-probabilities [B, K].

  reduction 'batchmean': sum over classes, mean over rows (per-sample KL averaged).
  reduction 'mean': sum over everything divided by B * K (torch `kl_div`'s default 'mean').
  """
  elementwise = jnp.exp(log_p) * (log_p - log_q)
  if reduction == 'batchmean':
    return jnp.mean(jnp.sum(elementwise, axis=-1))
  if reduction == 'mean':
    return jnp.mean(elementwise)
  raise ValueError(f"reduction must be 'batchmean' or 'mean', got {reduction!r}")


def kl_min(logits_a: Array, logits_b: Array, reduction: str = 'batchmean') -> Array:
  """min(KL(p_a || p_b), KL(p_b || p_a)) of batch-aggregated scalars, p = softmax(logits).

  Each direction is reduced over the batch first (see `_mean_kl` for `reduction`), then the
  smaller scalar is taken, so the gradient flows through one direction only, as with the
  official code's Python `min`. Log-probabilities come from log_softmax rather than the official
  log(softmax(.)), which agrees where the latter is finite and avoids log(0) = -inf.

  Args:
    logits_a, logits_b: [B, K] logits.
    reduction: 'batchmean' (paper Eq. 8 per-sample KL, averaged) or 'mean' (torch kl_div default).

  Returns:
    Scalar float32.
  """
  _check_pair(logits_a, logits_b, 'logits_a', 'logits_b')
  log_a = jax.nn.log_softmax(logits_a.astype(jnp.float32), axis=-1)
  log_b = jax.nn.log_softmax(logits_b.astype(jnp.float32), axis=-1)
  kl_ab = _mean_kl(log_a, log_b, reduction)
  kl_ba = _mean_kl(log_b, log_a, reduction)
  # `where` routes the whole gradient to the chosen direction (jnp.minimum would split it at ties).
  return jnp.where(kl_ab <= kl_ba, kl_ab, kl_ba)


def ic_loss(logits_a: Array, logits_b: Array) -> Array:
  """Inter-modality Consistency loss, paper Eq. 8, between two branches' class scores.

  L_IC = min(mean_b sum_i a_b(i) log(a_b(i) / n_b(i)), mean_b sum_i n_b(i) log(n_b(i) / a_b(i)))
  with a = softmax(logits_a), n = softmax(logits_b). Eq. 8 is written for one sample; the batch
  reduction (per-sample KL, mean over samples, then the min) is our choice: the paper is silent.

  Args:
    logits_a, logits_b: [B, K] identity logits of two branches (RGB and NI in the paper).

  Returns:
    Scalar float32.
  """
  return kl_min(logits_a, logits_b, reduction='batchmean')


def official_ic_loss(logits_rgb: Array, logits_ni: Array, logits_ti: Array) -> Array:
  """The official code's "MC" loss: KLmin(R, N) + KLmin(T, N), torch kl_div 'mean' (/ B x K)."""
  return (kl_min(logits_rgb, logits_ni, reduction='mean') +
          kl_min(logits_ti, logits_ni, reduction='mean'))


# ------------------------------------------------------------------------------ flare terms


def flare_loss(flare_logits: Array, flare_labels: Array) -> Array:
  """Flare loss L_f, paper Eq. 1, for one modality: 2-way CE on the flare pseudo-label.

  The paper calls it BCE but writes a 2-class cross-entropy, -sum_{j=1..2} y_j log yhat_j,
  which we implement, averaged over the batch.

  Args:
    flare_logits: [B, 2] scores of the flare head (class 1 = flare-corrupted).
    flare_labels: [B] int pseudo-labels delta in {0, 1}.

  Returns:
    Scalar float32.
  """
  _check_matrix(flare_logits, 'flare_logits')
  if flare_logits.shape[-1] != 2:
    raise ValueError(f'flare_logits must have shape [B, 2], got {tuple(flare_logits.shape)}')
  _check_labels(flare_labels, flare_logits.shape[0], 'flare_labels')
  return cross_entropy_loss(flare_logits, flare_labels)


def official_flare_loss(logits_rgb: Array, logits_ni: Array) -> Array:
  """The official code's flare-head term: KLmin between the RGB and NI 2-way flare heads.

  torch kl_div 'mean' reduction (divide by B x 2). The official code multiplies it by a
  hard-coded 0.8; here the weight is `config.loss.flare_weight` (set 0.8 in official configs).
  The pseudo-label is not used: this is only a consistency term between the two heads.

  Args:
    logits_rgb, logits_ni: [B, 2] flare-head logits.

  Returns:
    Scalar float32.
  """
  return kl_min(logits_rgb, logits_ni, reduction='mean')


# ------------------------------------------------------------------------------ Table 5 losses
# All three use per-identity centres taken with masks: row b gets the mean feature of all rows
# sharing its label, and per-identity quantities are summed over identities by weighting each
# row with 1 / (rows of its identity). Nothing assumes contiguous or equal-sized identity chunks.


def _same_identity(labels: Array) -> tuple[Array, Array]:
  """([B, B] float same-label matrix, [B] rows per row's identity)."""
  same = (labels[:, None] == labels[None, :]).astype(jnp.float32)
  return same, jnp.sum(same, axis=1)


def _identity_centers(features: Array, same: Array, counts: Array) -> Array:
  """[B, D]: row b holds the mean of `features` [B, D] over the rows of b's identity."""
  return (same @ features.astype(jnp.float32)) / counts[:, None]


def _squared_distance(a: Array, b: Array) -> Array:
  """Row-wise squared Euclidean distance (torch MSELoss 'sum' per pair); [B, D] x2 -> [B]."""
  return jnp.sum(jnp.square(a - b), axis=-1)


def _cosine_similarity(a: Array, b: Array, eps: float = 1e-8) -> Array:
  """Row-wise cosine similarity, norms clamped at eps as torch; [B, D] x2 -> [B]."""
  norm_a = jnp.maximum(safe_norm(a), eps)
  norm_b = jnp.maximum(safe_norm(b), eps)
  return jnp.sum(a * b, axis=-1) / (norm_a * norm_b)


def three_m_loss(features_rgb: Array, features_ni: Array, features_ti: Array, labels: Array,
                 margin: float = THREE_M_MARGIN) -> Array:
  """3M (multi-modal margin) loss [28], Table 5, as the official code instantiates it.

  For each identity y with modality centres c_R, c_N, c_T (means over the rows of y):
    l_y = max(|m - d(c_R, c_N)|, |m - d(c_N, c_T)|, |m - d(c_R, c_T)|),  d = squared L2,
  and L_3M = sum_y l_y (summed, not averaged, over the identities of the batch). It pulls the
  three centre distances of every identity towards the margin m = 3, keeping the modalities
  apart by a fixed amount.

  Args:
    features_rgb, features_ni, features_ti: [B, D] features of the three branches.
    labels: [B] identity labels.
    margin: m.

  Returns:
    Scalar float32.
  """
  _check_pair(features_rgb, features_ni, 'features_rgb', 'features_ni')
  _check_pair(features_rgb, features_ti, 'features_rgb', 'features_ti')
  _check_labels(labels, features_rgb.shape[0])
  same, counts = _same_identity(labels)
  c_r, c_n, c_t = (_identity_centers(f, same, counts)
                   for f in (features_rgb, features_ni, features_ti))
  gaps = jnp.stack([
      jnp.abs(margin - _squared_distance(c_r, c_n)),
      jnp.abs(margin - _squared_distance(c_n, c_t)),
      jnp.abs(margin - _squared_distance(c_r, c_t)),
  ], axis=0)
  per_row = jnp.max(gaps, axis=0)  # the identity's value, repeated on each of its rows
  return jnp.sum(per_row / counts)


def cdc_loss(features_rgb: Array, features_ni: Array, features_ti: Array, labels: Array,
             margin: float = CDC_MARGIN) -> Array:
  """Cross-directional Consistency (CdC) loss [34], Table 5: modality part + sample part.

  With d = squared L2 and the hinge h(d) = max(0, d - m), m = 0.1:
    CdC-M: for each identity, h of the distance between every pair of its three modality
           centres, averaged over the 3 pairs; then averaged over identities.
    CdC-S: for each identity, every sample gets a cross-modal centre (the mean of its RGB, NI
           and TI features); h of the distance between every pair of those sample centres,
           averaged over the pairs; then averaged over the identities that have >= 2 samples.
    L_CdC = CdC-M + CdC-S.
  The official code writes the hinge as max(m, d), which is h(d) + m: the same gradient, a
  constant offset. We use h so that a perfectly consistent batch scores 0.

  Args:
    features_rgb, features_ni, features_ti: [B, D] features of the three branches.
    labels: [B] identity labels.
    margin: m.

  Returns:
    Scalar float32.
  """
  _check_pair(features_rgb, features_ni, 'features_rgb', 'features_ni')
  _check_pair(features_rgb, features_ti, 'features_rgb', 'features_ti')
  _check_labels(labels, features_rgb.shape[0])
  f_r, f_n, f_t = (f.astype(jnp.float32) for f in (features_rgb, features_ni, features_ti))
  same, counts = _same_identity(labels)
  num_ids = jnp.sum(1.0 / counts)

  # CdC-M: modality centres per identity.
  c_r, c_n, c_t = (_identity_centers(f, same, counts) for f in (f_r, f_n, f_t))
  hinge_m = (jax.nn.relu(_squared_distance(c_r, c_n) - margin) +
             jax.nn.relu(_squared_distance(c_n, c_t) - margin) +
             jax.nn.relu(_squared_distance(c_r, c_t) - margin)) / 3.0
  cdc_m = jnp.sum(hinge_m / counts) / num_ids

  # CdC-S: per-sample cross-modal centres, pairs within an identity.
  s = (f_r + f_n + f_t) / 3.0
  sq_norms = jnp.sum(s * s, axis=-1)
  pair_sq = jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * (s @ s.T), 0.0)
  pairs = same * (1.0 - jnp.eye(s.shape[0], dtype=jnp.float32))
  # Row b's share of its identity's ordered-pair sum; dividing by n (n - 1) turns the identity's
  # total into the mean over its unordered pairs.
  row_sum = jnp.sum(pairs * jax.nn.relu(pair_sq - margin), axis=1)
  has_pairs = counts >= 2
  per_row = jnp.where(has_pairs, row_sum / jnp.maximum(counts * (counts - 1.0), 1.0), 0.0)
  num_ids_with_pairs = jnp.sum(jnp.where(has_pairs, 1.0 / counts, 0.0))
  cdc_s = jnp.sum(per_row) / jnp.maximum(num_ids_with_pairs, 1.0)
  return cdc_m + cdc_s


def hetero_center_loss(features_a: Array, features_b: Array, labels: Array,
                       distance: str = 'l2') -> Array:
  """Hetero-centre (HC) loss [38] (cited as [14] in Table 5) between two modalities.

  For each identity, the distance between its centre in modality a and in modality b, summed
  over identities (as the HC paper's sum over classes):
    distance 'l2':  ||c_a - c_b||^2           (the HC paper's squared Euclidean distance)
    distance 'cos': 1 - cos(c_a, c_b)         (the official FACENet code's default)
  FACENet applies it between RGB and NI (Sec. 5.3: "constraining the consistency of RGB and NI").

  Args:
    features_a, features_b: [B, D] features of two branches.
    labels: [B] identity labels.
    distance: 'l2' or 'cos'.

  Returns:
    Scalar float32.
  """
  _check_pair(features_a, features_b, 'features_a', 'features_b')
  _check_labels(labels, features_a.shape[0])
  same, counts = _same_identity(labels)
  c_a = _identity_centers(features_a, same, counts)
  c_b = _identity_centers(features_b, same, counts)
  if distance == 'l2':
    per_row = _squared_distance(c_a, c_b)
  elif distance == 'cos':
    per_row = 1.0 - _cosine_similarity(c_a, c_b)
  else:
    raise ValueError(f"loss.hc_distance must be 'l2' or 'cos', got {distance!r}")
  return jnp.sum(per_row / counts)
