"""Training from scratch (W3): a CIFAR ResNet32 against VGG16, and what makes VGG16 learn.

The seed trained both from random init on CIFAR-10 at 32 px (pixels / 255, no augmentation, Adam 1e-3, batch 64,
30 epochs, 40k/10k/10k). ResNet32 (466,906 parameters) reached 77.97% best validation, ~75.7% test, in 446 s;
VGG16 (no BatchNorm, GAP -> 256 -> Dropout 0.5 -> 10, 14,848,586 parameters) never learned: 10% test, loss stuck
at ln 10 for 30 epochs, 730 s. This script runs the seed's two rows and, with the same budget, the rows that
explain them: ResNet32 with standard augmentation (random crop, 4 px padding, + flip; the literature reports
~92-93% with a longer schedule), VGG16 with BatchNorm (vgg16_bn), and VGG16 at a 10x lower LR.

    python bench/scratch.py --preset w3                            # every variant below
    python bench/scratch.py --preset w3 --variants seed,augment --seeds 3
    python bench/scratch.py --backbone cifar_resnet32 --epochs 5   # the preset's settings, one model

Records go to --results (experiment `w3`), the leaderboard and figures are rendered at the end.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cli  # noqa: E402
from bench.config import UsageError, add_io_flags, add_run_flags, flag_overrides, resolve, split_list  # noqa: E402

VGG_HEAD = dict(head='mlp', head_hidden=256, head_dropout=0.5)
VARIANTS = {  # name -> (backbone, settings on top of the preset); each is a leaderboard row
    ('cifar_resnet32', 'seed'): {},
    ('cifar_resnet32', 'augment'): dict(augment=True),
    ('vgg16', 'seed'): VGG_HEAD,
    ('vgg16_bn', 'bn'): VGG_HEAD,
    ('vgg16', 'lr1e-4'): dict(VGG_HEAD, lr=1e-4),
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    add_io_flags(p, presets=['w3'])
    p.add_argument('--variants', help=f'comma list of {", ".join(sorted({v for _, v in VARIANTS}))} (default: all)')
    add_run_flags(p)
    return p.parse_args(argv)


def configs(args):
    overrides = flag_overrides(args)
    wanted = split_list(args.variants) or None
    known = {v for _, v in VARIANTS}
    for v in wanted or []:
        if v not in known:
            raise UsageError(f'unknown variant {v!r}; choose from {", ".join(sorted(known))}')
    names = split_list(args.backbone)
    cfgs = []
    for (backbone, variant), settings in VARIANTS.items():
        if (names and backbone not in names) or (wanted and variant not in wanted):
            continue
        cfgs.append(resolve('w3', args.profile, **{**settings, 'backbone': backbone, 'variant': variant,
                                                   **overrides}))
    for name in names:  # a backbone outside the table runs once with the preset's settings
        if not any(backbone == name for backbone, _ in VARIANTS):
            cfgs.append(resolve('w3', args.profile, **{'backbone': name, **overrides}))
    if not cfgs:
        raise UsageError('no configuration matches --backbone and --variants')
    return cli.with_seeds(cfgs, args.seed, args.seeds)


def main(argv=None):
    args = parse(argv)
    return cli.execute(args, configs(args))


if __name__ == '__main__':
    cli.main(main)
