r"""The one-command accelerator benchmark behind `benchmarks/gpu.sh`: a table and a JSON file.

    python -m benchmarks.gpu_suite --out benchmarks/results [--small] [--steps 20]

Cases (full mode, for one GPU; the paper's model, bf16), in the order they run:
  jax      FACENet ResNet-50 x3, 256x128, batch 32x4 and 8x4: compile time, step time,
           triplets/s, MFU against the vendor peak (989 TFLOP/s bf16 on H100/H200) and against
           a bf16 matmul rate measured at the start
  profile  three more steps of the first batch under `jax.profiler.trace`: device time by kernel
           category and the busy fraction (`benchmarks/trace_summary.py`); the trace is kept as
           `jax_step_trace.json.gz` next to the JSON
  torch    the PyTorch mirror (`benchmarks/torch_facenet.py`) on the same batches, eager with
           bf16 autocast and channels_last
  vit      the official code's ViT-B/16 FACENet, 256x128, 8x4, JAX only
  eval     rank metrics at 100k x 100k (dim 256): the chunked evaluator, seconds and peak memory
  compile  the PyTorch mirror `torch.compile`d (last: minutes of compilation per batch)
`--cases` picks a subset, `--batches` other ResNet batches, `--variants` several versions of the
JAX model measured side by side (config overrides, e.g. `model.conv_formulation`; each is
profiled, and each is compared with the same eager torch step); the JSON is rewritten after every
case, so a run cut short keeps what it measured.
Small mode (`--small`, `SMALL=1 benchmarks/gpu.sh`): ResNet-18 x3 at 64x32, float32, batches
8x2 and 4x2 (torch eager only: `torch.compile` takes minutes on a CPU), ViT at depth 2 and 64x32,
eval at the WMVeID863 size; a few minutes on 2 CPU cores,
which keeps the script working where no accelerator is lent (tests/test_benchmark.py runs it).

JAX and torch share the process, so `XLA_PYTHON_CLIENT_PREALLOCATE=false` must be set before
JAX starts (gpu.sh does). Each case is independent: one that fails is reported in the table
(`error`) and the others still run.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

FULL = {'resnet': dict(depth=50, image_size='256,128', dtype='bf16', batches=('32,4', '8,4'),
                   torch_compile=True),
        'vit': dict(image_size='256,128', batch='8,4', dtype='bf16', overrides=()),
        'eval': '100k'}
SMALL = {'resnet': dict(depth=18, image_size='64,32', dtype='f32', batches=('8,2', '4,2'),
                    torch_compile=False),
         'vit': dict(image_size='64,32', batch='4,2', dtype='f32',
                     overrides=('--config.model.depth=2', '--config.model.embed_dim=64',
                                '--config.model.num_heads=2',
                                '--config.model.cross_attention_heads=2',
                                '--config.model.cross_attention_dim_head=32')),
         'eval': 'wmveid863'}
# Run order: the figures that matter most first, so a run cut short still returns them (the JSON
# is rewritten after every case); `torch.compile` (minutes of compilation) last.
CASES = ('jax', 'profile', 'torch', 'vit', 'eval', 'compile')


def measure_matmul_tflops(dtype: str, size: int) -> float:
  """Achieved TFLOP/s of a square matmul chain in `dtype` on the default device (the ceiling MFU
  is also reported against)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dt = {'bf16': jnp.bfloat16, 'f32': jnp.float32}[dtype]
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dt)
  f = jax.jit(lambda x: (x @ x) @ x)
  f(a).block_until_ready()
  repeats = 5
  t = time.perf_counter()
  for _ in range(repeats):
    out = f(a)
  out.block_until_ready()
  return 2 * 2 * size ** 3 * repeats / (time.perf_counter() - t) / 1e12


