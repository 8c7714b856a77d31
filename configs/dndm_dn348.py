r"""DNDM on DN-348, the paper's equations (the default of every switch; configs/_dndm_recipe.py).

    python scripts/train.py --config configs/dndm_dn348.py --workdir runs/dndm_dn348 \
        --config.data.root=/path/to/DN348 --config.model.pretrained_path=/path/to/resnet50.pth
    # the other direction (same training, night queries):
    python scripts/evaluate.py --workdir runs/dndm_dn348 --config.data.direction=night_to_day

Argument `:dnwild` selects DNWild; `:dn348,night_to_day` the night-to-day direction for the
periodic evaluation. Paper Table 2 (DN-348): day->night R-1 70.7 / mAP 47.5, night->day 80.3 / 46.2.
"""

from configs import _dndm_recipe


def get_config(arg: str = 'dn348'):
  dataset, _, direction = arg.partition(',')
  return _dndm_recipe.get_paper_config(dataset, direction or 'day_to_night')
