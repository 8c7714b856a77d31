"""The synthetic flare study: ablation rows x seeds on the built-in data, where the truth is known.

Behind `python -m experiments.run_flare_study`. For every (row, seed) it trains one configuration
(a row of `configs/ablation.py`, or a single-stream model `single_<modality>`) on one generated
synthetic dataset, restores the final checkpoint and measures

  * retrieval on the whole test split, on its glared and clean queries, and split by state:
    {glared, clean query} x {same-state, cross-state gallery match}, where a query's matches of the
    other state are junk for "same-state" and its matches of its own state for "cross-state" (a
    query is "glared" when the generator drew glare into its RGB or NI image);
  * each branch's third of the embedding alone (the missing-modality protocol: trained on all
    three, tested on one), on all and on clean queries;
  * flare-mask quality against the generator's glare masks on the glared gallery images (IoU /
    precision / recall of the predicted cells), beside two floors: marking every cell, and the best
    image-independent mask fitted on the training split's masks;
  * the flare classifier's accuracy against the true glare and against the pseudo-label;
  * for FCE rows, the same weights evaluated without the test-time replacement (flare bits zeroed).

Each finished run leaves `runs/<row>/seed<k>/result.json`; a later call skips it, so the study
resumes where it stopped (an unfinished run resumes from its own checkpoints). Rows whose
configuration is identical (Table 4's layer-4 row is Table 2's +MFMP+FCE row) are trained once.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
from typing import Any, Callable, Iterable, Sequence

import ml_collections
import numpy as np

from input_pipeline import flare_label
from input_pipeline import realism
from input_pipeline import records as records_lib
from input_pipeline import synthetic as synthetic_data
from input_pipeline.records import MODALITIES

SINGLE_ROWS = {f'single_{m}': m for m in MODALITIES}

# Named row sets; any ablation row name of `configs/ablation.py` can be given directly as well.
ROW_SETS = {
    'table2': ('table2_baseline', 'table2_mfmp', 'table2_mfmp_fce', 'table2_mfmp_nofmi_fce',
               'table2_full', 'table2_fce_all'),
    'table4': ('table4_layer1', 'table4_layer2', 'table4_layer3', 'table4_layer4'),
    'single': tuple(SINGLE_ROWS),
}

ROW_LABELS = {
    'table2_baseline': 'Baseline (3 streams)',
    'table2_mfmp': '+ MFMP',
    'table2_mfmp_fce': '+ MFMP + FCE',
    'table2_mfmp_nofmi_fce': '+ MFMP w/o FMI + FCE',
    'table2_full': '+ MFMP + FCE + IC (FACENet)',
    'table2_fce_all': '+ MFMP + FCE on every sample (control)',
    'table4_layer1': 'MFMP + FCE after layer 1',
    'table4_layer2': 'MFMP + FCE after layer 2',
    'table4_layer3': 'MFMP + FCE after layer 3',
    'table4_layer4': 'MFMP + FCE after layer 4',
    'table5_3m': 'FACENet w/o IC + 3M',
    'table5_hc': 'FACENet w/o IC + HC',
    'table5_cdc': 'FACENet w/o IC + CdC',
    'single_rgb': 'RGB stream alone',
    'single_ni': 'NI stream alone',
    'single_ti': 'TI stream alone',
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
STATE_SPLITS = ('glared_query_same_state', 'glared_query_cross_state', 'clean_query_same_state',
                'clean_query_cross_state')
STATE_SPLIT_HEADERS = ('glared q. -> glared match', 'glared q. -> clean match',
                       'clean q. -> clean match', 'clean q. -> glared match')


@dataclasses.dataclass(frozen=True)
class StudySettings:
  """Everything that defines the study apart from the rows and seeds (stored in settings.json)."""
  num_ids: int = 120
  triplets_per_id: int = 8
  flare_fraction: float = 0.22
  night_fraction: float = 0.3
  data_seed: int = 0
  image_size: tuple[int, int] = (128, 64)
  depth: int = 18
  width_multiplier: float = 0.25
  last_stride: int = 1
  mask_similarity: str = 'signed'     # the Eq. 5 reading in which FMI can switch mask cells
  num_ids_per_batch: int = 8
  num_instances: int = 4
  num_epochs: int = 60
  base_lr: float = 1e-3
  max_steps: int = 0                 # > 0 caps the steps (tests)

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['image_size'] = list(self.image_size)
    return d


def expand_rows(spec: str | Sequence[str]) -> list[str]:
  """'table2,table4' or row names -> the ordered, de-duplicated list of row names."""
  from configs import ablation  # pylint: disable=g-import-not-at-top
  names = spec.split(',') if isinstance(spec, str) else list(spec)
  rows: list[str] = []
  for name in (n.strip() for n in names):
    if not name:
      continue
    expanded = ROW_SETS.get(name, (name,))
    for row in expanded:
      if row not in ablation.ROWS and row not in SINGLE_ROWS:
        raise ValueError(f'--rows: unknown row or row set {name!r}; row sets: {sorted(ROW_SETS)}, '
                         f'rows: {sorted(ablation.ROWS) + sorted(SINGLE_ROWS)}')
      if row not in rows:
        rows.append(row)
  if not rows:
    raise ValueError('--rows: no rows given')
  return rows


def _base_config(row: str) -> ml_collections.ConfigDict:
  from configs import ablation  # pylint: disable=g-import-not-at-top
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  if row in SINGLE_ROWS:
    config = synthetic.get_config('single_stream')
    config.model.modality = SINGLE_ROWS[row]
    return config
  return ablation.get_config(f'synthetic,{row}')


def run_config(row: str, seed: int, settings: StudySettings,
               data_root: str) -> ml_collections.ConfigDict:
  """The training config of one (row, seed): the synthetic base, the row's switches, the settings."""
  config = _base_config(row)
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
  config.model.width_multiplier = settings.width_multiplier
  config.model.last_stride = settings.last_stride
  if 'mask_similarity' in config.model:
    config.model.mask_similarity = settings.mask_similarity
  config.optim.base_lr = settings.base_lr
  config.optim.decay_epochs = (int(0.7 * settings.num_epochs), int(0.9 * settings.num_epochs))
  config.train.num_epochs = settings.num_epochs
  config.train.max_steps = settings.max_steps
  config.train.eval_every_epochs = 10 ** 6      # evaluate once, at the end
  config.train.checkpoint_every_steps = 50
  config.train.keep_checkpoints = 1
  return config


