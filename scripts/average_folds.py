r"""Average the test metrics of several training runs: RegDB's 10 splits (one model per split).

    for t in 1 2 3 4 5 6 7 8 9 10; do
      python scripts/train.py --config configs/agw_regdb.py --workdir runs/agw_regdb/trial$t \
          --config.data.root=/data/RegDB --config.data.trial=$t
    done
    python scripts/average_folds.py runs/agw_regdb/trial*

For every workdir: the test metrics logged at its best checkpoint's step (`metrics.jsonl`; the best
checkpoint is the one training kept: by validation mAP when the config has a validation split,
else the latest, since model selection never looks at the test split). Prints one row per run,
the mean and the standard deviation (percent); `--json` writes them too.
"""

import json
import os

from absl import app
from absl import flags

from facenet_jax import cli

_JSON = flags.DEFINE_string('json', '', 'Also write the rows and the mean here.')
KEYS = ('mAP', 'mINP', 'R1', 'R5', 'R10')


def best_test_metrics(workdir: str) -> tuple[int, dict[str, float]]:
  """(best step, {'mAP', 'mINP', 'R1', 'R5', 'R10'}) of one workdir; errors name the workdir."""
  from facenet_jax import checkpointing  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(workdir, 1, read_only=True)
  step = ckpt.best_step()
  ckpt.close()
  if step is None:
    raise ValueError(f'{workdir}: no best checkpoint (has the run evaluated yet?)')
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.isfile(path):
    raise ValueError(f'{path}: missing')
  found = None
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if row.get('step') == step and 'test/mAP' in row:
        found = row
  if found is None:
    raise ValueError(f'{path}: no test metrics logged at the best step {step}')
  return step, {k: float(found[f'test/{k}']) for k in KEYS}


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError('give the workdirs of the runs to average')
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows = {w: best_test_metrics(w) for w in workdirs}
  width = max(len(w) for w in workdirs) + 2
  print(f'{"run":<{width}}{"step":>6}' + ''.join(f'{k:>8}' for k in KEYS))
  for w, (step, m) in rows.items():
    print(f'{w:<{width}}{step:>6}' + ''.join(f'{100 * m[k]:>8.2f}' for k in KEYS))
  mean = {k: float(np.mean([m[k] for _, m in rows.values()])) for k in KEYS}
  std = {k: float(np.std([m[k] for _, m in rows.values()])) for k in KEYS}
  print(f'{"mean":<{width}}{"":>6}' + ''.join(f'{100 * mean[k]:>8.2f}' for k in KEYS))
  print(f'{"std":<{width}}{"":>6}' + ''.join(f'{100 * std[k]:>8.2f}' for k in KEYS))
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump({'runs': {w: {'step': s, **m} for w, (s, m) in rows.items()}, 'mean': mean,
                 'std': std}, f, indent=1)
  return 0


if __name__ == '__main__':
  app.run(cli.with_expected_errors(main), flags_parser=cli.parse_flags)
