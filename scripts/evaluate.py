r"""Evaluate a checkpoint: metric table, JSON and pictures (CMC, rank list, flare masks).

    python scripts/evaluate.py --config configs/wmveid863.py --workdir runs/wmveid863 --best \
        [--step N] [--export_features] [--out DIR] [--verbose]

Every query and gallery image is embedded exactly once; only the model's variables are read from
the checkpoint. Writes `metrics.json`, `cmc.png`, `rank_list.png`, `flare_masks.png` (and
`*_features.npy` with pids/camids/scenes when asked) to `--out` (default
`<workdir>/eval_<best|step>_<step>`).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from facenet_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to the config the checkpoint was trained with.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir holding the checkpoints.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_BEST = flags.DEFINE_bool('best', False, 'Evaluate the best-by-validation checkpoint.')
_EXPORT = flags.DEFINE_bool('export_features', False, 'Save embeddings, pids, camids as .npy.')
_OUT = flags.DEFINE_string('out', None, 'Output folder for the report.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _BEST.value and _STEP.value is not None:
    raise app.UsageError('Pass either --best or --step, not both.')
  from facenet_jax import console  # pylint: disable=g-import-not-at-top
  from facenet_jax.eval import report  # pylint: disable=g-import-not-at-top
  result = report.evaluate_checkpoint(
      _CONFIG.value, _WORKDIR.value, step=_STEP.value, best=_BEST.value, out_dir=_OUT.value,
      export_features=_EXPORT.value)
  title = (f'{_CONFIG.value.data.dataset} test split, {"best" if _BEST.value else "step"} '
           f'checkpoint (step {result["step"]}), percent')
  print(console.format_metric_table({'test': result['metrics']}, title))
  for name, path in result['files'].items():
    print(f'{name:>16}: {path}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
