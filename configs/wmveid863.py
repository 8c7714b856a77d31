r"""FACENet on WMVeID863 with the paper's recipe (ResNet50, Adam 3.5e-4, x0.1 at 40/70, 120 epochs).

    python scripts/train.py --config configs/wmveid863.py --workdir runs/wmveid863 \
        --config.data.root=/data/WMVeID863 --config.model.pretrained_path=weights/resnet50.npz

Paper Table 2 (full FACENet, ImageNet-pretrained ResNet50): mAP 62.1, R-1 67.3, R-5 76.7, R-10 80.1.
Input 256x128 (H x W) as the official WMVeID863 config; the paper's text says 128x256.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'wmveid863'
  config.data.image_size = (256, 128)
  config.data.num_val_ids = 50        # validation ids carved from the 575 training ids
  config.train.eval_every_epochs = 10
  return config
