r"""FSC-Net on RegDB (configs/_deen_recipe.py): the 1024-d variant without MFA3 and layer4.

    python scripts/train.py --config configs/fscnet_regdb.py --workdir runs/fscnet_regdb/trial1 \
        --config.data.root=/data/RegDB --config.data.trial=1 \
        --config.model.pretrained_path=weights/resnet50.npz

One model per split 1..10; `python scripts/average_folds.py runs/fscnet_regdb/trial*` averages them.
"""

from configs import _deen_recipe


def get_config():
  config = _deen_recipe.get_fsc_config('regdb', 'regdb')
  config.model.dee_after_stage = 2
  return config
