"""Fine-tuning strategies on pretrained timm backbones: which one to use, and what it costs.

Compares the strategies of bench/strategies.py (zero_shot, feature_extract, partial, progressive, full,
fine_tune, lp_ft) on any timm backbone, each timed, recorded and ranked.

    python bench/finetune.py --preset w1                      # the seed's W1: ResNet18 at 224 px
    python bench/finetune.py --preset w2                      # the seed's W2: VGG16 at 32 px
    python bench/finetune.py --backbone convnext_nano --strategy all --dry-run

Presets reproduce the seed's settings (bench/config.py; `--profile quick` shrinks them for a CPU). Flags
override them. One JSON line per run is appended to --results (default reports/results.jsonl); runs already
recorded are skipped (--force reruns); the leaderboard (reports/leaderboard.md) is rendered at the end.
Seed (Colab L4, one run each): W1 full 92.95% / 714 s, partial 90.56% / 470 s, progressive 88.88% / 468 s;
W2 feature_extract 64.50% / 125 s, partial 77.96% / 170 s.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cli  # noqa: E402
from bench.config import PRESET_STRATEGIES, add_io_flags, add_run_flags, flag_overrides, resolve, split_list  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    add_io_flags(p, presets=['w1', 'w2'])
    p.add_argument('--strategy', help='one name, a comma list, or all (default: the preset\'s, else full)')
    add_run_flags(p)
    return p.parse_args(argv)


def configs(args):
    overrides = flag_overrides(args)
    strategies = cli.expand_strategies(args.strategy, PRESET_STRATEGIES.get(args.preset, 'full'))
    names = split_list(args.backbone) or [None]
    cfgs = [resolve(args.preset, args.profile, **overrides, **({'backbone': b} if b else {}), strategy=s)
            for b in names for s in strategies]
    return cli.with_seeds(cfgs, args.seed, args.seeds)


def main(argv=None):
    args = parse(argv)
    return cli.execute(args, configs(args))


if __name__ == '__main__':
    cli.main(main)
