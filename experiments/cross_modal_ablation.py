r"""FSC-Net's blocks on the synthetic cross-modality set: DEEN vs FSC-Net vs each block off.

    python -m experiments.run_cross_modal_ablation --out runs/fsc_ablation [--seeds 3] [--rows all]
    python -m experiments.run_cross_modal_ablation --out runs/fsc_ablation --report_only

Rows (`ROWS`): DEEN with its own loss; FSC-Net; FSC-Net without FSA, without GCA, without SPT; and
FSC-Net with all three off, which is DEEN with FSC-Net's L2-normalised triplet (it separates the
blocks from that loss change). Every run trains the same schedule on one synthetic SYSU-MM01-layout
set (`input_pipeline.synthetic_cross_modal`, generated into OUT/data on first use) and is scored
with the SYSU-MM01 single-shot protocol (10 gallery trials) at its last step. Seeds change
initialisation, sampler and augmentation, not the data. Each finished run writes
OUT/runs/<row>/seed<k>/result.json and is skipped afterwards, so the study resumes where it was
stopped; the report (OUT/results.md, .json) gives mean +- std over the finished seeds.

Settings (`Settings`): 90 ids (60 train), 2 images per id and camera, 64x32, ResNet-18 at a
quarter width, P x K = 8 x 4 per modality, 20 epochs of the DEEN recipe shrunk like
configs/agw_synthetic.py, no test-time flip (the same embedding for every row).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
from typing import Any, Callable, Sequence

ROWS: dict[str, dict[str, Any]] = {
    'deen': {'model': 'deen'},
    'fsc_net': {'model': 'fsc_net'},
    'fsc_no_fsa': {'model': 'fsc_net', 'fsa': False},
    'fsc_no_gca': {'model': 'fsc_net', 'gca': False},
    'fsc_no_spt': {'model': 'fsc_net', 'spt': False},
    'fsc_all_off': {'model': 'fsc_net', 'fsa': False, 'gca': False, 'spt': False},
}
METRICS = ('mAP', 'mINP', 'R1', 'R5', 'R10')


@dataclasses.dataclass(frozen=True)
class Settings:
  num_ids: int = 90
  images_per_camera: int = 2
  image_size: tuple[int, int] = (64, 32)
  width_multiplier: float = 0.25
  num_epochs: int = 20
  data_seed: int = 0


def run_config(row: str, seed: int, settings: Settings, data_root: str):
  """The config of one (row, seed): the DEEN / FSC-Net recipe shrunk to the synthetic set."""
  from configs import _deen_recipe  # pylint: disable=g-import-not-at-top
  spec = dict(ROWS[row])
  model = spec.pop('model')
  get = _deen_recipe.get_fsc_config if model == 'fsc_net' else _deen_recipe.get_deen_config
  config = study_schedule(get('sysu_mm01', 'sysu_single'), seed, settings, data_root)
  config.data.pad_pixels = 4
  config.data.num_ids_per_batch, config.data.num_instances = 8, 4
  config.model.depth = 18
  for field, value in spec.items():
    setattr(config.model, field, value)
  config.eval.flip_test = False
  config.eval.distance = 'cosine'
  return config


def study_schedule(config, seed: int, settings, data_root: str):
  """What every synthetic study run shares: the data, the image size, the width, the seeds and a
  schedule of `settings.num_epochs` = n (warmup 2, LR steps at 0.7 n and 0.9 n), scored
  once at the last step. `settings` has `image_size`, `width_multiplier`, `num_epochs`."""
  config.data.root = data_root
  config.data.image_size = tuple(settings.image_size)
  config.data.eval_batch_size = 64
  config.data.seed = seed
  config.model.width_multiplier = settings.width_multiplier
  config.optim.warmup_epochs = min(config.optim.warmup_epochs, 2)
  n = settings.num_epochs
  config.optim.decay_epochs = (round(0.7 * n), round(0.9 * n))
  config.train.num_epochs = settings.num_epochs
  config.train.seed = 1000 + seed
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 100
  config.train.eval_every_epochs = settings.num_epochs
  # The committed study tables count the standard CMC (the SYSU-MM01 recipe's default is the
  # official distinct-identity one; mAP, mINP and R-1 are the same either way).
  config.eval.cmc_mode = 'standard'
  return config


def summarize(results: Sequence[dict[str, Any]], rows: Sequence[str] = tuple(ROWS),
              metrics: Sequence[str] = METRICS) -> dict[str, dict[str, Any]]:
  """{row: {'n', metric: (mean, std)}} in percent, over the finished seeds of each row."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  for row in rows:
    runs = [r for r in results if r['row'] == row]
    if runs:
      out[row] = {'n': len(runs), **{m: (100 * float(np.mean([r['metrics'][m] for r in runs])),
                                         100 * float(np.std([r['metrics'][m] for r in runs])))
                                     for m in metrics}}
  return out


