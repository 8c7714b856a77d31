r"""Throughput benchmarks (not timed tests), one subcommand each.

    python -m benchmarks.benchmark pipeline [--root DIR --dataset wmveid863] [--steps 50]

`pipeline`: triplets/s of the training stream (P x K batches, 256x128 by default, the default
augmentations) from a folder tree; a synthetic tree is generated into a temp dir when no --root
is given. It reports the first pass (decode + resize + augment, cache cold), the cached steady
state (augment only) and the same with random erasing on, each for both batch forms (uint8 for
the device to normalise, the default; float32 normalised on the host), and the eval stream. The per-core figure
is triplets per CPU-second of this process (all its threads), which stays meaningful on a
machine shared with other jobs, where wall-clock rates understate what the cores can do.

    python -m benchmarks.benchmark eval [--case wmveid863|10k|100k|all] [--no_loop]

`eval`: rank-metric evaluation (`benchmarks/eval_benchmark.py`): the vectorised chunked path vs
the per-query NumPy loop at the WMVeID863 test size, 10k x 10k and 100k x 100k (chunked only),
with the peak resident memory.

    python -m benchmarks.benchmark train --config configs/wmveid863.py [--batch P,K] [--dtype bf16|f32]
        [--depth 50] [--image_size 256,128] [--steps N] [--vs torch] [--config.a.b=value]

`train`: the jitted three-stream train step (`facenet_jax.steps.make_train_step`: model, losses,
optimiser; state donated) on device-resident synthetic batches: compile time, median step time,
triplets/s, images/s, MFU from the analytic FLOP count (`benchmarks/flops.py`, also printed next to
XLA's own count), peak memory; `--vs torch` times the PyTorch mirror
(`benchmarks/torch_facenet.py`) on the same shapes in the same process. `--count_ops gpu` only
counts the step's convolutions and dot products as traced for a GPU (see
`model.conv_formulation`). The official code's ViT-B/16 model: `train --config configs/official_wmveid863.py` (model 'facenet_vit'; `--vs torch`
mirrors only the ResNet model).

Each subcommand is an `add_<name>_parser(subparsers)` / `run_<name>(args)` pair registered in
SUBCOMMANDS, so others are added without touching the existing ones.
"""

import argparse
import glob
import os
import resource
import sys
import tempfile
import time

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
    print(f'{name:<52} {rows / wall:8.1f} triplets/s  {rows / cpu:8.1f} triplets/CPU-s  '
          f'({rows} triplets, {wall:.2f} s wall, {cpu:.2f} s CPU)')

  pipeline.clear_cache()
  stream = pipeline.make_train_stream(splits.train, cfg)
  line('train, first epoch (decode+resize)', *_time_stream(stream, steps_per_epoch))
  # Both forms of a batch: uint8 finished on the device (data.normalize_on_device, the default)
  # and float32 normalised (and erased) by tf.data on the host.
  for on_device in (True, False):
    cfg.normalize_on_device = on_device
    form = 'uint8' if on_device else 'float32 (host-normalised)'
    for erasing in (0.0, 0.5):
      cfg.random_erasing_prob = erasing
      stream = pipeline.make_train_stream(splits.train, cfg, start_step=steps_per_epoch)
      next(stream)
      name = f'train, cached, {form}' + (', erasing 0.5' if erasing else '')
      line(name, *_time_stream(stream, args.steps))
  cfg.random_erasing_prob = 0.0
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
      cmd = [sys.executable, '-m', 'benchmarks.benchmark', 'eval', '--case', case,
             '--chunk_size', str(args.chunk_size), '--repeats', str(args.repeats)]
      cmd += (['--no_loop'] if args.no_loop else []) + (
          ['--json_out', args.json_out] if args.json_out else [])
      subprocess.run(cmd, check=True)
    return
  from benchmarks import eval_benchmark  # pylint: disable=g-import-not-at-top
  num_query, num_gallery, dim = eval_benchmark.CASES[args.case]
  result = eval_benchmark.benchmark_rank_metrics(
      args.num_query or num_query, args.num_gallery or num_gallery, args.dim or dim,
      chunk_size=args.chunk_size, run_loop_reference=not args.no_loop,
      repeats=1 if args.case == '100k' else args.repeats)
  print(eval_benchmark.format_result(result), flush=True)
  if args.json_out:
    with open(args.json_out, 'a') as f:
      f.write(json.dumps(result) + '\n')