def _jax_case(name, config, args, matmul, trace_dir=None):
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  res = benchmark.measure_jax_train(config, args.num_classes, args.steps, log=_log,
                                    trace_dir=trace_dir)
  host_batch = res.pop('host_batch')
  res['mfu_vs_matmul'] = res['achieved_tflops'] / matmul if matmul else None
  return {'case': name, 'framework': 'jax', **res}, host_batch


def _torch_case(name, config, args, host_batch, jax_step_s, compiled):
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  label = f'{name} torch{" compile" if compiled else " eager"}'
  try:
    t = benchmark.measure_torch_train(config, args.num_classes, host_batch, args.steps, compiled)
    return {'case': label, 'framework': 'torch', 'compile_s': t['warmup_s'],
            'median_s': t['median_s'], 'pipelined_s': t['pipelined_s'],
            'triplets_per_s': t['triplets_per_s'], 'loss': t['loss'], 'device': t['device'],
            'params': t['params'], 'jax_over_torch': t['pipelined_s'] / jax_step_s}
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    return {'case': label, 'framework': 'torch', 'error': f'{type(e).__name__}: {e}'}


def _profile_row(name, trace_path, trace_steps, out_dir, keep_name='jax_step_trace.json.gz'):
  """Summarise a step's trace (benchmarks/trace_summary.py), print it, keep a copy of the trace
  as `out_dir/keep_name`."""
  from benchmarks import trace_summary  # pylint: disable=g-import-not-at-top
  summary = trace_summary.summarize(trace_summary.load_events(trace_path), trace_steps)
  print(trace_summary.format_summary(summary, f'profile {name}'), flush=True)
  keep = os.path.join(out_dir, keep_name)
  os.makedirs(out_dir, exist_ok=True)
  shutil.copyfile(trace_path, keep)
  return {'case': f'profile {name}', 'framework': 'profile', 'trace': keep, **summary}


def _log(line: str) -> None:
  print(f'  {line}', flush=True)


def format_table(rows) -> str:
  header = (f'{"case":<40}{"compile s":>10}{"step ms":>9}{"waited":>8}{"triplets/s":>12}'
            f'{"MFU %":>7}{"MFU/mm %":>9}{"JAX/torch":>10}')
  lines = ['step ms: steps dispatched back to back, one wait at the end (the throughput and MFU '
           'figures); waited: median with a wait after every step', header]
  for r in rows:
    if 'error' in r:
      lines.append(f'{r["case"]:<40}  error: {r["error"][:80]}')
      continue
    if r['framework'] == 'eval':
      lines.append(f'{r["case"]:<40}  features -> metrics {r["features_to_metrics_s"]:.2f} s, '
                   f'peak RSS {r["peak_rss_gib"]:.2f} GiB')
      continue
    if r['framework'] == 'profile':
      top = ', '.join(f'{k} {100 * v["share"]:.0f}%' for k, v in list(r['categories'].items())[:4])
      busy = f'{100 * r["busy_fraction"]:.0f}% busy; ' if r['busy_fraction'] is not None else ''
      lines.append(f'{r["case"]:<40}  {busy}{top}')
      continue
    pct = lambda v: f'{100 * v:.1f}' if v is not None else '-'  # noqa: E731
    ratio = f'{r["jax_over_torch"]:.2f}x' if 'jax_over_torch' in r else ''
    lines.append(f'{r["case"]:<40}{r["compile_s"]:>10.1f}{1e3 * r["pipelined_s"]:>9.1f}'
                 f'{1e3 * r["median_s"]:>8.1f}{r["triplets_per_s"]:>12.1f}'
                 f'{pct(r.get("mfu")):>7}{pct(r.get("mfu_vs_matmul")):>9}{ratio:>10}')
  return '\n'.join(lines)


