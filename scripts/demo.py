r"""The whole job on built-in synthetic data: generate, train, evaluate the best checkpoint.

    python scripts/demo.py --data_dir data/synthetic --workdir runs/demo [--verbose]
    python scripts/demo.py --task cross_modal --data_dir data/synthetic_sysu --workdir runs/demo_agw

(`make demo` runs the first.) The dataset is generated when `--data_dir` holds none; the run
resumes when `--workdir` already has checkpoints. Prints the test metrics of the best checkpoint
next to the chance level of the same gallery, and the paths of the pictures.

`--task flare` (default): FACENet on the synthetic flare triplets (configs/synthetic.py), best by
validation. `--task cross_modal`: AGW on the synthetic SYSU-MM01-layout set
(configs/agw_synthetic.py), scored with the SYSU-MM01 protocol (10 single-shot gallery trials,
camera-3/camera-2 junk), evaluated at its latest checkpoint (there is no validation split, and
model selection never looks at the test split; the official AGW code keeps the best test Rank-1).
"""

import os
import time

from absl import app
from absl import flags

from facenet_jax import cli

_DATA_DIR = flags.DEFINE_string('data_dir', 'data/synthetic', 'Synthetic dataset folder.')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/demo', 'Training workdir.')
_NUM_IDS = flags.DEFINE_integer('num_ids', 150, 'Identities in the generated dataset.')
_TRIPLETS_PER_ID = flags.DEFINE_integer('triplets_per_id', 8, 'Triplets per identity.')
_NUM_EPOCHS = flags.DEFINE_integer('num_epochs', None, 'Override config.train.num_epochs.')
_TASK = flags.DEFINE_enum('task', 'flare', ['flare', 'cross_modal'], 'Which demo (module docstring).')


def chance_metrics(query, gallery, config, num_draws: int = 20):
  """mAP / R-1 of random rankings of this gallery (mean over seeded random distance matrices)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from facenet_jax.eval import metrics  # pylint: disable=g-import-not-at-top
  if config.eval.protocol not in ('camera', 'scene'):
    return protocol_chance_metrics(query, gallery, config, num_draws)
  rng = np.random.default_rng(0)
  labels = lambda recs, f: np.asarray([getattr(r, f) for r in recs])
  maps, r1s = [], []
  for _ in range(num_draws):
    result = metrics.rank_metrics(
        rng.random((len(query), len(gallery)), dtype=np.float32), labels(query, 'pid'),
        labels(gallery, 'pid'), labels(query, 'camid'), labels(gallery, 'camid'),
        max_rank=config.eval.max_rank)
    maps.append(result['mAP'])
    r1s.append(result['cmc'][0])
  return float(np.mean(maps)), float(np.mean(r1s))


def protocol_chance_metrics(query, gallery, config, num_draws: int = 20):
  """mAP / R-1 of random embeddings under the configured protocol (gallery trials included):
  independent random directions rank every gallery in a uniformly random order."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from facenet_jax.eval import protocols  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  protocol = protocols.get_protocol(config.eval.protocol)
  settings = protocols.ScoringSettings(distance='cosine', max_rank=config.eval.max_rank,
                                       cmc_mode=config.eval.cmc_mode)
  maps, r1s = [], []
  for _ in range(num_draws):
    result = protocol.score(rng.normal(size=(len(query), 64)).astype(np.float32),
                            rng.normal(size=(len(gallery), 64)).astype(np.float32),
                            query, gallery, settings)
    maps.append(result['mAP'])
    r1s.append(result['cmc'][0])
  return float(np.mean(maps)), float(np.mean(r1s))


def main(argv):
  del argv
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from facenet_jax import console  # pylint: disable=g-import-not-at-top
  from facenet_jax import experiment  # pylint: disable=g-import-not-at-top
  from facenet_jax import train  # pylint: disable=g-import-not-at-top
  from facenet_jax.eval import report  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic as synthetic_data  # pylint: disable=g-import-not-at-top

  start = time.time()
  if _TASK.value == 'cross_modal':
    config = _cross_modal_config()
  else:
    config = synthetic.get_config()
  config.data.root = _DATA_DIR.value
  if _NUM_EPOCHS.value:
    config.train.num_epochs = _NUM_EPOCHS.value
  if _TASK.value == 'cross_modal':
    _prepare_cross_modal(config)
  elif not os.path.isdir(os.path.join(_DATA_DIR.value, 'train')):
    console.say(f'Generating the synthetic glare dataset in {_DATA_DIR.value} ...')
    synthetic_data.generate_synthetic_dataset(
        _DATA_DIR.value, num_ids=_NUM_IDS.value, triplets_per_id=_TRIPLETS_PER_ID.value,
        image_size=tuple(config.data.image_size), seed=0)
  else:
    # A tree of an older generator version is refused with its path (it is another dataset).
    synthetic_data.read_settings(_DATA_DIR.value)
  name = 'configs/agw_synthetic.py' if _TASK.value == 'cross_modal' else 'configs/synthetic.py'
  console.say(f'Training {name} in {_WORKDIR.value} ...')
  exp = experiment.build_experiment(config)
  train.train_and_evaluate(config, _WORKDIR.value, exp=exp)
  train_time = time.time() - start

  result = report.evaluate_checkpoint(config, _WORKDIR.value, best=True, exp=exp)
  chance_map, chance_r1 = chance_metrics(exp.query, exp.gallery, config)
  console.say()
  console.say(console.format_metric_table(
      {'test': result['metrics']},
      f'Synthetic test split, {"latest" if _TASK.value == "cross_modal" else "best-by-validation"}'
      f' checkpoint (step {result["step"]}), percent'))
  gallery = (f'{len(exp.gallery)} gallery candidates, the same trials'
             if _TASK.value == 'cross_modal' else f'{len(exp.gallery)} gallery')
  console.say(f'Chance on this gallery ({len(exp.query)} queries x {gallery}): '
              f'mAP {100 * chance_map:.2f}, R-1 {100 * chance_r1:.2f}')
  console.say(f'Wall time: {train_time / 60:.1f} min training (incl. data generation), '
              f'{(time.time() - start) / 60:.1f} min in all')
  folder = os.path.dirname(result['files']['metrics'])
  console.say(f'Pictures and metrics in {folder}: ' +
              ', '.join(os.path.basename(p) for p in result['files'].values()))


def _cross_modal_config():
  from configs import agw_synthetic  # pylint: disable=g-import-not-at-top
  return agw_synthetic.get_config()


def _prepare_cross_modal(config) -> None:
  """Generates the SYSU-MM01-layout synthetic set when `--data_dir` holds none."""
  from facenet_jax import console  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic_cross_modal  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(os.path.join(_DATA_DIR.value, 'exp')):
    console.say(f'Generating the synthetic cross-modality set in {_DATA_DIR.value} ...')
    synthetic_cross_modal.generate_sysu_like(_DATA_DIR.value, num_ids=_NUM_IDS.value,
                                             image_size=tuple(config.data.image_size), seed=0)


if __name__ == '__main__':
  app.run(cli.with_expected_errors(main), flags_parser=cli.parse_flags)