# ------------------------------------------------------------------------------ train

# Dense peak FLOP/s per device kind (vendor figures). H200 has the H100's compute units.
PEAK_TFLOPS = {
    'H100': {'bfloat16': 989.0, 'float32': 67.0},   # SXM: bf16 tensor-core dense; f32 non-tensor
    'H200': {'bfloat16': 989.0, 'float32': 67.0},
}
# WMVeID863: 575 training ids minus the 50 held out for validation in configs/wmveid863.py.
DEFAULT_NUM_CLASSES = 525


def add_train_parser(subparsers) -> None:
  p = subparsers.add_parser(
      'train', help='jitted FACENet train step on device-resident synthetic batches',
      description='Extra --config.group.field=value arguments override the config.')
  p.add_argument('--config', default='configs/wmveid863.py', help='config file with get_config()')
  p.add_argument('--batch', default='', help='P,K (default: the config\'s)')
  p.add_argument('--dtype', default='', choices=['', 'bf16', 'f32'],
                 help='model.dtype (default: the config\'s)')
  p.add_argument('--depth', type=int, default=0, help='model.depth (default: the config\'s)')
  p.add_argument('--image_size', default='', help='H,W (default: the config\'s)')
  p.add_argument('--num_classes', type=int, default=DEFAULT_NUM_CLASSES)
  p.add_argument('--steps', type=int, default=20, help='timed steps (after compilation)')
  p.add_argument('--peak_tflops', type=float, default=0.0,
                 help='device peak TFLOP/s for MFU (default: from a table of known devices)')
  p.add_argument('--vs', default='', choices=['', 'torch'],
                 help='also time the PyTorch mirror (benchmarks/torch_facenet.py)')
  p.add_argument('--torch_compile', action='store_true', help='torch.compile the torch model')
  p.add_argument('--count_ops', default='', metavar='BACKEND',
                 help="instead of timing: count the convolutions and dot products of the train "
                      "step as traced for BACKEND (e.g. 'gpu'; nothing is compiled, so any "
                      "machine can answer)")


def _load_config(path: str, overrides: list[str]):
  """`get_config()` of the file at `path`, with `--config.a.b=value` overrides applied."""
  import ast  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('benchmark_config', path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f'--config {path!r} is not a config file')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for arg in overrides:
    if not arg.startswith('--config.') or '=' not in arg:
      raise ValueError(f'unexpected argument {arg!r} (overrides look like --config.a.b=value)')
    key, value = arg[len('--config.'):].split('=', 1)
    *groups, field = key.split('.')
    node = config
    for g in groups:
      node = node[g]
    if field not in node:
      raise KeyError(f'--config.{key}: the config has no field {key!r}')
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed = value
    node[field] = parsed
  return config


def _device_peak_tflops(device, dtype: str, override: float) -> float | None:
  if override > 0:
    return override
  kind = getattr(device, 'device_kind', '')
  for name, peaks in PEAK_TFLOPS.items():
    if name in kind:
      return peaks[dtype]
  return None


def _peak_memory(device) -> tuple[str, int]:
  """('device', peak bytes in use) where the backend reports it, else ('process max RSS', bytes)."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and 'peak_bytes_in_use' in stats:
    return 'device peak', int(stats['peak_bytes_in_use'])
  return 'process max RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _model_name(model_config) -> str:
  if model_config.name == 'facenet_vit':
    return (f'ViT (D {model_config.embed_dim}, depth {model_config.depth}, patch '
            f'{model_config.patch_size}; cross-attention {model_config.cross_attention_heads}'
            f' x {model_config.cross_attention_dim_head})')
  return f'ResNet{model_config.depth}'


def synthetic_train_batch(num_ids: int, num_instances: int, image_size: tuple[int, int],
                          num_classes: int, seed: int) -> dict:
  """A random P x K batch in NumPy: images N(0, 1) `[B, H, W, 3]`, K rows per each of P distinct
  pids, random flare bits `[B, 2]` (no TensorFlow on this path)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from input_pipeline.records import MODALITIES  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  b = num_ids * num_instances
  h, w = image_size
  pids = rng.choice(num_classes, size=num_ids, replace=num_classes < num_ids)
  batch = {s: rng.standard_normal((b, h, w, 3), dtype=np.float32) for s in MODALITIES}
  batch['pid'] = np.repeat(pids, num_instances).astype(np.int32)
  batch['flare'] = rng.integers(0, 2, size=(b, 2)).astype(np.int32)
  return batch


