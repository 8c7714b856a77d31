r"""DEEN on SYSU-MM01 with the official recipe (configs/_deen_recipe.py), all-search single-shot.

    python scripts/train.py --config configs/deen_sysu.py --workdir runs/deen_sysu \
        --config.data.root=/data/SYSU-MM01 --config.model.pretrained_path=weights/resnet50.npz
"""

from configs import _deen_recipe


def get_config():
  return _deen_recipe.get_deen_config('sysu_mm01', 'sysu_single')
