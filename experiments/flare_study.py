"""The synthetic flare study: ablation rows x seeds on the built-in data, where the truth is known.

Behind `python -m experiments.run_flare_study`. For every (row, seed) it trains one configuration of
`configs/ablation.py` on one generated synthetic dataset, restores the final checkpoint and
measures

  * retrieval on the whole test split and separately on its flared and flare-free queries (a
    query is "flared" when the generator drew glare into its RGB/NI images; the gallery is always
    the whole gallery), and
  * flare-mask quality against the generator's own glare masks: IoU / precision / recall of the
    predicted RGB and NI masks over the flared query images.

Each finished run leaves `runs/<row>/seed<k>/result.json`; a later call skips it, so the study
resumes where it stopped (an unfinished run resumes from its own checkpoints). Rows whose
configuration is identical (Table 4's layer-4 row is Table 2's +MFMP+FCE row) are trained once.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable, Iterable, Sequence

import ml_collections
import numpy as np

from input_pipeline import synthetic as synthetic_data
from input_pipeline.records import MODALITIES

# Named row sets; any ablation row name of `configs/ablation.py` can be given directly as well.
ROW_SETS = {
    'table2': ('table2_baseline', 'table2_mfmp', 'table2_mfmp_fce', 'table2_mfmp_nofmi_fce',
               'table2_full'),
    'table4': ('table4_layer1', 'table4_layer2', 'table4_layer3', 'table4_layer4'),
}

ROW_LABELS = {
    'table2_baseline': 'Baseline (3 streams)',
    'table2_mfmp': '+ MFMP',
    'table2_mfmp_fce': '+ MFMP + FCE',
    'table2_mfmp_nofmi_fce': '+ MFMP w/o FMI + FCE',
    'table2_full': '+ MFMP + FCE + IC (FACENet)',
    'table4_layer1': 'MFMP + FCE after layer 1',
    'table4_layer2': 'MFMP + FCE after layer 2',
    'table4_layer3': 'MFMP + FCE after layer 3',
    'table4_layer4': 'MFMP + FCE after layer 4',
    'table5_3m': 'FACENet w/o IC + 3M',
    'table5_hc': 'FACENet w/o IC + HC',
    'table5_cdc': 'FACENet w/o IC + CdC',
}

# Paper WMVeID863 mAP of each row, printed beside ours for orientation (not comparable numbers:
# a different dataset, backbone and schedule).
PAPER_MAP = {
    'table2_baseline': 53.7, 'table2_mfmp': 53.9, 'table2_mfmp_fce': 60.5,
    'table2_mfmp_nofmi_fce': 57.5, 'table2_full': 62.1, 'table4_layer1': 50.6,
    'table4_layer2': 53.8, 'table4_layer3': 55.5, 'table4_layer4': 60.5,
}

# A predicted mask cell counts as flared when the mean of its C channel values is >= this.
MASK_CELL_THRESHOLD = 0.5
# A ground-truth cell (a block of image pixels) counts as flared when at least this fraction of
# its pixels are glare.
TRUTH_CELL_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class StudySettings:
  """Everything that defines the study apart from the rows and seeds (stored in settings.json)."""
  num_ids: int = 100
  triplets_per_id: int = 8
  flare_fraction: float = 0.5
  data_seed: int = 0
  image_size: tuple[int, int] = (64, 32)
  depth: int = 18
  num_ids_per_batch: int = 8
  num_instances: int = 4
  num_epochs: int = 8
  base_lr: float = 1e-3
  max_steps: int = 0                 # > 0 caps the steps (tests)

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['image_size'] = list(self.image_size)
    return d


def expand_rows(spec: str | Sequence[str]) -> list[str]:
  """'table2,table4' or row names -> the ordered, de-duplicated list of ablation row names."""
  from configs import ablation  # pylint: disable=g-import-not-at-top
  names = spec.split(',') if isinstance(spec, str) else list(spec)
  rows: list[str] = []
  for name in (n.strip() for n in names):
    if not name:
      continue
    expanded = ROW_SETS.get(name, (name,))
    for row in expanded:
      if row not in ablation.ROWS:
        raise ValueError(f'--rows: unknown row or row set {name!r}; row sets: {sorted(ROW_SETS)}, '
                         f'rows: {sorted(ablation.ROWS)}')
      if row not in rows:
        rows.append(row)
  if not rows:
    raise ValueError('--rows: no rows given')
  return rows


def run_config(row: str, seed: int, settings: StudySettings,
               data_root: str) -> ml_collections.ConfigDict:
  """The training config of one (row, seed): the synthetic base, the row's switches, the settings."""
  from configs import ablation  # pylint: disable=g-import-not-at-top
  config = ablation.get_config(f'synthetic,{row}')
  config.data.root = data_root
  config.data.image_size = tuple(settings.image_size)
  config.data.pad_pixels = max(1, settings.image_size[0] // 16)
  config.data.num_ids_per_batch = settings.num_ids_per_batch
  config.data.num_instances = settings.num_instances
  # The study reports the final model; no validation split, so every training id is used.
  config.data.num_val_ids = 0
  config.data.seed = seed
  config.train.seed = seed
  config.model.depth = settings.depth
  config.optim.base_lr = settings.base_lr
  config.optim.decay_epochs = (int(0.7 * settings.num_epochs), int(0.9 * settings.num_epochs))
  config.train.num_epochs = settings.num_epochs
  config.train.max_steps = settings.max_steps
  config.train.eval_every_epochs = 10 ** 6      # evaluate once, at the end
  config.train.checkpoint_every_steps = 50
  config.train.keep_checkpoints = 1
  return config


def _ablation_rows() -> dict[str, Any]:
  from configs import ablation  # pylint: disable=g-import-not-at-top
  return ablation.ROWS


def config_key(config: ml_collections.ConfigDict) -> str:
  """A canonical string of everything that affects training (two rows with it equal are one run)."""
  return json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True)


