"""Analytic FLOP count (benchmarks/flops.py) and a smoke run of `python -m benchmarks.benchmark train`."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import flops
from configs import default
from facenet_jax import models
from facenet_jax.models import resnet
from tests.tiny import subprocess_env

TINY = (32, 16)


def _hand_conv(h_out, w_out, k, c_in, c_out):
  return 2 * h_out * w_out * k * k * c_in * c_out


def test_conv_flops_counts_output_positions_times_window():
  # 5x3 input, 3x3 kernel, stride 2, pad 1 -> 3x2 outputs, each 9 * 4 MACs per output channel.
  f, h, w = flops.conv_flops(5, 3, 4, 6, 3, stride=2)
  assert (h, w) == (3, 2)
  assert f == 2 * 3 * 2 * 9 * 4 * 6
  assert flops.dense_flops(7, 5) == 70


def test_resnet18_count_matches_a_hand_count():
  # ResNet-18 on 32x16 (last_stride 1); shapes worked out by hand from the torchvision layout:
  # stem 7x7/2 -> 16x8, max-pool -> 8x4, layer2 -> 4x2, layer3 -> 2x1, layer4 stays 2x1.
  layers = [(16, 8, 7, 3, 64)]                                   # stem conv
  layers += [(8, 4, 3, 64, 64)] * 4                              # layer1: 2 blocks x 2 convs
  layers += [(4, 2, 3, 64, 128), (4, 2, 3, 128, 128), (4, 2, 1, 64, 128)]
  layers += [(4, 2, 3, 128, 128)] * 2                            # layer2
  layers += [(2, 1, 3, 128, 256), (2, 1, 3, 256, 256), (2, 1, 1, 128, 256)]
  layers += [(2, 1, 3, 256, 256)] * 2                            # layer3
  layers += [(2, 1, 3, 256, 512), (2, 1, 3, 512, 512), (2, 1, 1, 256, 512)]
  layers += [(2, 1, 3, 512, 512)] * 2                            # layer4
  expected = sum(_hand_conv(*layer) for layer in layers)
  got = flops.resnet_flops(18, *TINY)
  assert got['total'] == expected
  assert got['shapes'][4] == (2, 1, 512)


def test_facenet_count_adds_mfmp_and_heads_by_hand():
  cfg = default.get_config().model
  cfg.depth = 18
  num_classes = 10
  got = flops.facenet_forward_flops(cfg, num_classes, TINY)
  h, w, c, hid, att = 2, 1, 512, 128, 32                          # layer4 map; 0.25 C; C / 16
  stack = (_hand_conv(h, w, 3, 2 * c, hid) + _hand_conv(h, w, 1, hid, hid) +
           _hand_conv(h, w, 3, hid, hid) + _hand_conv(h, w, 3, hid, c))
  se = 2 * c * att * 2
  per_modality = 2 * _hand_conv(h, w, 1, c, c) + 2 * c * 2
  assert got['mfmp'] == stack + se + 2 * per_modality
  assert got['heads'] == 3 * 2 * c * num_classes
  assert got['backbones'] == 3 * flops.resnet_flops(18, *TINY)['total']
  assert got['total'] == got['backbones'] + got['mfmp'] + got['heads']
  assert flops.train_step_flops(cfg, num_classes, TINY, 8) == 3 * 8 * got['total']
  cfg.mfmp = cfg.fce = False
  assert flops.facenet_forward_flops(cfg, num_classes, TINY)['mfmp'] == 0


def _xla_forward_flops(fn, *args):
  return flops.xla_flops(jax.jit(fn).lower(*args).compile())


def test_resnet_count_agrees_with_xla_cost_analysis():
  # XLA counts only the multiply-adds inside the image (not on the zero padding) and adds the
  # elementwise ops, so the two agree to a few percent, not exactly.
  model = resnet.ResNet(18)
  x = jax.ShapeDtypeStruct((2, *TINY, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)  # shapes only: no init run
  xla = _xla_forward_flops(lambda v, x: model.apply(v, x), variables, x)
  if xla is None:
    pytest.skip('this backend reports no cost analysis')
  analytic = 2 * flops.resnet_flops(18, *TINY)['total']
  assert 0.9 < xla / analytic < 1.1, (xla, analytic)


def test_facenet_count_agrees_with_xla_cost_analysis():
  cfg = default.get_config().model
  cfg.depth = 18
  model = models.build_model(cfg, 10)
  variables = jax.eval_shape(lambda: models.init_variables(model, TINY, jax.random.PRNGKey(0)))
  x = jax.ShapeDtypeStruct((2, *TINY, 3), jnp.float32)
  flare = jnp.zeros((2, 2), jnp.int32)
  xla = _xla_forward_flops(lambda v, x: model.apply(v, x, x, x, flare), variables, x)
  if xla is None:
    pytest.skip('this backend reports no cost analysis')
  analytic = 2 * flops.facenet_forward_flops(cfg, 10, TINY)['total']
  assert 0.9 < xla / analytic < 1.1, (xla, analytic)


# ------------------------------------------------------------------------------ smoke runs

SMOKE_ARGS = ['train', '--config', 'configs/wmveid863.py', '--depth', '18', '--image_size',
              '32,16', '--batch', '4,2', '--steps', '2', '--num_classes', '10']
FIELDS = ('compile:', 'step time (median of 2, waiting for each):',
          'step time (2 dispatched back to back):', 'triplets/s', 'images/s',
          'model FLOPs/step: analytic', 'XLA cost_analysis', 'MFU:', 'memory:')


def _run_benchmark(repo_root, *extra):
  env = {**subprocess_env(), 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.benchmark', *SMOKE_ARGS, *extra],
      cwd=repo_root, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def _check_jax_fields(out):
  for field in FIELDS:
    assert field in out, (field, out)
  assert 'ResNet18 x3' in out and 'batch 8 (P=4 x K=2)' in out
  rate = float(re.search(r'([\d.]+) triplets/s, ([\d.]+) images/s', out).group(1))
  images = float(re.search(r'([\d.]+) images/s', out).group(1))
  assert rate > 0 and images == pytest.approx(3 * rate, rel=0.01)
  analytic = float(re.search(r'analytic ([\d.]+) GFLOP', out).group(1))
  cfg = default.get_config().model
  cfg.depth = 18
  assert analytic == pytest.approx(flops.train_step_flops(cfg, 10, TINY, 8) / 1e9, abs=0.06)


@pytest.mark.slow
def test_train_benchmark_rejects_unknown_override(repo_root):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.benchmark', *SMOKE_ARGS,
       '--config.model.no_such_field=1'],
      cwd=repo_root, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode != 0
  assert 'model.no_such_field' in proc.stderr


@pytest.mark.slow
@pytest.mark.parity
def test_train_benchmark_vs_torch(repo_root):
  pytest.importorskip('torch')
  # Also the smoke test of the JAX side (and of a config override).
  out = _run_benchmark(repo_root, '--vs', 'torch', '--config.data.seed=5')
  _check_jax_fields(out)
  params = re.search(r'params ([\d,]+) \(JAX ([\d,]+)\)', out)
  assert params and params.group(1) == params.group(2), out
  assert re.search(r'JAX/torch throughput: [\d.]+x', out)


@pytest.mark.slow
def test_gpu_suite_small_mode_writes_its_table_and_json(tmp_path, monkeypatch, capsys):
  """`SMALL=1 benchmarks/gpu.sh` runs `gpu_suite --small`; here with one tiny ResNet case, the
  tiny ViT and the eval case, so the script stays working where no accelerator is lent."""
  import json  # pylint: disable=g-import-not-at-top
  pytest.importorskip('torch')  # the suite's PyTorch-mirror rows (the `parity` extra)
  from benchmarks import gpu_suite  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(gpu_suite.SMALL, 'resnet', dict(depth=18, image_size='32,16', dtype='f32',
                                                      batches=('2,2',), torch_compile=False))
  monkeypatch.setitem(gpu_suite.SMALL, 'vit', dict(gpu_suite.SMALL['vit'], image_size='32,16',
                                                   batch='2,2'))
  rc = gpu_suite.main(['--small', '--steps', '1', '--num_classes', '8', '--out', str(tmp_path)])
  out = capsys.readouterr().out
  assert rc == 0, out
  result = json.loads((tmp_path / 'gpu_suite_small.json').read_text())
  cases = [r['case'] for r in result['rows']]
  assert cases == ['facenet R18 32,16 2,2 f32', 'profile facenet R18 32,16 2,2 f32',
                   'facenet R18 32,16 2,2 f32 torch eager', 'facenet_vit 32,16 2,2 f32',
                   'eval 928 x 1309']
  assert result['matmul_tflops'] > 0 and all('error' not in r for r in result['rows'])
  assert 'JAX/torch' in out and re.search(r'torch eager .* \d+\.\d\dx\n', out)
  profile = result['rows'][1]
  assert profile['events'] > 0 and abs(sum(c['share'] for c in profile['categories'].values())
                                       - 1) < 1e-6
  assert (tmp_path / 'jax_step_trace.json.gz').stat().st_size > 0
  jax_row = result['rows'][0]
  assert jax_row['triplets_per_s'] == pytest.approx(4 / jax_row['pipelined_s'])


def test_gpu_suite_variants_measure_each_jax_model_against_one_torch_step(tmp_path, monkeypatch,
                                                                          capsys):
  """`--variants` (VARIANTS= in gpu.sh): each variant's config reaches its JAX case, the torch
  mirror runs once per batch, and every variant's throughput is compared with that one step.
  The measurements are stubbed: what is checked is the suite's bookkeeping."""
  import json  # pylint: disable=g-import-not-at-top
  from benchmarks import gpu_suite  # pylint: disable=g-import-not-at-top
  seen, torch_calls = [], []

  def fake_jax(name, config, args, matmul, trace_dir=None):
    seen.append((name, config.model.conv_formulation, config.data.num_ids_per_batch))
    step = {'auto': 0.5, 'matmul_1x1': 0.25}[config.model.conv_formulation]
    return {'case': name, 'framework': 'jax', 'compile_s': 1.0, 'median_s': step,
            'pipelined_s': step, 'triplets_per_s': 4 / step, 'mfu': None}, 'host batch'

  def fake_torch(name, config, args, host_batch, jax_step_s, compiled):
    torch_calls.append((name, config.model.conv_formulation, jax_step_s, compiled))
    return {'case': f'{name} torch eager', 'framework': 'torch', 'compile_s': 0.1,
            'median_s': 1.0, 'pipelined_s': 1.0, 'triplets_per_s': 4.0,
            'jax_over_torch': 1.0 / jax_step_s}
  monkeypatch.setattr(gpu_suite, '_jax_case', fake_jax)
  monkeypatch.setattr(gpu_suite, '_torch_case', fake_torch)
  monkeypatch.setattr(gpu_suite, 'measure_matmul_tflops', lambda dtype, size: 1.0)
  rc = gpu_suite.main(['--small', '--cases', 'jax,torch', '--batches', '2,2;4,2',
                       '--variants', 'default;model.conv_formulation=matmul_1x1',
                       '--out', str(tmp_path)])
  out = capsys.readouterr().out
  assert rc == 0, out
  base = 'facenet R18 64,32 {} f32'
  variant = ' [model.conv_formulation=matmul_1x1]'
  assert seen == [(base.format('2,2'), 'auto', 2), (base.format('2,2') + variant, 'matmul_1x1', 2),
                  (base.format('4,2'), 'auto', 4), (base.format('4,2') + variant, 'matmul_1x1', 4)]
  assert torch_calls == [(base.format('2,2'), 'auto', 0.5, False),
                         (base.format('4,2'), 'auto', 0.5, False)]
  rows = json.loads((tmp_path / 'gpu_suite_small.json').read_text())['rows']
  assert [(r['case'], r.get('jax_over_torch')) for r in rows] == [
      (base.format('2,2'), 2.0), (base.format('2,2') + variant, 4.0),
      (base.format('2,2') + ' torch eager', 2.0),
      (base.format('4,2'), 2.0), (base.format('4,2') + variant, 4.0),
      (base.format('4,2') + ' torch eager', 2.0)]
  assert re.search(r'matmul_1x1\].* 4\.00x\n', out), out
  assert gpu_suite.parse_variants('') == [()]
  with pytest.raises(ValueError, match='--variants'):
    gpu_suite.parse_variants('default;--config.model.depth=18')


