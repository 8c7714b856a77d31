"""Batch contracts: which arrays a task's batches carry, so the trainer never needs to know.

A contract names the model's inputs (passed to `model.apply` positionally, in order) and the
training labels the loss bundle reads. The trainer sends `train_keys` of every host batch to the
devices, the evaluator `input_keys`; everything else in a batch (paths, 'mask', 'index') stays on
the host. Shapes use B (batch), H, W (image size, `config.data.image_size`). The images are the
model's view: the streams ship them as uint8 (with data.normalize_on_device), and the compiled
steps turn them into these float32 arrays first (`facenet_jax.device_input`).

  aligned_triplets (FACENet; `input_pipeline.pipeline` streams):
    'rgb', 'ni', 'ti': [B, H, W, 3] float32   the three aligned, normalised images
    'flare':           [B, 2] int32           pseudo-label bits (column 0 RGB, column 1 NI)
    'pid':             [B] int32              training identity, 0..num_classes-1 (labels)

  cross_modal_images (AGW family; `input_pipeline.cross_modal_pipeline` streams):
    'image':     [B, H, W, 3] float32     one normalised image per row
    'modality':  [B] int32                0 = visible / day stem, 1 = infrared / night stem;
                                          a training batch holds B/2 rows of each
    'pid':       [B] int32                training identity (labels)
"""

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from input_pipeline.records import MODALITIES

# The flare-susceptible spectra; TI is flare-immune and acts as the condition of FCE.
FLARE_MODALITIES = MODALITIES[:2]


@dataclasses.dataclass(frozen=True)
class ArraySpec:
  """One batch entry: shape with 'B', 'H', 'W' placeholders and the dtype."""
  shape: tuple[Any, ...]
  dtype: Any


@dataclasses.dataclass(frozen=True)
class BatchContract:
  name: str
  inputs: tuple[tuple[str, ArraySpec], ...]   # model call arguments, in call order
  labels: tuple[tuple[str, ArraySpec], ...]   # read by the loss bundle only
  # key -> how to get it, appended to the error when a batch lacks that key.
  hints: tuple[tuple[str, str], ...] = ()

  @property
  def input_keys(self) -> tuple[str, ...]:
    return tuple(k for k, _ in self.inputs)

  @property
  def train_keys(self) -> tuple[str, ...]:
    return self.input_keys + tuple(k for k, _ in self.labels)

  def model_inputs(self, batch: Mapping[str, Any]) -> tuple[Any, ...]:
    """The positional arguments of `model.apply` from a batch holding at least `input_keys`."""
    missing = [k for k in self.input_keys if k not in batch]
    if missing:
      hints = ''.join(f' {h}' for k, h in self.hints if k in missing)
      raise KeyError(f'A {self.name} batch needs {list(self.input_keys)}; missing {missing} '
                     f'(it has {sorted(batch)}).{hints}')
    return tuple(batch[k] for k in self.input_keys)

  def dummy_inputs(self, image_size: tuple[int, int], batch_size: int = 2) -> tuple[Any, ...]:
    """Zero arrays of the input shapes, e.g. to initialise or trace a model."""
    sizes = {'B': batch_size, 'H': image_size[0], 'W': image_size[1]}
    return tuple(jnp.zeros(tuple(sizes.get(d, d) for d in spec.shape), spec.dtype)
                 for _, spec in self.inputs)


_IMAGE = ArraySpec(('B', 'H', 'W', 3), jnp.float32)
ALIGNED_TRIPLETS = BatchContract(
    name='aligned_triplets',
    inputs=tuple((m, _IMAGE) for m in MODALITIES) + (('flare', ArraySpec(('B', 2), jnp.int32)),),
    labels=(('pid', ArraySpec(('B',), jnp.int32)),),
)

CROSS_MODAL_IMAGES = BatchContract(
    name='cross_modal_images',
    inputs=(('image', _IMAGE), ('modality', ArraySpec(('B',), jnp.int32))),
    labels=(('pid', ArraySpec(('B',), jnp.int32)),),
)

DAY_NIGHT_IMAGES = BatchContract(
    name='day_night_images',
    inputs=(('image', _IMAGE), ('modality', ArraySpec(('B',), jnp.int32)),
            ('glare', ArraySpec(('B', 'H', 'W'), jnp.float32)),
            ('pid', ArraySpec(('B',), jnp.int32))),
    labels=(),
    hints=(('glare', "The glare prompt comes from config.data.glare_mask='paper' (or 'code'); "
            'it is empty.'),),
)