def format_table(summary: dict[str, dict[str, Any]], metrics: Sequence[str] = METRICS) -> str:
  lines = ['| row | n | ' + ' | '.join(metrics) + ' |', '|---|---|' + '---|' * len(metrics)]
  for row, s in summary.items():
    lines.append(f'| {row} | {s["n"]} | ' +
                 ' | '.join(f'{s[m][0]:.2f} ± {s[m][1]:.2f}' for m in metrics) + ' |')
  return '\n'.join(lines)


@dataclasses.dataclass(frozen=True)
class Study:
  """What a seed-major synthetic study needs besides its runner (`run_study`).

  rows: row names in report order. metrics: the result keys (fractions) reported per row.
  generate(data_root): writes the synthetic set. make_config(row, seed, data_root): the config of
  one run. score(config, run_dir, final): the run's metrics from its final training summary
  (`train.train_and_evaluate`'s return), e.g. plus an evaluation in another direction.
  """
  rows: Sequence[str]
  metrics: Sequence[str]
  generate: Callable[[str], Any]
  make_config: Callable[[str, int, str], Any]
  score: Callable[[Any, str, dict[str, Any]], dict[str, float]]
  settings: dict[str, Any]
  # (row, seed, data_root) -> None, run before the config is made (e.g. TSME's stage 1).
  prepare: Callable[[str, int, str], Any] | None = None


def run_study(out_dir: str, study: Study, rows: Sequence[str], seeds: Sequence[int],
              report_only: bool = False, log=print) -> list[dict[str, Any]]:
  """Trains every (seed, row) not finished yet, seed-major; writes OUT/results.{md,json}.

  Each finished run writes OUT/runs/<row>/seed<k>/result.json and is skipped afterwards, so a
  stopped study resumes where it was (a killed run resumes from its checkpoint).
  """
  from facenet_jax import train  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  data_root = out / 'data'
  if not report_only and not data_root.is_dir():
    log(f'Generating the synthetic set in {data_root}')
    partial = out / 'data.partial'      # renamed when complete: a killed generation is redone
    shutil.rmtree(partial, ignore_errors=True)
    study.generate(str(partial))
    partial.rename(data_root)
  results = []
  for seed in seeds:                      # seed-major: a stopped study has whole seeds
    for row in rows:
      run_dir = out / 'runs' / row / f'seed{seed}'
      result_file = run_dir / 'result.json'
      if result_file.exists():
        results.append(json.loads(result_file.read_text()))
        continue
      if report_only:
        continue
      log(f'{row} seed {seed}: training in {run_dir}')
      start = time.time()
      if study.prepare is not None:
        study.prepare(row, seed, str(data_root))
      config = study.make_config(row, seed, str(data_root))
      final = train.train_and_evaluate(config, str(run_dir))
      result = {'row': row, 'seed': seed, 'minutes': (time.time() - start) / 60,
                'settings': dict(study.settings),
                'metrics': study.score(config, str(run_dir), final)}
      result_file.write_text(json.dumps(result, indent=1) + '\n')
      results.append(result)
  summary = summarize(results, study.rows, study.metrics)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'results.json').write_text(json.dumps({'summary': summary, 'runs': results}, indent=1))
  (out / 'results.md').write_text(format_table(summary, study.metrics) + '\n')
  return results


def fsc_study(settings: Settings = Settings()) -> Study:
  """The FSC-Net ablation of the module docstring."""
  from input_pipeline import synthetic_cross_modal  # pylint: disable=g-import-not-at-top
  return Study(
      rows=tuple(ROWS), metrics=METRICS,
      generate=lambda root: synthetic_cross_modal.generate_sysu_like(
          root, num_ids=settings.num_ids, images_per_camera=settings.images_per_camera,
          image_size=tuple(settings.image_size), seed=settings.data_seed),
      make_config=lambda row, seed, root: run_config(row, seed, settings, root),
      score=lambda config, run_dir, final: {m: final[f'test/{m}'] for m in METRICS},
      settings=dataclasses.asdict(settings))


def run(out_dir: str, rows: Sequence[str], seeds: Sequence[int], settings: Settings,
        report_only: bool = False, log=print) -> list[dict[str, Any]]:
  return run_study(out_dir, fsc_study(settings), rows, seeds, report_only, log)
