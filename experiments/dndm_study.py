r"""DNDM's modules on the synthetic day/night set: the paper's Table 3 rows, both directions.

    python -m experiments.run_dndm_study --out runs/dndm_study [--seeds 3] [--rows all]
    python -m experiments.run_dndm_study --out runs/dndm_study --report_only

Rows (`ROWS`, paper Table 3): the baseline (two-stem ResNet, GAP, CE + the cross-domain triplet,
no module), each module alone (NGS, DSE, CCA), NGS + DSE, and all three (DNDM); and, not in the
paper, all three with the official code's CCA (the predicted class's map instead of the label's). Every row is the
paper variant (`configs/dndm_synthetic.py`) with modules switched off, trained on one synthetic
DN-348-layout set (`input_pipeline.synthetic_cross_modal.generate_dn_like`, generated into OUT/data
on first use) with the day-to-night direction, then scored at its last step in both directions
(day queries against the night gallery and the reverse; no junk removal, standard CMC, as the
paper's protocol). Seeds change initialisation, sampler and augmentation, not the data. The
runner (`cross_modal_ablation.run_study`) resumes where it was stopped and writes
OUT/results.{md,json} with mean +- std over the finished seeds.

Settings (`Settings`): 90 ids, 4 images per id and domain, 64x32, ResNet-18 at a quarter width,
P x K = 8 x 4 per domain, 30 epochs (240 steps) of the DNDM recipe shrunk like
configs/dndm_synthetic.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

ROWS: dict[str, dict[str, object]] = {
    'baseline': {'ngs': False, 'dse': False, 'cca': False},
    'ngs': {'ngs': True, 'dse': False, 'cca': False},
    'dse': {'ngs': False, 'dse': True, 'cca': False},
    'cca': {'ngs': False, 'dse': False, 'cca': True},
    'ngs_dse': {'ngs': True, 'dse': True, 'cca': False},
    'dndm': {'ngs': True, 'dse': True, 'cca': True},
    # Not in the paper: all three with the official code's CCA (predicted class, no label).
    'dndm_code_cca': {'ngs': True, 'dse': True, 'cca': True, 'cca_rule': 'code'},
}
DIRECTIONS = {'d2n': 'day_to_night', 'n2d': 'night_to_day'}
METRICS = tuple(f'{d}_{m}' for d in DIRECTIONS for m in ('R1', 'R5', 'mAP'))
# The paper's Table 3 (DN-348, fractions): D->N R-1 / mAP, N->D R-1 / mAP.
PAPER_TABLE3 = {
    'baseline': (0.674, 0.456, 0.723, 0.439), 'ngs': (0.690, 0.467, 0.777, 0.455),
    'dse': (0.681, 0.461, 0.745, 0.455), 'cca': (0.684, 0.463, 0.765, 0.453),
    'ngs_dse': (0.699, 0.469, 0.800, 0.460), 'dndm': (0.707, 0.475, 0.803, 0.462),
}


@dataclasses.dataclass(frozen=True)
class Settings:
  num_ids: int = 90
  images_per_state: int = 4
  image_size: tuple[int, int] = (64, 32)
  width_multiplier: float = 0.25
  num_epochs: int = 30
  data_seed: int = 0


def run_config(row: str, seed: int, settings: Settings, data_root: str):
  """The config of one (row, seed): configs/dndm_synthetic.py with the row's modules."""
  from configs import dndm_synthetic  # pylint: disable=g-import-not-at-top
  from experiments import cross_modal_ablation  # pylint: disable=g-import-not-at-top
  config = cross_modal_ablation.study_schedule(dndm_synthetic.get_config('paper'), seed,
                                               settings, data_root)
  for field, value in ROWS[row].items():
    setattr(config.model, field, value)
  return config


def score(config, run_dir: str, final: dict[str, Any]) -> dict[str, float]:
  """Day-to-night from the training run's final evaluation; night-to-day from its checkpoint."""
  from facenet_jax.eval import report  # pylint: disable=g-import-not-at-top
  out = {f'd2n_{m}': float(final[f'test/{m}']) for m in ('R1', 'R5', 'mAP')}
  reverse = config.copy_and_resolve_references()
  reverse.data.direction = DIRECTIONS['n2d']
  metrics = report.evaluate_checkpoint(reverse, run_dir,
                                       out_dir=f'{run_dir}/eval_night_to_day')['metrics']
  out.update(n2d_R1=float(metrics['cmc'][0]), n2d_R5=float(metrics['cmc'][4]),
             n2d_mAP=float(metrics['mAP']))
  return out


def study(settings: Settings = Settings()):
  from experiments import cross_modal_ablation  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic_cross_modal  # pylint: disable=g-import-not-at-top
  return cross_modal_ablation.Study(
      rows=tuple(ROWS), metrics=METRICS,
      generate=lambda root: synthetic_cross_modal.generate_dn_like(
          root, num_ids=settings.num_ids, images_per_state=settings.images_per_state,
          image_size=tuple(settings.image_size), seed=settings.data_seed),
      make_config=lambda row, seed, root: run_config(row, seed, settings, root),
      score=score, settings=dataclasses.asdict(settings))


def paper_table() -> str:
  """The paper's Table 3 in percent, for the README beside the synthetic one."""
  lines = ['| row | D->N R-1 | D->N mAP | N->D R-1 | N->D mAP |', '|---|---|---|---|---|']
  for row, values in PAPER_TABLE3.items():
    lines.append(f'| {row} | ' + ' | '.join(f'{100 * v:.1f}' for v in values) + ' |')
  return '\n'.join(lines)
