r"""DEEN on LLCM with the official recipe (configs/_deen_recipe.py), infrared -> visible, 10 trials.

    python scripts/train.py --config configs/deen_llcm.py --workdir runs/deen_llcm \
        --config.data.root=/data/LLCM --config.model.pretrained_path=weights/resnet50.npz

Published (DEEN README, LLCM; two unlabelled column groups, R-1 / R-10 / R-20 / mAP):
55.52 / 83.88 / 89.98 / 62.07 and 69.21 / 90.95 / 95.07 / 55.52. The official LLCM scripts use the
distinct-identity CMC, reported here by default (`--config.eval.cmc_mode=standard` for the standard
one).
"""

from configs import _deen_recipe


def get_config():
  return _deen_recipe.get_deen_config('llcm', 'llcm')
