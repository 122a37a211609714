"""Hyperparameter search (W4): grid against random search, each trial a fastai Learner, ranked and resumable.

The seed's setting, the default: a small CNN (`cifar_cnn`: Conv32-Conv32-MaxPool-Conv64-Conv64-MaxPool-Conv128,
GAP -> Dense(h) -> ReLU -> Dropout 0.3 -> 10), Adam, pixels / 255, 15 epochs per trial.
- grid: lr {1e-3, 5e-4} x bs {64, 128} x h {128, 256, 512} = 12 trials;
- random: lr log-uniform [1e-4, 1e-3], bs {64, 96, 128, 160}, h {128, 256, 384, 512}; --random N draws N.
The seed scored trials by 3-fold CV on the 50k training images, then retrained each search's best and tested it:
grid best (bs 64, h 256, lr 1e-3) CV 74.75%, test 77.41%, 1,327 s; random best (bs 96, h 128, lr 9.33e-4)
CV 72.39%, test 79.27%, 1,251 s.

    python bench/search.py --grid --seeds 3
    python bench/search.py --random 12 --seed 0 --seeds 3
    python bench/search.py --random 20 --cv 3 --space lr=loguniform:1e-4:1e-2 bs=64,128 --backbone cifar_resnet32

Spaces and draws come from scikit-learn (ParameterGrid, ParameterSampler with scipy's loguniform), seeded, and
are printed before anything runs. Trials are scored on the validation split (or K-fold CV with --cv K, over the
training and validation images). A search runs once, with --seed (its trials are the sample); its best
configuration is then retrained on the training split with every seed and tested once per seed, so grid and
random end in a test accuracy with a spread, paired by seed. Every trial and refit is a record (experiment
`w4`); a rerun skips finished ones.
"""
import argparse
import time

import numpy as np

from bench.analysis.stats import seconds_spent
from bench.command import cli
from bench.command.flags import add_io_flags, add_run_flags
from bench.declare.config import UsageError
from bench.declare.experiments import W4
from bench.images import data
from bench.sweep.search import GRID, RANDOM, Search, describe_space, draws, parse_space, trial_config


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument('--grid', action='store_true', help='every combination of the space (lists only)')
    kind.add_argument('--random', type=int, metavar='N', help='N draws from the space')
    p.add_argument('--cv', type=int, default=0, metavar='K',
                   help='score by K-fold CV over the training and validation images (default: 0, hold-out)')
    p.add_argument('--space', nargs='+', default=[], metavar='NAME=VALUES',
                   help='override one dimension: lr=loguniform:1e-4:1e-2, bs=64,128, h=randint:64:512, '
                        'dropout=uniform:0.1:0.5')
    add_io_flags(p, presets=[W4.name])
    p.add_argument('--backbone', help='timm model name the trials train (default: cifar_cnn)')
    add_run_flags(p)
    return p


def parse(argv=None):
    return parser().parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.cv and args.cv < 2:
        raise UsageError(f'--cv needs at least 2 folds, got {args.cv}')
    opts = cli.Options.of(args)
    with cli.executor(opts) as executor:
        return run_search(args, opts, executor)


def run_search(args, opts, executor):
    """Plan the trials, run them, refit the best with every seed, render. The exit code."""
    t0 = time.perf_counter()
    base, = cli.runs(W4, args, executor.hardware, [dict(backbone=args.backbone, seed=args.seed)], seeds=False)
    space = parse_space(args.space, GRID if args.grid else RANDOM)
    trials = draws(space, args.grid, args.random or 0, args.seed)
    seeds = [c.seed for c in cli.with_seeds([base], args.seed, args.seeds)]
    cli.validate([trial_config(base, t) for t in trials])
    kind = 'grid' if args.grid else 'random'
    about = dict(kind=kind, seed=args.seed, cv=args.cv, space=describe_space(space))
    print(f'{kind} search over {about["space"]} (seed {args.seed}, '
          f'{f"{args.cv}-fold CV" if args.cv else "hold-out validation"}): {len(trials)} trials, then the best '
          f'retrained with {len(seeds)} seed{"s" * (len(seeds) > 1)}')
    for i, t in enumerate(trials, 1):
        print(f'  trial {i:3d}: ' + ', '.join(f'{k}={v:g}' for k, v in t.items()))
    if opts.dry_run:
        return 0
    found = cli.load_images(base.data)
    base = cli.stamp([base], found)[0]
    if args.cv:
        data.folds(data.split_for(found, base), found, args.cv)
    executor.start(found, bar=opts.show_bar)
    policy = Search(base, trials, seeds, about, args.cv)
    outcome = cli.run(opts, policy, executor, begin=lambda jobs: announce(policy, jobs, kind, len(seeds)))
    best, refits = policy.decide(outcome.records)
    if best is None:
        print(f'{kind} search: every trial failed; nothing to retrain')
    elif refits:
        accs = [r['test_acc'] for r in refits]
        trials_done = [r for r in outcome.records if r['search'].get('role') == 'trial' and r['error'] is None]
        print(f'result: best {best["search"]["params"]}, test accuracy {np.mean(accs):.4f} '
              f'(n = {len(accs)}{f", std {np.std(accs, ddof=1):.4f}" if len(accs) > 1 else ""}); '
              f'{seconds_spent([*trials_done, *refits]):.0f} s of training and evaluation, '
              f'{time.perf_counter() - t0:.0f} s in all')
    cli.render(opts)
    return 1 if outcome.failed or not refits else 0


def announce(policy, jobs, kind, n_seeds):
    """Before the refits: the best trial, and that it is retrained (its settings, from a record, checked as flags)."""
    if jobs and jobs[0].extra['search']['role'] == 'refit':
        params = jobs[0].extra['search']['params']
        cli.validate([job.cfg for job in jobs])
        print(f'best of {kind}: {params}; retraining it with {n_seeds} seed{"s" * (n_seeds > 1)} and testing each once')


if __name__ == '__main__':
    cli.main(main)
