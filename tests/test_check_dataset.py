"""scripts/check_dataset.py and scripts/make_synthetic.py end to end (subprocesses, no TensorFlow)."""

import os
import subprocess
import sys

import pytest

from tests import fake_trees

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts')


def _run(script, *args):
  proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args],
                        capture_output=True, text=True, timeout=120)
  return proc.returncode, proc.stdout + proc.stderr


def test_clean_synthetic_tree(tmp_path):
  out = str(tmp_path / 'syn')
  rc, text = _run('make_synthetic.py', '--out', out, '--num_ids', '6', '--triplets_per_id', '3',
                  '--height', '32', '--width', '16', '--flare_fraction', '0.5')
  assert rc == 0, text
  assert 'train 12 triplets / 4 ids' in text
  rc, text = _run('check_dataset.py', '--dataset', 'wmveid863', '--root', out)
  assert rc == 0, text
  assert 'no problems found' in text
  train_line = next(line for line in text.splitlines() if line.startswith('train'))
  assert train_line.split()[1:3] == ['4', '12']
  assert '%' in train_line


def test_every_problem_is_listed(tmp_path):
  root = fake_trees.simple_wmveid863(str(tmp_path / 'wmv'))
  os.remove(os.path.join(root, 'train', '0007', 'th', 'v5_n0_s007_001.png'))
  fake_trees.make_wmveid863(root, {'train': {3: ['badname.png']}})
  broken = os.path.join(root, 'test', '0031', 'vis', 'v3_n1_s013_001.png')
  with open(broken, 'wb') as f:
    f.write(b'broken')
  rc, text = _run('check_dataset.py', '--dataset', 'wmveid863', '--root', root)
  assert rc == 1
  assert '3 problems:' in text
  assert 'v5_n0_s007_001.png: no partner' in text
  assert 'badname.png: cannot parse' in text
  assert f'{broken}: unreadable or truncated' in text
  assert 'single triplet' in text   # raw id 20


def test_missing_root_is_reported(tmp_path):
  rc, text = _run('check_dataset.py', '--dataset', 'msvr310', '--root', str(tmp_path / 'none'))
  assert rc == 1 and 'data.root' in text


def test_realism_mode_reports_every_check_and_fails_when_one_fails(tmp_path):
  out = str(tmp_path / 'syn')
  rc, text = _run('make_synthetic.py', '--out', out, '--num_ids', '6', '--triplets_per_id', '3',
                  '--height', '32', '--width', '16')
  assert rc == 0, text
  rc, text = _run('check_dataset.py', '--dataset', 'synthetic', '--root', out, '--realism')
  verdicts = [line.split()[0] for line in text.splitlines() if line.strip().startswith(('PASS',
                                                                                         'FAIL'))]
  assert len(verdicts) >= 10, text
  # 6 ids have 2 test ids: too few clean cross-camera pairs for the modality ordering to hold.
  assert ('FAIL' in verdicts) == (rc == 1), text
  assert 'realism of 18 triplets (train + gallery)' in text, text
  rc, text = _run('check_dataset.py', '--dataset', 'wmveid863', '--root', out, '--realism')
  assert rc != 0 and '--realism needs --dataset synthetic' in text


def test_the_prescan_lists_bad_images_mismatched_triplets_and_unscorable_queries(tmp_path):
  """The same problems fail check_dataset.py and a training run before its first step."""
  from facenet_jax import experiment
  from input_pipeline import records
  from tests.tiny import tiny_config

  root = fake_trees.simple_wmveid863(str(tmp_path / 'wmv'))
  truncated = os.path.join(root, 'train', '0003', 'ni', 'v2_n0_s003_000.png')
  with open(truncated, 'r+b') as f:
    f.truncate(40)
  fake_trees.write_image(os.path.join(root, 'train', '0007', 'th', 'v4_n1_s006_000.png'),
                         (20, 8, 3), seed=99)                 # TI taller than its RGB and NI
  fake_trees.make_wmveid863(root, {'query': {44: ['v2_n0_s020_000.png']}})   # not in the gallery
  rc, text = _run('check_dataset.py', '--dataset', 'wmveid863', '--root', root)
  assert rc == 1 and '3 problems:' in text, text
  assert f'{truncated}: unreadable or truncated' in text
  assert 'differ in size (RGB 8x16, NI 8x16' in text and 'TI 8x20' in text
  assert '1 query ids have no gallery images' in text and ': 44' in text
  config = tiny_config(root)
  config.data.dataset = 'wmveid863'
  with pytest.raises(records.DatasetError, match=r'3 problems in the dataset at') as info:
    experiment.build_experiment(config)
  assert 'unreadable or truncated' in str(info.value) and 'query ids' in str(info.value)


def test_cross_modal_tree_counts_and_problems(tmp_path):
  root = fake_trees.make_dn(str(tmp_path / 'dn348'), {
      'train_list_day.txt': {1: 2, 2: 1}, 'train_list_night.txt': {1: 1},
      'test_list_day.txt': {7: 2, 8: 1}, 'test_list_night.txt': {7: 1, 8: 2}})
  rc, text = _run('check_dataset.py', '--dataset', 'dn348', '--root', root)
  assert rc == 0, text
  assert 'evaluated day_to_night' in text
  assert 'train    day           2       3' in text and 'gallery  night         2       3' in text
  assert 'note: 1 training ids have images in one modality only' in text
  os.remove(os.path.join(root, 'night', '00008', 'test_list_night_001.png'))
  rc, text = _run('check_dataset.py', '--dataset', 'dn348', '--root', root,
                  '--direction', 'night_to_day')
  assert rc == 1 and 'test_list_night_001.png: listed in' in text
