r"""AGW on the built-in synthetic cross-modality sets: the whole cross-modality path in minutes on a CPU.

    python scripts/make_synthetic.py --layout sysu --out data/synthetic_sysu
    python scripts/train.py --config configs/agw_synthetic.py --workdir runs/agw_synthetic \
        --config.data.root=data/synthetic_sysu
    # day/night variant:
    python scripts/make_synthetic.py --layout dn --out data/synthetic_dn
    python scripts/train.py --config configs/agw_synthetic.py:dn348 --workdir runs/agw_dn \
        --config.data.root=data/synthetic_dn

`python scripts/demo.py --task cross_modal` does the first pair and prints the protocol table.
The official AGW recipe (configs/_agw_recipe.py) shrunk to the small images: ResNet-18 at a
quarter width, 64x32 input, 30 epochs with the same warmup / step shape, from scratch.
"""

from configs import _agw_recipe

PROTOCOLS = {'sysu_mm01': 'sysu_single', 'dn348': 'day_night'}


def get_config(dataset: str = 'sysu_mm01'):
  if dataset not in PROTOCOLS:
    raise ValueError(f'configs/agw_synthetic.py: dataset {dataset!r} must be one of '
                     f'{tuple(PROTOCOLS)} (the layouts scripts/make_synthetic.py writes)')
  config = _agw_recipe.get_agw_config(dataset, PROTOCOLS[dataset])
  config.data.root = 'data/synthetic_sysu' if dataset == 'sysu_mm01' else 'data/synthetic_dn'
  config = _agw_recipe.shrink_to_synthetic(config)
  config.data.num_ids_per_batch = 8
  config.data.num_instances = 4
  return config
