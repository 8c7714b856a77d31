r"""The synthetic flare study: paper Tables 2 and 4 on the built-in data, with error bars.

    python -m experiments.run_flare_study --rows table2,single,table4 --seeds 3 --out runs/study

(from the repository root: `experiments/` is not installed, `-m` puts the root on the path).

Generates one synthetic dataset in OUT/data (when missing), trains every row of the named tables
(`table2`, `table4`, `single`, or row names of configs/ablation.py and `single_<modality>`) with
seeds 0..N-1 (the single-stream rows with `--single_seeds`), takes the measures of
`experiments/flare_study.py` (retrieval split by glare state, each branch alone, masks against the
true glare and an image-independent floor, the flare classifier, FCE rows without test-time FCE)
and writes OUT/results.md (Markdown tables of mean ± std), OUT/results.json and OUT/results.png.
Killed and started again with the same flags, it skips finished runs and resumes the unfinished
one from its checkpoints. Seed-major order: a stopped study has every row at the same seed count.

The default settings (quarter-width ResNet-18 streams at 128x64 with last stride 1, so the layer-4
mask grid is 8x4; 120 ids x 8 triplets with 22% glared; batch 8x4; 60 epochs = 1200 steps) are
the README study's.
"""

import os
import shlex
import sys
import time

from absl import app
from absl import flags

from experiments import flare_study as study
from facenet_jax import cli

_DEFAULTS = study.StudySettings()
_ROWS = flags.DEFINE_string('rows', 'table2', "Row sets ('table2', 'table4') and/or row names, "
                            'comma separated.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per row (0..N-1).')
_SINGLE_SEEDS = flags.DEFINE_integer('single_seeds', 1, 'Seeds of the single-stream rows.')
_OUT = flags.DEFINE_string('out', 'runs/study', 'Study folder (data, runs, results).')
_NUM_IDS = flags.DEFINE_integer('num_ids', _DEFAULTS.num_ids, 'Identities (a third are test ids).')
_TRIPLETS = flags.DEFINE_integer('triplets_per_id', _DEFAULTS.triplets_per_id, 'Triplets per id.')
_FLARE = flags.DEFINE_float('flare_fraction', _DEFAULTS.flare_fraction,
                            'Fraction of triplets with glare in RGB/NI.')
_NIGHT = flags.DEFINE_float('night_fraction', _DEFAULTS.night_fraction, 'Fraction of night triplets.')
_DATA_SEED = flags.DEFINE_integer('data_seed', _DEFAULTS.data_seed, 'Dataset generator seed.')
_IMAGE_SIZE = flags.DEFINE_list('image_size', [str(v) for v in _DEFAULTS.image_size],
                                'Image height,width.')
_DEPTH = flags.DEFINE_integer('depth', _DEFAULTS.depth, 'ResNet depth of each stream.')
_WIDTH = flags.DEFINE_float('width_multiplier', _DEFAULTS.width_multiplier,
                            'ResNet width multiplier of each stream.')
_LAST_STRIDE = flags.DEFINE_integer('last_stride', _DEFAULTS.last_stride, 'Last ResNet stride.')
_SIMILARITY = flags.DEFINE_enum('mask_similarity', _DEFAULTS.mask_similarity,
                                ['signed', 'sigmoid'], "Eq. 5's M_com reading (model.mask_similarity).")
_BATCH = flags.DEFINE_list('batch', [str(_DEFAULTS.num_ids_per_batch),
                                     str(_DEFAULTS.num_instances)], 'P,K of the P x K batches.')
_EPOCHS = flags.DEFINE_integer('num_epochs', _DEFAULTS.num_epochs, 'Training epochs per run.')
_LR = flags.DEFINE_float('base_lr', _DEFAULTS.base_lr, 'Adam learning rate.')
_MAX_STEPS = flags.DEFINE_integer('max_steps', 0, 'Cap on training steps per run (0: none).')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Train nothing; report the finished runs.')


def _pair(values, name):
  try:
    a, b = (int(v) for v in values)
  except ValueError:
    raise app.UsageError(f'--{name} must be two integers, got {",".join(values)}') from None
  return a, b


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  start = time.time()
  import jax  # pylint: disable=g-import-not-at-top
  # Seeds of one row compile the same programs: compile them once.
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', os.path.join(_OUT.value, '.jax_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  num_ids_per_batch, num_instances = _pair(_BATCH.value, 'batch')
  settings = study.StudySettings(
      num_ids=_NUM_IDS.value, triplets_per_id=_TRIPLETS.value, flare_fraction=_FLARE.value,
      night_fraction=_NIGHT.value, data_seed=_DATA_SEED.value,
      image_size=_pair(_IMAGE_SIZE.value, 'image_size'), depth=_DEPTH.value,
      width_multiplier=_WIDTH.value, last_stride=_LAST_STRIDE.value,
      mask_similarity=_SIMILARITY.value, num_ids_per_batch=num_ids_per_batch,
      num_instances=num_instances, num_epochs=_EPOCHS.value,
      base_lr=_LR.value, max_steps=_MAX_STEPS.value)
  try:
    rows = study.expand_rows(_ROWS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  command = 'python -m experiments.run_flare_study ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])
  results = study.run_study(_OUT.value, rows, range(_SEEDS.value), settings,
                            log=lambda msg: print(msg, flush=True),
                            report_only=_REPORT_ONLY.value,
                            seeds_of=lambda row: range(_SINGLE_SEEDS.value if row in
                                                       study.SINGLE_ROWS else _SEEDS.value))
  if not results:
    raise app.UsageError(f'no finished runs in {_OUT.value} for --rows {_ROWS.value}')
  files = study.write_report(_OUT.value, results, settings, command)
  print()
  print(open(files['markdown']).read())
  print(f'This invocation: {(time.time() - start) / 60:.1f} min. Files: ' +
        ', '.join(files.values()))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
