"""DNDM: glare masks, NGS, DSE and CCA against hand-worked cases and NumPy references; the
cross-domain triplet; switches; gradients; the glare stream; a few steps on the synthetic set."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import dndm_synthetic
from facenet_jax import batches
from facenet_jax import losses
from facenet_jax import train
from facenet_jax.models import dndm
from facenet_jax.models import registry
from input_pipeline import cross_modal_pipeline
from input_pipeline import glare_mask
from input_pipeline import pipeline
from input_pipeline import synthetic_cross_modal

RNG = np.random.default_rng(0)
EPS = 1e-5


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


# ----------------------------------------------------------------------------- glare masks


def test_paper_mask_thresholds_bt601_grey_and_drops_small_regions():
  image = np.zeros((10, 12, 3), np.uint8)
  image[1:4, 1:4] = 255                       # a 3x3 region: 9 pixels, kept (min_region 9)
  image[7, 10] = 255                          # an isolated pixel: dropped
  image[6, 2], image[7, 3] = 255, 255         # two diagonal neighbours: one region of 2, dropped
  image[1:4, 8:11] = (255, 255, 0)            # yellow: 0.299 + 0.587 = 0.886 * 255 = 225.9 > 220
  image[6:9, 6:9] = (0, 255, 255)             # cyan: (0.587 + 0.114) 255 = 178.8, not glare
  mask = glare_mask.paper_mask(image)
  expected = np.zeros((10, 12), np.float32)
  expected[1:4, 1:4] = expected[1:4, 8:11] = 1
  np.testing.assert_array_equal(mask, expected)
  # With min_region 2 the diagonal pair (8-connected) survives, the single pixel does not.
  small = glare_mask.paper_mask(image, min_region=2)
  assert small[6, 2] == small[7, 3] == 1 and small[7, 10] == 0


def test_code_mask_uses_bgr_weights_on_rgb_and_a_3x3_opening():
  image = np.zeros((10, 12, 3), np.uint8)
  image[1:4, 1:4] = 255                       # 3x3 white: survives the opening whole
  image[6:8, 1:4] = 255                       # 2x3: no pixel has a bright 3x3 neighbourhood
  image[0:2, 8:12] = 255                      # two rows on the border: out-of-image neighbours
                                              # are dark (zero padding), so it erodes away
  image[5:8, 8:11] = (0, 255, 255)            # cyan: 0.114 R + 0.587 G + 0.299 B = 225.9 > 220
  mask = glare_mask.code_mask(image)
  expected = np.zeros((10, 12), np.float32)
  expected[1:4, 1:4] = expected[5:8, 8:11] = 1
  np.testing.assert_array_equal(mask, expected)
  # The same cyan block is not glare under the paper's RGB weights (178.8).
  assert glare_mask.paper_mask(image)[6, 9] == 0
  with pytest.raises(ValueError, match='config.data.glare_mask'):
    glare_mask.glare_mask(image, 'otsu')


def test_glare_is_pooled_to_the_stem_resolution_with_the_stem_pooling():
  mask = np.zeros((1, 8, 8), np.float32)
  mask[0, 3, 4] = 1                           # one glare pixel
  two = np.asarray(dndm.pool_glare(jnp.asarray(mask), '2x2'))[0]
  three = np.asarray(dndm.pool_glare(jnp.asarray(mask), '3x3'))[0]
  assert two.shape == three.shape == (2, 2)
  np.testing.assert_array_equal(two, [[0, 1], [0, 0]])       # the cell holding (3, 4)
  # 3x3/2 pad 1 twice: (3, 4) -> rows {1, 2} cols {2} -> rows {0, 1} cols {1}.
  np.testing.assert_array_equal(three, [[0, 1], [0, 1]])


# ----------------------------------------------------------------------------- NGS


@pytest.mark.parametrize('relu', [False, True])
def test_ngs_matches_eq_4_to_6(relu):
  t = np.abs(RNG.normal(size=(2, 4, 3, 6))).astype(np.float32)
  mask = (RNG.random((2, 4, 3)) > 0.5).astype(np.float32)
  block = dndm.NGS(alpha=0.5, relu=relu)
  params = block.init(jax.random.PRNGKey(0), t, mask)
  v = np.asarray(params['params']['v']['kernel'])[:, 0]      # [C + 1]
  logit = np.concatenate([t, mask[..., None]], -1) @ v
  a = _sigmoid(np.maximum(logit, 0) if relu else logit)
  out, a_out = block.apply(params, t, mask)
  np.testing.assert_allclose(a_out, a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, t - 0.5 * a[..., None] * t, rtol=1e-5, atol=1e-6)
  if relu:
    assert np.all(np.asarray(a_out) >= 0.5)


# ----------------------------------------------------------------------------- DSE


def numpy_dse_paper(t, window, beta):
  """Eq. 7-9 pixel by pixel (zero outside the map)."""
  b, h, w, c = t.shape
  r = window // 2
  out = t.astype(np.float64).copy()
  for i in range(h):
    for j in range(w):
      centre = t[:, i, j, :].astype(np.float64)
      num, den = np.zeros_like(centre), np.ones_like(centre)
      for di in range(-r, r + 1):
        for dj in range(-r, r + 1):
          y, x = i + di, j + dj
          n = t[:, y, x, :] if 0 <= y < h and 0 <= x < w else np.zeros_like(centre)
          g = np.maximum(0, n - centre)
          num += g * n
          den += g
      out[:, i, j, :] += beta * num / den
  return out


def test_dse_paper_matches_eq_7_to_9():
  t = np.abs(RNG.normal(size=(2, 6, 5, 3))).astype(np.float32)
  np.testing.assert_allclose(dndm.dse_paper(jnp.asarray(t), 5, 0.25),
                             numpy_dse_paper(t, 5, 0.25), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dndm.dse_paper(jnp.asarray(t), 3, 0.5),
                             numpy_dse_paper(t, 3, 0.5), rtol=1e-5, atol=1e-6)


def test_dse_code_is_the_official_fixed_depthwise_kernel():
  t = np.abs(RNG.normal(size=(1, 7, 6, 2))).astype(np.float32)
  kernel = np.ones((5, 5), np.float32)
  kernel[2, 2] = -24
  padded = np.pad(t, ((0, 0), (2, 2), (2, 2), (0, 0)))
  conv = sum(padded[:, i:i + 7, j:j + 6] * kernel[i, j] for i in range(5) for j in range(5))
  expected = 0.9 * t + 0.25 * np.maximum(conv, 0) / 24
  np.testing.assert_allclose(dndm.dse_code(jnp.asarray(t)), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- CCA


def test_exchange_maps_average_the_other_domain_of_the_same_identity():
  maps = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 1, 2), np.float32)
  modality = np.array([0, 0, 1, 1, 1, 0])
  pid = np.array([7, 8, 7, 7, 8, 9])          # id 9 has no night image
  out = np.asarray(dndm.exchange_maps(jnp.asarray(maps), jnp.asarray(modality), jnp.asarray(pid)))
  np.testing.assert_allclose(out[:, 0, 0], [2.5, 4, 0, 0, 1, 5])


def _bn_train(x):
  mean = x.mean(axis=(0, 1, 2))
  var = x.var(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + EPS)


def _cca_setup(rule):
  t = np.abs(RNG.normal(size=(4, 3, 5, 6))).astype(np.float32)   # non-square maps
  modality = np.array([0, 0, 1, 1])
  pid = np.array([1, 2, 1, 2])

  class Wrapper(dndm.nn.Module):
    @dndm.nn.compact
    def __call__(self, t, train):
      h = dndm.ClassifierHead(3, 8, name='head')
      h(jnp.zeros((1, 8)), False)
      return dndm.CCA(8, rule, name='cca')(t, h, jnp.asarray(modality), jnp.asarray(pid), train)

  model = Wrapper()
  variables = model.init(jax.random.PRNGKey(0), t, False)
  # Non-trivial classifier weights so the class maps differ between rows.
  params = jax.tree.map(np.array, dict(variables['params']))
  params['head']['classifier'] = RNG.normal(size=(8, 3)).astype(np.float32)
  variables = {**variables, 'params': params}
  return model, variables, t, modality, pid


def test_cca_paper_matches_eq_10_to_13_in_training_and_test():
  model, variables, t, modality, pid = _cca_setup('paper')
  p = variables['params']
  w_cls = p['head']['classifier']
  proj = _bn_train(t @ p['cca']['project']['kernel'][0, 0])
  a = _sigmoid(np.einsum('bhwd,bd->bhw', proj, w_cls[:, pid].T))
  exchanged = proj * a[[2, 3, 0, 1]][..., None]   # the other domain's map of the same id
  expected = t + np.maximum(_bn_train(exchanged @ p['cca']['back_project']['kernel'][0, 0]), 0)
  out, _ = model.apply(variables, t, True, mutable=['batch_stats'])
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  # Test time: no exchange; BatchNorm with the initial running statistics (mean 0, var 1).
  proj = t @ p['cca']['project']['kernel'][0, 0] / np.sqrt(1 + EPS)
  expected = t + np.maximum(proj @ p['cca']['back_project']['kernel'][0, 0] / np.sqrt(1 + EPS), 0)
  np.testing.assert_allclose(model.apply(variables, t, False), expected, rtol=1e-4, atol=1e-5)


def test_cca_code_uses_the_argmax_class_and_the_official_constants():
  model, variables, t, _, _ = _cca_setup('code')
  p = variables['params']
  w_s, w_cls = p['cca']['project']['kernel'], p['head']['classifier']
  m = (t @ w_s) @ w_cls                                         # [B, h, w, classes]
  k = np.argmax(m.mean(axis=(1, 2)), axis=-1)
  a = np.stack([m[b, :, :, k[b]] for b in range(4)])
  a = _sigmoid(np.maximum(a, 0))
  other = a[[2, 3, 0, 1]]
  expected = t + 0.05 * t * other[..., None] + 0.05 * t * a[..., None]
  np.testing.assert_allclose(model.apply(variables, t, True), expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(model.apply(variables, t, False), t + 0.1 * a[..., None] * t,
                             rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- losses


def test_cross_domain_triplet_takes_positives_across_and_negatives_within_the_domain():
  features = RNG.normal(size=(6, 4)).astype(np.float32)
  labels = np.array([0, 1, 2, 0, 1, 2])
  domains = np.array([0, 0, 0, 1, 1, 1])
  d = np.sqrt(np.maximum(((features[:, None] - features[None]) ** 2).sum(-1), 1e-12))
  per_anchor = []
  for i in range(6):
    pos = [j for j in range(6) if labels[j] == labels[i] and domains[j] != domains[i]]
    neg = [k for k in range(6) if labels[k] != labels[i] and domains[k] == domains[i]]
    per_anchor.append(max(0, 0.3 + max(d[i, pos]) - min(d[i, neg])))
  got = losses.triplet_loss(jnp.asarray(features), jnp.asarray(labels), 'cross_domain', 0.3,
                            domains=jnp.asarray(domains))
  np.testing.assert_allclose(got, np.mean(per_anchor), rtol=1e-5)
  with pytest.raises(ValueError, match='domain'):
    losses.triplet_loss(jnp.asarray(features), jnp.asarray(labels), 'cross_domain', 0.3)


def test_attention_loss_pushes_day_maps_down_and_night_maps_up():
  a = RNG.random((4, 3, 2)).astype(np.float32)
  modality = np.array([0, 1, 0, 1])
  s = _sigmoid(a)
  expected = 0.5 * (-np.log(1 - s[[0, 2]]).mean() - np.log(s[[1, 3]]).mean())
  np.testing.assert_allclose(dndm.attention_loss(jnp.asarray(a), jnp.asarray(modality)),
                             expected, rtol=1e-5)


# ----------------------------------------------------------------------------- the model


def _tiny_model(**fields):
  config = default.get_config('dndm').model
  config.depth, config.width_multiplier = 18, 0.125
  config.update(fields)
  return registry.build_model(config, 4)


def _inputs(b=8, size=(32, 16)):
  image = RNG.normal(size=(b, *size, 3)).astype(np.float32)
  modality = np.array([0] * (b // 2) + [1] * (b // 2), np.int32)
  pid = np.tile(np.arange(b // 2, dtype=np.int32), 2) % 4
  glare = np.zeros((b, *size), np.float32)
  glare[b // 2:, 4:12, 2:8] = 1
  return image, modality, glare, pid


@pytest.mark.slow
def test_every_parameter_of_the_code_variant_gets_a_gradient():
  """The paper variant is the model contract test's case (tests/test_models.py)."""
  fields = dict(stem_pool='3x3', ngs_relu=True, dse_rule='code', cca_rule='code', pooling='gem',
                bnneck=True)
  model = _tiny_model(**fields)
  inputs = tuple(jnp.asarray(a) for a in _inputs())
  variables = registry.init_variables(model, (32, 16), jax.random.PRNGKey(0))
  loss_config = default.get_config('dndm').loss
  loss_config.ngs_attention_weight = 1.0

  def loss_fn(params):
    out, _ = model.apply({**variables, 'params': params}, *inputs, train=True,
                         mutable=['batch_stats'])
    terms, _ = dndm.dndm_loss_bundle(out, {'pid': inputs[3], 'modality': inputs[1]}, loss_config)
    return sum(terms.values())

  grads = jax.jit(jax.grad(loss_fn))(variables['params'])   # one program, not op by op
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(k) for k, g in flat if not np.any(np.asarray(g))]
  assert not dead, dead


