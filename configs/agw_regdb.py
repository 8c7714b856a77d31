r"""AGW on RegDB with the official recipe (configs/_agw_recipe.py), visible -> thermal, one split.

    for t in 1 2 3 4 5 6 7 8 9 10; do
      python scripts/train.py --config configs/agw_regdb.py --workdir runs/agw_regdb/trial$t \
          --config.data.root=/data/RegDB --config.data.trial=$t \
          --config.model.pretrained_path=weights/resnet50.npz
    done

One model per split (the RegDB protocol averages the 10 splits' metrics);
`--config.data.direction=thermal_to_visible` for the other direction. Published (AGW README,
visible -> thermal): R-1 70.05, mAP 66.37, mINP 50.19 (official one-channel non-local blocks).
The official RegDB batch is P x K = 8 x 4 as SYSU (`--num_pos 4`).
"""

from configs import _agw_recipe


def get_config():
  return _agw_recipe.get_agw_config('regdb', 'regdb')
