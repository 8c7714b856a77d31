"""The jitted, data-parallel train step and the training driver, end to end on tiny data."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from facenet_jax import checkpointing
from facenet_jax import report
from facenet_jax import sharding
from facenet_jax import train
from facenet_jax.train_state import create_train_state
from input_pipeline import pipeline


def tiny_config(root: str):
  """The synthetic config shrunk to test size: ResNet-18 streams at 32x16, batches of 4 x 2."""
  config = synthetic_config.get_config()
  config.data.root = root
  config.data.image_size = (32, 16)
  config.data.pad_pixels = 2
  config.data.num_ids_per_batch = 4
  config.data.num_instances = 2
  config.data.eval_batch_size = 8
  config.data.num_val_ids = 2
  config.model.depth = 18
  config.train.num_epochs = 2
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_epochs = 100
  return config


@pytest.fixture(scope='module')
def setup(tiny_synthetic_root):
  """One experiment, its host-side initial state and a few host batches, shared by the tests."""
  config = tiny_config(tiny_synthetic_root)
  exp = train.build_experiment(config)
  variables = train.init_variables(exp.model, config, jax.random.PRNGKey(0))
  # NumPy copies: the jitted step donates its input state, which must not consume these.
  host_state = jax.device_get(create_train_state(variables, exp.tx, jax.random.PRNGKey(1)))
  stream = pipeline.make_train_stream(exp.train_records, config.data)
  batches = [{k: b[k] for k in train.TRAIN_KEYS} for b, _ in zip(stream, range(12))]
  return config, exp, host_state, batches


def _step_on_mesh(exp, config, host_state, batch, num_devices):
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  step = train.jit_train_step(
      train.make_train_step(exp.model, exp.tx, config, exp.learning_rate_fn), mesh)
  state = sharding.replicate(host_state, mesh)
  new_state, metrics = step(state, sharding.shard_batch(batch, mesh))
  return jax.device_get(new_state), jax.device_get(metrics)


def test_loss_and_update_do_not_depend_on_the_number_of_devices(setup):
  """BatchNorm statistics and triplet mining see the global batch, however it is sharded."""
  config, exp, host_state, batches = setup
  assert len(jax.devices()) >= 4
  results = {n: _step_on_mesh(exp, config, host_state, batches[0], n) for n in (1, 2, 4)}
  state_1, metrics_1 = results[1]
  for n in (2, 4):
    state_n, metrics_n = results[n]
    for key in ('loss', 'triplet', 'id', 'flare', 'ic', 'grad_norm'):
      np.testing.assert_allclose(metrics_n[key], metrics_1[key], rtol=1e-4, atol=1e-6,
                                 err_msg=f'{key} on {n} devices')
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
                 state_n.batch_stats, state_1.batch_stats)
    # Adam's first step is ~lr * sign(g): where g is ~0, float noise in the reduction order can
    # flip the sign, so a handful of elements may differ by up to 2 lr; all others agree closely.
    new_1 = np.concatenate([x.ravel() for x in jax.tree.leaves(state_1.params)])
    new_n = np.concatenate([x.ravel() for x in jax.tree.leaves(state_n.params)])
    close = np.isclose(new_n, new_1, rtol=2e-4, atol=2e-6)
    assert close.mean() > 0.999, f'{(~close).sum()} of {close.size} parameters differ'
    assert np.abs(new_n - new_1).max() <= 2.1 * config.optim.base_lr


@pytest.fixture(scope='module')
def jitted(setup):
  config, exp, host_state, _ = setup
  step = train.jit_train_step(
      train.make_train_step(exp.model, exp.tx, config, exp.learning_rate_fn), exp.mesh)
  return step


def test_step_compiles_once_and_the_loss_goes_down(setup, jitted):
  config, exp, host_state, batches = setup
  state = sharding.replicate(host_state, exp.mesh)
  losses = []
  for batch in batches:
    state, metrics = jitted(state, sharding.shard_batch(batch, exp.mesh))
    losses.append(float(metrics['loss']))
  assert jitted._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == len(batches)
  assert all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_a_non_finite_step_is_reported_and_leaves_the_state_unchanged(setup, jitted):
  config, exp, host_state, batches = setup
  batch = dict(batches[0])
  batch['rgb'] = np.array(batch['rgb'])
  batch['rgb'][0, 0, 0, 0] = np.nan
  state = sharding.replicate(host_state, exp.mesh)
  new_state, metrics = jitted(state, sharding.shard_batch(batch, exp.mesh))
  assert float(metrics['finite']) == 0.0
  assert int(new_state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new_state.params),
               jax.device_get(host_state.params))


def test_the_driver_stops_with_a_clear_message_on_a_non_finite_loss(tiny_synthetic_root, tmp_path,
                                                                   monkeypatch):
  config = tiny_config(tiny_synthetic_root)
  config.train.max_steps = 3
  real_stream = pipeline.make_train_stream

  def poisoned_stream(*args, **kwargs):
    for batch in real_stream(*args, **kwargs):
      batch = dict(batch)
      batch['ti'] = np.full_like(batch['ti'], np.inf)
      yield batch

  monkeypatch.setattr(pipeline, 'make_train_stream', poisoned_stream)
  with pytest.raises(train.NonFiniteLossError, match='Non-finite loss at step 1'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_a_bfloat16_step_runs_on_cpu_and_stays_finite(setup):
  config, _, _, batches = setup
  config = config.copy_and_resolve_references()
  config.model.dtype = 'bfloat16'
  exp = train.build_experiment(config)
  host_state = jax.device_get(create_train_state(
      train.init_variables(exp.model, config, jax.random.PRNGKey(0)), exp.tx,
      jax.random.PRNGKey(1)))
  assert jax.tree.leaves(host_state.params)[0].dtype == np.float32
  new_state, metrics = _step_on_mesh(exp, config, host_state, batches[0], 2)
  assert metrics['finite'] == 1.0 and np.isfinite(metrics['loss'])
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new_state.params))


def _train_losses(workdir: pathlib.Path) -> dict[int, float]:
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {l['step']: l['train/loss'] for l in lines if 'train/loss' in l}


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tiny_synthetic_root, tmp_path):
  config = tiny_config(tiny_synthetic_root)
  config.train.max_steps = 5
  train.train_and_evaluate(config, str(tmp_path / 'straight'))

  config.train.max_steps = 3
  train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  config.train.max_steps = 5
  result = train.train_and_evaluate(config, str(tmp_path / 'resumed'))

  straight = _train_losses(tmp_path / 'straight')
  resumed = _train_losses(tmp_path / 'resumed')
  assert sorted(resumed) == [1, 2, 3, 4, 5]
  for step in (4, 5):
    np.testing.assert_allclose(resumed[step], straight[step], rtol=1e-5)
  assert {'val/mAP', 'test/mAP', 'test/R1'} <= set(result)

  # The run's checkpoints evaluate from disk: best-by-validation and a given step.
  out = report.evaluate_checkpoint(config, str(tmp_path / 'resumed'), best=True,
                                   out_dir=str(tmp_path / 'report'), export_features=True)
  metrics = out['metrics']
  assert 0.0 <= metrics['mAP'] <= 1.0 and len(metrics['cmc']) == config.eval.max_rank
  for name in ('metrics', 'cmc', 'rank_list', 'flare_masks', 'query_features'):
    assert pathlib.Path(out['files'][name]).is_file(), name
  features = np.load(out['files']['query_features'])
  assert features.shape[0] == len(pipeline.load_splits_for_config(config.data).query)
  np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
  stepped = report.evaluate_checkpoint(config, str(tmp_path / 'resumed'), step=4,
                                       out_dir=str(tmp_path / 'report4'))
  assert stepped['step'] == 4


def test_a_missing_dataset_root_names_the_config_field(tmp_path):
  config = tiny_config(str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='config.data.root'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_a_checkpoint_of_another_model_is_refused_with_the_differing_shapes(
    tiny_synthetic_root, tmp_path):
  config = tiny_config(tiny_synthetic_root)
  config.train.max_steps = 1
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  config.model.fmi_hidden_ratio = 0.5
  with pytest.raises(checkpointing.CheckpointError, match='shape params/mfmp/fmi'):
    report.evaluate_checkpoint(config, str(tmp_path / 'run'))


def test_an_empty_query_split_is_a_clear_error(tiny_synthetic_root, tmp_path):
  exp = train.build_experiment(tiny_config(tiny_synthetic_root))
  with pytest.raises(ValueError, match='query split is empty'):
    train.evaluate_retrieval(None, None, [], exp.gallery, exp.config, exp.mesh)
