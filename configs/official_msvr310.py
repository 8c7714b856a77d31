r"""The official code's recipe for msvr310: SGD 0.001, cosine with 100 warmup epochs, 1000 epochs.

    python scripts/train.py --config configs/official_msvr310.py --workdir runs/official_msvr310 \
        --config.data.root=/data/... --config.model.pretrained_path=weights/resnet50.npz

Soft-margin triplet, 0.8 x RGB/NI flare-head KL instead of the pseudo-label BCE, the MC loss with
its extra TI-NI term, the official flare pseudo-label and per-modality augmentation. The backbone
stays the paper's ResNet here; the code's ViT-B/16 is `--config.model.backbone=vit_b16`.
The code's bugs stay off (see configs/_official.py).
"""

from configs import _official
from configs import msvr310


def get_config():
  config = msvr310.get_config()
  return _official.apply_official_recipe(config, base_lr=0.001, num_epochs=1000, warmup_epochs=100)
