r"""Evaluate a checkpoint: metric table, JSON and pictures (CMC, rank list, flare masks).

    python scripts/evaluate.py --workdir runs/wmveid863 --best [--step N] [--data_root DIR] \
        [--config configs/wmveid863.py --config.x=...] [--export_features] [--out DIR] [--verbose]

By default the run's own record, `<workdir>/config.json`, says how to build the model and read
the data (`--data_root` points it at a moved dataset). A `--config` given as well is used, with a
warning for every field that differs from the record (an evaluation at another image size or
normalisation gives other numbers). The workdir is opened read-only: nothing in it is created or
cleaned up, so evaluating beside a running training is safe.

Every query and gallery image is embedded exactly once; only the model's variables are read from
the checkpoint. Writes `metrics.json`, `cmc.png`, `rank_list.png`, `flare_masks.png` (and
`*_features.npy` with pids/camids/scenes when asked) to `--out` (default
`<workdir>/eval_<best|step>_<step>`).
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from facenet_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Optional config file (default: the workdir\'s recorded config.json).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir holding the checkpoints.')
_DATA_ROOT = flags.DEFINE_string('data_root', None, 'Dataset root, if it moved since training.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_BEST = flags.DEFINE_bool('best', False, 'Evaluate the best-by-validation checkpoint.')
_EXPORT = flags.DEFINE_bool('export_features', False, 'Save embeddings, pids, camids as .npy.')
_OUT = flags.DEFINE_string('out', None, 'Output folder for the report.')
_STRICT = flags.DEFINE_bool('strict', False, 'Refuse a damaged latest checkpoint instead of using '
                            'the previous intact one.')
flags.mark_flags_as_required(['workdir'])

# Fields that may differ from the record without changing results (where things are, not what).
_LOCATION_FIELDS = ('data.root', 'data.tfds_data_dir', 'data.source', 'train.distributed',
                    'train.coordinator_address', 'train.num_processes', 'train.process_id')


def resolve_config(workdir_path: str, given, data_root: str | None):
  """The evaluation config and the warnings about fields that differ from the recorded one."""
  from facenet_jax import workdir  # pylint: disable=g-import-not-at-top
  recorded = workdir.load_recorded_config(workdir_path)
  config = given if given is not None else recorded
  warnings = []
  if given is not None:
    diffs = workdir.config_differences(workdir.config_as_json(recorded),
                                       workdir.config_as_json(given))
    changed = [d for d in diffs if d[0] not in _LOCATION_FIELDS and
               d[0].split('.')[0] in ('data', 'model', 'eval')]
    if changed:
      warnings.append(f'warning: --config differs from the recorded {workdir_path}/config.json '
                      f'in fields that change results: {workdir.format_differences(changed)}')
  if data_root:
    config = config.copy_and_resolve_references()
    config.data.root = data_root
  return config, warnings


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _BEST.value and _STEP.value is not None:
    raise app.UsageError('Pass either --best or --step, not both.')
  from facenet_jax import console  # pylint: disable=g-import-not-at-top
  from facenet_jax.eval import report  # pylint: disable=g-import-not-at-top
  config, warnings = resolve_config(_WORKDIR.value, _CONFIG.value, _DATA_ROOT.value)
  for line in warnings:
    print(line, file=sys.stderr)
  result = report.evaluate_checkpoint(
      config, _WORKDIR.value, step=_STEP.value, best=_BEST.value, out_dir=_OUT.value,
      export_features=_EXPORT.value, strict=_STRICT.value)
  title = (f'{config.data.dataset} test split, {"best" if _BEST.value else "step"} '
           f'checkpoint (step {result["step"]}), percent')
  print(console.format_metric_table({'test': result['metrics']}, title))
  for name, path in result['files'].items():
    print(f'{name:>16}: {path}')


if __name__ == '__main__':
  app.run(cli.with_expected_errors(main), flags_parser=cli.parse_flags)
