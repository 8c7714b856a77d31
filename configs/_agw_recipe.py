"""The AGW family's official training recipe, shared by the AGW dataset configs (reference §1.3-1.5).

SGD with Nesterov momentum 0.9, weight decay 5e-4 on every parameter; peak LR 0.1 for the BNNeck
and classifier and 0.01 (x0.1) for the backbone; LR (e + 1) / 10 x peak for epochs e < 10, then
peak, x0.1 at epoch 20 and x0.01 at 50; 81 epochs (e = 0..80). P x K = 8 x 4 ids x images per
modality (64 images a step), 288x144 input, zero pad 10 + random crop + flip, ImageNet mean/std.
CE + WRT, GeM, non-local blocks. The official code evaluates every 2 epochs on the test split and
keeps the best test Rank-1 (model selection on the test set); here evaluation runs every 2 epochs
too, but model selection never looks at the test split: the kept checkpoint is the latest.
"""

from configs import default

# Datasets whose official evaluation scripts report the distinct-identity CMC.
OFFICIAL_CMC_DATASETS = ('sysu_mm01', 'llcm')


def apply(config, dataset: str, protocol: str):
  config.data.dataset = dataset
  config.data.image_size = (288, 144)
  config.data.num_ids_per_batch = 8
  config.data.num_instances = 4
  config.data.pad_pixels = 10
  config.data.hflip_prob = 0.5
  config.data.shared_augmentation = False   # single images: one draw per image
  config.data.mean = (0.485, 0.456, 0.406)
  config.data.std = (0.229, 0.224, 0.225)
  config.data.prescan = True
  config.optim.optimizer = 'sgd'
  config.optim.nesterov = True
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.decay_all_params = True
  config.optim.base_lr = 0.1
  config.optim.feature_lr_factor = 0.1
  config.optim.schedule = 'multistep'
  config.optim.warmup_epochs = 10
  config.optim.warmup_init_factor = 0.0
  config.optim.decay_epochs = (20, 50)
  config.optim.decay_factor = 0.1
  config.train.num_epochs = 81
  config.train.eval_every_epochs = 2
  config.eval.protocol = protocol
  config.eval.distance = 'cosine'           # official: ranked by -q.g of L2-normalised features
  # The published SYSU-MM01 and LLCM tables come from eval_sysu / eval_llcm, whose CMC counts
  # distinct gallery identities (higher R-5/10/20 than the standard CMC; same R-1, mAP, mINP).
  # --config.eval.cmc_mode=standard gives the standard one; every table header says which.
  config.eval.cmc_mode = 'distinct_ids' if dataset in OFFICIAL_CMC_DATASETS else 'standard'
  config.eval.max_rank = 20
  return config


def get_agw_config(dataset: str, protocol: str):
  return apply(default.get_config('agw'), dataset, protocol)


def shrink_to_synthetic(config):
  """The recipe shrunk to the built-in synthetic sets (configs/*_synthetic.py): ResNet-18 at a
  quarter width, 64x32 input, 30 epochs with the same warmup / step shape, from scratch."""
  config.data.image_size = (64, 32)
  config.data.pad_pixels = 4
  config.data.eval_batch_size = 64
  config.model.depth = 18
  config.model.width_multiplier = 0.25
  config.optim.warmup_epochs = 3
  config.optim.decay_epochs = (20, 26)
  config.train.num_epochs = 30
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 100
  config.train.eval_every_epochs = 10
  config.eval.cmc_mode = 'standard'   # our sets, our tables (the committed studies' CMC)
  return config
