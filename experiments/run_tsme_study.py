r"""Command line of the TSME study (`experiments/tsme_study.py`, its docstring).

    python -m experiments.run_tsme_study --out runs/tsme_study [--seeds 3] [--rows all]
"""

from absl import app
from absl import flags

from facenet_jax import cli
from experiments import cross_modal_ablation
from experiments import tsme_study

_OUT = flags.DEFINE_string('out', 'runs/tsme_study', 'Study folder (data, stage 1, runs, report).')
_ROWS = flags.DEFINE_list('rows', ['all'], f'Rows: all or some of {list(tsme_study.ROWS)}.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per row (0..N-1).')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Train nothing; report finished runs.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  rows = list(tsme_study.ROWS) if _ROWS.value == ['all'] else _ROWS.value
  unknown = [r for r in rows if r not in tsme_study.ROWS]
  if unknown:
    raise app.UsageError(f'unknown rows {unknown}; known: {list(tsme_study.ROWS)}')
  study = tsme_study.study()
  results = cross_modal_ablation.run_study(_OUT.value, study, rows, range(_SEEDS.value),
                                           _REPORT_ONLY.value, log=lambda m: print(m, flush=True))
  print(cross_modal_ablation.format_table(
      cross_modal_ablation.summarize(results, study.rows, study.metrics), study.metrics))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
