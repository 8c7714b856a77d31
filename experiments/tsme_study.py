r"""TSME's two stages on the synthetic cross-modality set, against AGW on the same data and schedule.

    python -m experiments.run_tsme_study --out runs/tsme_study [--seeds 3] [--rows all]
    python -m experiments.run_tsme_study --out runs/tsme_study --report_only

Rows (`ROWS`): 'agw' (configs/agw_synthetic.py) and 'tsme' (stage 1, our reconstructed DSGAN
training, then stage 2 with those generators frozen). Per seed, stage 1 trains once into
OUT/stage1/seed<k> (resumable; `scripts/train_dsgan.py`'s code), then stage 2 trains like every
row. Both rows are scored with the SYSU-MM01 single-shot protocol (10 gallery trials) at their last
step; seeds change initialisation, sampler and augmentation (and stage 1), not the data. The
runner (`cross_modal_ablation.run_study`) resumes where it stopped and writes OUT/results.{md,json}.

Settings (`Settings`): 90 ids (60 train), 2 images per id and camera, 64x32, ResNet-18 at a
quarter width for every network (the four stage-2 streams, AGW's backbone and the generators'
encoders), stage 1 `gan_steps` steps of 4 + 4 images, stage 2 and AGW `num_epochs` epochs of
their recipes shrunk like configs/agw_synthetic.py.
"""

from __future__ import annotations

import dataclasses
import pathlib

from experiments import cross_modal_ablation

ROWS = ('agw', 'tsme')
METRICS = cross_modal_ablation.METRICS


@dataclasses.dataclass(frozen=True)
class Settings(cross_modal_ablation.Settings):
  gan_steps: int = 600


def stage1_dir(data_root: str, seed: int) -> str:
  return str(pathlib.Path(data_root).parent / 'stage1' / f'seed{seed}')


def stage1_config(seed: int, settings: Settings, data_root: str):
  from configs import tsme_dsgan  # pylint: disable=g-import-not-at-top
  config = tsme_dsgan.get_config('synthetic')
  config.data.root = data_root
  config.data.image_size = tuple(settings.image_size)
  config.gan.width_multiplier, config.gan.depth = settings.width_multiplier, 18
  config.gan.num_steps = settings.gan_steps
  config.gan.seed = seed
  return config


def run_config(row: str, seed: int, settings: Settings, data_root: str):
  """AGW or TSME stage 2, shrunk to the synthetic set with the same schedule."""
  from configs import _tsme_recipe  # pylint: disable=g-import-not-at-top
  from configs import agw_synthetic  # pylint: disable=g-import-not-at-top
  if row == 'agw':
    config = agw_synthetic.get_config()
  else:
    config = _tsme_recipe.get_tsme_config('sysu_mm01', 'sysu_single')
    config.model.depth = 18
    config.model.generator_workdir = stage1_dir(data_root, seed)
    config.model.generator_depth = 18
    config.model.generator_width_multiplier = settings.width_multiplier
    config.data.pad_pixels = 0
  return cross_modal_ablation.study_schedule(config, seed, settings, data_root)


def study(settings: Settings = Settings()) -> cross_modal_ablation.Study:
  from facenet_jax import dsgan_training  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic_cross_modal  # pylint: disable=g-import-not-at-top

  def prepare(row: str, seed: int, data_root: str) -> None:
    if row == 'tsme':
      dsgan_training.train_dsgan(stage1_config(seed, settings, data_root),
                                 stage1_dir(data_root, seed))

  return cross_modal_ablation.Study(
      rows=ROWS, metrics=METRICS,
      generate=lambda root: synthetic_cross_modal.generate_sysu_like(
          root, num_ids=settings.num_ids, images_per_camera=settings.images_per_camera,
          image_size=tuple(settings.image_size), seed=settings.data_seed),
      make_config=lambda row, seed, root: run_config(row, seed, settings, root),
      score=lambda config, run_dir, final: {m: final[f'test/{m}'] for m in METRICS},
      settings=dataclasses.asdict(settings), prepare=prepare)
