r"""Every ablation row of the paper's Tables 2, 4 and 5, selected by name on the command line.

    python scripts/train.py --config configs/ablation.py:wmveid863,table2_full --workdir runs/t2_full \
        --config.data.root=/data/WMVeID863

The argument after ':' is `<base config>,<row>`: the base is any config module in this folder
(`wmveid863`, `synthetic`, ...) and the row one of `ROWS` below. Paper numbers (WMVeID863 mAP):
table2_baseline 53.7, table2_mfmp 53.9, table2_mfmp_fce 60.5, table2_mfmp_nofmi_fce 57.5,
table2_full 62.1; table4_layer1..4 50.6 / 53.8 / 55.5 / 60.5; table5_3m 50.3, table5_hc 59.4,
table5_cdc 54.1 (all Table 4/5 rows are FACENet without IC unless named otherwise).
table2_fce_all is not in the paper: table2_mfmp_fce with FCE on every sample whatever its flare
label (`model.fce_gate='all'`), the control that separates replacing from gating.
"""

import importlib


def _switches(mfmp: bool, fmi: bool, fce: bool, ic: bool, plugin_layer: int = 4,
              relation: str = 'none', fce_gate: str = 'label'):
  def apply(config):
    config.model.mfmp = mfmp
    config.model.fmi = fmi
    config.model.fce = fce
    config.model.fce_gate = fce_gate
    config.model.plugin_layer = plugin_layer
    config.loss.ic = ic
    config.loss.relation = relation
    return config
  return apply


ROWS = {
    # Table 2: component ablation.
    'table2_baseline': _switches(mfmp=False, fmi=False, fce=False, ic=False),
    'table2_mfmp': _switches(mfmp=True, fmi=True, fce=False, ic=False),
    'table2_mfmp_fce': _switches(mfmp=True, fmi=True, fce=True, ic=False),
    'table2_mfmp_nofmi_fce': _switches(mfmp=True, fmi=False, fce=True, ic=False),
    'table2_full': _switches(mfmp=True, fmi=True, fce=True, ic=True),
    # Control (not in the paper): FCE on every sample, so gating by the label is switched off.
    'table2_fce_all': _switches(mfmp=True, fmi=True, fce=True, ic=False, fce_gate='all'),
    # Table 4: where MFMP + FCE are plugged in (no IC loss, as in the table).
    **{f'table4_layer{k}': _switches(mfmp=True, fmi=True, fce=True, ic=False, plugin_layer=k)
       for k in (1, 2, 3, 4)},
    # Table 5: relation losses on top of FACENet without IC.
    'table5_3m': _switches(mfmp=True, fmi=True, fce=True, ic=False, relation='3m'),
    'table5_hc': _switches(mfmp=True, fmi=True, fce=True, ic=False, relation='hc'),
    'table5_cdc': _switches(mfmp=True, fmi=True, fce=True, ic=False, relation='cdc'),
}


def get_config(spec: str = 'wmveid863,table2_full'):
  try:
    base_name, row = spec.split(',')
  except ValueError:
    raise ValueError(f"ablation config argument {spec!r} must be '<base config>,<row>', "
                     f'e.g. wmveid863,table2_full; rows: {sorted(ROWS)}') from None
  if row not in ROWS:
    raise ValueError(f'Unknown ablation row {row!r}; rows: {sorted(ROWS)}')
  base = importlib.import_module(f'configs.{base_name}')
  return ROWS[row](base.get_config())