def configure_train(config, batch: str = '', image_size: str = '', depth: int = 0, dtype: str = ''):
  """Apply the `train` subcommand's shape options ('P,K', 'H,W', depth, 'bf16'|'f32') to a config."""
  if batch:
    config.data.num_ids_per_batch, config.data.num_instances = map(int, batch.split(','))
  if image_size:
    config.data.image_size = tuple(map(int, image_size.split(',')))
  if depth:
    config.model.depth = depth
  if dtype:
    config.model.dtype = {'bf16': 'bfloat16', 'f32': 'float32'}[dtype]
  return config


# Steps per epoch of the benchmarks' LR schedule: it shapes only the schedule, which affects
# neither the timings nor the traced operations.
SCHEDULE_STEPS_PER_EPOCH = 100


def _optimizer_and_train_step(config, model, params):
  """`(tx, train_step)`: the optimizer of `config` for `params` (arrays or shapes) and the
  unjitted train step of `model` with its losses (`facenet_jax.steps.make_train_step`)."""
  from facenet_jax import models  # pylint: disable=g-import-not-at-top
  from facenet_jax import optim  # pylint: disable=g-import-not-at-top
  from facenet_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
  epochs = config.train.num_epochs
  lr_fn = optim.create_learning_rate_fn(config.optim, SCHEDULE_STEPS_PER_EPOCH, epochs)
  tx = optim.create_optimizer(config.optim, params, SCHEDULE_STEPS_PER_EPOCH, epochs)
  step = steps_lib.make_train_step(model, models.get_spec(config.model.name), tx, config.loss,
                                   lr_fn)
  return tx, step


