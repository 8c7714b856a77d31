"""Evaluation protocols: how a query is scored against a gallery (`config.eval.protocol`).

A protocol turns query and gallery embeddings plus their records into metrics. Today's protocols
differ only in the junk rule (gallery items removed from a query's ranking):

  'camera'  same pid and same camera (Market-1501; WMVeID863, RGBNT100, the official `eval_func`)
  'scene'   same pid and same scene (MSVR310)

Protocols with several gallery draws (SYSU-MM01 trials) or modality directions implement the same
`score` and are added to `PROTOCOLS`; the `Evaluator` and every caller stay unchanged.
"""

from __future__ import annotations

import dataclasses
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

  @classmethod
  def from_config(cls, eval_config) -> 'ScoringSettings':
    rerank = None
    if eval_config.rerank:
      rerank = dict(k1=eval_config.rerank_k1, k2=eval_config.rerank_k2,
                    lambda_value=eval_config.rerank_lambda)
    return cls(distance=eval_config.distance, max_rank=eval_config.max_rank,
               query_chunk_size=eval_config.query_chunk_size, rerank=rerank)


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


@dataclasses.dataclass(frozen=True)
class SameKeyJunkProtocol:
  """Single gallery, junk = same pid and the same value of the record field `junk_field`."""
  name: str
  junk_field: str

  def score(self, q_feats, g_feats, query, gallery, settings):
    if len(query) != len(q_feats) or len(gallery) != len(g_feats):
      raise ValueError(f'{len(q_feats)} query / {len(g_feats)} gallery embeddings for '
                       f'{len(query)} / {len(gallery)} records')
    keys = {'q_camids': _labels(query, 'camid'), 'g_camids': _labels(gallery, 'camid')}
    if self.junk_field != 'camid':
      keys.update(q_sceneids=_labels(query, self.junk_field),
                  g_sceneids=_labels(gallery, self.junk_field))
    return metrics_lib.evaluate_features(
        q_feats, g_feats, _labels(query, 'pid'), _labels(gallery, 'pid'),
        metric=settings.distance, max_rank=settings.max_rank,
        chunk_size=settings.query_chunk_size, rerank=settings.rerank, **keys)


PROTOCOLS: dict[str, RetrievalProtocol] = {
    'camera': SameKeyJunkProtocol('camera', 'camid'),
    'scene': SameKeyJunkProtocol('scene', 'scene'),
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
