"""The official PyTorch code's training choices, shared by the `official_*` configs.

Not a runnable config itself (no get_config): it edits a config in place. The code's known bugs
are NOT switched on here (each `model.bug_*` stays False); switch them on explicitly to reproduce
the released code bit for bit.
"""


def apply_official_recipe(config, base_lr: float, num_epochs: int, warmup_epochs: int):
  """SGD + cosine/warmup, soft-margin triplet, flare-head KL (0.8), MC loss with the T-N term."""
  config.data.flare_rule = 'official'          # top 2% of the own range, >= 9.5%, RGB and NI jointly
  config.model.flare_head_bias = False         # the code's label heads are bias-free
  config.data.shared_augmentation = False      # the code draws flip/crop per modality
  config.optim.optimizer = 'sgd'
  config.optim.base_lr = base_lr
  config.optim.schedule = 'cosine'
  config.optim.warmup_epochs = warmup_epochs
  config.optim.weight_decay = 1e-4
  config.optim.momentum = 0.9
  config.optim.bias_lr_factor = 2.0
  config.optim.decay_all_params = True         # the code decays biases and norm parameters too
  config.train.num_epochs = num_epochs
  config.loss.triplet_soft_margin = True
  config.loss.flare_loss = 'official_kl'
  config.loss.flare_weight = 0.8
  config.loss.ic_variant = 'official'
  config.train.eval_every_epochs = 1
  return config
