"""What a person sees: the start-up block, progress lines, checkpoint lines, metric tables.

Everything else (every scalar, the resolved config) goes to TensorBoard and `metrics.jsonl`
(`run_log.RunLog`) and `config.json`. `quiet_library_logs` keeps the INFO chatter of absl, orbax,
TensorFlow and XLA off the console unless `--verbose`.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
from typing import Any, Mapping, Sequence

from absl import logging

# Console names and order of the loss terms (metrics.jsonl keeps the full names); terms of other
# models follow in alphabetical order.
SHORT_NAMES = {'triplet': 'tri', 'relation': 'rel'}
TERM_ORDER = ('id', 'triplet', 'flare', 'ic', 'relation')
_LIBRARY_LOGGERS = ('orbax', 'jax', 'absl', 'tensorflow', 'etils', 'clu')


def quiet_library_logs(verbose: bool = False) -> None:
  """Library logs at WARNING and above only, unless `verbose` (then absl INFO and everything).

  Must run before TensorFlow is imported for its C++ logs (TF_CPP_MIN_LOG_LEVEL) to obey.
  The level is set, not defaulted: importing jax first has already defaulted it to '1' (which
  lets TensorFlow's INFO lines through), so a default here would depend on the import order.
  A value above 2 (quieter still) is kept. TensorFlow's oneDNN start-up line, which no level
  silences, is kept off by `input_pipeline` itself (its `__init__`).
  """
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '0' if verbose else _at_least_two(
      os.environ.get('TF_CPP_MIN_LOG_LEVEL', ''))
  level = std_logging.INFO if verbose else std_logging.WARNING
  logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
  for name in _LIBRARY_LOGGERS:
    std_logging.getLogger(name).setLevel(level)


def _at_least_two(level: str) -> str:
  return level if level.strip().isdigit() and int(level) >= 2 else '2'


def say(line: str = '') -> None:
  """One console line, flushed at once (so a piped log keeps up)."""
  print(line, file=sys.stdout, flush=True)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def format_progress(step: int, total_steps: int, steps_per_epoch: int, scalars: Mapping[str, float],
                    terms: Sequence[str], steps_per_sec: float) -> str:
  """`step 120/1200 ep 2.0 | loss 3.41 id 2.10 tri 0.90 flare 0.31 ic 0.10 | lr 3.5e-04 |
  4.1 it/s | ETA 0:12:03` from the averaged train scalars (keys without the 'train/' prefix)."""
  rank = lambda t: (TERM_ORDER.index(t) if t in TERM_ORDER else len(TERM_ORDER), t)
  parts = ' '.join(f'{SHORT_NAMES.get(t, t)} {scalars[t]:.3f}' for t in sorted(terms, key=rank)
                   if t in scalars)
  eta = (total_steps - step) / max(steps_per_sec, 1e-9)
  return (f'step {step}/{total_steps} ep {step / steps_per_epoch:.1f} | '
          f'loss {scalars["loss"]:.3f} {parts} | lr {scalars["learning_rate"]:.1e} | '
          f'{steps_per_sec:.2f} it/s | ETA {format_duration(eta)}')


def format_metric_table(rows: Mapping[str, Mapping[str, Any]], title: str) -> str:
  """A percent table, one row per evaluated split: mAP, mINP, R-1/5/10 and the query counts.

  rows: {split name: a protocol's metrics (fractions, 'cmc', 'num_valid_queries', ...)}.
  """
  from facenet_jax.eval import protocols  # pylint: disable=g-import-not-at-top
  header = f'{"":<8}{"mAP":>8}{"mINP":>8}{"R-1":>8}{"R-5":>8}{"R-10":>8}  queries (skipped)'
  lines = [title + _cmc_note(rows.values()), header]
  for name, metrics in rows.items():
    summary = protocols.rank_summary(metrics)
    values = ''.join(f'{100.0 * summary[k]:>8.2f}' for k in ('mAP', 'mINP', 'R1', 'R5', 'R10'))
    lines.append(f'{name:<8}{values}  {metrics["num_valid_queries"]} '
                 f'({metrics["num_skipped_queries"]})')
  return '\n'.join(lines)


def _cmc_note(rows) -> str:
  """'  [CMC: standard]', '  [CMC: distinct ids, mean of 10 gallery trials]', or ''."""
  modes = {m.get('cmc_mode') for m in rows} - {None}
  trials = {m.get('num_trials', 1) for m in rows}
  if not modes:
    return ''
  note = 'CMC: ' + ', '.join(sorted(mode.replace('_', ' ') for mode in modes))
  if max(trials) > 1:
    note += f', mean of {max(trials)} gallery trials'
  return f'  [{note}]'


def format_startup(exp, state_step: int, num_params: int, workdir: str) -> str:
  """The start-up block: model, data, devices, schedule, parameters, where the config is."""
  import jax  # pylint: disable=g-import-not-at-top
  config = exp.config
  devices = exp.mesh.devices.size
  kind = jax.devices()[0].platform
  val = (f', {len(exp.val_query)} val queries x {len(exp.val_gallery)} gallery'
         if exp.val_query else '')
  resume = f'resuming at step {state_step}' if state_step else 'starting at step 0'
  return '\n'.join([
      f'{config.model.name} on {config.data.dataset} ({config.data.root or config.data.source}): '
      f'{exp.num_classes} train ids, {len(exp.train_records)} train samples{val}, '
      f'{len(exp.query)} queries x {len(exp.gallery)} gallery',
      f'{devices} {kind} device{"s" if devices > 1 else ""} x {jax.process_count()} '
      f'process{"es" if jax.process_count() > 1 else ""}, batch '
      f'{config.data.num_ids_per_batch}x{config.data.num_instances} = {exp.batch_size}, '
      f'{exp.steps_per_epoch} steps/epoch, {exp.total_steps} steps, '
      f'{num_params / 1e6:.2f}M parameters; {resume}',
      f'config: {os.path.join(workdir, "config.json")}  (scalars: metrics.jsonl, TensorBoard)',
  ])
