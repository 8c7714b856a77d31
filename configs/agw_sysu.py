r"""AGW on SYSU-MM01 with the official recipe (configs/_agw_recipe.py), all-search single-shot.

    python scripts/train.py --config configs/agw_sysu.py --workdir runs/agw_sysu \
        --config.data.root=/data/SYSU-MM01 --config.model.pretrained_path=weights/resnet50.npz

Indoor search: `--config.data.search_mode=indoor`; multi-shot: `--config.eval.protocol=sysu_multi`.
Published (AGW README, all-search single-shot, one run): R-1 47.50, mAP 47.65, mINP 35.30, with the
official one-channel non-local blocks (`--config.model.bug_nonlocal_one_channel=True`) and the
distinct-identity CMC (the default here; `--config.eval.cmc_mode=standard` for the standard one).
"""

from configs import _agw_recipe


def get_config():
  return _agw_recipe.get_agw_config('sysu_mm01', 'sysu_single')
