r"""FACENet on RGBNT100 with the paper's recipe (ResNet50, Adam, 120 epochs), camera protocol.

    python scripts/train.py --config configs/rgbnt100.py --workdir runs/rgbnt100 \
        --config.data.root=/data/datasets --config.model.pretrained_path=weights/resnet50.npz

`data.root` is the folder that contains `RGBNT100/rgbir/`. Input 128x256 (H x W) as the official
config. No published FACENet numbers exist for this dataset in the paper we follow.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'rgbnt100'
  config.data.image_size = (128, 256)
  config.data.num_val_ids = 5         # of the 50 training ids
  config.train.eval_every_epochs = 10
  return config