def _known_row(row: str) -> bool:
  from configs import ablation  # pylint: disable=g-import-not-at-top
  return row in ablation.ROWS or row in SINGLE_ROWS


def config_key(config: ml_collections.ConfigDict) -> str:
  """A canonical string of everything that affects training (two rows with it equal are one run)."""
  return json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True)


# ------------------------------------------------------------------------------------ measures
def predicted_cells(mask: np.ndarray) -> np.ndarray:
  """float `[..., h, w, C]` MFMP mask -> bool `[..., h, w]`: mean over channels >= 0.5."""
  return np.asarray(mask, np.float64).mean(axis=-1) >= MASK_CELL_THRESHOLD


def mask_quality(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
  """Pooled IoU / precision / recall of bool `[N, h, w]` predictions against bool `[N, h, w]` truth.

  Counts are summed over all N images before dividing (micro average), so images with little
  glare weigh little. An undefined ratio (0/0) is NaN. `all_flared_iou` is the IoU a mask that
  marks every cell as flared would get, one floor any useful predictor must beat.
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


def glared_records(recs: Sequence[Any]) -> np.ndarray:
  """bool [N]: the generator drew glare into this triplet's RGB or NI image."""
  return np.asarray([synthetic_data.glare_mask_path(r.rgb_path) is not None or
                     synthetic_data.glare_mask_path(r.ni_path) is not None for r in recs], bool)


def masked_retrieval(dist: np.ndarray, q_pid: np.ndarray, g_pid: np.ndarray,
                     valid: np.ndarray) -> dict[str, float]:
  """mAP, mINP and R-1 (percent) of `[Q, G]` distances when only `valid[q, g]` items are ranked.

  Ties are ranked pessimistically (non-matches first), as `facenet_jax.eval.metrics` does; a query
  with no valid match is skipped and not counted.
  """
  aps, inps, r1 = [], [], []
  for i in range(dist.shape[0]):
    keep = np.flatnonzero(valid[i])
    match = g_pid[keep] == q_pid[i]
    if not match.any():
      continue
    order = np.lexsort((match, dist[i, keep]))     # by distance, then non-matches first
    hits = np.flatnonzero(match[order])             # 0-based ranks of the matches
    aps.append(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))
    inps.append(hits.size / (hits[-1] + 1))
    r1.append(float(hits[0] == 0))
  if not aps:
    return {'mAP': float('nan'), 'mINP': float('nan'), 'R1': float('nan'), 'num_queries': 0}
  return {'mAP': 100 * float(np.mean(aps)), 'mINP': 100 * float(np.mean(inps)),
          'R1': 100 * float(np.mean(r1)), 'num_queries': len(aps)}


