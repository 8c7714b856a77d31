r"""Print FACENet's parameter counts per component (shapes only: nothing is initialised).

    python scripts/describe_model.py --depth 50
    python scripts/describe_model.py --depth 18 --config.model.fmi=False --num_classes 575

Starts from configs/default.py (or --config); `--depth` is a shorthand for --config.model.depth.
"""

import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from facenet_jax import cli
from facenet_jax.models import facenet

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(_REPO, 'configs', 'default.py'), 'Config file with get_config().',
    lock_config=True)
_DEPTH = flags.DEFINE_integer('depth', None, 'ResNet depth (overrides config.model.depth).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 575, 'Identities (WMVeID863 train: 575).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if _DEPTH.value is not None:
    config.model.depth = _DEPTH.value
  m = config.model
  if m.backbone == 'vit_b16':
    streams = (f'ViT (D {m.vit_embed_dim}, depth {m.vit_depth}, {m.vit_num_heads} heads, patch '
               f'{m.vit_patch_size}) x3, cross-attention {m.cross_attention_heads} x '
               f'{m.cross_attention_dim_head} ({m.cross_attention_split} split)')
  else:
    streams = f'ResNet-{m.depth} x3, last_stride={m.last_stride}, plugin_layer={m.plugin_layer}'
  print(f'FACENet: {streams}, mfmp={m.mfmp}, fmi={m.fmi}, fce={m.fce}, '
        f'num_classes={_NUM_CLASSES.value}, input {tuple(config.data.image_size)}')
  model = facenet.build_model(m, _NUM_CLASSES.value)
  counts = facenet.parameter_counts(model, tuple(config.data.image_size))
  for name, count in counts.items():
    label = '  ' + name if name.startswith('mfmp/') else name
    if name == 'batch_stats':
      label = 'batch_stats (not trained)'
    print(f'{label:<28s} {count:>14,d}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