def test_switches_remove_their_modules_and_enhance_stages_picks_the_stages():
  shapes = lambda m: jax.eval_shape(  # noqa: E731
      lambda: registry.init_variables(m, (32, 16), jax.random.PRNGKey(0)))['params']
  assert set(shapes(_tiny_model())) == {'backbone', 'head', 'ngs', 'cca1', 'cca2', 'cca3', 'cca4'}
  assert set(shapes(_tiny_model(ngs=False, cca=False))) == {'backbone', 'head'}
  assert set(shapes(_tiny_model(enhance_stages=(1, 2)))) == {'backbone', 'head', 'ngs', 'cca1',
                                                             'cca2'}
  # DSE off changes the output; DSE has no parameters.
  model_on, model_off = _tiny_model(cca=False), _tiny_model(cca=False, dse=False)
  variables = registry.init_variables(model_on, (32, 16), jax.random.PRNGKey(0))
  inputs = _inputs()
  on = model_on.apply(variables, *inputs, train=False)['embedding']
  off = model_off.apply(variables, *inputs, train=False)['embedding']
  assert not np.allclose(on, off)
  with pytest.raises(ValueError, match='enhance_stages'):
    _tiny_model(enhance_stages=(0, 1))
  with pytest.raises(ValueError, match='dse_rule'):
    _tiny_model(dse_rule='fast')


