r"""TSME stage 2 on RegDB (one model per split; configs/_tsme_recipe.py).

    python scripts/train_dsgan.py --config configs/tsme_dsgan.py:regdb --workdir runs/dsgan_regdb1 \
        --config.data.root=/data/RegDB --config.data.trial=1
    python scripts/train.py --config configs/tsme_regdb.py --workdir runs/tsme_regdb/trial1 \
        --config.data.root=/data/RegDB --config.data.trial=1 \
        --config.model.generator_workdir=runs/dsgan_regdb1

README numbers: visible -> infrared R-1 88.02 / mAP 79.12, infrared -> visible 86.98 / 78.23.
"""

from configs import _tsme_recipe


def get_config():
  return _tsme_recipe.get_tsme_config('regdb', 'regdb')
