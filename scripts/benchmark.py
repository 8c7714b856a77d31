r"""Throughput benchmarks (not timed tests), one subcommand each.

    python scripts/benchmark.py pipeline [--root DIR --dataset wmveid863] [--steps 50]

`pipeline`: triplets/s of the training stream (P x K batches, 256x128 by default, the default
augmentations) from a folder tree; a synthetic tree is generated into a temp dir when no --root
is given. It reports the first pass (decode + resize + augment, cache cold), the cached steady
state (augment only), the same with random erasing on, and the eval stream. The per-core figure
is triplets per CPU-second of this process (all its threads), which stays meaningful on a
machine shared with other jobs, where wall-clock rates understate what the cores can do.

    python scripts/benchmark.py eval [--case wmveid863|10k|100k|all] [--no_loop]

`eval`: rank-metric evaluation (`facenet_jax/eval_benchmark.py`): the vectorised chunked path vs
the per-query NumPy loop at the WMVeID863 test size, 10k x 10k and 100k x 100k (chunked only),
with the peak resident memory.

Each subcommand is an `add_<name>_parser(subparsers)` / `run_<name>(args)` pair registered in
SUBCOMMANDS, so others are added without touching the existing ones.
"""

import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


# ------------------------------------------------------------------------------ pipeline


def add_pipeline_parser(subparsers) -> None:
  p = subparsers.add_parser('pipeline', help='triplets/s of the tf.data training stream')
  p.add_argument('--root', default='', help='dataset root (default: generate a synthetic tree)')
  p.add_argument('--dataset', default='wmveid863', help='reader for --root')
  p.add_argument('--height', type=int, default=256)
  p.add_argument('--width', type=int, default=128)
  p.add_argument('--num_ids_per_batch', type=int, default=8, help='P')
  p.add_argument('--num_instances', type=int, default=4, help='K')
  p.add_argument('--steps', type=int, default=50, help='cached (warm) steps to time')
  p.add_argument('--num_parallel_calls', type=int, default=-1, help='-1 = AUTOTUNE')
  p.add_argument('--synthetic_ids', type=int, default=48)
  p.add_argument('--synthetic_triplets_per_id', type=int, default=6)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _time_stream(stream, steps: int, key: str = 'rgb') -> tuple[int, float, float]:
  """(triplets, wall seconds, CPU seconds) to pull `steps` batches (real rows only)."""
  wall, cpu = time.perf_counter(), _cpu_seconds()
  rows = 0
  for _ in range(steps):
    batch = next(stream)
    rows += int(batch['mask'].sum()) if 'mask' in batch else batch[key].shape[0]
  return rows, time.perf_counter() - wall, _cpu_seconds() - cpu


def run_pipeline(args) -> None:
  from configs import default  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import records  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top

  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  tmp = None
  root, dataset = args.root, args.dataset
  if not root:
    tmp = tempfile.TemporaryDirectory()
    root, dataset = os.path.join(tmp.name, 'synthetic'), 'synthetic'
    t = time.perf_counter()
    synthetic.generate_synthetic_dataset(
        root, num_ids=args.synthetic_ids, triplets_per_id=args.synthetic_triplets_per_id,
        image_size=(args.height, args.width), seed=0)
    print(f'generated a synthetic tree ({args.height}x{args.width}) in '
          f'{time.perf_counter() - t:.1f} s: {root}')
  splits = records.load_splits(dataset, root)

  cfg = default.get_config().data
  cfg.image_size = (args.height, args.width)
  cfg.num_ids_per_batch = args.num_ids_per_batch
  cfg.num_instances = args.num_instances
  cfg.num_parallel_calls = args.num_parallel_calls
  cfg.cache_images = True
  batch = args.num_ids_per_batch * args.num_instances
  steps_per_epoch = pipeline.train_steps_per_epoch(splits.train, cfg)
  print(f'train: {len(splits.train)} triplets, {records.num_classes(splits.train)} ids, '
        f'batch {batch} (P={args.num_ids_per_batch} x K={args.num_instances}), '
        f'{steps_per_epoch} steps/epoch; {cores} cores available')

  def line(name, rows, wall, cpu):
    print(f'{name:<36} {rows / wall:8.1f} triplets/s  {rows / cpu:8.1f} triplets/CPU-s  '
          f'({rows} triplets, {wall:.2f} s wall, {cpu:.2f} s CPU)')

  pipeline.clear_cache()
  stream = pipeline.make_train_stream(splits.train, cfg)
  line('train, first epoch (decode+resize)', *_time_stream(stream, steps_per_epoch))
  line('train, cached (augment only)', *_time_stream(stream, args.steps))
  cfg.random_erasing_prob = 0.5
  stream = pipeline.make_train_stream(splits.train, cfg, start_step=steps_per_epoch)
  next(stream)
  line('train, cached, random erasing 0.5', *_time_stream(stream, args.steps))
  eval_recs = splits.query + splits.gallery
  num_eval = -(-len(eval_recs) // cfg.eval_batch_size)
  line('eval, first pass (decode+resize)',
       *_time_stream(pipeline.make_eval_stream(eval_recs, cfg), num_eval))
  if tmp is not None:
    tmp.cleanup()


# ------------------------------------------------------------------------------ eval


def add_eval_parser(subparsers) -> None:
  p = subparsers.add_parser('eval', help='rank-metric evaluation: vectorised vs per-query loop')
  p.add_argument('--case', default='wmveid863', choices=['wmveid863', '10k', '100k', 'all'],
                 help="preset size; 'all' runs each preset in its own process (own peak RSS)")
  p.add_argument('--num_query', type=int, default=0, help='override the preset')
  p.add_argument('--num_gallery', type=int, default=0, help='override the preset')
  p.add_argument('--dim', type=int, default=0, help='override the preset')
  p.add_argument('--chunk_size', type=int, default=1024)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--no_loop', action='store_true', help='skip the per-query loop reference')
  p.add_argument('--json_out', default='', help='append the result as one JSON line here')


def run_eval(args) -> None:
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  if args.case == 'all':
    for case in ('wmveid863', '10k', '100k'):
      cmd = [sys.executable, os.path.abspath(__file__), 'eval', '--case', case,
             '--chunk_size', str(args.chunk_size), '--repeats', str(args.repeats)]
      cmd += (['--no_loop'] if args.no_loop else []) + (
          ['--json_out', args.json_out] if args.json_out else [])
      subprocess.run(cmd, check=True)
    return
  from facenet_jax import eval_benchmark  # pylint: disable=g-import-not-at-top
  num_query, num_gallery, dim = eval_benchmark.CASES[args.case]
  result = eval_benchmark.benchmark_rank_metrics(
      args.num_query or num_query, args.num_gallery or num_gallery, args.dim or dim,
      chunk_size=args.chunk_size, run_loop_reference=not args.no_loop,
      repeats=1 if args.case == '100k' else args.repeats)
  print(eval_benchmark.format_result(result), flush=True)
  if args.json_out:
    with open(args.json_out, 'a') as f:
      f.write(json.dumps(result) + '\n')


SUBCOMMANDS = {
    'pipeline': (add_pipeline_parser, run_pipeline),
    'eval': (add_eval_parser, run_eval),
}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  subparsers = parser.add_subparsers(dest='command', required=True)
  for add_parser, _ in SUBCOMMANDS.values():
    add_parser(subparsers)
  args = parser.parse_args(argv)
  SUBCOMMANDS[args.command][1](args)


if __name__ == '__main__':
  main()