# ------------------------------------------------------------------------------------ measures
def downsample_truth(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """bool `[H, W]` pixel mask -> bool `[h, w]` cells: flared if >= TRUTH_CELL_FRACTION of its pixels.

  H and W must be multiples of h and w (the feature grid of a stride-s network on an image whose
  sides are multiples of s).
  """
  H, W = mask.shape
  h, w = grid
  if H % h or W % w:
    raise ValueError(f'glare mask {H}x{W} is not a multiple of the mask grid {h}x{w}')
  blocks = mask.reshape(h, H // h, w, W // w).astype(np.float64)
  return blocks.mean(axis=(1, 3)) >= TRUTH_CELL_FRACTION


def predicted_cells(mask: np.ndarray) -> np.ndarray:
  """float `[..., h, w, C]` MFMP mask -> bool `[..., h, w]`: mean over channels >= 0.5."""
  return np.asarray(mask, np.float64).mean(axis=-1) >= MASK_CELL_THRESHOLD


def mask_quality(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
  """Pooled IoU / precision / recall of bool `[N, h, w]` predictions against bool `[N, h, w]` truth.

  Counts are summed over all N images before dividing (micro average), so images with little
  glare weigh little. An undefined ratio (0/0) is NaN. `all_flared_iou` is the IoU a mask that
  marks every cell as flared would get: the floor any useful predictor must beat.
  """
  predicted = np.asarray(predicted, bool)
  truth = np.asarray(truth, bool)
  if predicted.shape != truth.shape:
    raise ValueError(f'predicted {predicted.shape} and true {truth.shape} masks differ in shape')
  tp = float(np.sum(predicted & truth))
  fp = float(np.sum(predicted & ~truth))
  fn = float(np.sum(~predicted & truth))
  ratio = lambda a, b: a / b if b > 0 else float('nan')
  return {'iou': ratio(tp, tp + fp + fn), 'precision': ratio(tp, tp + fp),
          'recall': ratio(tp, tp + fn), 'predicted_fraction': float(predicted.mean()),
          'true_fraction': float(truth.mean()), 'all_flared_iou': float(truth.mean())}


def flared_queries(query: Sequence[Any]) -> np.ndarray:
  """bool [Q]: the generator drew glare into this query's RGB/NI images."""
  return np.asarray([synthetic_data.glare_mask_path(r.rgb_path) is not None or
                     synthetic_data.glare_mask_path(r.ni_path) is not None for r in query], bool)


def subset_metrics(evaluator, q_feats: np.ndarray, g_feats: np.ndarray, query: Sequence[Any],
                   gallery: Sequence[Any], keep: np.ndarray) -> dict[str, float] | None:
  """mAP and CMC R-1/5/10 (percent) of the queries where `keep`, against the whole gallery."""
  from facenet_jax.eval import protocols  # pylint: disable=g-import-not-at-top
  keep = np.asarray(keep, bool)
  if not keep.any():
    return None
  sub = [r for r, k in zip(query, keep) if k]
  metrics = evaluator.score(q_feats[keep], g_feats, sub, list(gallery))
  summary = protocols.rank_summary(metrics)
  return {**{k: 100.0 * summary[k] for k in ('mAP', 'R1', 'R5', 'R10')},
          'num_queries': int(metrics['num_valid_queries'])}


@dataclasses.dataclass
class _RestoredRun:
  exp: Any            # experiment.EvalExperiment
  variables: Any      # {'params', 'batch_stats'} of the latest checkpoint
  step: int
  evaluator: Any      # eval.evaluator.Evaluator


def _restore_latest(config: ml_collections.ConfigDict, workdir: str) -> _RestoredRun:
  """The latest checkpoint's variables of a finished run, with its experiment and evaluator."""
  from facenet_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from facenet_jax import experiment  # pylint: disable=g-import-not-at-top
  from facenet_jax.eval import evaluator  # pylint: disable=g-import-not-at-top

  exp = experiment.build_eval_experiment(config)
  ckpt = checkpointing.Checkpointer(workdir, config.train.keep_checkpoints)
  variables, step, _ = ckpt.restore_variables(exp.variable_template)
  ckpt.close()
  return _RestoredRun(exp, variables, step,
                      evaluator.Evaluator(exp.model, exp.spec, exp.mesh, config))


def evaluate_run(config: ml_collections.ConfigDict, workdir: str,
                 diagnose: bool = False) -> dict[str, Any]:
  """Restore the latest checkpoint of `workdir` and measure retrieval and mask quality.

  With `diagnose`, also `_diagnosis` (under 'diagnosis') from the same restored state and
  embeddings.
  """
  run = _restore_latest(config, workdir)
  exp, ev = run.exp, run.evaluator
  embedded = ev.evaluate(run.variables, exp.query, exp.gallery, with_masks=True)
  q, g = embedded.query, embedded.gallery['embedding']
  flared = flared_queries(exp.query)
  subset = lambda keep: subset_metrics(ev, q['embedding'], g, exp.query, exp.gallery, keep)
  result: dict[str, Any] = {
      'step': run.step,
      'all': subset(np.ones(len(exp.query), bool)),
      'flare': subset(flared),
      'flare_free': subset(~flared),
      'masks': {},
  }
  for modality, path_of in (('rgb', lambda r: r.rgb_path), ('ni', lambda r: r.ni_path)):
    if modality not in q.get('masks', {}):
      continue
    pred = q['masks'][modality]                     # [Q, h, w, C]
    grid = pred.shape[1:3]
    has_glare = np.asarray([synthetic_data.glare_mask_path(path_of(r)) is not None
                            for r in exp.query], bool)
    if not has_glare.any():
      continue
    truth = np.stack([downsample_truth(synthetic_data.load_glare_mask(path_of(r)), grid)
                      for r, glare in zip(exp.query, has_glare) if glare])
    quality = mask_quality(predicted_cells(pred[has_glare]), truth)
    # On flare-free images FCE is gated off, but a mask that fires there shows poor localisation.
    quality['flare_free_predicted_fraction'] = (
        float(predicted_cells(pred[~has_glare]).mean()) if (~has_glare).any() else float('nan'))
    quality['grid'] = list(grid)
    result['masks'][modality] = quality
  if diagnose:
    result['diagnosis'] = _diagnosis(run, config, q['embedding'], g)
  return result


def diagnose_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`_diagnosis` of the latest checkpoint of a run evaluated before without it."""
  run = _restore_latest(config, workdir)
  q = run.evaluator.embed(run.variables, run.exp.query)['embedding']
  g = run.evaluator.embed(run.variables, run.exp.gallery)['embedding']
  return _diagnosis(run, config, q, g)


def _diagnosis(run: _RestoredRun, config: ml_collections.ConfigDict, q: np.ndarray,
               g: np.ndarray) -> dict[str, Any]:
  """Where a row's mAP comes from: each branch alone, and the model without FCE at test time.

  `q: [Q, 3D]`, `g: [G, 3D]` are the run's query and gallery embeddings. 'branch_mAP':
  {'rgb', 'ni', 'ti'}: mAP of that branch's third of the embedding (re-normalised) on all
  queries; 'no_test_fce' (FCE rows only): mAP on all / flared / flare-free queries when every
  sample's flare label is zeroed at test time, i.e. the same weights without the feature
  replacement. Together they tell a harm done by the test-time replacement from one done to the
  streams during training.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from facenet_jax.eval import evaluator  # pylint: disable=g-import-not-at-top
  from facenet_jax.linalg import l2_normalize  # pylint: disable=g-import-not-at-top

  exp, ev = run.exp, run.evaluator
  everyone = np.ones(len(exp.query), bool)
  result: dict[str, Any] = {'branch_mAP': {}}
  d = q.shape[1] // 3
  for i, branch in enumerate(MODALITIES):
    part = lambda x, i=i: np.asarray(l2_normalize(jnp.asarray(x[:, i * d:(i + 1) * d])))
    result['branch_mAP'][branch] = subset_metrics(ev, part(q), part(g), exp.query, exp.gallery,
                                                  everyone)['mAP']
  if config.model.fce:
    no_fce = evaluator.Evaluator(
        exp.model, exp.spec, exp.mesh, config,
        batch_transform=lambda b: {**b, 'flare': jnp.zeros_like(b['flare'])})
    q0 = no_fce.embed(run.variables, exp.query)['embedding']
    g0 = no_fce.embed(run.variables, exp.gallery)['embedding']
    flared = flared_queries(exp.query)
    result['no_test_fce'] = {
        name: _get({'m': subset_metrics(ev, q0, g0, exp.query, exp.gallery, keep)}, 'm', 'mAP')
        for name, keep in (('all', everyone), ('flare', flared), ('flare_free', ~flared))}
  return result


# ------------------------------------------------------------------------------------ the loop
def run_study(out_dir: str, rows: Sequence[str], seeds: Iterable[int], settings: StudySettings,
              log: Callable[[str], None] = print, report_only: bool = False,
              data_root: str | None = None, diagnose: bool = False) -> list[dict[str, Any]]:
  """Train + evaluate every (row, seed) not yet done in `out_dir`; return every run's result.

  (Long because resuming is spelled out: settings guard, reuse of identical configurations,
  skip / resume / train per run, in that order.)

  `report_only` trains nothing and returns the finished runs. `diagnose` adds `diagnose_run`'s
  measures to every finished run that lacks them. `data_root` uses an existing
  synthetic dataset instead of generating one in `out_dir/data`.
  """
  from facenet_jax import train  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  settings_file = out / 'settings.json'
  if settings_file.exists():
    stored = json.loads(settings_file.read_text())
    if stored != settings.to_json():
      raise ValueError(f'{settings_file} holds other study settings ({stored}); use another --out '
                       f'or the same settings ({settings.to_json()})')
  else:
    settings_file.write_text(json.dumps(settings.to_json(), indent=1) + '\n')

  data_root = data_root or str(out / 'data')
  if not (pathlib.Path(data_root) / 'train').is_dir():
    log(f'Generating the synthetic dataset in {data_root}')
    synthetic_data.generate_synthetic_dataset(
        data_root, num_ids=settings.num_ids, triplets_per_id=settings.triplets_per_id,
        image_size=tuple(settings.image_size), flare_fraction=settings.flare_fraction,
        seed=settings.data_seed)

  results = []
  # Finished runs of any row (also rows not asked for now) stand in for identical configurations.
  done_by_key: dict[str, dict[str, Any]] = {}
  for result_file in sorted(out.glob('runs/*/seed*/result.json')):
    done = json.loads(result_file.read_text())
    if 'same_run_as' not in done and done.get('row') in _ablation_rows():
      done_by_key.setdefault(
          config_key(run_config(done['row'], done['seed'], settings, data_root)), done)
  # Seed-major: a study stopped part-way has every row with the same number of seeds.
  for seed in seeds:
    for row in rows:
      run_dir = out / 'runs' / row / f'seed{seed}'
      result_file = run_dir / 'result.json'
      config = run_config(row, seed, settings, data_root)
      key = config_key(config)
      if result_file.exists():
        result = json.loads(result_file.read_text())
        log(f'{row} seed {seed}: done before, skipped')
      elif report_only:
        log(f'{row} seed {seed}: not run yet, left out of the report')
        continue
      elif key in done_by_key:
        result = {**done_by_key[key], 'row': row, 'same_run_as': done_by_key[key]['run_dir']}
        run_dir.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(result, indent=1) + '\n')
        log(f'{row} seed {seed}: same configuration as {result["same_run_as"]}, reused')
      else:
        log(f'{row} seed {seed}: training in {run_dir}')
        start = time.time()
        train.train_and_evaluate(config, str(run_dir))
        train_seconds = time.time() - start
        result = {'row': row, 'seed': seed, 'run_dir': str(run_dir),
                  'train_seconds': train_seconds,
                  **evaluate_run(config, str(run_dir), diagnose=diagnose)}
        result['seconds'] = time.time() - start
        result_file.write_text(json.dumps(result, indent=1) + '\n')
        log(f'{row} seed {seed}: mAP {result["all"]["mAP"]:.2f} (flare '
            f'{_get(result, "flare", "mAP"):.2f}, flare-free {_get(result, "flare_free", "mAP"):.2f})'
            f' in {result["seconds"] / 60:.1f} min')
      if diagnose and 'diagnosis' not in result:
        result['diagnosis'] = diagnose_run(config, result.get('run_dir', str(run_dir)))
        result_file.write_text(json.dumps(result, indent=1) + '\n')
        log(f'{row} seed {seed}: diagnosis {result["diagnosis"]}')
      done_by_key.setdefault(key, result)
      results.append(result)
  return results


def _get(result: dict[str, Any], *keys: str) -> float:
  value: Any = result
  for k in keys:
    if not isinstance(value, dict) or value.get(k) is None:
      return float('nan')
    value = value[k]
  return float(value)


# ------------------------------------------------------------------------------------ reporting
def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float, int]]]:
  """{row: {metric: (mean, std, n)}} over seeds; std is the sample std (ddof=1; 0 for one seed)."""
  fields = {
      'mAP': ('all', 'mAP'), 'R1': ('all', 'R1'), 'R5': ('all', 'R5'), 'R10': ('all', 'R10'),
      'flare_mAP': ('flare', 'mAP'), 'flare_R1': ('flare', 'R1'),
      'flare_free_mAP': ('flare_free', 'mAP'), 'flare_free_R1': ('flare_free', 'R1'),
  }
  for modality in ('rgb', 'ni'):
    for m in ('iou', 'precision', 'recall', 'all_flared_iou', 'flare_free_predicted_fraction'):
      fields[f'{modality}_{m}'] = ('masks', modality, m)
  for branch in MODALITIES:
    fields[f'branch_{branch}_mAP'] = ('diagnosis', 'branch_mAP', branch)
  for subset in ('all', 'flare', 'flare_free'):
    fields[f'no_test_fce_{subset}_mAP'] = ('diagnosis', 'no_test_fce', subset)
  table: dict[str, dict[str, tuple[float, float, int]]] = {}
  for row in dict.fromkeys(r['row'] for r in results):
    runs = [r for r in results if r['row'] == row]
    table[row] = {}
    for name, path in fields.items():
      values = np.asarray([_get(r, *path) for r in runs], np.float64)
      values = values[np.isfinite(values)]
      if values.size:
        std = float(values.std(ddof=1)) if values.size > 1 else 0.0
        table[row][name] = (float(values.mean()), std, int(values.size))
  return table


