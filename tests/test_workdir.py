"""Workdir guards: one trainer per workdir, config.json as the record, metrics rows per step."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from facenet_jax import run_log
from facenet_jax import workdir
from tests.tiny import subprocess_env
from tests.tiny import tiny_config
from tests.tiny import tiny_flags

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def _write_lock(path, **holder):
  (path / workdir.LOCK_FILE).write_text(json.dumps(
      {'host': socket.gethostname(), 'pid': os.getpid(), 'started': 'then', **holder}))


def test_a_live_holder_is_refused_a_dead_one_replaced_another_host_never(tmp_path):
  _write_lock(tmp_path)                                   # this very process: alive
  with pytest.raises(workdir.WorkdirLockedError, match=f'in use by pid {os.getpid()}'):
    workdir.WorkdirLock(tmp_path).acquire()
  _write_lock(tmp_path, pid=_dead_pid())
  notices = []
  with workdir.WorkdirLock(tmp_path, notice=notices.append):
    assert json.loads((tmp_path / '.lock').read_text())['pid'] == os.getpid()
    assert len(notices) == 1 and 'stale lock' in notices[0]
  assert not (tmp_path / '.lock').exists()                # released
  _write_lock(tmp_path, host='elsewhere', pid=_dead_pid())
  with pytest.raises(workdir.WorkdirLockedError, match='on elsewhere .* delete .*\\.lock'):
    workdir.WorkdirLock(tmp_path).acquire()


def test_a_resume_with_another_config_is_refused_unless_allowed_and_then_recorded(tmp_path):
  config = tiny_config('/data')
  assert workdir.record_config(tmp_path, config) == []
  assert workdir.record_config(tmp_path, config) == []    # same config: fine
  other = config.copy_and_resolve_references()
  other.data.image_size = (64, 32)
  other.optim.base_lr = 0.5
  with pytest.raises(workdir.ConfigMismatchError) as info:
    workdir.record_config(tmp_path, other)
  message = str(info.value)
  assert 'data.image_size: recorded [32, 16], given [64, 32]' in message
  assert 'optim.base_lr' in message and '--allow_config_change' in message
  assert workdir.load_recorded_config(tmp_path).data.image_size == (32, 16)   # record kept
  changes = workdir.record_config(tmp_path, other, allow_change=True)
  assert [k for k, _, _ in changes] == ['data.image_size', 'optim.base_lr']
  history = [json.loads(l) for l in (tmp_path / workdir.HISTORY_FILE).read_text().splitlines()]
  assert history[0]['changes'][0] == {'field': 'data.image_size', 'from': [32, 16], 'to': [64, 32]}
  assert workdir.load_recorded_config(tmp_path).data.image_size == (64, 32)


def test_fields_added_to_the_library_after_the_run_started_do_not_block_its_resume(tmp_path):
  """A field the record lacks is new code whose default keeps the old behaviour: continue, note it.
  A field the record has but the config lacks (or a changed value) is still refused."""
  config = tiny_config('/data')
  record = json.loads(json.dumps(workdir.config_as_json(config)))
  del record['loss']['cpm_weight']
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(record))
  changes = workdir.record_config(tmp_path, config)
  assert changes == [('loss.cpm_weight', workdir.ABSENT, config.loss.cpm_weight)]
  assert 'cpm_weight' in (tmp_path / workdir.HISTORY_FILE).read_text()
  assert workdir.record_config(tmp_path, config) == []          # the record now has it
  record = json.loads((tmp_path / workdir.CONFIG_FILE).read_text())
  record['loss']['retired_field'] = 1
  record['loss'].pop('ort_weight')
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(record))
  with pytest.raises(workdir.ConfigMismatchError, match='loss.retired_field: recorded 1, given'):
    workdir.record_config(tmp_path, config)


def test_metrics_rows_of_replayed_steps_are_dropped_and_a_cut_line_too(tmp_path):
  path = tmp_path / run_log.METRICS_FILE
  rows = [{'step': s, 'train/loss': float(s)} for s in (1, 2, 3, 4)]
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 5, "tra')
  assert run_log.drop_rows_after(tmp_path, 2) == 2
  assert [json.loads(l)['step'] for l in path.read_text().splitlines()] == [1, 2]
  assert run_log.has_scalar(tmp_path, 2, 'train/loss')
  assert not run_log.has_scalar(tmp_path, 3, 'train/loss')
  assert run_log.drop_rows_after(tmp_path, 9) == 0


def test_evaluation_uses_the_record_and_warns_on_a_differing_config(tmp_path):
  sys.path.insert(0, str(REPO_ROOT / 'scripts'))
  try:
    import evaluate  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  config = tiny_config('/data')
  workdir.record_config(tmp_path, config)
  resolved, warnings = evaluate.resolve_config(str(tmp_path), None, '/moved')
  assert resolved.data.root == '/moved' and warnings == []
  other = config.copy_and_resolve_references()
  other.data.image_size = (64, 32)
  other.data.root = '/elsewhere'                       # where, not what: no warning for it
  resolved, warnings = evaluate.resolve_config(str(tmp_path), other, None)
  assert resolved.data.image_size == (64, 32) and len(warnings) == 1
  assert 'data.image_size: recorded [32, 16], given [64, 32]' in warnings[0]
  assert 'data.root' not in warnings[0]


def _train(args, root, work):
  return subprocess.run([sys.executable, 'scripts/train.py', *tiny_flags(root, work), *args],
                        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                        timeout=300)


def test_expected_errors_are_one_message_without_a_traceback(tiny_synthetic_root, tmp_path):
  work = tmp_path / 'run'
  work.mkdir()
  _write_lock(work)                                     # held by this (live) test process
  proc = _train([], tiny_synthetic_root, work)
  assert proc.returncode == 1
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1 and f'in use by pid {os.getpid()}' in errors[0], proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  (work / workdir.LOCK_FILE).unlink()
  proc = _train(['--config.model.plugin_layer=7'], tiny_synthetic_root, work)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  assert 'config.model.plugin_layer' in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
  proc = _train(['--config.model.plugin_layer=7', '--verbose'], tiny_synthetic_root, work)
  assert proc.returncode == 1 and 'Traceback' in proc.stderr


def test_a_full_disk_is_one_message_and_status_1(capsys):
  from facenet_jax import cli

  def main(argv):
    raise OSError(28, 'No space left on device', '/runs/x/checkpoints/40')

  with pytest.raises(SystemExit) as info:
    cli.with_expected_errors(main)([])
  assert info.value.code == 1
  err = capsys.readouterr().err.splitlines()
  assert err == ["error: [Errno 28] No space left on device: '/runs/x/checkpoints/40' "
                 '(--verbose shows the traceback)']
