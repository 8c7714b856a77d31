r"""DNDM on the built-in synthetic day/night set: the whole DNDM path in minutes on a CPU.

    python scripts/make_synthetic.py --layout dn --out data/synthetic_dn
    python scripts/train.py --config configs/dndm_synthetic.py --workdir runs/dndm_synthetic \
        --config.data.root=data/synthetic_dn

Argument `:code` gives the official code's variant. The recipe of configs/_dndm_recipe.py shrunk
like configs/agw_synthetic.py: ResNet-18 at a quarter width, 64x32 input, 30 epochs, from scratch.
"""

from configs import _agw_recipe
from configs import _dndm_recipe


def get_config(variant: str = 'paper'):
  if variant not in ('paper', 'code'):
    raise ValueError(f"configs/dndm_synthetic.py: variant {variant!r} must be 'paper' or 'code'")
  get = _dndm_recipe.get_paper_config if variant == 'paper' else _dndm_recipe.get_code_config
  config = get('dn348')
  config.data.root = 'data/synthetic_dn'
  config = _agw_recipe.shrink_to_synthetic(config)
  config.data.glare_min_region = 4      # the 9-pixel default is for 256x256 images
  return config
