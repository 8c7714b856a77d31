"""DEEN's official training recipe (reference §4.4; FSC-Net trains with the same script), shared by
the DEEN and FSC-Net dataset configs.

384x144 input; P x K = 6 x 4 per modality; zero pad 10, RandomGrayscale(0.5), random crop, flip,
ImageNet mean/std, random erasing 0.5; SGD Nesterov 0.9, weight decay 5e-4 on every parameter,
peak LR 0.1 for BNNeck + classifier and 0.01 for everything else; LR (e + 1) / 10 x peak for
e < 10, peak until 20, x0.1 until 80, x0.01 after; 151 epochs (e = 0..150); CE + batch-hard
triplet (margin 0.3, un-normalised) + 0.8 CPM (margin 0.2) x 2 + 0.01 orthogonality. The official
scripts test every epoch and keep the best test Rank-1; here every 5 epochs, and the kept
checkpoint is the latest (model selection never looks at the test split).

The official test adds the features of the horizontally mirrored image and ranks by the summed
similarities: `eval.flip_test=True` with `eval.distance='dot'` (set below). Known difference: our
random erasing fills with N(0, 1) noise over 2-40% of the image (Zhong et al.); the official fills
with the ImageNet mean values over 20-80% (SYSU-MM01) or 2-40%.
"""

from configs import _agw_recipe
from configs import default


def get_deen_config(dataset: str, protocol: str):
  return apply_deen(default.get_config('deen'), dataset, protocol)


def apply_deen(config, dataset: str, protocol: str):
  config = _agw_recipe.apply(config, dataset, protocol)
  config.data.image_size = (384, 144)
  config.data.num_ids_per_batch = 6
  config.data.num_instances = 4
  config.data.grayscale_prob = 0.5
  config.data.random_erasing_prob = 0.5
  config.optim.decay_epochs = (20, 80)
  config.train.num_epochs = 151
  config.train.eval_every_epochs = 5
  config.loss.triplet_kind = 'batch_hard'
  config.loss.triplet_margin = 0.3
  config.loss.cpm_weight = 0.8
  config.loss.cpm_margin = 0.2
  config.loss.ort_weight = 0.01
  config.eval.flip_test = True
  config.eval.distance = 'dot'
  return config


def get_fsc_config(dataset: str, protocol: str):
  """FSC-Net's recipe: DEEN's with the L2-normalised triplet and 150 epochs (e = 0..149)."""
  config = apply_deen(default.get_config('fsc_net'), dataset, protocol)
  config.loss.triplet_normalize = True
  config.train.num_epochs = 150
  return config
