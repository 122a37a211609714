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
from dataclasses import replace

import numpy as np
from scipy import stats
from sklearn.model_selection import ParameterGrid, ParameterSampler

from bench import cli, data
from bench.config import FIELDS, UsageError, add_io_flags, add_run_flags
from bench.experiments import W4
from bench.executor import Job
from bench.stats import seconds_spent

GRID = {'lr': [1e-3, 5e-4], 'bs': [64, 128], 'h': [128, 256, 512]}
RANDOM = {'lr': stats.loguniform(1e-4, 1e-3), 'bs': [64, 96, 128, 160], 'h': [128, 256, 384, 512]}
ALIASES = {'h': 'head_hidden', 'dropout': 'head_dropout'}  # short names in a space -> Config fields
NOT_SEARCHABLE = ('experiment', 'variant', 'backbone', 'strategy', 'dataset', 'profile', 'device', 'seed')
DISTRIBUTIONS = {'loguniform': lambda a, b: stats.loguniform(a, b), 'uniform': lambda a, b: stats.uniform(a, b - a),
                 'randint': lambda a, b: stats.randint(int(a), int(b) + 1)}


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


def is_integer(field):
    return FIELDS[field].type in (int, 'int')


# ---- the space ----------------------------------------------------------------------------------------------

def parse_space(items, base):
    """{name: list or distribution}: `base` with each NAME=VALUES item replacing one dimension."""
    space = dict(base)
    for item in items:
        name, sep, text = item.partition('=')
        if not sep or not text:
            raise UsageError(f'--space item {item!r} is not NAME=VALUES (e.g. lr=loguniform:1e-4:1e-2 or bs=64,128)')
        field = ALIASES.get(name, name)
        if field not in FIELDS or field in NOT_SEARCHABLE:
            raise UsageError(f'--space {name!r} is not a hyperparameter; use lr, bs, h, dropout, wd, epochs, head_lr ...')
        kind, _, bounds = text.partition(':')
        if kind in DISTRIBUTIONS:
            try:
                lo, hi = (float(x) for x in bounds.split(':'))
            except ValueError:
                raise UsageError(f'--space {item!r}: {kind} needs two numbers, as {kind}:LOW:HIGH') from None
            if not 0 < lo < hi if kind == 'loguniform' else not lo < hi:
                raise UsageError(f'--space {item!r}: the bounds must satisfy {"0 < " if kind == "loguniform" else ""}LOW < HIGH')
            space[name] = DISTRIBUTIONS[kind](lo, hi)
        else:
            try:
                values = [int(x) if is_integer(field) else float(x) for x in text.split(',') if x.strip()]
            except ValueError:
                raise UsageError(f'--space {item!r}: values must be numbers, or one of '
                                 f'{", ".join(f"{d}:LOW:HIGH" for d in DISTRIBUTIONS)}') from None
            if not values:
                raise UsageError(f'--space {item!r} lists no values')
            space[name] = values
    return space


def describe_space(space):
    def one(v):
        if isinstance(v, list):
            return ','.join(f'{x:g}' for x in v)
        dist = v.dist.name
        lo, hi = v.support() if dist != 'loguniform' else (v.kwds.get('a', v.args[0] if v.args else None),
                                                           v.kwds.get('b', v.args[1] if len(v.args) > 1 else None))
        return f'{dist}:{lo:g}:{hi:g}'
    return ' '.join(f'{k}={one(v)}' for k, v in sorted(space.items()))


def draws(space, grid, n, seed):
    """The trials' parameters, reproducible for a seed: ParameterGrid, or N draws of ParameterSampler."""
    if grid:
        for name, v in space.items():
            if not isinstance(v, list):
                raise UsageError(f'a grid needs lists; --space {name} is a distribution (use --random N)')
        trials = list(ParameterGrid(space))
    else:
        if n < 1:
            raise UsageError(f'--random must be at least 1, got {n}')
        trials = list(ParameterSampler(space, n_iter=n, random_state=seed))
    return [{k: _plain(ALIASES.get(k, k), v) for k, v in sorted(t.items())} for t in trials]


def _plain(field, v):
    v = v.item() if isinstance(v, np.generic) else v
    return int(round(v)) if is_integer(field) else float(f'{float(v):.6g}')


