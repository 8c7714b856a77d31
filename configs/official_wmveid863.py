r"""The official code's recipe for wmveid863: SGD 0.003, cosine with 5 warmup epochs, 120 epochs.

    python scripts/train.py --config configs/official_wmveid863.py --workdir runs/official_wmveid863 \
        --config.data.root=/data/... --config.model.pretrained_path=weights/jx_vit_base_p16_224-80ecf9dd.pth

Soft-margin triplet, 0.8 x RGB/NI flare-head KL instead of the pseudo-label BCE, the MC loss with
its extra TI-NI term, the official flare pseudo-label and per-modality augmentation. The model is
the code's: three ViT-B/16 streams (ImageNet `jx_vit_base_p16_224`, timm .pth or the original
JAX .npz), token cross-attention MFMP with its windowed head split, flare heads reading the
cross-attended tokens; `--config configs/official_wmveid863.py:facenet` gives the paper's ResNet with this
recipe.
The code's bugs stay off (see configs/_official.py); the mask threshold learns
(`model.bug_dead_threshold=True` freezes it at 0 as the code does).
"""

from configs import _official
from configs import default
from configs import wmveid863


def get_config(model: str = 'facenet_vit'):
  config = wmveid863.get_config()
  config.model = default.model_config(model)     # the code's ViT model (input size from wmveid863.py)
  config.model.flare_head_input = 'mask_logits'  # label heads read [CLS; Z_hat] as in the code
  return _official.apply_official_recipe(config, base_lr=0.003, num_epochs=120, warmup_epochs=5)