def state_split(dist: np.ndarray, query: Sequence[Any], gallery: Sequence[Any],
                q_glared: np.ndarray, g_glared: np.ndarray) -> dict[str, dict[str, float]]:
  """Retrieval split by state (STATE_SPLITS): the camera protocol plus a state rule on matches.

  For "same-state" a query's gallery matches of the other state are junk; for "cross-state" its
  matches of its own state are. Non-matches are always ranked, so only the matches differ.
  """
  q_pid = np.asarray([r.pid for r in query])
  g_pid = np.asarray([r.pid for r in gallery])
  q_cam = np.asarray([r.camid for r in query])
  g_cam = np.asarray([r.camid for r in gallery])
  same_pid = q_pid[:, None] == g_pid[None, :]
  camera_junk = same_pid & (q_cam[:, None] == g_cam[None, :])
  same_state = q_glared[:, None] == g_glared[None, :]
  out = {}
  for q_name, q_keep in (('glared', q_glared), ('clean', ~q_glared)):
    for m_name, junk in (('same_state', same_pid & ~same_state),
                         ('cross_state', same_pid & same_state)):
      valid = ~(camera_junk | junk)
      out[f'{q_name}_query_{m_name}'] = masked_retrieval(dist[q_keep], q_pid[q_keep], g_pid,
                                                         valid[q_keep])
  return out


def subset_metrics(evaluator, q_feats: np.ndarray, g_feats: np.ndarray, query: Sequence[Any],
                   gallery: Sequence[Any], keep: np.ndarray) -> dict[str, float] | None:
  """mAP, mINP and CMC R-1/5/10 (percent) of the queries where `keep`, against the whole gallery."""
  from facenet_jax.eval import protocols  # pylint: disable=g-import-not-at-top
  keep = np.asarray(keep, bool)
  if not keep.any():
    return None
  sub = [r for r, k in zip(query, keep) if k]
  metrics = evaluator.score(q_feats[keep], g_feats, sub, list(gallery))
  summary = protocols.rank_summary(metrics)
  return {**{k: 100.0 * summary[k] for k in ('mAP', 'mINP', 'R1', 'R5', 'R10')},
          'num_queries': int(metrics['num_valid_queries'])}


def retrieval(evaluator, q: np.ndarray, g: np.ndarray, query: Sequence[Any],
              gallery: Sequence[Any], distance: str) -> dict[str, Any]:
  """All / glared / clean queries (camera protocol) and the state split of `[Q, E]`, `[G, E]`."""
  from facenet_jax.eval import metrics  # pylint: disable=g-import-not-at-top
  q_glared, g_glared = glared_records(query), glared_records(gallery)
  subset = lambda keep: subset_metrics(evaluator, q, g, query, gallery, keep)
  dist = metrics.compute_distance_matrix(q, g, distance)
  return {'all': subset(np.ones(len(query), bool)), 'flare': subset(q_glared),
          'flare_free': subset(~q_glared),
          'by_state': state_split(dist, query, gallery, q_glared, g_glared)}


