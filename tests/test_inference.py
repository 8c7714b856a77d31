"""Feature extraction from a tiny trained workdir: evaluator parity, read-only loading, the
exported function without the model code, scripts/extract_features.py end to end."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from facenet_jax import checkpointing
from facenet_jax import experiment
from facenet_jax import inference
from facenet_jax import sharding
from facenet_jax import train
from facenet_jax.eval import evaluator
from input_pipeline import augment
from input_pipeline import records
from input_pipeline import synthetic
from tests.tiny import SHORT_SGD_RUN
from tests.tiny import subprocess_env
from tests.tiny import tiny_config

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Larger than the model's 32x16 input and not a multiple of it: extraction must resize as the
# evaluator does.
PHOTO_SIZE = (40, 24)


def _listing(folder: pathlib.Path) -> dict[str, tuple]:
  """{relative path: (is folder, size, mtime ns)} of everything under `folder`."""
  out = {}
  for path in sorted(folder.rglob('*')):
    stat = path.lstat()
    out[str(path.relative_to(folder))] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
  return out


@pytest.fixture(scope='module')
def run(tiny_synthetic_root, tmp_path_factory):
  """(config, workdir) of a 2-step tiny run (best and step checkpoints at step 2)."""
  config = tiny_config(tiny_synthetic_root, **{**SHORT_SGD_RUN, 'train__max_steps': 2})
  workdir = tmp_path_factory.mktemp('inference') / 'run'
  train.train_and_evaluate(config, str(workdir))
  return config, workdir


@pytest.fixture(scope='module')
def photos(tmp_path_factory) -> list[records.Record]:
  """Query + gallery triplets of a second small tree at PHOTO_SIZE, some flared: 12 records,
  so a batch of 8 is followed by a padded one."""
  root = synthetic.generate_synthetic_dataset(
      str(tmp_path_factory.mktemp('photos') / 'tree'), num_ids=6, triplets_per_id=6,
      image_size=PHOTO_SIZE, flare_fraction=0.5, seed=5)
  splits = records.load_splits('synthetic', root)
  return splits.query + splits.gallery


@pytest.fixture(scope='module')
def extracted(run, photos):
  """The extractor of the run's best checkpoint, the photos' embeddings, and the workdir listing
  taken before loading.

  The workdir also holds the temporary folder of a save in progress, which a reader must neither
  remove (a trainer may be writing it) nor take for a checkpoint.
  """
  _, workdir = run
  in_progress = workdir / 'checkpoints' / '4.orbax-checkpoint-tmp-1234' / 'state'
  in_progress.mkdir(parents=True)
  (in_progress / 'partial').write_bytes(b'half written')
  before = _listing(workdir)
  extractor = inference.FeatureExtractor.from_workdir(workdir, 'best')
  triplets = [records.load_triplet(r) for r in photos]
  embeddings = extractor.embed_arrays(*([t[m] for t in triplets] for m in range(3)))
  return extractor, embeddings, before


def test_embed_arrays_gives_the_evaluators_embeddings(run, photos, extracted):
  config, workdir = run
  extractor, embeddings, _ = extracted
  assert extractor.loaded.checkpoint_dir == workdir / 'best' / '2'
  assert extractor.batch_size == config.data.eval_batch_size
  assert records.load_triplet(photos[0])[0].shape[:2] == PHOTO_SIZE
  assert len(photos) % extractor.batch_size and len(photos) > extractor.batch_size   # padding
  exp = experiment.build_eval_experiment(config)
  assert extractor.loaded.num_classes == exp.num_classes   # from shapes, not from the dataset
  ev = evaluator.Evaluator(exp.model, exp.spec, exp.mesh, config)
  reference = ev.embed(sharding.replicate(extractor.variables, exp.mesh), photos)['embedding']
  assert embeddings.shape == reference.shape == (len(photos), extractor.embedding_dim)
  np.testing.assert_allclose(embeddings, reference, atol=2e-5, rtol=1e-4)
  # Flared and clean samples both present: the flare rule and the FCE gate were exercised.
  bits = np.stack([extractor.prepare(*records.load_triplet(r))[1] for r in photos])
  assert 0 < bits.any(axis=1).sum() < len(photos)
  # The same triplets read from their folder (WMVeID863 per-id layout) embed identically.
  query_dir = pathlib.Path(photos[0].rgb_path).parents[2]
  names, folder_embeddings = extractor.embed_folder(query_dir)
  queries = [r for r in photos if r.split == 'query']
  assert names == [os.path.relpath(r.rgb_path, query_dir) for r in queries]
  np.testing.assert_allclose(folder_embeddings, embeddings[:len(queries)], atol=1e-6)


def test_the_exported_function_runs_without_the_model_code(extracted, photos, tmp_path):
  extractor, embeddings, _ = extracted
  paths = inference.export_embedding(extractor, tmp_path / 'export' / 'model.jaxexport')
  meta = json.loads(pathlib.Path(paths['sidecar']).read_text())
  assert meta['image_size'] == [32, 16] and meta['embedding_dim'] == embeddings.shape[1]
  assert (meta['mean'], meta['std'], meta['flare_rule']) == (
      list(extractor.mean), list(extractor.std), extractor.flare_rule)
  # Inputs prepared as the sidecar says; 12 rows, not the extractor's batch of 8: B is symbolic.
  prepared = [extractor.prepare(*records.load_triplet(r)) for r in photos]
  inputs = {m: augment.normalize(np.stack([p[0][i] for p in prepared]), meta['mean'], meta['std'])
            for i, m in enumerate(('rgb', 'ni', 'ti'))}
  inputs['flare'] = np.stack([p[1] for p in prepared])
  np.savez(tmp_path / 'inputs.npz', **inputs)
  child = f'''
import sys, numpy as np
from facenet_jax import exported
embed = exported.load_exported({paths["program"]!r})
x = np.load({str(tmp_path / "inputs.npz")!r})
np.save({str(tmp_path / "out.npy")!r}, embed(x["rgb"], x["ni"], x["ti"], x["flare"]))
loaded = [m for m in ("flax", "facenet_jax.models", "facenet_jax.inference", "input_pipeline")
          if m in sys.modules]
assert not loaded, loaded
'''
  proc = subprocess.run([sys.executable, '-c', child], cwd=REPO_ROOT, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / 'out.npy'), embeddings, atol=2e-5, rtol=1e-4)


def _script(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, 'scripts/extract_features.py', *args], cwd=REPO_ROOT,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_the_script_writes_one_row_per_triplet(run, photos, extracted, tmp_path):
  _, workdir = run
  _, embeddings, _ = extracted
  gallery_dir = pathlib.Path(photos[-1].rgb_path).parents[2]
  gallery = [r for r in photos if r.split == 'gallery']
  out = tmp_path / 'out' / 'gallery_features.npz'
  # A relative --workdir (the script runs in the repository root), as users type it.
  proc = _script('--workdir', os.path.relpath(workdir, REPO_ROOT), '--images', str(gallery_dir),
                 '--out', str(out), '--checkpoint', 'latest',
                 '--export', str(tmp_path / 'model.jaxexport'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'{len(gallery)} embeddings'), lines
  assert lines[0].endswith(f'-> {out}; exported -> {tmp_path / "model.jaxexport"}')
  saved = np.load(out)
  assert list(saved['names']) == [os.path.relpath(r.rgb_path, gallery_dir) for r in gallery]
  # best and latest are the same step-2 weights in this run.
  np.testing.assert_allclose(saved['embeddings'], embeddings[-len(gallery):], atol=1e-5)
  assert all((tmp_path / f'model.jaxexport{s}').is_file() for s in ('', '.json', '.variables.npz'))


def test_a_missing_workdir_is_a_one_line_error(photos, tmp_path):
  missing = tmp_path / 'no_such_run'
  images = pathlib.Path(photos[0].rgb_path).parents[2]
  proc = _script('--workdir', str(missing), '--images', str(images), '--out',
                 str(tmp_path / 'f.npz'))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [f'error: {missing}: workdir not found (a training '
                                              "run's --workdir)"], proc.stderr
  assert not (tmp_path / 'f.npz').exists()


def test_bad_inputs_name_the_path(run, extracted, tmp_path):
  _, workdir = run
  extractor, _, _ = extracted
  nowhere = tmp_path / 'nowhere'
  with pytest.raises(FileNotFoundError, match=re.escape(f'{nowhere}: workdir not found')):
    inference.load_model(nowhere)
  config_json = tmp_path / 'config.json'
  with pytest.raises(FileNotFoundError, match=re.escape(f'{config_json}: not found')):
    inference.load_model(tmp_path)
  with pytest.raises(checkpointing.CheckpointError,
                     match=re.escape(f'{tmp_path / "best"}: no finished checkpoint')):
    inference.find_checkpoint(tmp_path, 'best')
  assert inference.find_checkpoint(workdir, 'latest') == workdir / 'checkpoints' / '2'
  # A config.json of another model next to the run's checkpoints.
  other = tmp_path / 'other'
  other.mkdir()
  (other / 'best').symlink_to(workdir / 'best')
  config = json.loads((workdir / 'config.json').read_text())
  config['model']['fmi_hidden_ratio'] = 0.5
  (other / 'config.json').write_text(json.dumps(config))
  with pytest.raises(checkpointing.CheckpointError, match='shape params/mfmp/fmi'):
    inference.load_model(other)
  # A step whose files differ from the checksums saved with it (the files linked, not copied).
  damaged = tmp_path / 'damaged'
  (damaged / 'best').mkdir(parents=True)
  (damaged / 'config.json').symlink_to(workdir / 'config.json')
  step_dir = workdir / 'best' / '2'
  for path in step_dir.rglob('*'):
    target = damaged / 'best' / '2' / path.relative_to(step_dir)
    if path.is_dir():
      target.mkdir(parents=True, exist_ok=True)
    elif path.name != checkpointing.CHECKSUM_FILE:
      target.parent.mkdir(parents=True, exist_ok=True)
      target.symlink_to(path)
  sums = json.loads((step_dir / checkpointing.CHECKSUM_FILE).read_text())
  sums[sorted(sums)[0]] = '0' * 64
  checkpointing.write_json(damaged / 'best' / '2' / checkpointing.CHECKSUM_FILE, sums)
  with pytest.raises(checkpointing.DamagedCheckpointError, match='1 files differ'):
    inference.load_model(damaged)
  folder = tmp_path / 'photos'
  for m in records.MODALITY_DIRS:
    (folder / m).mkdir(parents=True)
  with pytest.raises(inference.InferenceError, match=re.escape(f'{folder}: no image triplets')):
    extractor.embed_folder(folder)
  bad = folder / 'vis' / 'a.png'
  bad.write_bytes(b'not a png')
  with pytest.raises(records.DatasetError, match=re.escape(f'{bad}: no partner')):
    extractor.embed_folder(folder)
  for m in records.MODALITY_DIRS[1:]:
    (folder / m / 'a.png').write_bytes(b'not a png')
  with pytest.raises(records.DatasetError, match=re.escape(f'{bad}: unreadable')):
    extractor.embed_folder(folder)
  with pytest.raises(inference.InferenceError, match=r'ni\[0\]: expected a uint8'):
    extractor.embed_arrays(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.float32),
                           np.zeros((1, 8, 8, 3), np.uint8))


def test_loading_embedding_and_the_script_leave_the_workdir_untouched(run, extracted):
  """Runs last: the listing before the first load against the one after every test above."""
  _, workdir = run
  _, _, before = extracted
  assert any(name.startswith('best') for name in before)
  assert 'checkpoints/4.orbax-checkpoint-tmp-1234/state/partial' in before
  assert _listing(workdir) == before