def test_glare_acts_on_night_rows_only_through_ngs():
  model = _tiny_model(cca=False, dse=False)
  variables = registry.init_variables(model, (32, 16), jax.random.PRNGKey(0))
  image, modality, glare, pid = _inputs()
  base = model.apply(variables, image, modality, glare, pid, train=False)
  moved = glare.copy()
  moved[4:] = 0
  other = model.apply(variables, image, modality, moved, pid, train=False)
  changed = np.any(np.asarray(base['embedding']) != np.asarray(other['embedding']), axis=1)
  np.testing.assert_array_equal(changed, [False] * 4 + [True] * 4)
  off = _tiny_model(cca=False, dse=False, ngs=False)
  variables = registry.init_variables(off, (32, 16), jax.random.PRNGKey(0))
  a = off.apply(variables, image, modality, glare, pid, train=False)['embedding']
  b = off.apply(variables, image, modality, moved, pid, train=False)['embedding']
  np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- data + training


@pytest.fixture(scope='module')
def dn_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic') / 'dn')
  return synthetic_cross_modal.generate_dn_like(root, num_ids=12, images_per_state=3,
                                                image_size=(32, 16))


def _tiny_config(root, variant='paper'):
  config = dndm_synthetic.get_config(variant)
  config.data.root = root
  config.data.image_size = (32, 16)
  config.data.pad_pixels = 2
  config.data.num_ids_per_batch, config.data.num_instances = 4, 2
  config.data.eval_batch_size = 16
  config.model.width_multiplier = 0.125
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_epochs = 100
  return config


