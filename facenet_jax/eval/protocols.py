"""Evaluation protocols: how a query is scored against a gallery (`config.eval.protocol`).

A protocol turns query and gallery embeddings plus their records into metrics (records need
`pid` and `camid`). Single-gallery protocols differ in the junk rule (gallery items removed from
a query's ranking):

  'camera'     same pid and same camera (Market-1501; WMVeID863, RGBNT100, official `eval_func`)
  'scene'      same pid and same scene (MSVR310)
  'regdb'      nothing (RegDB: query and gallery are different modalities; official `eval_regdb`)
  'day_night'  nothing (DN-348, DNWild; the official DNDM code scores with `eval_regdb`)

Trial protocols draw a gallery from the gallery candidates (one modality of the test ids, in the
reader's id-major, camera, file-name order) for trials 0..9 and average the metrics, exactly as
the official AGW/DEEN test scripts draw them: `random.seed(trial)`, then for every test id
(ascending) and camera (ascending) one `random.choice` of its images sorted by path.

  'sysu_single'  SYSU-MM01 single-shot; junk: every camera-2 item for a camera-3 query, whatever
                 the identity (official `eval_sysu`). All- or indoor-search is the reader's choice
                 of candidate cameras (`data.search_mode`).
  'sysu_multi'   SYSU-MM01 multi-shot: 10 images per (id, camera). The only official code (TSME)
                 draws them with unseeded `np.random.choice(..., 10, replace=False)` and fails on
                 a folder with fewer than 10 images; ours draws `random.sample` after
                 `random.seed(trial)` and takes every image of a smaller folder.
  'llcm'         LLCM single-shot trials; junk: same pid and same camera (official `eval_llcm`).

CMC: `config.eval.cmc_mode` 'standard' (default) or 'distinct_ids', the official
`eval_sysu`/`eval_llcm` CMC that counts distinct gallery identities (higher R-5/R-10, same R-1),
for comparing with published tables; the metrics carry 'cmc_mode' so every table says which.
mAP and mINP are always computed on the junk-free ranking.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from facenet_jax.eval import metrics as metrics_lib


@dataclasses.dataclass(frozen=True)
class ScoringSettings:
  """How distances and ranks are computed (the `config.eval` fields a protocol reads)."""
  distance: str = 'euclidean_normalized'
  max_rank: int = 50
  query_chunk_size: int = 1024
  rerank: Mapping[str, Any] | None = None   # {'k1', 'k2', 'lambda_value'} or None
  cmc_mode: str = 'standard'                 # or 'distinct_ids' (official SYSU-MM01 / LLCM CMC)

  @classmethod
  def from_config(cls, eval_config) -> 'ScoringSettings':
    rerank = None
    if eval_config.rerank:
      rerank = dict(k1=eval_config.rerank_k1, k2=eval_config.rerank_k2,
                    lambda_value=eval_config.rerank_lambda)
    if eval_config.cmc_mode not in metrics_lib.CMC_MODES:
      raise ValueError(f'config.eval.cmc_mode must be one of {metrics_lib.CMC_MODES}, got '
                       f'{eval_config.cmc_mode!r}')
    return cls(distance=eval_config.distance, max_rank=eval_config.max_rank,
               query_chunk_size=eval_config.query_chunk_size, rerank=rerank,
               cmc_mode=eval_config.cmc_mode)


class RetrievalProtocol(Protocol):
  name: str

  def score(self, q_feats: np.ndarray, g_feats: np.ndarray, query: Sequence[Any],
            gallery: Sequence[Any], settings: ScoringSettings) -> dict[str, Any]:
    """Metrics of `q_feats: [Q, E]` against `g_feats: [G, E]`; records give pids and junk keys.

    Returns at least {'cmc': [max_rank], 'mAP', 'mINP', 'num_valid_queries',
    'num_skipped_queries'}, fractions in [0, 1].
    """


def _labels(records: Sequence[Any], field: str) -> np.ndarray:
  return np.asarray([getattr(r, field) for r in records])


def _check_sizes(q_feats, g_feats, query, gallery) -> None:
  if len(query) != len(q_feats) or len(gallery) != len(g_feats):
    raise ValueError(f'{len(q_feats)} query / {len(g_feats)} gallery embeddings for '
                     f'{len(query)} / {len(gallery)} records')


@dataclasses.dataclass(frozen=True)
class SameKeyJunkProtocol:
  """Single gallery, junk = same pid and the same value of the record field `junk_field`."""
  name: str
  junk_field: str

  def score(self, q_feats, g_feats, query, gallery, settings):
    _check_sizes(q_feats, g_feats, query, gallery)
    keys = {'q_camids': _labels(query, 'camid'), 'g_camids': _labels(gallery, 'camid')}
    if self.junk_field != 'camid':
      keys.update(q_sceneids=_labels(query, self.junk_field),
                  g_sceneids=_labels(gallery, self.junk_field))
    result = metrics_lib.evaluate_features(
        q_feats, g_feats, _labels(query, 'pid'), _labels(gallery, 'pid'),
        metric=settings.distance, max_rank=settings.max_rank,
        chunk_size=settings.query_chunk_size, rerank=settings.rerank,
        cmc_mode=settings.cmc_mode, **keys)
    return {**result, 'cmc_mode': settings.cmc_mode}


def draw_trial_gallery(gallery: Sequence[Any], trial: int, shots: int) -> list[int]:
  """Indices of trial `trial`'s gallery: `shots` images per (pid, camera) of the candidates.

  Groups are visited by ascending pid, then ascending camera; inside a group the images are
  sorted by path. `random.seed(trial)` then one `random.choice` per group (shots = 1, the
  official AGW/DEEN draw) or `random.sample(group, min(shots, size))` (multi-shot, ours).
  """
  order = sorted(range(len(gallery)),
                 key=lambda i: (gallery[i].pid, gallery[i].camid, gallery[i].path))
  rng = random.Random(trial)   # the same stream as random.seed(trial) + module functions
  chosen = []
  for _, group in itertools.groupby(order, key=lambda i: (gallery[i].pid, gallery[i].camid)):
    group = list(group)
    if shots == 1:
      chosen.append(rng.choice(group))
    else:
      chosen.extend(rng.sample(group, min(shots, len(group))))
  return chosen


@dataclasses.dataclass(frozen=True)
class CrossModalProtocol:
  """Cross-modality scoring: a junk rule and either the whole gallery or `num_trials` draws.

  same_camera_junk: remove same-pid items of the query's camera (LLCM); junk_camera_pairs:
  (query camera, gallery camera) pairs removed whatever the pid (SYSU-MM01: (3, 2));
  shots: 0 = the whole gallery once, else images per (pid, camera) in each trial.
  """
  name: str
  same_camera_junk: bool = False
  junk_camera_pairs: tuple[tuple[int, int], ...] = ()
  shots: int = 0
  num_trials: int = 1

  def _score_once(self, q_feats, g_feats, query, gallery, settings) -> dict[str, Any]:
    return metrics_lib.evaluate_features(
        q_feats, g_feats, _labels(query, 'pid'), _labels(gallery, 'pid'),
        _labels(query, 'camid'), _labels(gallery, 'camid'), metric=settings.distance,
        max_rank=settings.max_rank, chunk_size=settings.query_chunk_size,
        rerank=settings.rerank, same_key_junk=self.same_camera_junk,
        junk_camera_pairs=self.junk_camera_pairs, cmc_mode=settings.cmc_mode)

  def score(self, q_feats, g_feats, query, gallery, settings):
    _check_sizes(q_feats, g_feats, query, gallery)
    if self.shots == 0:
      result = self._score_once(q_feats, g_feats, query, gallery, settings)
      return {**result, 'cmc_mode': settings.cmc_mode, 'num_trials': 1,
              'gallery_size': len(gallery)}
    g_feats = np.asarray(g_feats)
    trials = []
    for trial in range(self.num_trials):
      chosen = draw_trial_gallery(gallery, trial, self.shots)
      result = self._score_once(q_feats, g_feats[chosen], query, [gallery[i] for i in chosen],
                                settings)
      trials.append({**result, 'gallery_size': len(chosen)})
    return average_trials(trials, settings.cmc_mode)


def average_trials(trials: Sequence[Mapping[str, Any]], cmc_mode: str) -> dict[str, Any]:
  """Mean CMC / mAP / mINP over trials (the official 'All Average'), with per-trial summaries."""
  summaries = [rank_summary(t) for t in trials]
  return {
      'cmc': np.mean([t['cmc'] for t in trials], axis=0).astype(np.float32),
      'mAP': float(np.mean([t['mAP'] for t in trials])),
      'mINP': float(np.mean([t['mINP'] for t in trials])),
      'num_valid_queries': int(trials[0]['num_valid_queries']),
      'num_skipped_queries': int(trials[0]['num_skipped_queries']),
      'num_trials': len(trials), 'cmc_mode': cmc_mode,
      'gallery_size': float(np.mean([t['gallery_size'] for t in trials])),
      'trials': summaries,
      'std': {k: float(np.std([s[k] for s in summaries])) for k in summaries[0]},
  }


PROTOCOLS: dict[str, RetrievalProtocol] = {
    'camera': SameKeyJunkProtocol('camera', 'camid'),
    'scene': SameKeyJunkProtocol('scene', 'scene'),
    'regdb': CrossModalProtocol('regdb'),
    'day_night': CrossModalProtocol('day_night'),
    'sysu_single': CrossModalProtocol('sysu_single', junk_camera_pairs=((3, 2),), shots=1,
                                      num_trials=10),
    'sysu_multi': CrossModalProtocol('sysu_multi', junk_camera_pairs=((3, 2),), shots=10,
                                     num_trials=10),
    'llcm': CrossModalProtocol('llcm', same_camera_junk=True, shots=1, num_trials=10),
}


def get_protocol(name: str) -> RetrievalProtocol:
  if name not in PROTOCOLS:
    raise ValueError(f'config.eval.protocol must be one of {tuple(PROTOCOLS)}, got {name!r}')
  return PROTOCOLS[name]


def rank_summary(metrics: Mapping[str, Any], ranks: Sequence[int] = (1, 5, 10)
                 ) -> dict[str, float]:
  """{'mAP', 'mINP', 'R1', 'R5', 'R10'} as fractions; a CMC shorter than k gives its last value.

  The one place CMC becomes R-k (tables, logs and the study read it from here).
  """
  cmc = np.asarray(metrics['cmc'])
  out = {'mAP': float(metrics['mAP']), 'mINP': float(metrics['mINP'])}
  out.update({f'R{k}': float(cmc[min(k, len(cmc)) - 1]) for k in ranks})
  return out
