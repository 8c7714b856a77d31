"""Evaluate a saved checkpoint and write the report: metrics JSON, pictures, features.

Behind `scripts/evaluate.py`; also used by `make demo`. The metric table is
`console.format_metric_table`.
"""

import pathlib
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from facenet_jax import checkpointing
from facenet_jax import distributed
from facenet_jax import experiment
from facenet_jax.eval import evaluator as evaluator_lib
from facenet_jax.eval import metrics as metrics_lib
from facenet_jax.eval import visualize


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
                        best: bool = False, out_dir: str | None = None,
                        export_features: bool = False, num_rank_list_queries: int = 6,
                        exp: experiment.EvalExperiment | None = None,
                        strict: bool = False) -> dict[str, Any]:
  """Restore a checkpoint's variables, embed query and gallery once each, write the report.

  Only the model's variables are read (no optimiser is built or restored). `exp` reuses an
  experiment built already (e.g. by the training run of `make demo`).

  Returns `{'metrics': ..., 'step': int, 'files': {name: path}, 'experiment': exp}`. In a
  multi-process run (`config.train.distributed`) every process embeds its share and gets the
  metrics; only process 0 writes files (the others return `files={}`).
  """
  distributed.initialize(config.train)
  exp = exp or experiment.build_eval_experiment(config)
  if not exp.query:
    raise ValueError(f'The query split of {config.data.dataset} at {config.data.root!r} is empty: '
                     'nothing to evaluate.')
  ckpt = checkpointing.Checkpointer(workdir, config.train.keep_checkpoints, read_only=True,
                                    strict=strict)
  variables, restored_step, meta = ckpt.restore_variables(
      exp.variable_template, step=step, best=best)
  ckpt.close()
  logging.info('Restored %s checkpoint at step %d (%s)', 'best' if best else 'step',
               restored_step, meta)

  evaluator = evaluator_lib.Evaluator(exp.model, exp.spec, exp.mesh, config)
  result = evaluator.evaluate(variables, exp.query, exp.gallery, with_masks=True)
  metrics, q, g = result.metrics, result.query, result.gallery
  out_info = {'metrics': metrics, 'step': restored_step, 'files': {}, 'experiment': exp}
  if not distributed.is_chief():
    return out_info
  default_out = pathlib.Path(workdir) / f'eval_{"best" if best else "step"}_{restored_step}'
  out = pathlib.Path(out_dir or default_out)
  out.mkdir(parents=True, exist_ok=True)
  files = {}
  files['metrics'] = out / 'metrics.json'
  checkpointing.write_json(files['metrics'], {'step': restored_step, 'checkpoint_meta': meta,
                                              **metrics})
  files['cmc'] = out / 'cmc.png'
  visualize.plot_cmc(metrics['cmc'], files['cmc'],
                     title=f'{config.data.dataset} CMC (step {restored_step})')
  # Rank-list pictures show aligned triplets; the cross-modality sets get the metrics and CMC.
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  cross_modal = pipeline.is_cross_modal(config.data.dataset)
  if not cross_modal:
    files['rank_list'] = out / 'rank_list.png'
    _plot_rank_list(q['embedding'], g['embedding'], exp.query, exp.gallery, config,
                    files['rank_list'], num_rank_list_queries)
  if q.get('masks'):
    files['flare_masks'] = out / 'flare_masks.png'
    _plot_masks(q['masks'], exp.query, files['flare_masks'], config.data.flare_rule)
  if export_features:
    for name, feats, recs in (('query', q['embedding'], exp.query),
                              ('gallery', g['embedding'], exp.gallery)):
      files[f'{name}_features'] = out / f'{name}_features.npy'
      np.save(files[f'{name}_features'], feats)
      for field in ('pid', 'camid', 'modality' if cross_modal else 'scene'):
        np.save(out / f'{name}_{field}s.npy', np.asarray([getattr(r, field) for r in recs]))
  out_info['files'] = {k: str(v) for k, v in files.items()}
  return out_info


def _plot_rank_list(q_feats, g_feats, query, gallery, config, path, num_queries):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  chosen = np.linspace(0, len(query) - 1, min(num_queries, len(query))).astype(int)
  dist = metrics_lib.compute_distance_matrix(q_feats[chosen], g_feats, config.eval.distance)
  order = np.argsort(dist, axis=1, kind='stable')[:, :10]
  q_pids = np.asarray([query[i].pid for i in chosen])
  g_pids = np.asarray([r.pid for r in gallery])
  matches = g_pids[order] == q_pids[:, None]
  query_images = [pipeline.load_record_triplet(query[i]) for i in chosen]
  gallery_images = [[pipeline.load_record_triplet(gallery[j]) for j in row] for row in order]
  visualize.plot_rank_list(query_images, gallery_images, order, matches, path, top_k=10)


def _plot_masks(masks, query, path, flare_rule: str, max_images=6):
  """Overlay the RGB/NI masks of the first flared queries (or the first queries if none); flared
  by the configured pseudo-label rule (`config.data.flare_rule`)."""
  from input_pipeline import flare_label  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  triplets, flared = [], []
  for i, record in enumerate(query):
    images = pipeline.load_record_triplet(record)
    if flare_label.flare_bits(images[0], images[1], flare_rule).any():
      flared.append(i)
      triplets.append(images)
    if len(flared) == max_images:
      break
  if not flared:
    flared = list(range(min(max_images, len(query))))
    triplets = [pipeline.load_record_triplet(query[i]) for i in flared]
  # Channel-mean of the [h, w, C] masks: the fraction of channels replaced at each position.
  to_map = lambda m: np.asarray(m).mean(axis=-1)
  visualize.plot_flare_masks([t[0] for t in triplets], [t[1] for t in triplets],
                             [to_map(masks['rgb'][i]) for i in flared],
                             [to_map(masks['ni'][i]) for i in flared], path)
