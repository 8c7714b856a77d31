r"""FSC-Net on LLCM with the official recipe (configs/_deen_recipe.py), infrared -> visible, 10 trials.

    python scripts/train.py --config configs/fscnet_llcm.py --workdir runs/fscnet_llcm \
        --config.data.root=/data/LLCM --config.model.pretrained_path=weights/resnet50.npz
"""

from configs import _deen_recipe


def get_config():
  return _deen_recipe.get_fsc_config('llcm', 'llcm')
