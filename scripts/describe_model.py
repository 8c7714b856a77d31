r"""Print a model's parameter counts per component, from shapes only (nothing is initialised).

    python scripts/describe_model.py --config configs/default.py [--num_classes 575]
    python scripts/describe_model.py --config configs/official_wmveid863.py
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from facenet_jax import cli
from facenet_jax import models

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file with get_config().', lock_config=True)
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 575, 'Identities (WMVeID863 train: 575).')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  spec = models.get_spec(config.model.name)
  fields = ', '.join(f'{k}={v}' for k, v in config.model.items() if k != 'pretrained_path')
  print(f'{spec.description}\n  {fields}\n  num_classes={_NUM_CLASSES.value}, '
        f'input {tuple(config.data.image_size)}')
  model = models.build_model(config.model, _NUM_CLASSES.value)
  counts = models.parameter_counts(model, tuple(config.data.image_size))
  for name, count in counts.items():
    label = '  ' + name if '/' in name else name
    if name == 'batch_stats':
      label = 'batch_stats (not trained)'
    print(f'{label:<28s} {count:>14,d}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
