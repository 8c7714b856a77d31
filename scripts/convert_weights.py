r"""Convert ImageNet ResNet weights to the Flax backbone file that FACENet loads.

    python scripts/convert_weights.py resnet50-0676ba61.pth weights/resnet50.npz --depth 50

IN is a torchvision-layout state dict (.pth/.pt needs torch; .safetensors; .npz). OUT is a flat
.npz of the Flax variables (`params/...`, `batch_stats/...`; see facenet_jax/pretrained.py); point
`--config.model.pretrained_path` at it. Nothing is downloaded: fetch IN yourself.

    python scripts/convert_weights.py jx_vit_base_p16_224-80ecf9dd.pth weights/vit_b16.npz \
        --backbone vit_b16

With `--backbone vit_b16`, IN is a timm-layout ViT (.pth/.safetensors/.npz) or the original JAX
.npz; OUT holds the full ViT (`params/...`, the 14 x 14 position embedding unresized), readable
without torch.
"""

import argparse
import os
import sys

from facenet_jax import console
from facenet_jax import pretrained


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('input', help='torchvision-layout weights: .pth, .pt, .safetensors or .npz')
  parser.add_argument('output', help='converted Flax backbone, .npz')
  parser.add_argument('--depth', type=int, default=50, choices=(18, 34, 50, 101))
  parser.add_argument('--backbone', default='resnet', choices=('resnet', 'vit_b16'))
  args = parser.parse_args(argv)
  console.quiet_library_logs()
  backbone = pretrained.load_pretrained_backbone(args.input, args.depth, args.backbone)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  pretrained.save_backbone(backbone, args.output)
  count = sum(v.size for v in pretrained.jax.tree.leaves(backbone['params']))
  name = 'ViT' if args.backbone == 'vit_b16' else f'ResNet-{args.depth}'
  print(f'wrote {args.output}: {name}, {count:,} parameters')
  return 0


if __name__ == '__main__':
  sys.exit(main())
