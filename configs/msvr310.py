r"""FACENet on MSVR310 with the paper's recipe (ResNet50, Adam, 120 epochs), scene protocol.

    python scripts/train.py --config configs/msvr310.py --workdir runs/msvr310 \
        --config.data.root=/data/datasets --config.model.pretrained_path=weights/resnet50.npz

`data.root` is the folder that contains `MSVR310/`. Gallery items of the same id *and scene* as
the query are ignored (MSVR310's protocol). Input 128x256 (H x W) as the official config.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'msvr310'
  config.data.image_size = (128, 256)
  config.data.num_val_ids = 15        # of the 155 training ids
  config.eval.protocol = 'scene'
  config.train.eval_every_epochs = 10
  return config
