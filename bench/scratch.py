"""Training from scratch (W3): a CIFAR ResNet32 against VGG16, and what makes VGG16 learn.

The seed trained both from random init on CIFAR-10 at 32 px (pixels / 255, no augmentation, Adam 1e-3, batch 64,
30 epochs, 40k/10k/10k). ResNet32 (466,906 parameters) reached 77.97% best validation, ~75.7% test, in 446 s;
VGG16 (no BatchNorm, GAP -> 256 -> Dropout 0.5 -> 10, 14,848,586 parameters) never learned: 10% test, loss stuck
at ln 10 for 30 epochs, 730 s. This script runs the seed's two rows and, with the same budget, the rows that
explain them (W3's variants in bench/declare/experiments.py): ResNet32 with standard augmentation (random crop, 4 px padding,
+ flip; the literature reports ~92-93% with a longer schedule), VGG16 with BatchNorm (vgg16_bn), and VGG16 at a
10x lower LR.

    python bench/scratch.py --preset w3 --seeds 3                  # every variant
    python bench/scratch.py --preset w3 --variants seed,augment --seeds 3
    python bench/scratch.py --backbone cifar_resnet32 --epochs 5   # the preset's settings, one model

Records go to --results (experiment `w3`), the leaderboard and figures are rendered at the end.
"""
import argparse

from bench.command import cli
from bench.command.flags import add_io_flags, add_run_flags, split_list
from bench.declare.config import UsageError
from bench.declare.experiments import W3


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    add_io_flags(p, presets=[W3.name])
    p.add_argument('--backbone', help='timm model name(s), comma-separated: only these rows, and a model outside '
                                      'the variants runs once with the preset\'s settings (default: every row)')
    p.add_argument('--variants', help=f'comma list of {", ".join(sorted({v for _, v in W3.variants}))} '
                                      f'(default: all)')
    add_run_flags(p)
    return p


def parse(argv=None):
    return parser().parse_args(argv)


def configs(args, target):
    wanted = split_list(args.variants)
    known = {v for _, v in W3.variants}
    for v in wanted:
        if v not in known:
            raise UsageError(f'unknown variant {v!r}; choose from {", ".join(sorted(known))}')
    names = split_list(args.backbone)
    rows = [(backbone, dict(settings, variant=variant)) for (backbone, variant), settings in W3.variants.items()
            if (not names or backbone in names) and (not wanted or variant in wanted)]
    rows += [(name, {}) for name in names if not any(b == name for b, _ in W3.variants)]
    if not rows:
        raise UsageError('no configuration matches --backbone and --variants')
    return cli.runs(W3, args, target, [dict(settings, backbone=backbone) for backbone, settings in rows])


def main(argv=None):
    return cli.execute(parse(argv), configs)


if __name__ == '__main__':
    cli.main(main)
