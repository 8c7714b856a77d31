r"""Validate a dataset tree: print counts per split and every problem found.

    python scripts/check_dataset.py --dataset wmveid863 --root /data/WMVeID863 \
        [--skip_images] [--prepare_tfds --tfds_data_dir /data/tfds]
    python scripts/check_dataset.py --dataset synthetic --root data/synthetic --realism
    python scripts/check_dataset.py --dataset sysu_mm01 --root /data/SYSU-MM01 [--search_mode indoor]
    python scripts/check_dataset.py --dataset regdb --root /data/RegDB --trial 3
    python scripts/check_dataset.py --dataset dnwild --root /data/DN --direction night_to_day

Cross-modality sets (`input_pipeline.cross_modal`: sysu_mm01, regdb, llcm, dn348, dnwild): images,
ids and cameras per split and modality, training ids seen in one modality only, and the problems
of the reader and the pre-scan (undecodable images, query ids without gallery candidates).

Counts: identities, triplets, cameras and scenes per split, the flare pseudo-label rate under both
rules (decodes every image; --skip_images only reads the tree), training ids with a single
triplet (kept; the sampler repeats them) and queries without a gallery match from another
camera. Problems: everything the reader rejects (missing folders, unpaired or unparseable files,
empty splits) and what training's pre-scan (`records.prescan`, `data.prescan`) rejects: images
that cannot be decoded, triplets whose images differ in size, query ids absent from the gallery.
Exits with status 1 if there are problems.
With --prepare_tfds a clean tree is then prepared into TFDS shards (offline).

--realism (synthetic trees only) also measures whether the tree poses a realistic glare problem
(`input_pipeline.realism`: glare rates, locality against a glare-free re-render, position
variability against an image-independent mask, RGB/NI differences, pseudo-label precision and
recall, hidden identity cues, the modality ordering of a pixel descriptor) and exits with status 1
when a realism check fails.
"""

import collections
import sys

from absl import app
from absl import flags
import numpy as np

from facenet_jax import cli
from input_pipeline import cross_modal
from input_pipeline import flare_label
from input_pipeline import records

_DATASET = flags.DEFINE_enum('dataset', 'wmveid863',
                             list(records.DATASETS) + list(cross_modal.CROSS_MODAL_DATASETS),
                             'Dataset layout.')
_DIRECTION = flags.DEFINE_string('direction', None, 'Cross-modality sets: query -> gallery '
                                 'direction (default: the dataset\'s first, see cross_modal).')
_SEARCH_MODE = flags.DEFINE_enum('search_mode', 'all', ['all', 'indoor'], 'SYSU-MM01 gallery cameras.')
_TRIAL = flags.DEFINE_integer('trial', 1, 'RegDB split 1..10.')
_USE_NPY_CACHE = flags.DEFINE_bool('use_npy_cache', False, 'SYSU-MM01: training images from the '
                                   'official .npy cache.')
_ROOT = flags.DEFINE_string('root', None, 'Dataset root (as data.root).')
_SKIP_IMAGES = flags.DEFINE_bool('skip_images', False, 'Do not decode images (no flare rate).')
_PREPARE_TFDS = flags.DEFINE_bool('prepare_tfds', False, 'Prepare TFDS shards if the tree is clean.')
_TFDS_DATA_DIR = flags.DEFINE_string('tfds_data_dir', '', 'TFDS data dir (as data.tfds_data_dir).')
_REALISM = flags.DEFINE_bool('realism', False, 'Synthetic trees: measure and check realism.')


