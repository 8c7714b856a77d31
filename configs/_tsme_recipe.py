"""TSME stage 2's official training recipe (reference §3.4), shared by the TSME dataset configs.

288x144 input; 4 ids x 6 images per modality, drawn without replacement; random flip only (no
padding, no erasing); ImageNet mean/std; SGD Nesterov 0.9, weight decay 5e-4 on every parameter,
LR 0.1 (the README's command) for the heads and 0.01 for the four ResNets; x0.1 at epochs 20, 40
and 60; 301 epochs (e = 0..300). CE + 0.5 HC per head. The official script tests every epoch and
keeps the best test Rank-1; here every 10 epochs, and the kept checkpoint is the latest (model
selection never looks at the test split). The generators come from stage 1
(`config.model.generator_workdir`, configs/tsme_dsgan.py).
"""

from configs import _agw_recipe
from configs import default


def get_tsme_config(dataset: str, protocol: str):
  config = _agw_recipe.apply(default.get_config('tsme'), dataset, protocol)
  config.data.image_size = (288, 144)
  config.data.num_ids_per_batch = 4
  config.data.num_instances = 6
  config.data.sampler_replacement = False
  config.data.pad_pixels = 0
  config.data.random_erasing_prob = 0.0
  config.optim.base_lr = 0.1
  config.optim.feature_lr_factor = 0.1
  config.optim.warmup_epochs = 0
  config.optim.decay_epochs = (20, 40, 60)
  config.train.num_epochs = 301
  config.train.eval_every_epochs = 10
  config.eval.flip_test = False     # the official test transform flips at random (not reproduced)
  return config