@pytest.mark.parametrize('variant', ['paper', 'code'])
def test_the_glare_stream_masks_night_rows_from_the_right_image(dn_root, variant):
  config = _tiny_config(dn_root, variant)
  config.data.hflip_prob = 1.0               # every crop mirrored
  config.data.pad_pixels = 0
  config.data.random_erasing_prob = 0.0
  splits = cross_modal_pipeline.load_splits(config.data)
  batch = pipeline.make_train_batch_fn(splits.train, config.data)(3)
  assert batch['glare'].shape == (16, 32, 16)
  assert not batch['glare'][:8].any() and batch['glare'][8:].any()
  store = cross_modal_pipeline.ImageStore(splits.train, (32, 16), 'bicubic', False)
  halves = cross_modal_pipeline.make_sampler(splits.train, config.data).batch_indices_for_step(3)
  night = [i for i, r in enumerate(splits.train) if r.modality == 1]
  for row, index in enumerate(halves[1]):
    raw = store.get(night[index])
    source = raw[:, ::-1] if variant == 'paper' else raw     # 'code': the un-augmented image
    expected = glare_mask.glare_mask(source, variant, 220.0, config.data.glare_min_region)
    np.testing.assert_array_equal(batch['glare'][8 + row], expected)
  evaluated = next(pipeline.make_eval_stream(splits.query + splits.gallery, config.data))
  assert 'glare' in evaluated and evaluated['glare'].shape == (16, 32, 16)