def _pm(cell: tuple[float, float, int] | None, scale: float = 1.0, digits: int = 1) -> str:
  if cell is None:
    return 'n/a'
  mean, std, _ = cell
  return f'{scale * mean:.{digits}f} ± {scale * std:.{digits}f}'


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """Lines of a Markdown table whose first column is the row name."""
  lines = ['| row | ' + ' | '.join(headers) + ' |', '|---' * (len(headers) + 1) + '|']
  return lines + ['| ' + ' | '.join(cells) + ' |' for cells in rows]


def markdown_report(results: Sequence[dict[str, Any]], settings: StudySettings,
                    command: str) -> str:
  """The Markdown tables (retrieval, then mask quality) of a finished or partial study."""
  table = aggregate(results)
  seeds = sorted({r['seed'] for r in results})
  lines = [f'Settings: {json.dumps(settings.to_json())}; seeds {seeds}; mean ± std over seeds.',
           f'Command: `{command}`', '']
  lines += _markdown_table(
      ['mAP', 'R-1', 'R-5', 'R-10', 'flared q. mAP', 'flared q. R-1', 'flare-free q. mAP',
       'flare-free q. R-1', 'paper mAP'],
      [[ROW_LABELS.get(row, row)] +
       [_pm(cells.get(k)) for k in ('mAP', 'R1', 'R5', 'R10', 'flare_mAP', 'flare_R1',
                                    'flare_free_mAP', 'flare_free_R1')] +
       [f'{PAPER_MAP[row]:.1f}' if row in PAPER_MAP else ''] for row, cells in table.items()])
  mask_rows = [(row, cells) for row, cells in table.items() if 'rgb_iou' in cells]
  if mask_rows:
    lines += ['', 'Flare-mask quality on the flared test queries against the generator\'s glare '
              'masks (cells of the mask grid; IoU / precision / recall in percent; "all-flared" '
              'is the IoU of a mask marking every cell; "fires on clean" is the fraction of cells '
              'marked on flare-free queries):', '']
    lines += _markdown_table(
        ['RGB IoU', 'RGB precision', 'RGB recall', 'NI IoU', 'NI precision', 'NI recall',
         'all-flared IoU', 'fires on clean (RGB)'],
        [[ROW_LABELS.get(row, row)] +
         [_pm(cells.get(f'{m}_{k}'), 100.0) for m in ('rgb', 'ni')
          for k in ('iou', 'precision', 'recall')] +
         [_pm(cells.get(k), 100.0) for k in ('rgb_all_flared_iou',
                                             'rgb_flare_free_predicted_fraction')]
         for row, cells in mask_rows])
  diag_rows = [(row, cells) for row, cells in table.items() if 'branch_rgb_mAP' in cells]
  if diag_rows:
    lines += ['', 'Diagnosis (mAP on all test queries unless named; n = seeds diagnosed): each '
              'branch\'s third of the embedding alone, and the FCE rows\' weights evaluated '
              'without the test-time feature replacement (flare labels zeroed):', '']
    lines += _markdown_table(
        ['n', 'RGB branch', 'NI branch', 'TI branch', 'no test-time FCE',
         'no test-time FCE, flared q.', 'no test-time FCE, flare-free q.'],
        [[ROW_LABELS.get(row, row), str(cells['branch_rgb_mAP'][2])] +
         [_pm(cells.get(f'branch_{b}_mAP')) for b in MODALITIES] +
         [_pm(cells.get(f'no_test_fce_{k}_mAP')) for k in ('all', 'flare', 'flare_free')]
         for row, cells in diag_rows])
  trained = [r for r in results if 'same_run_as' not in r and 'seconds' in r]
  if trained:
    total = sum(r['seconds'] for r in trained)
    lines += ['', f'{len(trained)} runs trained, {total / 60:.1f} min of run time in all '
              f'({total / 60 / len(trained):.1f} min per run).']
  return '\n'.join(lines) + '\n'


