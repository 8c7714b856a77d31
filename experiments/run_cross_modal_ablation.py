r"""Command line of the FSC-Net ablation (`experiments/cross_modal_ablation.py`, its docstring).

    python -m experiments.run_cross_modal_ablation --out runs/fsc_ablation [--seeds 3] [--rows all]
"""

from absl import app
from absl import flags

from facenet_jax import cli
from experiments import cross_modal_ablation as ablation

_OUT = flags.DEFINE_string('out', 'runs/fsc_ablation', 'Study folder (data, runs, report).')
_ROWS = flags.DEFINE_list('rows', ['all'], f'Rows: all or some of {list(ablation.ROWS)}.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per row (0..N-1).')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Train nothing; report finished runs.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  rows = list(ablation.ROWS) if _ROWS.value == ['all'] else _ROWS.value
  unknown = [r for r in rows if r not in ablation.ROWS]
  if unknown:
    raise app.UsageError(f'unknown rows {unknown}; known: {list(ablation.ROWS)}')
  results = ablation.run(_OUT.value, rows, range(_SEEDS.value), ablation.Settings(),
                         _REPORT_ONLY.value, log=lambda m: print(m, flush=True))
  print(ablation.format_table(ablation.summarize(results)))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
