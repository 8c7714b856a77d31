"""Multi-process (multi-host) runs with JAX's multi-controller runtime, `jax.distributed`.

Every process runs the same program on its own devices; `jax.devices()` then lists the devices of
all processes and the 1-D data mesh of `sharding.create_mesh` spans them. Each process reads only
its own share of every batch (`input_pipeline` shards by process) and hands it to
`sharding.shard_batch`, which assembles the global array. Orbax saves and restores collectively;
outputs are gathered with `gather_to_host`.

Where the cluster parameters come from, first match wins per parameter:

  1. config fields `train.coordinator_address`, `train.num_processes`, `train.process_id`;
  2. environment `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`;
  3. JAX's own cluster detection (SLURM, Open MPI, Cloud TPU, Kubernetes, ...), exactly as a bare
     `jax.distributed.initialize()` does.

On CPU, cross-process collectives use gloo (JAX's default CPU collectives).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from orbax.checkpoint import multihost as ocp_multihost


_BARRIER_COUNT = itertools.count()
_TIMEOUT_S = [300]


class DistributedInitError(RuntimeError):
  """`jax.distributed.initialize` failed: a peer or the coordinator did not come up."""


def _int_or_none(value: Any, unset: int) -> int | None:
  return None if value is None or int(value) == unset else int(value)


def cluster_parameters(train_config: ml_collections.ConfigDict,
                       environ: dict[str, str] | None = None) -> dict[str, Any]:
  """The explicit arguments for `jax.distributed.initialize` (None = let JAX detect them)."""
  environ = os.environ if environ is None else environ
  address = train_config.coordinator_address or environ.get('JAX_COORDINATOR_ADDRESS') or None
  num = _int_or_none(train_config.num_processes, 0)
  if num is None and environ.get('JAX_NUM_PROCESSES'):
    num = int(environ['JAX_NUM_PROCESSES'])
  pid = _int_or_none(train_config.process_id, -1)
  if pid is None and environ.get('JAX_PROCESS_ID'):
    pid = int(environ['JAX_PROCESS_ID'])
  if num is not None and num <= 0:
    raise ValueError(f'config.train.num_processes must be positive (0 = detect), got {num}')
  if pid is not None and num is not None and not 0 <= pid < num:
    raise ValueError(f'config.train.process_id={pid} must be in [0, {num}) '
                     '(config.train.num_processes)')
  return {'coordinator_address': address, 'num_processes': num, 'process_id': pid}


def initialize(train_config: ml_collections.ConfigDict) -> bool:
  """Start `jax.distributed` when `config.train.distributed`; True if this run is multi-process.

  Must run before anything touches a JAX device. Idempotent. Bad parameters raise
  `DistributedInitError` naming the address and the config fields. A coordinator or peer that
  does not come up within `train.distributed_timeout_s` makes JAX abort the process from C++
  ("another task died"), which Python cannot catch; the warning logged just before names the
  cluster it waited for, so nothing waits forever and the log says why.
  """
  if not train_config.distributed:
    return False
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  params = cluster_parameters(train_config)
  timeout = int(train_config.distributed_timeout_s)
  _TIMEOUT_S[0] = timeout
  # If a peer never comes up (or dies later), JAX's coordination service aborts the process from
  # C++ with "another task died"; this line is what tells the reader which cluster it waited for.
  logging.warning('jax.distributed: joining %s (None = detected by JAX); waiting at most %d s '
                  '(config.train.distributed_timeout_s), peers silent for %d s are declared dead '
                  '(config.train.heartbeat_timeout_s)', params, timeout,
                  int(train_config.heartbeat_timeout_s))
  try:
    jax.distributed.initialize(
        **params, initialization_timeout=timeout,
        heartbeat_timeout_seconds=int(train_config.heartbeat_timeout_s))
  except Exception as e:  # pylint: disable=broad-except
    raise DistributedInitError(
        f'jax.distributed.initialize failed ({type(e).__name__}: {e}). Cluster parameters: '
        f'{params} (None = detected by JAX). Check config.train.coordinator_address / '
        'num_processes / process_id (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / '
        f'JAX_PROCESS_ID), that every process was started, and that the coordinator port is '
        f'reachable; gave up after config.train.distributed_timeout_s={timeout} s.') from e
  return jax.process_count() > 1


def is_chief() -> bool:
  """Process 0 writes logs, metric files and pictures; every process takes part in the rest."""
  return jax.process_index() == 0


def gather_to_host(tree: Any) -> Any:
  """Every leaf as a full NumPy array on every process.

  Global `jax.Array`s (sharded over all processes' devices) are all-gathered; host NumPy leaves
  are each process's own rows and are concatenated in process order along axis 0 (the order in
  which `sharding.shard_batch` lays the processes' rows into the global batch).
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def barrier(name: str) -> None:
  """Wait until every process gets here (no-op in a single process).

  A barrier of the coordination service, not a device collective: its timeout is
  `train.distributed_timeout_s`. Called before the first use of each cross-process collective,
  because CPU (gloo) collectives give up when peers arrive more than 30 s apart, which one
  process compiling more slowly than another can cause; after a barrier they arrive together.
  """
  if jax.process_count() == 1:
    return
  # orbax's public wrapper of the coordination-service client of jax.distributed.
  wait = ocp_multihost.get_barrier_sync_fn()
  wait(key=f'facenet_jax/{name}/{next(_BARRIER_COUNT)}', timeout_ms=1000 * _TIMEOUT_S[0])
