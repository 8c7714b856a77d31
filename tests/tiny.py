"""The tiny training config shared by the training tests: small enough to compile and run fast."""

import functools
import os
import pathlib

import jax

from configs import agw_synthetic
from configs import default
from configs import synthetic as synthetic_config
from facenet_jax import models

# The synthetic config shrunk to test size: ResNet-18 streams at 32x16, batches of 4 x 2.
TINY_OVERRIDES = {
    'data.image_size': (32, 16),
    'data.pad_pixels': 2,
    'data.num_ids_per_batch': 4,
    'data.num_instances': 2,
    'data.eval_batch_size': 8,
    'data.num_val_ids': 2,
    'model.depth': 18,
    'optim.base_lr': 3.5e-4,        # the paper's; 1e-3 oscillates on batches of 8
    'train.num_epochs': 2,
    'train.log_every_steps': 1,
    'train.checkpoint_every_steps': 2,
    'train.eval_every_epochs': 100,
}


# The smallest `config.model` fields of each registered model that still build every part of it:
# what the model contract test (tests/test_models.py) builds from each model's config group.
TINY_MODEL_FIELDS = {
    'facenet': dict(depth=18, width_multiplier=0.125),
    'facenet_vit': dict(embed_dim=32, depth=3, num_heads=2, patch_size=8,
                        cross_attention_heads=2, cross_attention_dim_head=16),
    'single_stream': dict(depth=18, width_multiplier=0.125),
    'agw': dict(depth=18, width_multiplier=0.125),
    'deen': dict(depth=18, width_multiplier=0.125),
    'fsc_net': dict(depth=18, width_multiplier=0.25),   # FSA's MLP needs C'/16 >= 4 hidden units
    'dndm': dict(depth=18, width_multiplier=0.125),
    'tsme': dict(depth=18, width_multiplier=0.125, generator_depth=18,
                 generator_width_multiplier=0.125),
}


TINY_MODEL_IMAGE_SIZE = (32, 16)
TINY_MODEL_CLASSES = 4


def tiny_model(name: str, **fields):
  """(config, model, spec) of `configs/default.py:<name>` with TINY_MODEL_FIELDS, then `fields`."""
  config = default.get_config(name)
  config.model.update({**TINY_MODEL_FIELDS[name], **fields})
  return config, models.build_model(config.model, TINY_MODEL_CLASSES), models.get_spec(name)


@functools.cache
def _jitted_init(name: str, fields: tuple):
  _, model, _ = tiny_model(name, **dict(fields))
  return jax.jit(lambda rng: models.init_variables(model, TINY_MODEL_IMAGE_SIZE, rng))


def initial_variables(name: str, rng: jax.Array, **fields) -> dict:
  """`tiny_model(name, **fields)`'s initial variables from `rng`: one compiled program per model
  and process (and one entry of the persistent cache for every test that draws them)."""
  return _jitted_init(name, tuple(sorted(fields.items())))(rng)


def _set(config, dotted: str, value) -> None:
  group, field = dotted.split('.')
  setattr(config[group], field, value)


def tiny_config(root: str, model: str = 'facenet', **overrides):
  """`configs/synthetic.py:<model>` with TINY_OVERRIDES, then `overrides` ({'train__max_steps': 3}
  style)."""
  return _shrunk(synthetic_config.get_config(model), root, TINY_OVERRIDES, overrides)


def _shrunk(config, root: str, test_size: dict, overrides: dict):
  """`config` on the tree at `root` with the dotted `test_size` fields, then the `a__b`
  `overrides`."""
  config.data.root = root
  for dotted, value in test_size.items():
    _set(config, dotted, value)
  for key, value in overrides.items():
    _set(config, key.replace('__', '.'), value)
  return config


def tiny_flags(root: str, workdir: str | pathlib.Path, model: str = 'facenet',
               **overrides) -> list[str]:
  """`scripts/train.py` flags giving exactly `tiny_config(root, model, **overrides)`."""
  items = {**TINY_OVERRIDES, **{k.replace('__', '.'): v for k, v in overrides.items()}}
  return (['--config', f'configs/synthetic.py:{model}', '--workdir', str(workdir),
           f'--config.data.root={root}'] +
          [f'--config.{k}={v}' for k, v in items.items()])


# A short SGD run shared by tests that compare runs step by step (multi-process vs one process)
# or only need a few steps: identical configs compile identical programs, which the persistent
# compilation cache then shares between tests. SGD, not Adam: Adam's first update is
# ~lr * sign(g), so parameters whose gradient is ~0 (summation-order noise) would jump by +-lr
# and make two equivalent runs drift apart for reasons unrelated to what is compared.
SHORT_SGD_RUN = dict(train__max_steps=3, optim__optimizer='sgd', optim__base_lr=1e-4)


def subprocess_env(num_devices: int = 1) -> dict[str, str]:
  """This test environment for a child process with `num_devices` simulated CPU devices.

  The compilation cache and the other settings are inherited, except the TensorFlow
  log and oneDNN settings of conftest: a script sets those itself, as it does for a user.
  """
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS')}
  env['JAX_NUM_CPU_DEVICES'] = str(num_devices)   # not an XLA flag: see tests/conftest.py
  return env


# `configs/agw_synthetic.py` at test size: an eighth-width ResNet-50 at 32x16, batches 4 x 2.
TINY_AGW_OVERRIDES = {
    'data.image_size': (32, 16),
    'data.pad_pixels': 2,
    'data.num_ids_per_batch': 4,
    'data.num_instances': 2,
    'data.eval_batch_size': 16,
    'model.width_multiplier': 0.125,
    'train.log_every_steps': 1,
    'train.checkpoint_every_steps': 2,
    'train.eval_every_epochs': 100,
}


def tiny_agw_config(root: str, **overrides):
  """`configs/agw_synthetic.py` with TINY_AGW_OVERRIDES, then `overrides` ({'train__max_steps':
  4} style)."""
  return _shrunk(agw_synthetic.get_config(), root, TINY_AGW_OVERRIDES, overrides)
