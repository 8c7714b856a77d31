r"""DEEN on RegDB (configs/_deen_recipe.py): DEE after MFA2, no MFA3 and no layer4 (1024-d).

    python scripts/train.py --config configs/deen_regdb.py --workdir runs/deen_regdb/trial1 \
        --config.data.root=/data/RegDB --config.data.trial=1 \
        --config.model.pretrained_path=weights/resnet50.npz

One model per split 1..10, as configs/agw_regdb.py.
"""

from configs import _deen_recipe


def get_config():
  config = _deen_recipe.get_deen_config('regdb', 'regdb')
  config.model.dee_after_stage = 2
  return config