def _truth_cells(recs: Sequence[Any], path_of: Callable[[Any], str],
                 grid: tuple[int, int]) -> np.ndarray:
  """bool [N, h, w] true glare cells of the records whose image has glare (N may be 0)."""
  out = [realism.cells(synthetic_data.load_glare_mask(path_of(r)), grid) for r in recs
         if synthetic_data.glare_mask_path(path_of(r)) is not None]
  return np.stack(out) if out else np.zeros((0,) + tuple(grid), bool)


def mask_figures(pred: np.ndarray, gallery: Sequence[Any], train: Sequence[Any],
                 path_of: Callable[[Any], str]) -> dict[str, Any] | None:
  """Mask quality of `pred: [G, h, w, C]` on the glared gallery images, with both floors."""
  grid = tuple(pred.shape[1:3])
  has = np.asarray([synthetic_data.glare_mask_path(path_of(r)) is not None for r in gallery])
  if not has.any():
    return None
  truth = _truth_cells(gallery, path_of, grid)
  quality = mask_quality(predicted_cells(pred[has]), truth)
  train_truth = _truth_cells(train, path_of, grid)
  if len(train_truth):
    const = realism.best_constant_mask(train_truth)
    quality['constant_mask_iou'] = realism.iou(np.broadcast_to(const, truth.shape), truth)
  # On glare-free images FCE is gated off, but a mask that fires there shows poor localisation.
  quality['flare_free_predicted_fraction'] = (
      float(predicted_cells(pred[~has]).mean()) if (~has).any() else float('nan'))
  quality['grid'] = list(grid)
  return quality


def classifier_figures(logits: dict[str, np.ndarray], recs: Sequence[Any],
                       flare_rule: str) -> dict[str, float]:
  """Accuracy (percent) of the flare heads `{rgb, ni}: [N, 2]` against truth and pseudo-label."""
  out = {}
  pseudo = np.stack([flare_label.flare_bits(*records_lib.load_triplet(r)[:2], flare_rule)
                     for r in recs])
  for col, (modality, path_of) in enumerate((('rgb', lambda r: r.rgb_path),
                                             ('ni', lambda r: r.ni_path))):
    if modality not in logits:
      continue
    pred = np.argmax(logits[modality], axis=-1) == 1
    truth = np.asarray([synthetic_data.glare_mask_path(path_of(r)) is not None for r in recs])
    out[f'{modality}_vs_truth'] = 100 * float(np.mean(pred == truth))
    out[f'{modality}_vs_pseudo_label'] = 100 * float(np.mean(pred == pseudo[:, col].astype(bool)))
    out[f'{modality}_predicted_rate'] = 100 * float(pred.mean())
  return out