def check_dataset(dataset: str, root: str, decode_images: bool = True
                  ) -> tuple[list[str], list[str]]:
  """Returns (report lines, problems) for the tree at `root`."""
  splits, problems = records.scan_splits(dataset, root)
  lines = [f'{dataset} at {root}']
  header = f'{"split":<8} {"ids":>5} {"triplets":>8} {"cameras":<18} {"scene ids":>9}'
  if decode_images:
    header += f' {"flare paper (RGB, NI)":>22} {"flare official":>14}'
  lines.append(header)
  for split in records.SPLITS:
    recs = getattr(splits, split)
    cams = sorted({r.camid for r in recs})
    scenes = len({r.scene for r in recs if r.scene >= 0})
    line = (f'{split:<8} {records.num_classes(recs):>5} {len(recs):>8} '
            f'{",".join(map(str, cams)):<18} {scenes:>9}')
    if decode_images:
      paper, official = [], []
      for r in recs:
        try:
          rgb, ni, _ = records.load_triplet(r)
        except records.DatasetError:
          continue        # listed by records.prescan below
        paper.append(flare_label.flare_bits(rgb, ni, 'paper'))
        official.append(flare_label.flare_bits(rgb, ni, 'official')[0])
      if paper:
        p = 100 * np.mean(paper, axis=0)
        line += f' {p[0]:>10.1f}%, {p[1]:>5.1f}% {100 * np.mean(official):>13.1f}%'
    lines.append(line)
  if decode_images:
    # The checks training runs before its first step (data.prescan): the same problems fail both.
    problems.extend(records.prescan(splits))
  single = records.single_image_ids(splits.train)
  if single:
    lines.append(f'note: {len(single)} training ids have a single triplet (kept, sampled with '
                 f'replacement): labels {single[:20]}{" ..." if len(single) > 20 else ""}')
  gallery_cams = collections.defaultdict(set)
  for g in splits.gallery:
    gallery_cams[g.pid].add(g.camid)
  orphans = [q for q in splits.query if not gallery_cams[q.pid] - {q.camid}]
  if orphans:
    lines.append(f'note: {len(orphans)} of {len(splits.query)} queries have no gallery match from '
                 f'another camera (skipped by the camera protocol), e.g. {orphans[0].rgb_path}')
  return lines, problems


def check_cross_modal(dataset: str, root: str, decode_images: bool = True, **reader_kwargs
                      ) -> tuple[list[str], list[str]]:
  """Returns (report lines, problems) for a cross-modality tree (`cross_modal.scan_cross_modal`)."""
  splits, problems = cross_modal.scan_cross_modal(dataset, root, **reader_kwargs)
  names = splits.modality_names
  lines = [f'{dataset} at {root}, evaluated {splits.direction}',
           f'{"split":<8} {"modality":<9} {"ids":>5} {"images":>7}  cameras']
  for split in ('train', 'query', 'gallery'):
    recs = getattr(splits, split)
    for modality in (0, 1):
      part = [r for r in recs if r.modality == modality]
      if part:
        cams = sorted({r.camid for r in part})
        lines.append(f'{split:<8} {names[modality]:<9} {len({r.pid for r in part}):>5} '
                     f'{len(part):>7}  {",".join(map(str, cams))}')
  one_pool = sorted({r.pid for r in splits.pool(0)} ^ {r.pid for r in splits.pool(1)})
  if one_pool:
    lines.append(f'note: {len(one_pool)} training ids have images in one modality only (the '
                 f'sampler never draws them): labels {one_pool[:20]}{" ..." if len(one_pool) > 20 else ""}')
  if decode_images:
    problems.extend(cross_modal.prescan(splits))
  return lines, problems


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _ROOT.value:
    raise app.UsageError('--root is required')
  try:
    if _DATASET.value in cross_modal.CROSS_MODAL_DATASETS:
      lines, problems = check_cross_modal(
          _DATASET.value, _ROOT.value, not _SKIP_IMAGES.value, direction=_DIRECTION.value,
          search_mode=_SEARCH_MODE.value, trial=_TRIAL.value, use_npy_cache=_USE_NPY_CACHE.value)
    else:
      lines, problems = check_dataset(_DATASET.value, _ROOT.value, not _SKIP_IMAGES.value)
  except records.DatasetError as e:
    print(f'problem: {e}')
    return 1
  print('\n'.join(lines))
  if problems:
    print(f'{len(problems)} problems:')
    for p in problems:
      print(f'  {p}')
    return 1
  print('no problems found')
  if _REALISM.value:
    from input_pipeline import realism
    if _DATASET.value != 'synthetic':
      raise app.UsageError('--realism needs --dataset synthetic (a tree of scripts/make_synthetic.py)')
    try:
      figures = realism.measure(_ROOT.value)
    except ValueError as e:
      print(f'problem: {e}')
      return 1
    print('\n'.join(realism.format_report(figures)))
    failed = [path for path, _, ok in realism.checks(figures) if not ok]
    if failed:
      print(f'{len(failed)} realism checks failed: {", ".join(failed)}')
      return 1
  if _PREPARE_TFDS.value:
    from input_pipeline import tfds_builders
    builder = tfds_builders.prepare(_DATASET.value, _ROOT.value, _TFDS_DATA_DIR.value or None)
    print(f'prepared TFDS dataset {builder.name} in {builder.data_dir}')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parse_flags)