def test_a_batch_without_the_glare_stream_names_the_config_field(dn_root):
  config = _tiny_config(dn_root)
  config.data.glare_mask = ''
  splits = cross_modal_pipeline.load_splits(config.data)
  batch = pipeline.make_train_batch_fn(splits.train, config.data)(0)
  with pytest.raises(KeyError, match='config.data.glare_mask'):
    batches.DAY_NIGHT_IMAGES.model_inputs(batch)


@pytest.mark.slow
def test_the_code_variant_trains_a_few_steps_with_its_attention_loss(dn_root, tmp_path, capsys):
  # (The paper variant trains and is scored in both directions in the study test below.)
  variant = 'code'
  config = _tiny_config(dn_root, variant)
  config.train.max_steps = 3
  final = train.train_and_evaluate(config, str(tmp_path / variant))
  out = capsys.readouterr().out
  assert 'dndm on dn348' in out
  assert 'attention' in out
  losses_seen = [float(line.split('loss ')[1].split()[0]) for line in out.splitlines()
                 if line.startswith('step ')]
  assert len(losses_seen) == 3 and all(np.isfinite(losses_seen))
  assert 0 < final['test/mAP'] <= 1


@pytest.mark.slow
def test_the_study_rows_build_table_3_and_a_run_is_scored_in_both_directions(tmp_path):
  from experiments import cross_modal_ablation  # pylint: disable=g-import-not-at-top
  from experiments import dndm_study  # pylint: disable=g-import-not-at-top
  settings = dndm_study.Settings(num_ids=15, images_per_state=2, image_size=(32, 16),
                                 width_multiplier=0.125, num_epochs=1)
  configs = {row: dndm_study.run_config(row, 2, settings, '/data') for row in dndm_study.ROWS}
  assert [(c.model.ngs, c.model.dse, c.model.cca) for c in configs.values()] == [
      (False, False, False), (True, False, False), (False, True, False), (False, False, True),
      (True, True, False), (True, True, True), (True, True, True)]
  assert configs['dndm_code_cca'].model.cca_rule == 'code' and configs['dndm'].model.cca_rule == 'paper'
  for config in configs.values():   # every row builds, on the same schedule and data
    registry.build_model(config.model, num_classes=3)
    assert config.data.seed == 2 and config.data.glare_mask == 'paper'
  study = dndm_study.study(settings)
  results = cross_modal_ablation.run_study(str(tmp_path), study, ['dndm'], [0], log=lambda m: None)
  assert len(results) == 1 and set(results[0]['metrics']) == set(dndm_study.METRICS)
  assert all(0 < v <= 1 for v in results[0]['metrics'].values())
  assert (tmp_path / 'runs/dndm/seed0/result.json').exists()
  assert '| dndm | 1 |' in (tmp_path / 'results.md').read_text()
  # A second call trains nothing and reports the same run.
  again = cross_modal_ablation.run_study(str(tmp_path), study, ['dndm'], [0], report_only=True)
  assert [r["metrics"] for r in again] == [r["metrics"] for r in results]