def branch_figures(evaluator, q: np.ndarray, g: np.ndarray, query: Sequence[Any],
                   gallery: Sequence[Any]) -> dict[str, dict[str, float]]:
  """mAP of each branch's third of a three-branch embedding (L2-normalised), all / clean queries."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from facenet_jax.linalg import l2_normalize  # pylint: disable=g-import-not-at-top
  d = q.shape[1] // len(MODALITIES)
  clean = ~glared_records(query)
  out = {}
  for i, branch in enumerate(MODALITIES):
    part = lambda x, i=i: np.asarray(l2_normalize(jnp.asarray(x[:, i * d:(i + 1) * d])))
    out[branch] = {
        'all': subset_metrics(evaluator, part(q), part(g), query, gallery,
                              np.ones(len(query), bool))['mAP'],
        'clean': _get({'m': subset_metrics(evaluator, part(q), part(g), query, gallery, clean)},
                      'm', 'mAP')}
  return out


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
  ckpt = checkpointing.Checkpointer(workdir, config.train.keep_checkpoints, read_only=True)
  variables, step, _ = ckpt.restore_variables(exp.variable_template)
  ckpt.close()
  return _RestoredRun(exp, variables, step,
                      evaluator.Evaluator(exp.model, exp.spec, exp.mesh, config))


def evaluate_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Restore the latest checkpoint of `workdir` and take every measure of the module docstring."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from facenet_jax.eval import evaluator  # pylint: disable=g-import-not-at-top

  run = _restore_latest(config, workdir)
  exp, ev = run.exp, run.evaluator
  q = ev.embed(run.variables, exp.query, with_masks=True)
  g = ev.embed(run.variables, exp.gallery, with_masks=True)
  distance = config.eval.distance
  result: dict[str, Any] = {'step': run.step, **retrieval(ev, q['embedding'], g['embedding'],
                                                          exp.query, exp.gallery, distance)}
  if config.model.name != 'single_stream':
    result['branches'] = branch_figures(ev, q['embedding'], g['embedding'], exp.query,
                                        exp.gallery)
  result['masks'] = {}
  for modality, path_of in (('rgb', lambda r: r.rgb_path), ('ni', lambda r: r.ni_path)):
    if modality in g.get('masks', {}):
      figures = mask_figures(g['masks'][modality], exp.gallery, exp.train_records, path_of)
      if figures is not None:
        result['masks'][modality] = figures
  if g.get('flare_logits'):
    result['flare_classifier'] = classifier_figures(g['flare_logits'], exp.gallery,
                                                    config.data.flare_rule)
  if config.model.get('fce', False):
    no_fce = evaluator.Evaluator(
        exp.model, exp.spec, exp.mesh, config,
        batch_transform=lambda b: {**b, 'flare': jnp.zeros_like(b['flare'])})
    q0 = no_fce.embed(run.variables, exp.query)['embedding']
    g0 = no_fce.embed(run.variables, exp.gallery)['embedding']
    result['no_test_fce'] = retrieval(ev, q0, g0, exp.query, exp.gallery, distance)
  return result


# ------------------------------------------------------------------------------------ the loop
def _check_settings(out: pathlib.Path, settings: StudySettings) -> None:
  settings_file = out / 'settings.json'
  if settings_file.exists():
    stored = json.loads(settings_file.read_text())
    if stored != settings.to_json():
      raise ValueError(f'{settings_file} holds other study settings ({stored}); use another --out '
                       f'or the same settings ({settings.to_json()})')
  else:
    settings_file.write_text(json.dumps(settings.to_json(), indent=1) + '\n')


def run_study(out_dir: str, rows: Sequence[str], seeds: Iterable[int], settings: StudySettings,
              log: Callable[[str], None] = print, report_only: bool = False,
              data_root: str | None = None,
              seeds_of: Callable[[str], Iterable[int]] | None = None) -> list[dict[str, Any]]:
  """Train + evaluate every (row, seed) not yet done in `out_dir`; return every run's result.

  `report_only` trains nothing and returns the finished runs. `data_root` uses an existing
  synthetic dataset instead of generating one in `out_dir/data`. `seeds_of(row)`, when given,
  limits a row to its own seeds (e.g. one seed for the single-stream rows).
  """
  from facenet_jax import train  # pylint: disable=g-import-not-at-top
  from facenet_jax import workdir  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  _check_settings(out, settings)
  data_root = data_root or str(out / 'data')
  if not (pathlib.Path(data_root) / 'train').is_dir():
    log(f'Generating the synthetic dataset in {data_root}')
    synthetic_data.generate_synthetic_dataset(
        data_root, num_ids=settings.num_ids, triplets_per_id=settings.triplets_per_id,
        image_size=tuple(settings.image_size), flare_fraction=settings.flare_fraction,
        night_fraction=settings.night_fraction, seed=settings.data_seed)

  results = []
  # Finished runs of any row (also rows not asked for now) stand in for identical configurations.
  done_by_key: dict[str, dict[str, Any]] = {}
  for result_file in sorted(out.glob('runs/*/seed*/result.json')):
    done = json.loads(result_file.read_text())
    if 'same_run_as' not in done and _known_row(done.get('row', '')):
      done_by_key.setdefault(
          config_key(run_config(done['row'], done['seed'], settings, data_root)), done)
  # Seed-major: a study stopped part-way has every row with the same number of seeds.
  for seed in seeds:
    for row in rows:
      if seeds_of is not None and seed not in seeds_of(row):
        continue
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
        try:
          train.train_and_evaluate(config, str(run_dir))
        except workdir.ConfigMismatchError as e:
          # An unfinished run of an older code version: its partial state is disposable, and a
          # result must come from one config, so it starts again.
          log(f'{row} seed {seed}: unfinished run with another config, started again ({e})')
          shutil.rmtree(run_dir)
          train.train_and_evaluate(config, str(run_dir))
        train_seconds = time.time() - start
        result = {'row': row, 'seed': seed, 'run_dir': str(run_dir),
                  'train_seconds': train_seconds, **evaluate_run(config, str(run_dir))}
        result['seconds'] = time.time() - start
        result_file.write_text(json.dumps(result, indent=1) + '\n')
        log(f'{row} seed {seed}: mAP {result["all"]["mAP"]:.2f} (glared queries '
            f'{_get(result, "flare", "mAP"):.2f}, clean {_get(result, "flare_free", "mAP"):.2f})'
            f' in {result["seconds"] / 60:.1f} min')
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
def _fields() -> dict[str, tuple[str, ...]]:
  """Aggregated name -> path into a run's result."""
  fields = {'mAP': ('all', 'mAP'), 'mINP': ('all', 'mINP'), 'R1': ('all', 'R1'),
            'R5': ('all', 'R5'), 'R10': ('all', 'R10'),
            'flare_mAP': ('flare', 'mAP'), 'flare_R1': ('flare', 'R1'),
            'flare_free_mAP': ('flare_free', 'mAP'), 'flare_free_R1': ('flare_free', 'R1')}
  for split in STATE_SPLITS:
    fields[f'{split}_mAP'] = ('by_state', split, 'mAP')
  for modality in ('rgb', 'ni'):
    for m in ('iou', 'precision', 'recall', 'all_flared_iou', 'constant_mask_iou',
              'flare_free_predicted_fraction'):
      fields[f'{modality}_{m}'] = ('masks', modality, m)
    for m in ('vs_truth', 'vs_pseudo_label', 'predicted_rate'):
      fields[f'classifier_{modality}_{m}'] = ('flare_classifier', f'{modality}_{m}')
  for branch in MODALITIES:
    for subset in ('all', 'clean'):
      fields[f'branch_{branch}_{subset}_mAP'] = ('branches', branch, subset)
  for subset in ('all', 'flare', 'flare_free'):
    fields[f'no_test_fce_{subset}_mAP'] = ('no_test_fce', subset, 'mAP')
  for split in STATE_SPLITS:
    fields[f'no_test_fce_{split}_mAP'] = ('no_test_fce', 'by_state', split, 'mAP')
  return fields