def _versions() -> dict:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  found = {}
  for name in ('jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'torch', 'ml_collections'):
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      found[name] = None
  return found


def _header(args, mode_name, matmul, start) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return {'mode': mode_name, 'date': time.strftime('%Y-%m-%d'),
          'device': f'{jax.device_count()} x {device.device_kind} ({jax.default_backend()})',
          'jax': jax.__version__, 'python': platform.python_version(),
          'packages': _versions(), 'matmul_tflops': matmul, 'steps': args.steps,
          'cases': list(args.cases),
          'wall_s': time.time() - start}


def parse_variants(text: str) -> list[tuple[str, ...]]:
  """`--variants`: ';'-separated model variants of the JAX ResNet cases, each a ','-separated list
  of config overrides `group.field=value` ('default' or '' = the config as it is), e.g.
  'default;model.conv_formulation=matmul_1x1' -> [(), ('model.conv_formulation=matmul_1x1',)]."""
  variants = []
  for part in (text or 'default').split(';'):
    overrides = tuple(o.strip() for o in part.split(',') if o.strip() and o.strip() != 'default')
    for o in overrides:
      if '=' not in o or o.startswith('--'):
        raise ValueError(f'--variants: {o!r} is not an override of the form group.field=value')
    variants.append(overrides)
  return variants


def run(args) -> dict:
  """All selected cases in `CASES` order; the JSON at `args.out` is rewritten after each one."""
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  mode = SMALL if args.small else FULL
  mode_name = 'small' if args.small else 'full'
  path = os.path.join(args.out, f'gpu_suite_{mode_name}.json')
  start = time.time()
  rows = []
  matmul = None

  def save():
    result = {**_header(args, mode_name, matmul, start), 'rows': rows}
    os.makedirs(args.out, exist_ok=True)
    with open(path, 'w') as f:
      json.dump(result, f, indent=1,
                default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o))
    return result

  def attempt(name, framework, fn):
    print(f'{name} ...', flush=True)
    try:
      out = fn()
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      out = {'case': name, 'framework': framework, 'error': f'{type(e).__name__}: {e}'}
    rows.extend(out if isinstance(out, list) else [out])
    save()
    return out

  try:
    matmul = measure_matmul_tflops(mode['resnet']['dtype'], 512 if args.small else 8192)
  except Exception as e:  # pylint: disable=broad-except
    rows.append({'case': 'matmul', 'framework': 'jax', 'error': str(e)})
  r = mode['resnet']
  batches = args.batches.split(';') if args.batches else r['batches']
  variants = parse_variants(args.variants)
  resnet = []  # per batch (name, config, host batch, JAX step s) of its first variant, for torch
  for i, batch in enumerate(batches if 'jax' in args.cases else ()):
    base = f'facenet R{r["depth"]} {r["image_size"]} {batch} {r["dtype"]}'
    measured = []  # (table row, config, host batch) of each of this batch's variants that ran
    for v, overrides in enumerate(variants):
      name = base + (f' [{", ".join(overrides)}]' if overrides else '')
      config = benchmark.configure_train(
          benchmark._load_config('configs/wmveid863.py',  # pylint: disable=protected-access
                                 [f'--config.{o}' for o in overrides]),
          batch, r['image_size'], r['depth'], r['dtype'])
      profile = 'profile' in args.cases and i == 0
      trace_dir = tempfile.mkdtemp(prefix='jax_trace_') if profile else None

      def jax_case(name=name, config=config, trace_dir=trace_dir):
        row, host_batch = _jax_case(name, config, args, matmul, trace_dir)
        measured.append((row, config, host_batch))
        return row   # the table's row itself: the torch case adds its ratio to it
      row = attempt(name, 'jax', jax_case)
      if profile and row.get('trace'):
        keep = 'jax_step_trace.json.gz' if v == 0 else f'jax_step_trace_{v}.json.gz'
        attempt(f'profile {name}', 'profile',
                lambda name=name, row=row, keep=keep: _profile_row(name, row['trace'], 3,
                                                                   args.out, keep))
    if not measured:
      continue
    first_row, first_config, host_batch = measured[0]
    resnet.append((base, first_config, host_batch, first_row['pipelined_s']))
    if 'torch' in args.cases:
      torch_row = attempt(f'{base} torch eager', 'torch',
                          lambda entry=resnet[-1]: _torch_case(entry[0], entry[1], args,
                                                               entry[2], entry[3], False))
      if 'pipelined_s' in torch_row:   # every variant against the same eager torch step
        for row, _, _ in measured:
          row['jax_over_torch'] = torch_row['pipelined_s'] / row['pipelined_s']
        save()
  if 'vit' in args.cases:
    v = mode['vit']
    name = f'facenet_vit {v["image_size"]} {v["batch"]} {v["dtype"]}'
    config = benchmark.configure_train(
        benchmark._load_config('configs/official_wmveid863.py', list(v['overrides'])),  # pylint: disable=protected-access
        v['batch'], v['image_size'], 0, v['dtype'])
    attempt(name, 'jax', lambda: _jax_case(name, config, args, matmul)[0])
  if 'eval' in args.cases:
    def eval_case():
      from benchmarks import eval_benchmark  # pylint: disable=g-import-not-at-top
      q, g, dim = eval_benchmark.CASES[mode['eval']]
      res = eval_benchmark.benchmark_rank_metrics(q, g, dim, chunk_size=1024,
                                                  run_loop_reference=False, repeats=1)
      return {'case': f'eval {q} x {g}', 'framework': 'eval', **res}
    attempt(f'eval {mode["eval"]}', 'eval', eval_case)
  if 'compile' in args.cases and r['torch_compile'] and 'torch' in args.cases:
    for name, cfg, host_batch, median in resnet:
      attempt(f'{name} torch compile', 'torch',
              lambda name=name, cfg=cfg, host_batch=host_batch, median=median:
              _torch_case(name, cfg, args, host_batch, median, True))
  return save()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='benchmarks/results', help='folder for gpu_suite.json')
  parser.add_argument('--small', action='store_true', help='the CPU-sized small mode')
  parser.add_argument('--steps', type=int, default=20, help='timed steps per case')
  parser.add_argument('--num_classes', type=int, default=525)
  parser.add_argument('--cases', default=','.join(CASES),
                      help=f'comma-separated subset of {",".join(CASES)} (profile: a trace of '
                           'the first batch\'s JAX step, summarised by benchmarks/trace_summary.py)')
  parser.add_argument('--batches', default='',
                      help="ResNet batches 'P,K;P,K' instead of the mode's (the first is profiled)")
  parser.add_argument('--variants', default='',
                      help="JAX ResNet model variants to compare in one run, ';'-separated, each "
                           "a ','-separated list of config overrides, e.g. "
                           "'default;model.conv_formulation=matmul_1x1' (every one is profiled "
                           "when the profile case runs)")
  parser.add_argument('--no_torch', action='store_true', help='skip the PyTorch mirror')
  args = parser.parse_args(argv)
  args.cases = tuple(c for c in args.cases.split(',') if c)
  unknown = set(args.cases) - set(CASES)
  if unknown:
    parser.error(f'--cases: unknown {sorted(unknown)}; choose from {",".join(CASES)}')
  if args.no_torch:
    args.cases = tuple(c for c in args.cases if c not in ('torch', 'compile'))
  result = run(args)
  path = os.path.join(args.out, f'gpu_suite_{result["mode"]}.json')
  print()
  print(f'{result["device"]}, jax {result["jax"]}, python {result["python"]}, {result["date"]}; '
        + ', '.join(f'{k} {v}' for k, v in result['packages'].items() if v) + '; '
        f'{result["steps"]} timed steps per case; matmul '
        f'{result["matmul_tflops"] or 0:.2f} TFLOP/s ({SMALL["resnet"]["dtype"] if args.small else "bf16"})')
  print(format_table(result['rows']))
  print(f'wall time {result["wall_s"] / 60:.1f} min; JSON: {path}')
  return 1 if any('error' in r for r in result['rows']) else 0


if __name__ == '__main__':
  sys.exit(main())
