r"""The one-command accelerator benchmark behind `benchmarks/gpu.sh`: a table and a JSON file.

    python -m benchmarks.gpu_suite --out benchmarks/results [--small] [--steps 20]

Cases (full mode, for one GPU; the paper's model, bf16):
  jax     FACENet ResNet-50 x3, 256x128, batch 8x4 and 32x4: compile time, median step,
          triplets/s, MFU against the vendor peak (989 TFLOP/s bf16 on H100/H200) and against a
          measured matrix rate (`--matmul_tflops`, default: measured here with a bf16 matmul)
  torch   the PyTorch mirror (`benchmarks/torch_facenet.py`) on the same batches: eager with bf16
          autocast and channels_last, and `torch.compile`d
  vit     the official code's ViT-B/16 FACENet, 256x128, 8x4, JAX only
  eval    rank metrics at 100k x 100k (dim 256): the chunked evaluator, seconds and peak memory
Small mode (`--small`, `SMALL=1 benchmarks/gpu.sh`): ResNet-18 x3 at 64x32, float32, batches
4x2 and 8x2 (torch eager only: `torch.compile` takes minutes on a CPU), ViT at depth 2 and 64x32,
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
import sys
import time
import traceback

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

FULL = {'resnet': dict(depth=50, image_size='256,128', dtype='bf16', batches=('8,4', '32,4'),
                   torch_compile=True),
        'vit': dict(image_size='256,128', batch='8,4', dtype='bf16', overrides=()),
        'eval': '100k'}
SMALL = {'resnet': dict(depth=18, image_size='64,32', dtype='f32', batches=('4,2', '8,2'),
                    torch_compile=False),
         'vit': dict(image_size='64,32', batch='4,2', dtype='f32',
                     overrides=('--config.model.depth=2', '--config.model.embed_dim=64',
                                '--config.model.num_heads=2',
                                '--config.model.cross_attention_heads=2',
                                '--config.model.cross_attention_dim_head=32')),
         'eval': 'wmveid863'}


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


def _train_case(name, config_path, overrides, batch, image_size, depth, dtype, args, matmul,
                torch_compile=False):
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  config = benchmark.configure_train(benchmark._load_config(config_path, list(overrides)),  # pylint: disable=protected-access
                                     batch, image_size, depth, dtype)
  res = benchmark.measure_jax_train(config, args.num_classes, args.steps, log=_log)
  host_batch = res.pop('host_batch')
  res['mfu_vs_matmul'] = res['achieved_tflops'] / matmul if matmul else None
  rows = [{'case': name, 'framework': 'jax', **res}]
  if args.torch and config.model.name == 'facenet':
    for compiled in (False, True) if torch_compile else (False,):
      label = f'{name} torch{" compile" if compiled else " eager"}'
      try:
        t = benchmark.measure_torch_train(config, args.num_classes, host_batch, args.steps,
                                          compiled)
        rows.append({'case': label, 'framework': 'torch', 'compile_s': t['warmup_s'],
                     'median_s': t['median_s'], 'triplets_per_s': t['triplets_per_s'],
                     'loss': t['loss'], 'device': t['device'], 'params': t['params'],
                     'jax_over_torch': t['median_s'] / res['median_s']})
      except Exception as e:  # pylint: disable=broad-except
        rows.append({'case': label, 'framework': 'torch', 'error': f'{type(e).__name__}: {e}'})
  return rows


def _log(line: str) -> None:
  print(f'  {line}', flush=True)


def format_table(rows) -> str:
  header = (f'{"case":<40}{"compile s":>10}{"step ms":>10}{"triplets/s":>12}{"MFU %":>8}'
            f'{"MFU/mm %":>10}{"JAX/torch":>10}')
  lines = [header]
  for r in rows:
    if 'error' in r:
      lines.append(f'{r["case"]:<40}  error: {r["error"][:80]}')
      continue
    if r['framework'] == 'eval':
      lines.append(f'{r["case"]:<40}  features -> metrics {r["features_to_metrics_s"]:.2f} s, '
                   f'peak RSS {r["peak_rss_gib"]:.2f} GiB')
      continue
    pct = lambda v: f'{100 * v:.1f}' if v is not None else '-'  # noqa: E731
    ratio = f'{r["jax_over_torch"]:.2f}x' if 'jax_over_torch' in r else ''
    lines.append(f'{r["case"]:<40}{r["compile_s"]:>10.1f}{1e3 * r["median_s"]:>10.1f}'
                 f'{r["triplets_per_s"]:>12.1f}{pct(r.get("mfu")):>8}'
                 f'{pct(r.get("mfu_vs_matmul")):>10}{ratio:>10}')
  return '\n'.join(lines)


def run(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  mode = SMALL if args.small else FULL
  start = time.time()
  rows = []
  matmul = None
  try:
    matmul = measure_matmul_tflops(mode['resnet']['dtype'], 512 if args.small else 8192)
  except Exception as e:  # pylint: disable=broad-except
    rows.append({'case': 'matmul', 'framework': 'jax', 'error': str(e)})
  r = mode['resnet']
  for batch in r['batches']:
    name = f'facenet R{r["depth"]} {r["image_size"]} {batch} {r["dtype"]}'
    print(f'{name} ...', flush=True)
    try:
      rows += _train_case(name, 'configs/wmveid863.py', (), batch, r['image_size'], r['depth'],
                          r['dtype'], args, matmul, r['torch_compile'])
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      rows.append({'case': name, 'framework': 'jax', 'error': f'{type(e).__name__}: {e}'})
  v = mode['vit']
  name = f'facenet_vit {v["image_size"]} {v["batch"]} {v["dtype"]}'
  print(f'{name} ...', flush=True)
  try:
    rows += _train_case(name, 'configs/official_wmveid863.py', v['overrides'], v['batch'],
                        v['image_size'], 0, v['dtype'], args, matmul)
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    rows.append({'case': name, 'framework': 'jax', 'error': f'{type(e).__name__}: {e}'})
  print(f'eval {mode["eval"]} ...', flush=True)
  try:
    from benchmarks import eval_benchmark  # pylint: disable=g-import-not-at-top
    q, g, dim = eval_benchmark.CASES[mode['eval']]
    res = eval_benchmark.benchmark_rank_metrics(q, g, dim, chunk_size=1024,
                                                run_loop_reference=False, repeats=1)
    rows.append({'case': f'eval {q} x {g}', 'framework': 'eval', **res})
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    rows.append({'case': f'eval {mode["eval"]}', 'framework': 'eval',
                 'error': f'{type(e).__name__}: {e}'})
  device = jax.devices()[0]
  return {'mode': 'small' if args.small else 'full', 'date': time.strftime('%Y-%m-%d'),
          'device': f'{jax.device_count()} x {device.device_kind} ({jax.default_backend()})',
          'jax': jax.__version__, 'python': platform.python_version(),
          'matmul_tflops': matmul, 'steps': args.steps, 'wall_s': time.time() - start,
          'rows': rows}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='benchmarks/results', help='folder for gpu_suite.json')
  parser.add_argument('--small', action='store_true', help='the CPU-sized small mode')
  parser.add_argument('--steps', type=int, default=20, help='timed steps per case')
  parser.add_argument('--num_classes', type=int, default=525)
  parser.add_argument('--no_torch', dest='torch', action='store_false',
                      help='skip the PyTorch mirror')
  args = parser.parse_args(argv)
  result = run(args)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, f'gpu_suite_{result["mode"]}.json')
  with open(path, 'w') as f:
    json.dump(result, f, indent=1, default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o))
  print()
  print(f'{result["device"]}, jax {result["jax"]}, python {result["python"]}, {result["date"]}; '
        f'{result["steps"]} timed steps per case; matmul '
        f'{result["matmul_tflops"] or 0:.2f} TFLOP/s ({SMALL["resnet"]["dtype"] if args.small else "bf16"})')
  print(format_table(result['rows']))
  print(f'wall time {result["wall_s"] / 60:.1f} min; JSON: {path}')
  return 1 if any('error' in r for r in result['rows']) else 0


if __name__ == '__main__':
  sys.exit(main())