def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float, int]]]:
  """{row: {metric: (mean, std, n)}} over seeds; std is the sample std (ddof=1; 0 for one seed)."""
  table: dict[str, dict[str, tuple[float, float, int]]] = {}
  for row in dict.fromkeys(r['row'] for r in results):
    runs = [r for r in results if r['row'] == row]
    table[row] = {}
    for name, path in _fields().items():
      values = _finite([_get(r, *path) for r in runs])
      if values.size:
        table[row][name] = _mean_std_n(values)
  return table


def _finite(values: Sequence[float]) -> np.ndarray:
  values = np.asarray(values, np.float64)
  return values[np.isfinite(values)]


def _mean_std_n(values: np.ndarray) -> tuple[float, float, int]:
  """(mean, sample std (ddof=1; 0 for one value), n) of non-empty finite `values`."""
  std = float(values.std(ddof=1)) if values.size > 1 else 0.0
  return float(values.mean()), std, int(values.size)


# The runs of one seed share the sampler's order, the augmentation draws and the initial weights of
# every module two rows have in common (flax derives each module's initial weights from the seed and
# the module's path), so a row and the baseline of the same seed form a pair: their difference
# removes what the seed does to both, which the spread over seeds in `aggregate` does not.
PAIRED_BASELINE = 'table2_baseline'
PAIRED_FIELDS = ('mAP', 'flare_mAP', 'flare_free_mAP') + tuple(f'{s}_mAP' for s in STATE_SPLITS)