def measure_jax_train(config, num_classes: int, steps: int, peak_tflops: float = 0.0,
                      log=print, trace_dir: str | None = None, trace_steps: int = 3) -> dict:
  """Compile and time the jitted train step of `config`'s model on device-resident batches.

  (A benchmark's main part, kept linear so the logged lines follow the code.) Returns the
  figures as a dict (times in seconds) plus 'host_batch' (a NumPy batch for the torch mirror).
  With `trace_dir`, `trace_steps` more steps run under `jax.profiler.trace` after the timed ones
  (perfetto trace included; `benchmarks/trace_summary.py` reads it) and 'trace' holds its path.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from facenet_jax import models  # pylint: disable=g-import-not-at-top
  from facenet_jax import sharding  # pylint: disable=g-import-not-at-top
  from facenet_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
  from facenet_jax.train_state import create_train_state  # pylint: disable=g-import-not-at-top

  p, k = config.data.num_ids_per_batch, config.data.num_instances
  batch_size, image_size = p * k, tuple(config.data.image_size)
  device = jax.devices()[0]
  mesh = sharding.create_mesh()
  sharding.check_batch_divisible(batch_size, mesh, '--batch P,K')
  log(f'device: {jax.device_count()} x {device.device_kind} ({jax.default_backend()}), '
      f'jax {jax.__version__}; model {_model_name(config.model)} x3, {config.model.dtype}, '
      f'{image_size[0]}x{image_size[1]}, batch {batch_size} (P={p} x K={k}), '
      f'{num_classes} classes')
  model = models.build_model(config.model, num_classes)
  t = time.perf_counter()
  variables = jax.jit(lambda r: models.init_variables(model, image_size, r))(
      jax.random.PRNGKey(config.train.seed))
  tx, train_step = _optimizer_and_train_step(config, model, variables['params'])
  state = sharding.replicate(create_train_state(variables, tx, jax.random.PRNGKey(1)), mesh)
  del variables
  host_batches = [synthetic_train_batch(p, k, image_size, num_classes, seed) for seed in range(2)]
  batches = [sharding.shard_batch(b, mesh) for b in host_batches]
  jax.block_until_ready((state, batches))
  num_params = models.parameter_counts(model, image_size)['total']
  log(f'init: {time.perf_counter() - t:.1f} s; params {num_params:,} (JAX)')

  step = steps_lib.jit_train_step(train_step, mesh)
  t = time.perf_counter()
  compiled = step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - t
  state, metrics = compiled(state, batches[0])  # first call: buffers, autotuning
  jax.block_until_ready((state, metrics))
  times = []
  for i in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batches[(i + 1) % len(batches)])
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t)
  # The training loop dispatches the next step before the last one finishes (it reads metrics
  # only at log steps), so the throughput figures use steps dispatched back to back with one
  # wait at the end; the per-step waits above add the host's dispatch time to every step.
  t = time.perf_counter()
  for i in range(steps):
    state, metrics = compiled(state, batches[i % len(batches)])
  jax.block_until_ready((state, metrics))
  pipelined = (time.perf_counter() - t) / steps
  trace = None
  if trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for i in range(trace_steps):
        state, metrics = compiled(state, batches[i % len(batches)])
      jax.block_until_ready((state, metrics))
    found = sorted(glob.glob(os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'),
                             recursive=True), key=os.path.getmtime)
    trace = found[-1] if found else None
  loss = float(metrics['loss'])
  if not np.isfinite(loss):
    raise FloatingPointError(f'train loss is not finite: {loss}')
  median = float(np.median(times))
  analytic = flops_lib.train_step_flops(config.model, num_classes, image_size, batch_size)
  xla = flops_lib.xla_flops(compiled)
  peak = _device_peak_tflops(device, config.model.dtype, peak_tflops)
  mem_kind, mem_bytes = _peak_memory(device)
  achieved = analytic / pipelined / 1e12
  return {'device': device.device_kind, 'backend': jax.default_backend(), 'jax': jax.__version__,
          'model': _model_name(config.model), 'dtype': config.model.dtype,
          'image_size': list(image_size), 'batch': [p, k], 'params': num_params,
          'compile_s': compile_s, 'step_times_s': times, 'median_s': median,
          'pipelined_s': pipelined, 'triplets_per_s': batch_size / pipelined, 'loss': loss,
          'analytic_flops': analytic,
          'xla_flops': xla, 'achieved_tflops': achieved,
          'mfu': achieved / peak if peak else None, 'peak_tflops': peak,
          'memory_kind': mem_kind, 'memory_bytes': mem_bytes, 'trace': trace,
          'host_batch': host_batches[0]}


def measure_torch_train(config, num_classes: int, host_batch, steps: int,
                        compile_model: bool = False) -> dict:
  """The PyTorch mirror (`benchmarks/torch_facenet.py`) on the same batch: autocast bf16 when the
  config's dtype is bfloat16, channels_last, optionally `torch.compile`d."""
  from benchmarks import torch_facenet  # pylint: disable=g-import-not-at-top
  res = torch_facenet.benchmark_torch(
      config.model, num_classes, host_batch, steps, config.model.dtype,
      lr=config.optim.base_lr, weight_decay=config.optim.weight_decay,
      margin=config.loss.triplet_margin, compile_model=compile_model)
  batch_size = config.data.num_ids_per_batch * config.data.num_instances
  return {**res, 'triplets_per_s': batch_size / res['pipelined_s'], 'compiled': compile_model}


def count_train_step_ops(config, num_classes: int, backend: str) -> dict[str, int]:
  """Convolutions and dot products in the jaxpr of `config`'s train step (forward, backward,
  update), traced as for `backend`: the ResNet streams pick their convolution formulation
  from the backend at trace time (`facenet_jax.models.resnet.conv_formulation`). Only shapes are
  used; nothing is initialised or compiled."""
  import jax  # pylint: disable=g-import-not-at-top
  from facenet_jax import models  # pylint: disable=g-import-not-at-top
  from facenet_jax.models import resnet  # pylint: disable=g-import-not-at-top
  from facenet_jax.train_state import create_train_state  # pylint: disable=g-import-not-at-top
  p, k = config.data.num_ids_per_batch, config.data.num_instances
  image_size = tuple(config.data.image_size)
  model = models.build_model(config.model, num_classes)
  variables = jax.eval_shape(lambda r: models.init_variables(model, image_size, r),
                             jax.random.PRNGKey(0))
  tx, step = _optimizer_and_train_step(config, model, variables['params'])
  state = jax.eval_shape(lambda v: create_train_state(v, tx, jax.random.PRNGKey(1)), variables)
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                       synthetic_train_batch(p, k, image_size, num_classes, 0))
  real_backend = resnet.jax.default_backend
  resnet.jax.default_backend = lambda: backend
  try:
    jaxpr = jax.make_jaxpr(step)(state, batch)
  finally:
    resnet.jax.default_backend = real_backend
  counts = primitive_counts(jaxpr.jaxpr)
  return {'convolutions': counts.get('conv_general_dilated', 0),
          'dots': counts.get('dot_general', 0)}


