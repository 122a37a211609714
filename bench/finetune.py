"""Fine-tuning strategies on pretrained timm backbones: which one to use, and what it costs.

Compares the strategies of bench/declare/strategies.py (freezing: zero_shot, feature_extract, partial, progressive,
full, fine_tune, lp_ft; parameter-efficient: bitfit, norm_only, lora; layer-wise LR decay: llrd) on any timm
backbone, each timed, recorded and ranked.

    python bench/finetune.py --preset w1 --seeds 3            # the seed's W1: ResNet18 at 224 px
    python bench/finetune.py --preset w2                      # the seed's W2: VGG16 at 32 px
    python bench/finetune.py --preset w5 --seeds 3            # W5: PEFT vs freezing
    python bench/finetune.py --preset w7 --seeds 3            # W7: the same on four domains, VTAB-1k style
    python bench/finetune.py --backbone convnext_nano --strategy all --dry-run

Where runs compare strategies, each trains at its own LR, chosen on validation (`--tune lr`, the default there:
bench/sweep/tune.py); `--tune off` keeps --lr (the body's) and --head-lr (the new head's) as given.
Presets are the experiments of bench/declare/experiments.py (the seed's settings, and a `cpu` profile for a 2-core CPU);
flags override them. One JSON line per run is appended to --results (default reports/results.jsonl); runs
already recorded on this hardware are skipped (--force reruns); the leaderboard (reports/leaderboard.md) is
rendered at the end.
Seed (Colab L4, one run each): W1 full 92.95% / 714 s, partial 90.56% / 470 s, progressive 88.88% / 468 s;
W2 feature_extract 64.50% / 125 s, partial 77.96% / 170 s.
"""
import argparse

from bench.command import cli
from bench.command.flags import add_io_flags, add_run_flags, split_list
from bench.declare.experiments import EXPERIMENTS

PRESETS = [name for name, e in EXPERIMENTS.items() if e.script == 'finetune']


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    add_io_flags(p, presets=PRESETS)
    p.add_argument('--backbone', help='timm model name(s), comma-separated, each optionally with a pretrained tag '
                                      '(default: the preset\'s)')
    p.add_argument('--strategy', help='one name, a comma list, or all (default: the preset\'s)')
    p.add_argument('--regime', help='a comma list of the preset\'s regimes (W8: px, steps, schedule) to run (default: '
                                    'every one it declares)')
    add_run_flags(p)
    return p


def parse(argv=None):
    return parser().parse_args(argv)


def configs(args, target):
    exp = cli.experiment_of(args)
    strategies = cli.expand_strategies(args.strategy, exp.strategies)
    names = split_list(args.backbone) or [*exp.backbones, *cli.full_profile_backbones(exp, args, target)] or [None]
    datasets = [] if args.data else [dict(data=d) for d in exp.datasets]
    regimes = [dict(settings, variant=name) for name, settings in cli.regimes_of(exp, args.regime).items()]
    return cli.runs(exp, args, target, [dict(backbone=b, strategy=s, **d, **r) for d in datasets or [{}]
                                        for r in regimes or [{}] for b in names for s in strategies])


def main(argv=None):
    return cli.execute(parse(argv), configs)


if __name__ == '__main__':
    cli.main(main)