def paired_differences(results: Sequence[dict[str, Any]], baseline: str = PAIRED_BASELINE,
                       fields: Sequence[str] = PAIRED_FIELDS
                       ) -> dict[str, dict[str, tuple[float, float, int, int]]]:
  """{row: {metric: (mean, std, n, n_above)}} of `row - baseline` over the seeds both have.

  std is the sample std (ddof=1; 0 for one pair); n_above counts the seeds where the row is above
  the baseline. Rows without a seed in common with the baseline (and the baseline) are left out,
  and so are the single-stream rows: they share the sampler, not the model, so the pairing would
  remove nothing but the data order.
  """
  paths = _fields()
  base = {r['seed']: r for r in results if r['row'] == baseline}
  table: dict[str, dict[str, tuple[float, float, int, int]]] = {}
  for row in dict.fromkeys(r['row'] for r in results
                           if r['row'] != baseline and r['row'] not in SINGLE_ROWS):
    pairs = [(r, base[r['seed']]) for r in results if r['row'] == row and r['seed'] in base]
    cells = {}
    for name in fields:
      diffs = _finite([_get(r, *paths[name]) - _get(b, *paths[name]) for r, b in pairs])
      if diffs.size:
        cells[name] = (*_mean_std_n(diffs), int((diffs > 0).sum()))
    if cells:
      table[row] = cells
  return table


def _pm(cell: tuple[float, float, int] | None, scale: float = 1.0, digits: int = 1) -> str:
  if cell is None:
    return 'n/a'
  mean, std, _ = cell
  return f'{scale * mean:.{digits}f} ± {scale * std:.{digits}f}'


def _signed(cell: tuple[float, float, int, int] | None) -> str:
  if cell is None:
    return 'n/a'
  mean, std, n, above = cell
  return f'{mean:+.1f} ± {std:.1f} ({above} of {n} above)'


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """Lines of a Markdown table whose first column is the row name."""
  lines = ['| row | ' + ' | '.join(headers) + ' |', '|---' * (len(headers) + 1) + '|']
  return lines + ['| ' + ' | '.join(cells) + ' |' for cells in rows]


def _label(row: str, cells: dict[str, Any]) -> str:
  return f'{ROW_LABELS.get(row, row)} (n={cells["mAP"][2]})' if 'mAP' in cells else row


