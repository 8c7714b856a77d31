r"""TSME stage 1: the DSGAN generators (grayscale visible <-> infrared), our reconstruction of the
unpublished training (facenet_jax/dsgan_training.py says what is ours and why).

    python scripts/train_dsgan.py --config configs/tsme_dsgan.py:sysu_mm01 --workdir runs/dsgan_sysu \
        --config.data.root=/data/SYSU-MM01 --config.gan.pretrained_path=weights/resnet50.npz
    python scripts/train_dsgan.py --config configs/tsme_dsgan.py:regdb --workdir runs/dsgan_regdb1 \
        --config.data.root=/data/RegDB --config.data.trial=1

The argument is the dataset ('sysu_mm01' | 'regdb' | 'llcm'); its training images (both modalities,
unpaired) are the GAN's two domains. `:synthetic` is the tiny setting of the synthetic study.
"""

import ml_collections

from configs import default

DATASETS = ('sysu_mm01', 'regdb', 'llcm', 'synthetic')


def get_config(dataset: str = 'sysu_mm01'):
  if dataset not in DATASETS:
    raise ValueError(f'configs/tsme_dsgan.py: dataset {dataset!r} must be one of {DATASETS}')
  config = ml_collections.ConfigDict()
  config.data = default.get_config('agw').data
  config.data.dataset = 'sysu_mm01' if dataset == 'synthetic' else dataset
  config.data.image_size = (288, 144)        # the stage-2 input (TSME train.py)
  config.data.prescan = False
  gan = config.gan = ml_collections.ConfigDict()
  gan.batch_size = 4                # images per domain per step (ours; CycleGAN uses 1)
  gan.num_steps = 20000             # ours
  gan.learning_rate = 2e-4          # Adam, betas (0.5, 0.999); linear decay over the second half
  gan.lambda_cycle = 10.0           # cycle-consistency L1 weight (CycleGAN's)
  gan.lambda_identity = 5.0         # identity L1 weight (CycleGAN's 0.5 lambda_cycle)
  gan.width_multiplier = 1.0        # 1 = the official networks; < 1 only for tests / studies
  gan.depth = 50                    # generator encoder depth (official: ResNet-50)
  gan.pretrained_path = ''          # converted ImageNet ResNet-50 for both encoders ('' = random)
  gan.seed = 0                      # init and batch draws
  gan.log_every_steps = 100
  gan.checkpoint_every_steps = 1000
  gan.keep_checkpoints = 2
  if dataset == 'synthetic':
    config.data.root = 'data/synthetic_sysu'
    config.data.image_size = (64, 32)
    gan.width_multiplier, gan.depth = 0.25, 18
    gan.num_steps, gan.log_every_steps, gan.checkpoint_every_steps = 600, 50, 200
  return config
