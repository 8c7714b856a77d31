"""A run's record on disk: every scalar to TensorBoard and to `metrics.jsonl`, chief only."""

from __future__ import annotations

import json
import pathlib
from typing import Mapping


class RunLog:
  """`write(step, scalars)` appends one JSON line and one TensorBoard event per call.

  Only the chief process writes (`enabled`); the others accept the calls and drop them.
  """

  def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
    self.enabled = enabled
    self._file = None
    self._writer = None
    if enabled:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._writer = metric_writers.SummaryWriter(str(workdir))
      self._file = (pathlib.Path(workdir) / 'metrics.jsonl').open('a')

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    self._writer.write_scalars(step, dict(scalars))
    self._file.write(json.dumps({'step': step, **{k: float(v) for k, v in scalars.items()}})
                     + '\n')
    self._file.flush()

  def close(self) -> None:
    if self.enabled:
      self._writer.flush()
      self._writer.close()
      self._file.close()
