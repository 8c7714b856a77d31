"""Configs load, are grouped as the house style says, and reject override typos."""

import importlib.util
import pathlib
import subprocess
import sys

import ml_collections
import pytest

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / 'configs'
# Stage-1 GAN configs (scripts/train_dsgan.py) have a data and a gan group, no model.
GAN_CONFIGS = ('tsme_dsgan.py',)
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob('*.py')
                      if not p.name.startswith('_') and p.name not in GAN_CONFIGS)
GROUPS = {'data', 'model', 'loss', 'optim', 'train', 'eval'}


def _load_module(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _load(path: pathlib.Path) -> ml_collections.ConfigDict:
  return _load_module(path).get_config()


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_has_the_six_groups_and_a_command_in_its_docstring(path):
  module = _load_module(path)
  assert set(module.get_config().keys()) == GROUPS
  assert 'python scripts/train.py --config configs/' in module.__doc__


@pytest.mark.parametrize('name', GAN_CONFIGS)
def test_gan_configs_have_data_and_gan_groups_and_a_train_dsgan_command(name):
  module = _load_module(CONFIG_DIR / name)
  config = module.get_config()
  assert set(config.keys()) == {'data', 'gan'}
  default = _load_module(CONFIG_DIR / 'default.py')
  assert set(config.data.keys()) == set(default.get_config().data.keys())
  assert 'python scripts/train_dsgan.py --config configs/' in module.__doc__


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_keeps_the_default_schema(path):
  """Experiment configs override values; they never invent or drop fields (the model group is
  that of its model, `default.model_config(config.model.name)`)."""
  default = _load_module(CONFIG_DIR / 'default.py')
  config = _load(path)
  for group in GROUPS - {'model'}:
    assert set(config[group].keys()) == set(default.get_config()[group].keys()), group
  assert set(config.model.keys()) == set(default.model_config(config.model.name).keys())


@pytest.mark.parametrize('name', ['facenet', 'facenet_vit', 'single_stream', 'agw', 'deen', 'fsc_net',
                                  'dndm', 'tsme'])
def test_a_model_config_group_holds_exactly_its_module_fields(name):
  """Config fields are module fields: nothing to copy by hand, nothing silently ignored."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from facenet_jax import models  # pylint: disable=g-import-not-at-top
  from facenet_jax.models import registry  # pylint: disable=g-import-not-at-top
  group = default.model_config(name)
  assert group.name == name
  fields = set(registry.module_fields(models.get_spec(name).module))
  assert set(group.keys()) - set(registry.BUILD_FIELDS) == fields
  module = models.build_model(group, num_classes=3)
  assert all(getattr(module, f) == group[f] for f in fields)


def test_every_registered_model_has_a_config_group():
  from configs import default  # pylint: disable=g-import-not-at-top
  from facenet_jax import models  # pylint: disable=g-import-not-at-top
  assert set(models.names()) == set(default.MODEL_CONFIGS)


def test_official_configs_take_the_paper_model_as_an_argument():
  official = _load_module(CONFIG_DIR / 'official_wmveid863.py')
  assert official.get_config().model.name == 'facenet_vit'
  resnet = official.get_config('facenet')
  assert resnet.model.name == 'facenet' and resnet.optim.optimizer == 'sgd'


def _run_train_script(*args, config='configs/default.py'):
  return subprocess.run(
      [sys.executable, 'scripts/train.py', '--config', config, '--dry_run', *args],
      cwd=CONFIG_DIR.parent, capture_output=True, text=True, timeout=120, check=False)


def test_train_script_prints_the_resolved_config_with_overrides():
  result = _run_train_script('--config.model.depth=18', '--config.optim.base_lr=0.01')
  assert result.returncode == 0, result.stderr
  assert 'depth: 18' in result.stdout
  assert 'base_lr: 0.01' in result.stdout


def test_the_config_argument_selects_the_model_group():
  result = _run_train_script('--config.model.modality=ti',
                             config='configs/synthetic.py:single_stream')
  assert result.returncode == 0, result.stderr
  assert 'name: single_stream' in result.stdout and 'modality: ti' in result.stdout
  assert 'ic: false' in result.stdout
  assert 'mfmp' not in result.stdout


def test_unknown_override_key_is_rejected_with_a_message_naming_the_key():
  result = _run_train_script('--config.model.dpth=18')
  assert result.returncode != 0
  assert 'dpth' in result.stderr
  assert 'Did you mean "depth"' in result.stderr
  assert 'Traceback' not in result.stderr


def test_an_override_given_twice_is_rejected_naming_the_key():
  """ml_collections appends a repeated tuple override ((3,) then (7, 9) gave (3, 7, 9))."""
  result = _run_train_script('--config.optim.decay_epochs=(3,)',
                             '--config.optim.decay_epochs=(7,9)')
  assert result.returncode != 0
  assert 'more than once: --config.optim.decay_epochs' in result.stderr
  assert 'Traceback' not in result.stderr


def test_override_of_the_wrong_type_is_rejected_naming_the_field():
  result = _run_train_script('--config.model.depth=fifty')
  assert result.returncode != 0
  assert 'config.model.depth' in result.stderr


def test_every_ablation_row_sets_its_switches():
  ablation = _load_module(CONFIG_DIR / 'ablation.py')
  for row in ablation.ROWS:
    config = ablation.get_config(f'wmveid863,{row}')
    assert set(config.keys()) == GROUPS
  baseline = ablation.get_config('wmveid863,table2_baseline')
  assert not (baseline.model.mfmp or baseline.model.fce or baseline.loss.ic)
  full = ablation.get_config('wmveid863,table2_full')
  assert full.model.mfmp and full.model.fmi and full.model.fce and full.loss.ic
  assert ablation.get_config('msvr310,table4_layer3').model.plugin_layer == 3
  assert ablation.get_config('msvr310,table4_layer3').eval.protocol == 'scene'
  control = ablation.get_config('synthetic,table2_fce_all')
  assert control.model.fce_gate == 'all' and control.model.fce and not control.loss.ic
  assert {ablation.get_config(f'wmveid863,{row}').model.fce_gate
          for row in ablation.ROWS if row != 'table2_fce_all'} == {'label'}


def test_unknown_ablation_row_is_rejected_with_the_list_of_rows():
  ablation = _load_module(CONFIG_DIR / 'ablation.py')
  with pytest.raises(ValueError, match='table2_full'):
    ablation.get_config('wmveid863,table9_nothing')


def test_sysu_and_llcm_configs_report_the_official_cmc_and_the_others_the_standard_one():
  """eval_sysu / eval_llcm count distinct gallery identities; the published tables use them."""
  modes = {}
  for path in CONFIG_FILES:
    config = _load(path)
    modes[path.stem] = (config.data.dataset, config.eval.cmc_mode)
  for name, (dataset, mode) in modes.items():
    # The synthetic sets are ours (SYSU-MM01 layout): their tables keep the standard CMC.
    official = dataset in ('sysu_mm01', 'llcm') and not name.endswith('synthetic')
    expected = 'distinct_ids' if official else 'standard'
    assert mode == expected, f'configs/{name}.py ({dataset}): {mode}'
  assert {'agw_sysu', 'agw_llcm', 'deen_sysu', 'deen_llcm', 'fscnet_sysu', 'fscnet_llcm',
          'tsme_sysu'} <= {n for n, (_, mode) in modes.items() if mode == 'distinct_ids'}
