"""The retrieval Evaluator: embed every query and gallery item once, then score under a protocol.

Training (periodic validation/test), `scripts/evaluate.py` (the report) and the synthetic study
all evaluate through this class, so embedding and scoring exist once:

    evaluator = Evaluator(exp.model, exp.spec, exp.mesh, config)
    result = evaluator.evaluate(variables, query, gallery)       # result.metrics, .query, .gallery

Embedding reads the records through the padded eval stream of `input_pipeline` (every record
exactly once, a mask on the padding rows). With several processes each embeds only its rows of
every global batch and the outputs are all-gathered, so every process returns the same complete
arrays and the same metrics.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from facenet_jax import device_input
from facenet_jax import distributed
from facenet_jax import sharding
from facenet_jax import steps
from facenet_jax.eval import protocols
from facenet_jax.models import registry


@dataclasses.dataclass
class EvalResult:
  metrics: dict[str, Any]          # the protocol's metrics (fractions)
  query: dict[str, Any]            # {'embedding': [Q, E]} (+ 'masks', 'flare_logits' when asked)
  gallery: dict[str, Any]          # {'embedding': [G, E]}


class Evaluator:
  """Embeds records with one compiled step and scores them with `config.eval.protocol`."""

  def __init__(self, model, spec: registry.ModelSpec, mesh, config: ml_collections.ConfigDict,
               batch_transform: Callable[[dict], dict] | None = None):
    self.spec, self.mesh, self.data_config = spec, mesh, config.data
    self.protocol = protocols.get_protocol(config.eval.protocol)
    self.settings = protocols.ScoringSettings.from_config(config.eval)
    self._embed_step = steps.jit_embed_step(
        steps.make_embed_step(model, spec, batch_transform, config.eval.flip_test,
                              prepare=device_input.make_prepare(config.data)), mesh)

  def embed(self, variables: dict[str, Any], records: Sequence[Any],
            with_masks: bool = False) -> dict[str, Any]:
    """`{'embedding': [N, E]}`, with `with_masks` also the model's extras it has (`steps.EMBED_EXTRAS`):
    `'masks': {name: [N, h, w, C]}` and `'flare_logits': {name: [N, 2]}`.
    """
    from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

    if not records:
      raise ValueError('Nothing to embed: the query or gallery split is empty.')
    result: dict[str, Any] = {}
    extras: dict[str, dict[str, np.ndarray]] = {}
    stream = pipeline.make_eval_stream(records, self.data_config,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count())
    for number, batch in enumerate(stream):
      inputs = {k: batch[k] for k in self.spec.batch.input_keys}
      out = self._embed_step(variables, sharding.shard_batch(inputs, self.mesh))
      if not with_masks:
        out = {'embedding': out['embedding']}
      if number == 0:  # the first gather follows each process's compile: start together
        distributed.barrier('embed')
      gathered = distributed.gather_to_host({'out': out, 'mask': np.asarray(batch['mask'], bool),
                                             'index': np.asarray(batch['index'])})
      keep, out = gathered['mask'], gathered['out']
      index = gathered['index'][keep]
      if 'embedding' not in result:
        result['embedding'] = np.zeros((len(records), out['embedding'].shape[-1]), np.float32)
      result['embedding'][index] = out['embedding'][keep]
      for extra in steps.EMBED_EXTRAS:
        for name, value in out.get(extra, {}).items():
          store = extras.setdefault(extra, {})
          if name not in store:
            store[name] = np.zeros((len(records),) + value.shape[1:], np.float32)
          store[name][index] = value[keep]
    if with_masks:
      result['masks'] = extras.get('masks', {})
      result.update({k: v for k, v in extras.items() if k != 'masks'})
    return result

  def score(self, q_feats: np.ndarray, g_feats: np.ndarray, query: Sequence[Any],
            gallery: Sequence[Any]) -> dict[str, Any]:
    """The protocol's metrics of precomputed embeddings."""
    return self.protocol.score(q_feats, g_feats, query, gallery, self.settings)

  def evaluate(self, variables: dict[str, Any], query: Sequence[Any], gallery: Sequence[Any],
               with_masks: bool = False) -> EvalResult:
    """Embed query (with its masks when asked) and gallery once each, then score."""
    if not query:
      raise ValueError('The query split is empty: nothing to evaluate.')
    if not gallery:
      raise ValueError('The gallery split is empty: nothing to evaluate.')
    q = self.embed(variables, query, with_masks=with_masks)
    g = self.embed(variables, gallery)
    return EvalResult(self.score(q['embedding'], g['embedding'], query, gallery), q, g)
