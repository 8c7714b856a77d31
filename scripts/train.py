r"""Train (and periodically evaluate) FACENet.

    python scripts/train.py --config configs/wmveid863.py --workdir runs/wmveid863 \
        [--config.data.root=/data/WMVeID863] [--config.optim.base_lr=3.5e-4 ...]

Re-running the same command resumes from the latest checkpoint in --workdir.
"""

import os
import sys

# Hide accelerators from TensorFlow (tf.data only) before anything imports it.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from facenet_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file with get_config().', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and pictures.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the resolved config and exit.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  print(config, flush=True)
  if _DRY_RUN.value:
    return
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required unless --dry_run is given.')
  from facenet_jax import train  # pylint: disable=g-import-not-at-top
  logging.info('Training in %s', _WORKDIR.value)
  train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
