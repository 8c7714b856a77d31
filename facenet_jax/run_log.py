"""A run's record on disk: every scalar to TensorBoard and to `metrics.jsonl`, chief only."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Mapping

METRICS_FILE = 'metrics.jsonl'


def _rows(path: pathlib.Path) -> list[dict]:
  """The readable rows of a metrics file (a line cut by a kill mid-write is dropped)."""
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      continue
  return rows


def drop_rows_after(workdir: str | pathlib.Path, step: int) -> int:
  """Rewrite `metrics.jsonl` without rows of steps > `step` (atomically); returns rows dropped.

  A resumed run replays the steps after its checkpoint, so their rows would appear twice.
  """
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.is_file():
    return 0
  text = path.read_text()
  rows = _rows(path)
  kept = [r for r in rows if r.get('step', 0) <= step]
  if len(kept) == len(rows) and (not text or text.endswith('\n')):
    return 0      # nothing to drop, and no line cut by a kill
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(''.join(json.dumps(r) + '\n' for r in kept))
  os.replace(tmp, path)
  return len(rows) - len(kept)


def has_scalar(workdir: str | pathlib.Path, step: int, key: str) -> bool:
  """Whether `metrics.jsonl` holds `key` at `step` (e.g. whether that evaluation happened)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  return path.is_file() and any(r.get('step') == step and key in r for r in _rows(path))


class RunLog:
  """`write(step, scalars)` appends one JSON line and one TensorBoard event per call.

  Only the chief process writes (`enabled`); the others accept the calls and drop them. With
  `resume_step`, rows of later steps (to be replayed) are dropped first: one row per logged step
  after any number of resumes.
  """

  def __init__(self, workdir: str | pathlib.Path, enabled: bool = True,
               resume_step: int | None = None):
    self.enabled = enabled
    self._file = None
    self._writer = None
    if enabled:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      if resume_step is not None:
        drop_rows_after(workdir, resume_step)
      self._writer = metric_writers.SummaryWriter(str(workdir))
      self._file = (pathlib.Path(workdir) / METRICS_FILE).open('a')

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