def plot_results(results: Sequence[dict[str, Any]], path: str) -> None:
  """Grouped bars: mAP on all, flared and flare-free queries per row, with std error bars."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  table = aggregate(results)
  rows = list(table)
  groups = (('mAP', 'all queries'), ('flare_mAP', 'flared queries'),
            ('flare_free_mAP', 'flare-free queries'))
  width = 0.8 / len(groups)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(rows) + 2), 4.2))
  x = np.arange(len(rows))
  for i, (key, label) in enumerate(groups):
    means = [table[r].get(key, (np.nan, 0, 0))[0] for r in rows]
    stds = [table[r].get(key, (np.nan, 0, 0))[1] for r in rows]
    ax.bar(x + (i - 1) * width, means, width, yerr=stds, capsize=3, label=label)
  ax.set_xticks(x)
  ax.set_xticklabels([ROW_LABELS.get(r, r).replace(' + ', '\n+ ') for r in rows], fontsize=7)
  ax.set_ylabel('mAP (%)')
  ax.set_title('Synthetic flare benchmark: mean ± std over seeds')
  ax.legend(fontsize=8)
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(out_dir: str, results: Sequence[dict[str, Any]], settings: StudySettings,
                 command: str) -> dict[str, str]:
  """results.md, results.json and results.png in `out_dir`."""
  out = pathlib.Path(out_dir)
  files = {'markdown': str(out / 'results.md'), 'json': str(out / 'results.json'),
           'plot': str(out / 'results.png')}
  pathlib.Path(files['markdown']).write_text(markdown_report(results, settings, command))
  pathlib.Path(files['json']).write_text(json.dumps(
      {'settings': settings.to_json(), 'command': command, 'runs': list(results),
       'aggregate': aggregate(results)}, indent=1) + '\n')
  plot_results(results, files['plot'])
  return files

