r"""Train (and periodically evaluate) a registered model; FACENet by default.

    python scripts/train.py --config configs/wmveid863.py --workdir runs/wmveid863 \
        [--config.data.root=/data/WMVeID863] [--config.optim.base_lr=3.5e-4 ...] [--verbose]

Re-running the same command resumes from the latest intact checkpoint in --workdir. The resolved
config is written to <workdir>/config.json, the run's record: resuming with a different config is
refused (listing the differing fields) unless --allow_config_change, which records the change in
<workdir>/config_history.jsonl. One trainer per workdir (<workdir>/.lock). `--dry_run` prints the
config and exits. Expected errors (data, config, weights, disk, lock, non-finite loss) print one
message and exit with status 1; --verbose shows their traceback.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from facenet_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file with get_config().', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and pictures.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the resolved config and exit.')
_STRICT = flags.DEFINE_bool('strict', False, 'Refuse a damaged latest checkpoint instead of resuming '
                            'from the previous intact one.')
_ALLOW_CHANGE = flags.DEFINE_bool('allow_config_change', False, 'Resume with a config that differs '
                                  'from the recorded one (the change is recorded).')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if _DRY_RUN.value:
    print(config, flush=True)
    return
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required unless --dry_run is given.')
  from facenet_jax import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(config, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value,
                          strict_checkpoints=_STRICT.value)


if __name__ == '__main__':
  app.run(cli.with_expected_errors(main), flags_parser=cli.parse_flags)
