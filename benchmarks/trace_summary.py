r"""Where a jitted step spends its device time, read from a `jax.profiler` trace.

    python -m benchmarks.trace_summary TRACE.json.gz --steps 3

`jax.profiler.trace(dir, create_perfetto_trace=True)` writes `perfetto_trace.json.gz`, a Chrome
trace (JSON) whose device processes ('/device:GPU:0 ...') hold one complete event per kernel.
This module groups those kernels into categories (convolutions, matrix products, reductions such
as BatchNorm statistics, max-pool windows, sorts, copies, other fusions), sums their durations
per traced step, and measures how much of the traced span the device was busy at all (the union
of kernel intervals; the rest is launch gaps and host work). On a CPU trace there is no device
process; the XLA worker threads' op events are read instead, so the small mode still yields a
(coarser) table.

No TensorFlow or profiler plugin is needed: plain `json` + `gzip`.
"""

import argparse
import collections
import gzip
import json
import re
from typing import Any, Iterable

# First match wins; tested against the kernel name and the HLO op / long name in the event args.
CATEGORIES = (
    ('convolution', re.compile(r'conv|fprop|dgrad|wgrad|xmma_fwd|implicit_?gemm|cudnn', re.I)),
    ('max-pool window / scatter', re.compile(r'select.and.scatter|reduce.window|scatter', re.I)),
    ('matrix product', re.compile(r'gemm|cublas|cutlass|matmul|\bdot\b|dot_|__dot|triton_gemm',
                                  re.I)),
    ('sort / top-k', re.compile(r'sort|topk|top_k', re.I)),
    # XLA:CPU hands dots and convolutions (with what it fuses into them) to these libraries.
    ('library fusion (YNNPACK / XNNPACK / oneDNN)', re.compile(r'ynn_fusion|xnn_fusion|onednn',
                                                               re.I)),
    ('reduction (BatchNorm stats, losses)', re.compile(r'reduce|reduction', re.I)),
    ('copy / transpose', re.compile(r'copy|transpose|memcpy|memset|bitcast', re.I)),
    ('elementwise fusion', re.compile(r'fusion|loop_|elementwise', re.I)),
)
OTHER = 'other'


def categorize(name: str, hlo: str = '') -> str:
  """The category of one kernel from its name and (when the trace has it) its HLO op."""
  for category, pattern in CATEGORIES:
    if pattern.search(name) or (hlo and pattern.search(hlo)):
      return category
  return OTHER


def load_events(path: str) -> list[dict[str, Any]]:
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt') as f:
    data = json.load(f)
  return data['traceEvents'] if isinstance(data, dict) else data