def test_primitive_counts_count_every_call_of_a_sub_program():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  square = jax.jit(lambda x: x @ x)
  jaxpr = jax.make_jaxpr(lambda x: square(x) + square(x) @ x + jnp.sin(x))(jnp.ones((2, 2)))
  counts = benchmark.primitive_counts(jaxpr.jaxpr)
  assert counts['dot_general'] == 3 and counts['sin'] == 1 and counts['add'] == 2


def _trace(events, device=True):
  """A Chrome trace in the layout `jax.profiler` writes: metadata naming processes and threads,
  then complete ('X') events."""
  meta = [{'ph': 'M', 'pid': 1, 'name': 'process_name',
           'args': {'name': '/device:GPU:0' if device else '/host:CPU'}},
          {'ph': 'M', 'pid': 1, 'tid': 7, 'name': 'thread_name',
           'args': {'name': 'Stream #7(Compute)' if device else 'tf_XLAEigen/1'}},
          {'ph': 'M', 'pid': 1, 'tid': 8, 'name': 'thread_name', 'args': {'name': 'XLA Ops'}},
          {'ph': 'M', 'pid': 2, 'name': 'process_name', 'args': {'name': '/host:CPU'}}]
  return meta + [{'ph': 'X', 'pid': 1, 'tid': 7, **e} for e in events] + [
      # A bookkeeping line spanning the kernels and a host event: neither is a kernel.
      {'ph': 'X', 'pid': 1, 'tid': 8, 'ts': 0, 'dur': 1000, 'name': 'whole step'},
      {'ph': 'X', 'pid': 2, 'tid': 1, 'ts': 0, 'dur': 500, 'name': 'PjitFunction(step)'}]


