r"""TSME stage 2 on SYSU-MM01 (configs/_tsme_recipe.py), after stage 1 (configs/tsme_dsgan.py).

    python scripts/train_dsgan.py --config configs/tsme_dsgan.py:sysu_mm01 --workdir runs/dsgan_sysu \
        --config.data.root=/data/SYSU-MM01 --config.gan.pretrained_path=weights/resnet50.npz
    python scripts/train.py --config configs/tsme_sysu.py --workdir runs/tsme_sysu \
        --config.data.root=/data/SYSU-MM01 --config.model.generator_workdir=runs/dsgan_sysu \
        --config.model.pretrained_path=weights/resnet50.npz

`:sysu_multi` selects the multi-shot protocol; `--config.data.search_mode=indoor` indoor search.
README numbers (all-search single-shot): R-1 62.65 / mAP 61.18.
"""

from configs import _tsme_recipe


def get_config(protocol: str = 'sysu_single'):
  return _tsme_recipe.get_tsme_config('sysu_mm01', protocol)
