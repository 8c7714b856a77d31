"""The jitted, data-parallel train step and the training driver, end to end on tiny data."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

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

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


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
  config.optim.base_lr = 3.5e-4        # the paper's; 1e-3 oscillates on batches of 8
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
  batches = [{k: b[k] for k in train.TRAIN_KEYS} for b, _ in zip(stream, range(8))]
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
  """Six steps alternating over two batches: one compilation, and both batches fit better."""
  config, exp, host_state, batches = setup
  state = sharding.replicate(host_state, exp.mesh)
  losses = []
  for i in range(6):
    state, metrics = jitted(state, sharding.shard_batch(batches[i % 2], exp.mesh))
    losses.append(float(metrics['loss']))
  assert jitted._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 6
  assert all(np.isfinite(losses))
  assert losses[4] < losses[0] and losses[5] < losses[1], losses


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
  new_state, metrics = _step_on_mesh(exp, config, host_state, batches[0], 1)
  assert metrics['finite'] == 1.0 and np.isfinite(metrics['loss'])
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new_state.params))


def _tiny_overrides(root: str, workdir: pathlib.Path, max_steps: int) -> list[str]:
  """`scripts/train.py` flags that give `tiny_config(root)` with `max_steps`."""
  return ['--config', 'configs/synthetic.py', '--workdir', str(workdir),
          f'--config.data.root={root}', '--config.data.image_size=(32, 16)',
          '--config.data.pad_pixels=2', '--config.data.num_ids_per_batch=4',
          '--config.data.num_instances=2', '--config.data.eval_batch_size=8',
          '--config.data.num_val_ids=2', '--config.model.depth=18', '--config.optim.base_lr=3.5e-4',
          '--config.train.num_epochs=2',
          '--config.train.log_every_steps=1', '--config.train.checkpoint_every_steps=2',
          '--config.train.eval_every_epochs=100', f'--config.train.max_steps={max_steps}']


def _single_device_env() -> dict[str, str]:
  """The test environment with one CPU device (it runs the tiny model much faster than four)."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'xla_force_host_platform_device_count' not in f)
  return env


def _train_script(root: str, workdir: pathlib.Path, max_steps: int) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, 'scripts/train.py', *_tiny_overrides(root, workdir, max_steps)],
      cwd=REPO_ROOT, env=_single_device_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True)


def _finish(process: subprocess.Popen) -> None:
  try:
    _, stderr = process.communicate(timeout=600)
  finally:
    process.kill()
  assert process.returncode == 0, stderr[-3000:]


@pytest.fixture(scope='module')
def runs(tiny_synthetic_root, tmp_path_factory):
  """`scripts/train.py` run straight for 6 steps, and the same run SIGKILLed and restarted."""
  root = tmp_path_factory.mktemp('runs')
  _finish(_train_script(tiny_synthetic_root, root / 'straight', 6))
  killed = _train_script(tiny_synthetic_root, root / 'killed', 6)
  deadline = time.time() + 600
  while not (root / 'killed' / 'checkpoints' / '2').is_dir() and killed.poll() is None:
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)   # whatever it is doing: stepping, saving, logging
  killed.communicate(timeout=60)
  _finish(_train_script(tiny_synthetic_root, root / 'killed', 6))
  config = tiny_config(tiny_synthetic_root)
  config.train.max_steps = 6
  return config, root


def _metric_lines(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _final_test_metrics(workdir: pathlib.Path) -> dict[str, float]:
  return [l for l in _metric_lines(workdir) if 'test/mAP' in l][-1]


def test_a_run_killed_at_any_moment_resumes_with_the_losses_of_an_uninterrupted_run(runs):
  _, root = runs
  straight = {l['step']: l['train/loss'] for l in _metric_lines(root / 'straight')
              if 'train/loss' in l}
  assert sorted(straight) == [1, 2, 3, 4, 5, 6]
  resumed = [(l['step'], l['train/loss']) for l in _metric_lines(root / 'killed')
             if 'train/loss' in l]
  assert {step for step, _ in resumed} == set(straight)
  # Steps logged before the kill and again after the restart agree too.
  for step, loss in resumed:
    np.testing.assert_allclose(loss, straight[step], rtol=1e-5, err_msg=f'step {step}')
  assert {'val/mAP', 'test/mAP', 'test/R1'} <= set(_final_test_metrics(root / 'killed'))
  assert (root / 'killed' / 'config.json').is_file()


def test_checkpoints_evaluate_from_disk_with_report_pictures_and_features(runs, tmp_path):
  config, root = runs
  final = _final_test_metrics(root / 'killed')
  out = report.evaluate_checkpoint(config, str(root / 'killed'), step=6,
                                   out_dir=str(tmp_path / 'report'), export_features=True)
  metrics = out['metrics']
  # The same weights on the same split give the metrics the run logged at its end.
  np.testing.assert_allclose(metrics['mAP'], final['test/mAP'], rtol=1e-4)
  assert len(metrics['cmc']) == config.eval.max_rank
  for name in ('metrics', 'cmc', 'rank_list', 'flare_masks', 'query_features'):
    assert pathlib.Path(out['files'][name]).is_file(), name
  features = np.load(out['files']['query_features'])
  assert features.shape[0] == len(pipeline.load_splits_for_config(config.data).query)
  np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
  table = report.format_metric_table(metrics, 'tiny')
  assert 'mAP' in table and 'R-10' in table
  best = report.evaluate_checkpoint(config, str(root / 'killed'), best=True,
                                    out_dir=str(tmp_path / 'report_best'))
  assert best['step'] == 6   # the only evaluation, at the end, is the best by definition


def test_a_checkpoint_of_another_model_is_refused_with_the_differing_shapes(runs):
  config, root = runs
  config = config.copy_and_resolve_references()
  config.model.fmi_hidden_ratio = 0.5
  with pytest.raises(checkpointing.CheckpointError, match='shape params/mfmp/fmi'):
    report.evaluate_checkpoint(config, str(root / 'straight'))


def test_a_missing_dataset_root_names_the_config_field(tmp_path):
  config = tiny_config(str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='config.data.root'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_an_empty_query_split_is_a_clear_error(tiny_synthetic_root, tmp_path):
  exp = train.build_experiment(tiny_config(tiny_synthetic_root))
  with pytest.raises(ValueError, match='query split is empty'):
    train.evaluate_retrieval(None, None, [], exp.gallery, exp.config, exp.mesh)
