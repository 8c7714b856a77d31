r"""Write a built-in synthetic dataset: the flare triplets (WMVeID863 layout) or a cross-modality set.

    python scripts/make_synthetic.py --out data/synthetic [--num_ids 150 --triplets_per_id 8 \
        --height 128 --width 64 --flare_fraction 0.22 --seed 0]
    python scripts/check_dataset.py --dataset synthetic --root data/synthetic --realism
    python scripts/make_synthetic.py --layout sysu --out data/synthetic_sysu [--num_ids 60]
    python scripts/make_synthetic.py --layout dn --out data/synthetic_dn [--num_ids 60]

Triplets: images go to OUT/{train,query,test}/<pid>/{vis,ni,th}/, the true glare masks to
OUT_masks/; read with --config.data.dataset=synthetic --config.data.root=OUT. `--layout sysu`
writes unpaired visible / infrared captures in the SYSU-MM01 layout (read as sysu_mm01), `--layout
dn` day and night captures in the DN-348 layout (read as dn348); see
input_pipeline/synthetic_cross_modal.py. --images_per_camera / --images_per_state set their sizes.
"""

from absl import app
from absl import flags

from facenet_jax import cli
from input_pipeline import cross_modal
from input_pipeline import records
from input_pipeline import synthetic
from input_pipeline import synthetic_cross_modal

_LAYOUT = flags.DEFINE_enum('layout', 'triplets', ['triplets', 'sysu', 'dn'],
                            'What to write: flare triplets or a cross-modality set.')
_PER_CAMERA = flags.DEFINE_integer('images_per_camera', 3, '--layout sysu: images per id and camera.')
_PER_STATE = flags.DEFINE_integer('images_per_state', 4, '--layout dn: images per id by day and by night.')

_OUT = flags.DEFINE_string('out', None, 'Dataset root to create.')
_NUM_IDS = flags.DEFINE_integer('num_ids', 24, 'Identities in total (a third are test ids).')
_TRIPLETS = flags.DEFINE_integer('triplets_per_id', 6, 'Triplets per identity.')
_HEIGHT = flags.DEFINE_integer('height', 64, 'Image height.')
_WIDTH = flags.DEFINE_integer('width', 32, 'Image width.')
_CAMERAS = flags.DEFINE_integer('num_cameras', 8, 'Camera views.')
_FLARE = flags.DEFINE_float('flare_fraction', 0.22, 'Mean probability that a triplet has glare in '
                            'RGB and/or NI (night twice as likely as day).')
_QUERY_IDS = flags.DEFINE_integer('num_query_ids', None, 'Test ids used as queries (default 70%).')
_NIGHT = flags.DEFINE_float('night_fraction', 0.3, 'Fraction of night triplets.')
_FORMAT = flags.DEFINE_enum('image_format', 'png', ['png', 'jpg'], 'Image file format.')
_SEED = flags.DEFINE_integer('seed', 0, 'Generator seed.')
flags.mark_flag_as_required('out')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  size = (_HEIGHT.value, _WIDTH.value)
  if _LAYOUT.value != 'triplets':
    if _LAYOUT.value == 'sysu':
      out = synthetic_cross_modal.generate_sysu_like(
          _OUT.value, num_ids=_NUM_IDS.value, images_per_camera=_PER_CAMERA.value,
          image_size=size, seed=_SEED.value)
    else:
      out = synthetic_cross_modal.generate_dn_like(
          _OUT.value, num_ids=_NUM_IDS.value, images_per_state=_PER_STATE.value,
          image_size=size, seed=_SEED.value)
    dataset = 'sysu_mm01' if _LAYOUT.value == 'sysu' else 'dn348'
    splits = cross_modal.load_cross_modal(dataset, out)
    names = splits.modality_names
    print(f'Wrote {out} ({dataset} layout): train {len(splits.pool(0))} {names[0]} + '
          f'{len(splits.pool(1))} {names[1]} images of {records.num_classes(splits.train)} ids, '
          f'{len(splits.query)} queries, {len(splits.gallery)} gallery candidates')
    return
  out = synthetic.generate_synthetic_dataset(
      _OUT.value, num_ids=_NUM_IDS.value, triplets_per_id=_TRIPLETS.value,
      image_size=size, num_cameras=_CAMERAS.value,
      flare_fraction=_FLARE.value, num_query_ids=_QUERY_IDS.value,
      night_fraction=_NIGHT.value, image_format=_FORMAT.value, seed=_SEED.value)
  splits = records.load_splits('synthetic', out)
  print(f'Wrote {out}: train {len(splits.train)} triplets / {records.num_classes(splits.train)} '
        f'ids, query {len(splits.query)}, gallery {len(splits.gallery)}; glare masks in '
        f'{out.rstrip("/")}{synthetic.MASK_SUFFIX}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
