r"""Embed a folder of image triplets with a trained model; save names and embeddings to .npz.

    python scripts/extract_features.py --workdir runs/wmveid863 --images crops/ --out feats.npz \
        [--checkpoint best|latest] [--batch_size N] [--export model.jaxexport] [--verbose]

The model, image size, normalisation and flare rule come from <workdir>/config.json, the weights
from the best (default) or latest checkpoint; the workdir is only read, never written, and the
dataset is not needed. --images is DIR/{vis,ni,th}/<name> or DIR/<id>/{vis,ni,th}/<name> (e.g. a
WMVeID863 query/ folder), RGB/NI/TI paired by file name (see facenet_jax/inference.py). The .npz
holds `names` [N] (the RGB image's path relative to --images) and `embeddings` float32 [N, E]
(L2-normalised rows, the evaluator's embeddings). --export also writes the embedding function
(`jax.export`, runs with JAX + NumPy only: facenet_jax.exported.load_exported) with its .json
sidecar and .variables.npz. Expected errors (missing workdir or checkpoint, empty folder,
unreadable image) print one line naming the path and exit with status 1.
"""

import pathlib
import sys

from absl import app
from absl import flags

from facenet_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (config.json, checkpoints).')
_IMAGES = flags.DEFINE_string('images', None, 'Folder of image triplets.')
_OUT = flags.DEFINE_string('out', None, 'Output .npz file (names, embeddings).')
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'],
                                'The best-by-validation or the latest step checkpoint.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None,
                                   'Triplets per batch (default: config.data.eval_batch_size).',
                                   lower_bound=1)
_EXPORT = flags.DEFINE_string('export', None, 'Also export the embedding function to this path.')
flags.mark_flags_as_required(['workdir', 'images', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  import numpy as np  # pylint: disable=g-import-not-at-top
  from facenet_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from facenet_jax import inference  # pylint: disable=g-import-not-at-top
  from input_pipeline import records  # pylint: disable=g-import-not-at-top

  expected = (FileNotFoundError, checkpointing.CheckpointError, inference.InferenceError,
              records.DatasetError)
  out = pathlib.Path(_OUT.value)
  try:
    triplets = inference.list_triplets(_IMAGES.value)   # a bad folder fails before the model loads
    extractor = inference.FeatureExtractor.from_workdir(_WORKDIR.value, _CHECKPOINT.value,
                                                        batch_size=_BATCH_SIZE.value)
    names, embeddings = extractor.embed_files(triplets)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open('wb') as f:   # a file object: np.savez would append '.npz' to a bare name
      np.savez(f, names=np.asarray(names), embeddings=embeddings)
    exported = inference.export_embedding(extractor, _EXPORT.value) if _EXPORT.value else None
  except expected as e:
    sys.exit(f'error: {e}')
  except OSError as e:   # writing the outputs: a full disk, a read-only folder
    sys.exit(f'error: {e.filename or out}: {e.strerror or e}')
  loaded = extractor.loaded
  line = (f'{len(names)} embeddings ({embeddings.shape[1]}-d, {_CHECKPOINT.value} checkpoint step '
          f'{loaded.step}) -> {out}')
  if exported:
    line += f'; exported -> {exported["program"]}'
  print(line, flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
