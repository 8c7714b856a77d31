r"""Convert ImageNet ResNet weights to the Flax backbone file that FACENet loads.

    python scripts/convert_weights.py resnet50-0676ba61.pth weights/resnet50.npz --depth 50

IN is a torchvision-layout state dict (.pth/.pt needs torch; .safetensors; .npz). OUT is a flat
.npz of the Flax variables (`params/...`, `batch_stats/...`; see facenet_jax/pretrained.py); point
`--config.model.pretrained_path` at it. Nothing is downloaded: fetch IN yourself.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from facenet_jax import pretrained  # pylint: disable=g-import-not-at-top


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('input', help='torchvision-layout weights: .pth, .pt, .safetensors or .npz')
  parser.add_argument('output', help='converted Flax backbone, .npz')
  parser.add_argument('--depth', type=int, default=50, choices=(18, 34, 50, 101))
  args = parser.parse_args(argv)
  backbone = pretrained.load_pretrained_backbone(args.input, args.depth)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  pretrained.save_backbone(backbone, args.output)
  count = sum(v.size for v in pretrained.jax.tree.leaves(backbone['params']))
  print(f'wrote {args.output}: ResNet-{args.depth}, {count:,} parameters')
  return 0


if __name__ == '__main__':
  sys.exit(main())
