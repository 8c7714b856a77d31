r"""FSC-Net on SYSU-MM01 with the official recipe (configs/_deen_recipe.py), all-search single-shot.

    python scripts/train.py --config configs/fscnet_sysu.py --workdir runs/fscnet_sysu \
        --config.data.root=/data/SYSU-MM01 --config.model.pretrained_path=weights/resnet50.npz

Ablations: `--config.model.fsa=False` (or gca / spt); all three off is DEEN with FSC-Net's
normalised triplet. FSC-Net has no published numbers.
"""

from configs import _deen_recipe


def get_config():
  return _deen_recipe.get_fsc_config('sysu_mm01', 'sysu_single')