def device_events(events: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
  """Complete ('X') events of the device processes, or of the host's XLA worker threads when the
  trace has no device (CPU). Returns (events, source description)."""
  events = list(events)
  process_names = {e['pid']: e.get('args', {}).get('name', '') for e in events
                   if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  thread_names = {(e['pid'], e.get('tid')): e.get('args', {}).get('name', '') for e in events
                  if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  complete = [e for e in events if e.get('ph') == 'X' and 'dur' in e]
  device_pids = {pid for pid, name in process_names.items()
                 if name.startswith('/device:') and 'CPU' not in name}
  # Besides kernel streams and worker threads, a trace has bookkeeping lines ('XLA Modules',
  # 'XLA Ops', ...) whose events span the kernels they launched: never counted.
  bookkeeping = re.compile(r'XLA (Modules|Ops|TraceMe)|Steps|Launch|Name Scope|Source|Framework')
  if device_pids:
    chosen = [e for e in complete if e['pid'] in device_pids
              and not bookkeeping.search(thread_names.get((e['pid'], e.get('tid')), ''))]
    return chosen, 'device kernels'
  workers = {key for key, name in thread_names.items()
             if re.search(r'XLA|Eigen', name) and not bookkeeping.search(name)}
  # The CPU runtime wraps the ops in executor spans; only the ops themselves are counted.
  return ([e for e in complete if (e['pid'], e.get('tid')) in workers
           and not e['name'].startswith('ThunkExecutor')],
          'host XLA worker threads (no device process in the trace)')


def busy_union_us(events: Iterable[dict[str, Any]]) -> tuple[float, float]:
  """(union of the events' [ts, ts + dur) intervals, span from first start to last end), in us."""
  intervals = sorted((float(e['ts']), float(e['ts']) + float(e['dur'])) for e in events)
  if not intervals:
    return 0.0, 0.0
  busy, (start, end) = 0.0, intervals[0]
  first = start
  last = end
  for s, e in intervals[1:]:
    last = max(last, e)
    if s > end:
      busy += end - start
      start, end = s, e
    else:
      end = max(end, e)
  busy += end - start
  return busy, last - first


def host_dispatch(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
  """The host side of the traced calls: the jitted function's calls ('PjitFunction(...)'; nested
  spans of one call share its start and count once), their mean duration, and how many CUDA
  graph launches they made. When a call takes longer on the host than its kernels on the device,
  the step is bound by launching, not by the GPU."""
  calls = {}
  graph_launches = 0
  for e in events:
    if e.get('ph') != 'X':
      continue
    if e.get('name', '').startswith('PjitFunction('):
      key = (e['pid'], e.get('tid'), e['ts'])
      calls[key] = max(calls.get(key, 0.0), float(e['dur']))
    elif e.get('name', '').startswith('cuGraphLaunch'):
      graph_launches += 1
  return {'calls': len(calls),
          'call_ms': sum(calls.values()) / len(calls) / 1e3 if calls else None,
          'graph_launches': graph_launches}


def summarize(events: Iterable[dict[str, Any]], steps: int, top: int = 15) -> dict[str, Any]:
  """Per-step device time by category and by kernel name (`steps` = steps in the trace)."""
  events = list(events)
  host = host_dispatch(events)
  chosen, source = device_events(events)
  by_category: dict[str, float] = collections.defaultdict(float)
  by_kernel: dict[str, list] = collections.defaultdict(lambda: [0.0, 0, ''])
  for e in chosen:
    args = e.get('args', {}) or {}
    hlo = str(args.get('hlo_op', '') or args.get('long_name', '') or args.get('name', ''))
    category = categorize(e['name'], hlo)
    by_category[category] += float(e['dur'])
    entry = by_kernel[e['name']]
    entry[0] += float(e['dur'])
    entry[1] += 1
    entry[2] = category
  total = sum(by_category.values())
  busy, span = busy_union_us(chosen)
  per_step = lambda us: us / steps / 1e3  # noqa: E731  (ms per step)
  kernels = sorted(by_kernel.items(), key=lambda kv: -kv[1][0])
  return {
      'source': source, 'steps': steps, 'events': len(chosen),
      'kernel_ms_per_step': per_step(total), 'busy_ms_per_step': per_step(busy),
      'span_ms_per_step': per_step(span), 'busy_fraction': busy / span if span else None,
      'host_call_ms': host['call_ms'], 'graph_launches_per_step': host['graph_launches'] / steps,
      'categories': {k: {'ms_per_step': per_step(v), 'share': v / total if total else 0.0}
                     for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
      'top_kernels': [{'name': name, 'category': cat, 'ms_per_step': per_step(us),
                       'calls_per_step': n / steps, 'share': us / total if total else 0.0}
                      for name, (us, n, cat) in kernels[:top]],
  }


def format_summary(summary: dict[str, Any], title: str = '') -> str:
  lines = [f'{title}{": " if title else ""}{summary["source"]}, {summary["events"]} events over '
           f'{summary["steps"]} steps; per step: kernels {summary["kernel_ms_per_step"]:.2f} ms, '
           f'device busy {summary["busy_ms_per_step"]:.2f} ms of a '
           f'{summary["span_ms_per_step"]:.2f} ms span'
           + (f' ({100 * summary["busy_fraction"]:.0f}% busy)'
              if summary['busy_fraction'] is not None else '')]
  if summary.get('host_call_ms') is not None:
    lines.append(f'  host: {summary["host_call_ms"]:.2f} ms per call of the jitted step (its '
                 f'dispatch), {summary["graph_launches_per_step"]:.0f} CUDA graph launches per '
                 'step')
  lines.append(f'  {"category":<40}{"ms/step":>10}{"share":>8}')
  for name, c in summary['categories'].items():
    lines.append(f'  {name:<40}{c["ms_per_step"]:>10.2f}{100 * c["share"]:>7.1f}%')
  lines.append(f'  {"top kernels":<40}{"ms/step":>10}{"share":>8}{"calls":>7}')
  for k in summary['top_kernels']:
    name = k['name'] if len(k['name']) <= 58 else k['name'][:55] + '...'
    lines.append(f'  {name:<58}{k["ms_per_step"]:>8.2f}{100 * k["share"]:>7.1f}%'
                 f'{k["calls_per_step"]:>7.0f}  [{k["category"]}]')
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('trace', help='perfetto_trace.json.gz written by jax.profiler.trace')
  parser.add_argument('--steps', type=int, required=True, help='steps inside the trace')
  parser.add_argument('--top', type=int, default=20)
  args = parser.parse_args(argv)
  print(format_summary(summarize(load_events(args.trace), args.steps, args.top)))


if __name__ == '__main__':
  main()
