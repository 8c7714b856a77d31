r"""AGW on LLCM with the official recipe (configs/_agw_recipe.py), infrared -> visible, 10 trials.

    python scripts/train.py --config configs/agw_llcm.py --workdir runs/agw_llcm \
        --config.data.root=/data/LLCM

`--config.data.direction=visible_to_infrared` for the other direction; the official LLCM scripts
use the distinct-identity CMC, reported here by default (`--config.eval.cmc_mode=standard` for the
standard one).
"""

from configs import _agw_recipe


def get_config():
  return _agw_recipe.get_agw_config('llcm', 'llcm')
