r"""Write the built-in synthetic flare dataset (WMVeID863 layout) and its glare masks.

    python scripts/make_synthetic.py --out data/synthetic [--num_ids 150 --triplets_per_id 8 \
        --height 128 --width 64 --flare_fraction 0.22 --seed 0]
    python scripts/check_dataset.py --dataset synthetic --root data/synthetic --realism

Images go to OUT/{train,query,test}/<pid>/{vis,ni,th}/, the true glare masks to OUT_masks/.
Read it with --config.data.dataset=synthetic --config.data.root=OUT.
"""

from absl import app
from absl import flags

from input_pipeline import records
from input_pipeline import synthetic

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
  out = synthetic.generate_synthetic_dataset(
      _OUT.value, num_ids=_NUM_IDS.value, triplets_per_id=_TRIPLETS.value,
      image_size=(_HEIGHT.value, _WIDTH.value), num_cameras=_CAMERAS.value,
      flare_fraction=_FLARE.value, num_query_ids=_QUERY_IDS.value,
      night_fraction=_NIGHT.value, image_format=_FORMAT.value, seed=_SEED.value)
  splits = records.load_splits('synthetic', out)
  print(f'Wrote {out}: train {len(splits.train)} triplets / {records.num_classes(splits.train)} '
        f'ids, query {len(splits.query)}, gallery {len(splits.gallery)}; glare masks in '
        f'{out.rstrip("/")}{synthetic.MASK_SUFFIX}')


if __name__ == '__main__':
  app.run(main)