def markdown_report(results: Sequence[dict[str, Any]], settings: StudySettings,
                    command: str) -> str:
  """The Markdown tables of a finished or partial study (n = seeds finished per row)."""
  table = aggregate(results)
  seeds = sorted({r['seed'] for r in results})
  lines = [f'Settings: {json.dumps(settings.to_json())}; seeds {seeds}; mean ± std over seeds '
           '(n per row).', f'Command: `{command}`', '',
           'Retrieval (percent; camera protocol; "glared q." = queries whose RGB or NI has glare):',
           '']
  lines += _markdown_table(
      ['mAP', 'mINP', 'R-1', 'glared q. mAP', 'clean q. mAP', 'paper mAP (WMVeID863)'],
      [[_label(row, cells)] + [_pm(cells.get(k)) for k in ('mAP', 'mINP', 'R1', 'flare_mAP',
                                                         'flare_free_mAP')] +
       [f'{PAPER_MAP[row]:.1f}' if row in PAPER_MAP else ''] for row, cells in table.items()])
  paired = paired_differences(results)
  if paired:
    lines += ['', f'Paired with the baseline (mAP, row minus {ROW_LABELS[PAIRED_BASELINE]} of the '
              'same seed: same sampler order, augmentation and initial weights of the shared '
              'modules); mean ± std of the differences, and in how many seeds the row is above:',
              '']
    lines += _markdown_table(
        ['all', 'glared q.', 'clean q.', *STATE_SPLIT_HEADERS],
        [[_label(row, cells)] + [_signed(cells.get(k)) for k in PAIRED_FIELDS]
         for row, cells in paired.items()])
  lines += ['', 'Retrieval split by state (mAP): a query\'s gallery matches of the same state '
            '(glared / clean) or of the other state only, the rest of its matches junk:', '']
  lines += _markdown_table(
      list(STATE_SPLIT_HEADERS),
      [[_label(row, cells)] + [_pm(cells.get(f'{k}_mAP')) for k in STATE_SPLITS]
       for row, cells in table.items()])
  branch_rows = [(row, cells) for row, cells in table.items()
                 if 'branch_rgb_all_mAP' in cells or row in SINGLE_ROWS]
  if branch_rows:
    lines += ['', 'Modality ordering (mAP): each branch\'s third of a three-stream embedding alone '
              '(trained on all three, tested on one), on all and on clean queries; single-stream '
              'rows: the model trained and tested on one modality:', '']
    lines += _markdown_table(
        ['RGB', 'NI', 'TI', 'RGB (clean q.)', 'NI (clean q.)', 'TI (clean q.)'],
        [[_label(row, cells)] +
         ([_pm(cells.get(f'branch_{b}_all_mAP')) for b in MODALITIES] +
          [_pm(cells.get(f'branch_{b}_clean_mAP')) for b in MODALITIES]
          if row not in SINGLE_ROWS else
          [_pm(cells.get('mAP')) if SINGLE_ROWS[row] == b else '' for b in MODALITIES] +
          [_pm(cells.get('flare_free_mAP')) if SINGLE_ROWS[row] == b else '' for b in MODALITIES])
         for row, cells in branch_rows])
  mask_rows = [(row, cells) for row, cells in table.items() if 'rgb_iou' in cells]
  if mask_rows:
    lines += ['', 'Flare masks on the glared test images against the generator\'s glare masks '
              '(cells of the mask grid, percent) beside two floors: marking every cell, and the '
              'best image-independent mask fitted on the training masks; "fires on clean": cells '
              'marked on glare-free images; flare classifier accuracy against the true glare and '
              'against the pseudo-label (all test images):', '']
    lines += _markdown_table(
        ['RGB IoU', 'NI IoU', 'RGB every-cell IoU', 'RGB image-independent IoU',
         'NI image-independent IoU', 'fires on clean (RGB)', 'classifier RGB vs truth',
         'classifier NI vs truth', 'classifier RGB vs pseudo-label'],
        [[_label(row, cells)] +
         [_pm(cells.get(k), 100.0) for k in ('rgb_iou', 'ni_iou', 'rgb_all_flared_iou',
                                             'rgb_constant_mask_iou', 'ni_constant_mask_iou',
                                             'rgb_flare_free_predicted_fraction')] +
         [_pm(cells.get(k)) for k in ('classifier_rgb_vs_truth', 'classifier_ni_vs_truth',
                                      'classifier_rgb_vs_pseudo_label')]
         for row, cells in mask_rows])
  fce_rows = [(row, cells) for row, cells in table.items() if 'no_test_fce_all_mAP' in cells]
  if fce_rows:
    lines += ['', 'FCE rows evaluated without the test-time replacement (flare bits zeroed; same '
              'weights), mAP:', '']
    lines += _markdown_table(
        ['all', 'glared q.', 'clean q.', 'glared q. -> clean match', 'clean q. -> glared match'],
        [[_label(row, cells)] + [_pm(cells.get(f'no_test_fce_{k}_mAP')) for k in
                                 ('all', 'flare', 'flare_free', 'glared_query_cross_state',
                                  'clean_query_cross_state')]
         for row, cells in fce_rows])
  trained = [r for r in results if 'same_run_as' not in r and 'seconds' in r]
  if trained:
    total = sum(r['seconds'] for r in trained)
    lines += ['', f'{len(trained)} runs trained, {total / 60:.1f} min of run time in all '
              f'({total / 60 / len(trained):.1f} min per run).']
  return '\n'.join(lines) + '\n'


def plot_results(results: Sequence[dict[str, Any]], path: str) -> None:
  """Grouped bars: mAP on all, glared and clean queries per row, with std error bars."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  table = aggregate(results)
  rows = list(table)
  groups = (('mAP', 'all queries'), ('flare_mAP', 'glared queries'),
            ('flare_free_mAP', 'clean queries'))
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
  ax.set_title('Synthetic glare benchmark: mean ± std over seeds')
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
       'aggregate': aggregate(results), 'paired': paired_differences(results)}, indent=1) + '\n')
  plot_results(results, files['plot'])
  return files