def trial_config(base, params):
    """`base` with a trial's parameters. W4's networks train from scratch, so a searched `lr` is the whole network's
    (body and head, as the seed searched it), unless the space searches `head_lr` too."""
    values = {ALIASES.get(k, k): v for k, v in params.items()}
    if 'lr' in values and 'head_lr' not in values:
        values['head_lr'] = values['lr']
    return replace(base, **values)


# ---- the search ---------------------------------------------------------------------------------------------

def trial_jobs(base, trials, about, cv):
    """One job per trial, scored on validation (or K folds) without touching the test set."""
    return [Job(trial_config(base, params), folds=cv, test=False,
                extra={'search': dict(about, role='trial', trial=i, params=params)},
                identity={'search': dict(about, role='trial')})
            for i, params in enumerate(trials, 1)]


def best_trial(records):
    """The successful trial with the highest validation score (the earlier trial on a tie), or None."""
    ok = [r for r in records if r['error'] is None]
    return max(ok, key=lambda r: (r['valid_acc'], -r['search']['trial'])) if ok else None


def refit_jobs(base, best, about, seeds):
    """The best configuration retrained on the training split once per seed, each tested once."""
    params = best['search']['params']
    return [Job(replace(trial_config(base, params), seed=s),
                extra={'search': dict(about, role='refit', trial=best['search']['trial'], params=params)},
                identity={'search': dict(about, role='refit')})
            for s in seeds]


def main(argv=None):
    args = parse(argv)
    if args.cv and args.cv < 2:
        raise UsageError(f'--cv needs at least 2 folds, got {args.cv}')
    with cli.executor(args) as executor:
        return run_search(args, executor)


def run_search(args, executor):
    """Plan the trials, run them, refit the best with every seed, render. The exit code."""
    t0 = time.perf_counter()
    base, = cli.runs(W4, args, executor.hardware, [dict(backbone=args.backbone, seed=args.seed)], seeds=False)
    space = parse_space(args.space, GRID if args.grid else RANDOM)
    trials = draws(space, args.grid, args.random or 0, args.seed)
    seeds = cli.with_seeds([base], args.seed, args.seeds)
    cli.validate([trial_config(base, t) for t in trials])
    kind = 'grid' if args.grid else 'random'
    about = dict(kind=kind, seed=args.seed, cv=args.cv, space=describe_space(space))
    print(f'{kind} search over {about["space"]} (seed {args.seed}, '
          f'{f"{args.cv}-fold CV" if args.cv else "hold-out validation"}): {len(trials)} trials, then the best '
          f'retrained with {len(seeds)} seed{"s" * (len(seeds) > 1)}')
    for i, t in enumerate(trials, 1):
        print(f'  trial {i:3d}: ' + ', '.join(f'{k}={v:g}' for k, v in t.items()))
    if args.dry_run:
        return 0
    images = cli.load_images(base.data)
    base = cli.stamp([base], images)[0]
    if args.cv:
        data.folds(data.split_for(images, base), images, args.cv)
    executor.start(images, bar=cli.show_bar(args))
    searched = cli.run(args, trial_jobs(base, trials, about, args.cv), executor)
    best = best_trial(searched.records)
    if best is None:
        print(f'{kind} search: every trial failed; nothing to retrain')
        cli.render(args)
        return 1
    print(f'best of {kind}: {best["search"]["params"]} with validation score {best["valid_acc"]:.4f}; '
          f'retraining it with {len(seeds)} seed{"s" * (len(seeds) > 1)} and testing each once')
    jobs = refit_jobs(base, best, about, [c.seed for c in seeds])
    cli.validate([job.cfg for job in jobs])  # the best trial's settings come from a record: checked like flags
    refits = cli.run(args, jobs, executor)
    tested = [r for r in refits.records if r['error'] is None]
    if tested:
        accs = [r['test_acc'] for r in tested]
        spent = seconds_spent([*searched.records, *tested])
        print(f'result: best {best["search"]["params"]}, test accuracy {np.mean(accs):.4f} '
              f'(n = {len(accs)}{f", std {np.std(accs, ddof=1):.4f}" if len(accs) > 1 else ""}); '
              f'{spent:.0f} s of training and evaluation, {time.perf_counter() - t0:.0f} s in all')
    cli.render(args)
    return 1 if searched.failed or refits.failed or not tested else 0


if __name__ == '__main__':
    cli.main(main)
