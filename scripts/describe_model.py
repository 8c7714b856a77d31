r"""Print FACENet's parameter counts per component (no weights are computed: shapes only).

    python scripts/describe_model.py --depth 50
    python scripts/describe_model.py --depth 18 --config.model.fmi=False --num_classes 575

Starts from configs/default.py; `--depth` is a shorthand for `--config.model.depth`.
"""

import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import flax
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from facenet_jax import cli
from facenet_jax.models import facenet

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(_REPO, 'configs', 'default.py'), 'Config file with get_config().',
    lock_config=True)
_DEPTH = flags.DEFINE_integer('depth', None, 'ResNet depth (overrides config.model.depth).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 575, 'Identities (WMVeID863 train: 575).')


def count_parameters(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def describe(model_config, num_classes: int, image_size) -> list[tuple[str, int]]:
  """(component, parameter count) rows, from shapes only."""
  model = facenet.build_model(model_config, num_classes)
  h, w = image_size
  image = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
  flare = jax.ShapeDtypeStruct((2, 2), jnp.int32)
  shapes = jax.eval_shape(
      lambda i, f: model.init(jax.random.PRNGKey(0), i, i, i, f, train=False), image, flare)
  params = flax.core.unfreeze(shapes['params'])
  rows = []
  for name in sorted(params):
    rows.append((name, count_parameters(params[name])))
    if name == 'mfmp':
      for sub in sorted(params[name]):
        rows.append((f'  mfmp/{sub}', count_parameters(params[name][sub])))
  rows.append(('total', count_parameters(params)))
  rows.append(('batch_stats (not trained)', count_parameters(shapes.get('batch_stats', {}))))
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if _DEPTH.value is not None:
    config.model.depth = _DEPTH.value
  m = config.model
  print(f'FACENet: ResNet-{m.depth} x3, last_stride={m.last_stride}, mfmp={m.mfmp}, fmi={m.fmi}, '
        f'fce={m.fce}, plugin_layer={m.plugin_layer}, num_classes={_NUM_CLASSES.value}, '
        f'input {tuple(config.data.image_size)}')
  for name, count in describe(m, _NUM_CLASSES.value, config.data.image_size):
    print(f'{name:<28s} {count:>14,d}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