def primitive_counts(jaxpr) -> dict[str, int]:
  """How many times each primitive runs in `jaxpr`, counting a sub-jaxpr (pjit, custom_vjp, ...)
  once per equation that calls it (a scan's or loop's body once, not per iteration)."""
  import collections  # pylint: disable=g-import-not-at-top
  counts = collections.Counter()

  def visit(j):
    for eqn in j.eqns:
      counts[eqn.primitive.name] += 1
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          inner = getattr(sub, 'jaxpr', sub)      # ClosedJaxpr -> Jaxpr
          if hasattr(inner, 'eqns'):
            visit(inner)
  visit(jaxpr)
  return dict(counts)


def run_train(args) -> None:
  """Time the jitted train step (and the torch mirror with `--vs torch`); prints one report."""
  config = configure_train(_load_config(args.config, args.overrides), args.batch,
                           args.image_size, args.depth, args.dtype)
  if args.count_ops:
    ops = count_train_step_ops(config, args.num_classes, args.count_ops)
    print(f'train step traced for {args.count_ops!r}: {ops["convolutions"]} convolutions, '
          f'{ops["dots"]} dot products', flush=True)
    return
  res = measure_jax_train(config, args.num_classes, args.steps, args.peak_tflops,
                          log=lambda line: print(line, flush=True))
  times, median = res['step_times_s'], res['median_s']
  print(f'compile: {res["compile_s"]:.1f} s', flush=True)
  print(f'step time (median of {args.steps}, waiting for each): {median * 1e3:.1f} ms  '
        f'[min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}]; loss {res["loss"]:.4f}')
  print(f'step time ({args.steps} dispatched back to back): {res["pipelined_s"] * 1e3:.1f} ms')
  print(f'throughput (back to back): {res["triplets_per_s"]:.2f} triplets/s, '
        f'{3 * res["triplets_per_s"]:.2f} images/s')
  xla = res['xla_flops']
  xla_text = f'{xla / 1e9:.1f} GFLOP' if xla is not None else 'unavailable'
  print(f'model FLOPs/step: analytic {res["analytic_flops"] / 1e9:.1f} GFLOP (conv+dense, '
        f'3 x forward); XLA cost_analysis {xla_text}')
  if res['mfu'] is not None:
    print(f'MFU: {100 * res["mfu"]:.2f}% ({res["achieved_tflops"]:.3f} TFLOP/s of '
          f'{res["peak_tflops"]:g} peak)')
  else:
    print(f'MFU: unknown (no peak for {res["device"]!r}; pass --peak_tflops); achieved '
          f'{res["achieved_tflops"]:.3f} TFLOP/s')
  print(f'memory: {res["memory_kind"]} {res["memory_bytes"] / 2**30:.2f} GiB', flush=True)
  if args.vs == 'torch':
    torch_res = measure_torch_train(config, args.num_classes, res['host_batch'], args.steps,
                                    args.torch_compile)
    print(f'torch: device {torch_res["device"]}, {torch_res["threads"]} threads, params '
          f'{torch_res["params"]:,} (JAX {res["params"]:,}); warm-up '
          f'{torch_res["warmup_s"]:.1f} s; step time (median of {args.steps}, waiting for '
          f'each): {torch_res["median_s"] * 1e3:.1f} ms; back to back '
          f'{torch_res["pipelined_s"] * 1e3:.1f} ms; {torch_res["triplets_per_s"]:.2f} '
          f'triplets/s; loss {torch_res["loss"]:.4f}')
    print(f'JAX/torch throughput: {torch_res["pipelined_s"] / res["pipelined_s"]:.2f}x '
          f'(back to back; {torch_res["median_s"] / median:.2f}x waiting for each step)',
          flush=True)


SUBCOMMANDS = {
    'pipeline': (add_pipeline_parser, run_pipeline),
    'eval': (add_eval_parser, run_eval),
    'train': (add_train_parser, run_train),
}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  subparsers = parser.add_subparsers(dest='command', required=True)
  for add_parser, _ in SUBCOMMANDS.values():
    add_parser(subparsers)
  args, extra = parser.parse_known_args(argv)
  if extra and args.command != 'train':
    parser.error(f'unrecognized arguments: {" ".join(extra)}')
  args.overrides = extra  # `train` takes --config.a.b=value overrides
  SUBCOMMANDS[args.command][1](args)


if __name__ == '__main__':
  main()
