r"""FACENet on the built-in synthetic flare dataset: small enough to train on 2 CPU cores in minutes.

    python scripts/make_synthetic.py --out data/synthetic
    python scripts/train.py --config configs/synthetic.py --workdir runs/synthetic \
        --config.data.root=data/synthetic

`make demo` runs exactly this (generating the data when missing) and then evaluates the best
checkpoint. A ResNet-18 stream at 64x32 pixels replaces ResNet50 at 256x128; everything else is the
paper's model (MFMP with FMI, FCE, IC, flare BCE), trained from scratch. The argument picks another
ResNet model, e.g. `--config configs/synthetic.py:single_stream` (one RGB stream; add
`--config.model.modality=ni` for another modality).
"""

from configs import default

# The models with ResNet streams, which `config.model.depth = 18` below shrinks.
RESNET_MODELS = ('facenet', 'single_stream')


def get_config(model: str = 'facenet'):
  if model not in RESNET_MODELS:
    raise ValueError(f'configs/synthetic.py trains ResNet-18 streams: model {model!r} must be one '
                     f'of {RESNET_MODELS}')
  config = default.get_config(model)
  config.data.dataset = 'synthetic'
  config.data.root = 'data/synthetic'
  config.data.image_size = (64, 32)
  config.data.pad_pixels = 4          # 10 px at 256x128 scaled to the small images
  config.data.num_ids_per_batch = 8
  config.data.num_instances = 4
  config.data.eval_batch_size = 64
  config.data.num_val_ids = 8
  config.model.depth = 18
  config.optim.base_lr = 1e-3
  config.optim.decay_epochs = (7, 9)
  config.train.num_epochs = 10
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 100
  config.train.eval_every_epochs = 5
  return config