def test_trace_summary_groups_kernels_and_measures_the_busy_fraction():
  from benchmarks import trace_summary  # pylint: disable=g-import-not-at-top
  events = _trace([
      {'ts': 0, 'dur': 30, 'name': 'sm90_xmma_fprop_implicit_gemm_bf16', 'args': {}},
      {'ts': 20, 'dur': 20, 'name': 'input_reduce_fusion_3', 'args': {}},   # overlaps the conv
      {'ts': 60, 'dur': 10, 'name': 'input_scatter_fusion',
       'args': {'hlo_op': 'select-and-scatter.1'}},
      {'ts': 80, 'dur': 20, 'name': 'loop_add_fusion_2', 'args': {}},
      {'ts': 100, 'dur': 30, 'name': 'sm90_xmma_fprop_implicit_gemm_bf16', 'args': {}},
  ])
  s = trace_summary.summarize(events, steps=2, top=3)
  assert s['source'] == 'device kernels' and s['events'] == 5
  # Kernel time 110 us over 2 steps; busy = [0, 40) + [60, 70) + [80, 130) = 100 us of 130.
  assert s['kernel_ms_per_step'] == pytest.approx(0.055)
  assert s['busy_ms_per_step'] == pytest.approx(0.05)
  assert s['busy_fraction'] == pytest.approx(100 / 130)
  cats = s['categories']
  assert cats['convolution']['ms_per_step'] == pytest.approx(0.03)
  assert cats['max-pool window / scatter']['ms_per_step'] == pytest.approx(0.005)   # from the HLO op name
  assert cats['reduction (BatchNorm stats, losses)']['share'] == pytest.approx(20 / 110)
  assert cats['elementwise fusion']['share'] == pytest.approx(20 / 110)
  top = s['top_kernels']
  assert [k['name'] for k in top][0] == 'sm90_xmma_fprop_implicit_gemm_bf16'
  assert top[0]['calls_per_step'] == 1 and len(top) == 3
  assert 'busy' in trace_summary.format_summary(s)


def test_trace_summary_reads_the_cpu_worker_threads_without_a_device():
  from benchmarks import trace_summary  # pylint: disable=g-import-not-at-top
  events = _trace([{'ts': 0, 'dur': 10, 'name': 'convolution.3', 'args': {}},
                   {'ts': 0, 'dur': 50, 'name': 'ThunkExecutor::Execute', 'args': {}}],
                  device=False)
  s = trace_summary.summarize(events, steps=1)
  assert s['source'].startswith('host XLA worker threads') and s['events'] == 1
  assert list(s['categories']) == ['convolution']
