"""The tiny training config shared by the training tests: small enough to compile and run fast."""

from configs import synthetic as synthetic_config


def tiny_config(root: str):
  """The synthetic config shrunk to test size: ResNet-18 streams at 32x16, batches of 4 x 2."""
  config = synthetic_config.get_config()
  config.data.root = root
  config.data.image_size = (32, 16)
  config.data.pad_pixels = 2
  config.data.num_ids_per_batch = 4
  config.data.num_instances = 2
  config.data.eval_batch_size = 8
  config.data.num_val_ids = 2
  config.model.depth = 18
  config.optim.base_lr = 3.5e-4        # the paper's; 1e-3 oscillates on batches of 8
  config.train.num_epochs = 2
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_epochs = 100
  return config