@pytest.mark.parity
def test_code_variant_matches_the_official_operations_written_in_torch():
  """The glare opening, NGS and DSE as the official code writes them (NCHW convolutions)."""
  torch = pytest.importorskip('torch')
  f = torch.nn.functional
  image = (RNG.random((1, 16, 12, 3)) * 255).astype(np.uint8)
  image[0, 3:8, 2:7] = 250
  # thermal_module l.132-138: grey with [0.114, 0.587, 0.299] on the loaded (RGB) channels,
  # erosion conv(ones) > 8, dilation 1 - (conv(ones) < 1).
  x = torch.from_numpy(image.astype(np.float32)).permute(0, 3, 1, 2)
  grey = 0.114 * x[:, 0] + 0.587 * x[:, 1] + 0.299 * x[:, 2]
  m = (grey > 220).float()[:, None]
  ones = torch.ones(1, 1, 3, 3)
  eroded = (f.conv2d(m, ones, padding=1) > 8).float()
  opened = 1 - (f.conv2d(eroded, ones, padding=1) < 1).float()
  np.testing.assert_array_equal(glare_mask.code_mask(image[0]), opened[0, 0].numpy())
  # thermal_module l.139: two MaxPool2d(3, 2, 1) down to the stem resolution.
  pooled = f.max_pool2d(f.max_pool2d(opened, 3, 2, 1), 3, 2, 1)
  np.testing.assert_array_equal(dndm.pool_glare(jnp.asarray(opened[:, 0].numpy()), '3x3'),
                                pooled[:, 0].numpy())
  # LSM: a = sigmoid(ReLU(Linear(65 -> 1)([T; m]))) per pixel; T - 0.5 a T.
  t = np.abs(RNG.normal(size=(2, 4, 3, 8))).astype(np.float32)
  mask = (RNG.random((2, 4, 3)) > 0.5).astype(np.float32)
  block = dndm.NGS(relu=True)
  params = block.init(jax.random.PRNGKey(0), t, mask)
  v = torch.from_numpy(np.array(params['params']['v']['kernel']).T)       # Linear weight [1, C+1]
  tt, mt = torch.from_numpy(t).permute(0, 3, 1, 2), torch.from_numpy(mask)[:, None]
  z = torch.cat([tt, mt], 1).permute(0, 2, 3, 1)
  a = torch.sigmoid(torch.relu(f.linear(z, v))).permute(0, 3, 1, 2)
  expected = (tt - 0.5 * a * tt).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(block.apply(params, t, mask)[0], expected, rtol=1e-5, atol=1e-6)
  # GradientComputation4: depthwise 5x5 (ones, -24 centre), padding 2, /24, ReLU; 0.9 T + 0.25 S.
  kernel = torch.ones(5, 5)
  kernel[2, 2] = -24
  weight = kernel.expand(8, 1, 5, 5).contiguous()
  s = torch.relu(f.conv2d(tt, weight, padding=2, groups=8) / 24)
  expected = (0.9 * tt + 0.25 * s).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(dndm.dse_code(jnp.asarray(t)), expected, rtol=1e-5, atol=1e-6)
