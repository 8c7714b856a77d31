"""A training workdir's guards: one trainer at a time, and `config.json` as the run's record.

    <workdir>/.lock                 JSON {host, pid, started} of the trainer holding the workdir
    <workdir>/config.json           the config the run was trained with (written once)
    <workdir>/config_history.jsonl  every accepted change, one JSON line each (--allow_config_change)

On resume the given config must equal the recorded one, with one exception: a field the record
does not have at all was added to the library after the run started. New fields default to the
behaviour the code had before they existed (a project rule), so such a resume continues; the
added fields are printed and appended to the history file. A recorded field that differs or is
gone is refused unless --allow_config_change.

The lock is a file created exclusively (O_EXCL), so two trainers cannot both hold it. A lock whose
holder is a dead process on this host is stale: it is replaced, with a notice. A lock held from
another host cannot be checked and is never taken over (the message says which file to delete).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import socket
from typing import Any, Callable

import ml_collections

LOCK_FILE = '.lock'
CONFIG_FILE = 'config.json'
HISTORY_FILE = 'config_history.jsonl'
ABSENT = '(absent)'   # how a field missing on one side of a comparison is shown


class WorkdirLockedError(RuntimeError):
  """Another live trainer holds the workdir."""


class ConfigMismatchError(ValueError):
  """The config given at resume differs from the one the run was trained with."""


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:      # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """`with WorkdirLock(workdir): ...` holds the workdir for one trainer; see the module docstring."""

  def __init__(self, workdir: str | pathlib.Path, notice: Callable[[str], None] = print):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self.notice = notice
    self.held = False

  def acquire(self) -> None:
    me = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': _now()}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        if holder is not None and not self._stale(holder):
          raise WorkdirLockedError(
              f'{self.path.parent} is in use by pid {holder.get("pid")} on '
              f'{holder.get("host")} (since {holder.get("started")}); one trainer per workdir. '
              f'If that run is gone, delete {self.path}') from None
        self.notice(f'notice: removed a stale lock {self.path} ({holder})')
        self.path.unlink(missing_ok=True)
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      self.held = True
      return
    raise WorkdirLockedError(f'{self.path}: could not take the lock (another trainer started?)')

  def _holder(self) -> dict[str, Any] | None:
    """The holder's record; None when unreadable (a holder killed while writing it)."""
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return None

  @staticmethod
  def _stale(holder: dict[str, Any]) -> bool:
    same_host = holder.get('host') == socket.gethostname()
    return same_host and isinstance(holder.get('pid'), int) and not _pid_alive(holder['pid'])

  def release(self) -> None:
    if self.held:
      holder = self._holder()
      if holder is not None and holder.get('pid') == os.getpid():
        self.path.unlink(missing_ok=True)
      self.held = False

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


# -------------------------------------------------------------------------------- the record
def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the configs use (image_size, decay_epochs, ...)."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def config_as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def _flat(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_differences(recorded: dict[str, Any], given: dict[str, Any]
                       ) -> list[tuple[str, Any, Any]]:
  """[(dotted field, recorded value, given value)] of two JSON configs, sorted by field."""
  a, b = _flat(recorded), _flat(given)
  return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b))
          if k not in a or k not in b or a[k] != b[k]]


def format_differences(diffs: list[tuple[str, Any, Any]]) -> str:
  return '; '.join(f'{k}: recorded {json.dumps(a)}, given {json.dumps(b)}' for k, a, b in diffs)


def load_recorded_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run was trained with, from `<workdir>/config.json` (locked)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path}: missing; is {workdir} a training workdir?')
  try:
    tree = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from None
  config = ml_collections.ConfigDict(_tuples(tree))
  config.lock()
  return config


def record_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                  allow_change: bool = False) -> list[tuple[str, Any, Any]]:
  """Write `config.json` on a new run; on resume compare with it (see module docstring).

  Returns the accepted differences (empty when none). Raises `ConfigMismatchError` listing
  every differing field unless `allow_change`, which records them in the history file and
  rewrites `config.json` with the new config.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / CONFIG_FILE
  given = config_as_json(config)
  text = json.dumps(given, indent=2, sort_keys=True) + '\n'
  if not path.is_file():
    path.write_text(text)
    return []
  recorded = json.loads(path.read_text())
  diffs = config_differences(recorded, given)
  if not diffs:
    return []
  added = [d for d in diffs if d[1] == ABSENT]
  if len(added) == len(diffs):   # only fields newer than the run: their defaults keep its behaviour
    allow_change = True
  if not allow_change:
    raise ConfigMismatchError(
        f'{path}: the run in {workdir} was trained with another config; differing fields: '
        f'{format_differences(diffs)}. Use the recorded config, another --workdir, or '
        '--allow_config_change to continue with the new one (recorded in '
        f'{workdir / HISTORY_FILE})')
  with (workdir / HISTORY_FILE).open('a') as f:
    f.write(json.dumps({'time': _now(), 'changes': [
        {'field': k, 'from': a, 'to': b} for k, a, b in diffs]}) + '\n')
  path.write_text(text)
  return diffs
