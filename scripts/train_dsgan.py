r"""Train TSME's stage 1, the DSGAN generators of both directions (facenet_jax/dsgan_training.py).

    python scripts/train_dsgan.py --config configs/tsme_dsgan.py:sysu_mm01 --workdir runs/dsgan_sysu \
        --config.data.root=/data/SYSU-MM01 [--config.gan.pretrained_path=weights/resnet50.npz]

Writes orbax checkpoints of the whole GAN state to <workdir>/checkpoints/<step> (resumed by
re-running the command) and <workdir>/config.json; stage 2 reads the generators from the workdir
(`--config.model.generator_workdir=<workdir>` of configs/tsme_*.py).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from facenet_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file with get_config().', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and the config record.')
_STRICT = flags.DEFINE_bool('strict', False, 'Refuse a damaged latest checkpoint.')
_ALLOW_CHANGE = flags.DEFINE_bool('allow_config_change', False, 'Resume with a differing config.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from facenet_jax import dsgan_training  # pylint: disable=g-import-not-at-top
  dsgan_training.train_dsgan(_CONFIG.value, _WORKDIR.value, _ALLOW_CHANGE.value, _STRICT.value)


if __name__ == '__main__':
  app.run(cli.with_expected_errors(main), flags_parser=cli.parse_flags)
