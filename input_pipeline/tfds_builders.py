"""TensorFlow Datasets builders for WMVeID863, RGBNT100, MSVR310 and the synthetic set.

All four are manual-download datasets: the files are placed by the user and `prepare` reads them
with the folder readers of `records.py`, once, into TFDS shards. Preparing never touches the
network (no download, no GCS lookup). Each example holds the decoded triplet (RGB, NI, TI as
uint8 [H, W, 3], stored losslessly as PNG; RGBNT100 montages already cut into tiles), the pid
(relabelled 0..N-1 in train, raw in query/gallery), camid, scene and the flare pseudo-label under
both rules, so the train stream can pick data.flare_rule at read time. Examples keep the folder
reader's order (shuffling disabled), so record i of a split is example i.

    prepare('synthetic', root='/data/synthetic', data_dir='/data/tfds')
    # then data.source='tfds', data.tfds_data_dir='/data/tfds'
"""

from __future__ import annotations

import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import py_utils

from input_pipeline import flare_label
from input_pipeline import records as records_lib

_CITATION = ''


def _features() -> tfds.features.FeaturesDict:
  image = lambda: tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format='png')
  return tfds.features.FeaturesDict({
      'rgb': image(), 'ni': image(), 'ti': image(),
      'pid': tfds.features.Scalar(np.int32),
      'camid': tfds.features.Scalar(np.int32),
      'scene': tfds.features.Scalar(np.int32),
      'flare_paper': tfds.features.Tensor(shape=(2,), dtype=np.int32),
      'flare_official': tfds.features.Tensor(shape=(2,), dtype=np.int32),
      'path': tfds.features.Text(),
  })


class _TripletBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic; subclasses set DATASET (the records.py reader key) and the instructions."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  DATASET = ''

  # TFDS locates a builder's code folder (for checksums and metadata) through a path check that
  # needs the optional `importlib_resources` package; these builders have neither, so say where
  # the code is directly.
  @py_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(os.path.abspath(__file__))

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=_features(), supervised_keys=None, disable_shuffling=True,
        description=f'{self.DATASET} aligned RGB/NI/TI vehicle triplets for re-identification.',
        citation=_CITATION)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    splits = records_lib.load_splits(self.DATASET, str(dl_manager.manual_dir))
    return {split: self._generate_examples(getattr(splits, split))
            for split in records_lib.SPLITS}

  def _generate_examples(self, recs):
    for i, r in enumerate(recs):
      rgb, ni, ti = records_lib.load_triplet(r)
      yield i, {
          'rgb': rgb, 'ni': ni, 'ti': ti, 'pid': r.pid, 'camid': r.camid, 'scene': r.scene,
          'flare_paper': flare_label.flare_bits(rgb, ni, 'paper'),
          'flare_official': flare_label.flare_bits(rgb, ni, 'official'),
          'path': r.rgb_path,
      }


class Wmveid863(_TripletBuilder):
  """WMVeID863 (Zheng et al.): 863 vehicles, 4709 triplets, 8 cameras."""
  DATASET = 'wmveid863'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Place the WMVeID863 release so that the manual folder (`manual_dir`, the --root of
  scripts/check_dataset.py) holds `train/`, `query/` and `test/`, each with one folder per vehicle
  (`0007/`) containing `vis/`, `ni/` and `th/` with identically named images.
  """


class Rgbnt100(_TripletBuilder):
  """RGBNT100 (Li et al., AAAI 2020): 100 vehicles, 17250 montage triplets."""
  DATASET = 'rgbnt100'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Place RGBNT100 so that the manual folder holds `RGBNT100/rgbir/bounding_box_train/`,
  `.../query/` and `.../bounding_box_test/` with the 768x128 RGB|NI|TI montage JPEGs
  (`0539_c0001_009.jpg`).
  """


class Msvr310(_TripletBuilder):
  """MSVR310 (Zheng et al.): 310 vehicles, 2087 triplets, scene ids kept."""
  DATASET = 'msvr310'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Place MSVR310 so that the manual folder holds `MSVR310/bounding_box_train/`, `MSVR310/query3/`
  and `MSVR310/bounding_box_test/`, each with one folder per vehicle containing `vis/`, `ni/`,
  `th/` (`0268_s000_v0_000.jpg`).
  """


class SyntheticFlareVehicles(_TripletBuilder):
  """The built-in synthetic flare dataset (input_pipeline/synthetic.py), WMVeID863 layout."""
  DATASET = 'synthetic'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Generate the tree with `python scripts/make_synthetic.py --out DIR` and use DIR as the manual
  folder.
  """


BUILDERS = {'wmveid863': Wmveid863, 'rgbnt100': Rgbnt100, 'msvr310': Msvr310,
            'synthetic': SyntheticFlareVehicles}
TFDS_NAMES = {k: v.name for k, v in BUILDERS.items()}


def prepare(dataset: str, root: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Prepares `dataset` from the folder tree at `root` into `data_dir` (offline, once)."""
  if dataset not in BUILDERS:
    raise records_lib.DatasetError(f'data.dataset: no TFDS builder for {dataset!r}; expected one '
                                   f'of {sorted(BUILDERS)}')
  builder = BUILDERS[dataset](data_dir=data_dir or None)
  config = tfds.download.DownloadConfig(
      manual_dir=root, try_download_gcs=False,
      compute_stats=tfds.download.ComputeStatsMode.SKIP)
  tfds.disable_progress_bar()
  builder.download_and_prepare(download_config=config)
  return builder
