"""Hyperparameter search (W4): grid against random search, each trial a fastai Learner, ranked and resumable.

The seed's setting, the default: a small CNN (`cifar_cnn`: Conv32-Conv32-MaxPool-Conv64-Conv64-MaxPool-Conv128,
GAP -> Dense(h) -> ReLU -> Dropout 0.3 -> 10), Adam, pixels / 255, 15 epochs per trial.
- grid: lr {1e-3, 5e-4} x bs {64, 128} x h {128, 256, 512} = 12 trials;
- random: lr log-uniform [1e-4, 1e-3], bs {64, 96, 128, 160}, h {128, 256, 384, 512}; --random N draws N.
The seed scored trials by 3-fold CV on the 50k training images, then retrained each search's best and tested it:
grid best (bs 64, h 256, lr 1e-3) CV 74.75%, test 77.41%, 1,327 s; random best (bs 96, h 128, lr 9.33e-4)
CV 72.39%, test 79.27%, 1,251 s.

    python bench/search.py --grid
    python bench/search.py --random 12 --seed 0
    python bench/search.py --random 20 --cv 3 --space lr=loguniform:1e-4:1e-2 bs=64,128 --backbone cifar_resnet32

Spaces and draws come from scikit-learn (ParameterGrid, ParameterSampler with scipy's loguniform), seeded, and
are printed before anything runs. Trials are scored on the validation split (or K-fold CV with --cv K, over the
training and validation images); the test set is touched once per search, by the best configuration retrained on
the training split. Every trial is a record (experiment `search`); a rerun skips finished trials.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.model_selection import ParameterGrid, ParameterSampler  # noqa: E402

from bench import cli, data, record, runner  # noqa: E402
from bench.config import FIELDS, UsageError, add_io_flags, add_run_flags, flag_overrides, replace, resolve  # noqa: E402

GRID = {'lr': [1e-3, 5e-4], 'bs': [64, 128], 'h': [128, 256, 512]}
RANDOM = {'lr': stats.loguniform(1e-4, 1e-3), 'bs': [64, 96, 128, 160], 'h': [128, 256, 384, 512]}
ALIASES = {'h': 'head_hidden', 'dropout': 'head_dropout'}  # short names in a space -> Config fields
INTEGER = {'bs', 'head_hidden', 'epochs', 'unfreeze', 'lp_epochs'}
DISTRIBUTIONS = {'loguniform': lambda a, b: stats.loguniform(a, b), 'uniform': lambda a, b: stats.uniform(a, b - a),
                 'randint': lambda a, b: stats.randint(int(a), int(b) + 1)}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument('--grid', action='store_true', help='every combination of the space (lists only)')
    kind.add_argument('--random', type=int, metavar='N', help='N draws from the space')
    p.add_argument('--cv', type=int, default=0, metavar='K', help='score by K-fold CV (default: hold-out validation)')
    p.add_argument('--space', nargs='+', default=[], metavar='NAME=VALUES',
                   help='override one dimension: lr=loguniform:1e-4:1e-2, bs=64,128, h=randint:64:512, '
                        'dropout=uniform:0.1:0.5')
    add_io_flags(p, presets=['w4'])
    add_run_flags(p)
    return p.parse_args(argv)


# ---- the space ----------------------------------------------------------------------------------------------

def parse_space(items, base):
    """{field: list or distribution}: `base` with each NAME=VALUES item replacing one dimension."""
    space = dict(base)
    for item in items:
        name, sep, text = item.partition('=')
        if not sep or not text:
            raise UsageError(f'--space item {item!r} is not NAME=VALUES (e.g. lr=loguniform:1e-4:1e-2 or bs=64,128)')
        field = ALIASES.get(name, name)
        if field not in FIELDS or field in ('experiment', 'backbone', 'strategy', 'dataset', 'profile', 'device'):
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
                values = [int(x) if field in INTEGER else float(x) for x in text.split(',') if x.strip()]
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
    return int(round(v)) if field in INTEGER else float(f'{float(v):.6g}')


# ---- the search ---------------------------------------------------------------------------------------------

def trial_config(base, params):
    return replace(base, **{ALIASES.get(k, k): v for k, v in params.items()})


def score(cfg, images, splits, bar):
    """Train on each split without touching the test set; the mean validation accuracy is the score."""
    results = [runner.train(cfg, images, s, bar=bar, test=False) for s in splits]
    out = dict(results[0])
    out.update(valid_acc=float(np.mean([r['valid_acc'] for r in results])),
               valid_loss=float(np.mean([r['valid_loss'] for r in results])),
               train_seconds=sum(r['train_seconds'] for r in results),
               eval_seconds=sum(r['eval_seconds'] for r in results),
               fold_valid_acc=[r['valid_acc'] for r in results] if len(results) > 1 else None)
    return out


def search(args, base, trials, images, split_, splits, log=print):
    """Run (or resume) every trial, scored on `splits` (folds, or [split_]), then retrain the best once on `split_`
    and test it. Returns (trial records, refit, outcome)."""
    from tqdm import tqdm
    kind = 'grid' if args.grid else 'random'
    about = dict(kind=kind, seed=args.seed, cv=args.cv, space=args.space_text)
    done, env, outcome = record.done(args.results), runner.environment(base.device), runner.Outcome()
    recs, best = [], None
    bar = tqdm(list(enumerate(trials, 1)), desc=f'{kind} search', unit='trial', file=sys.stderr)
    for i, params in bar:
        cfg = trial_config(base, params)
        rec = runner.attempt(args.results, cfg, lambda: score(cfg, images, splits, not args.no_bar), env, done,
                             extra={'search': dict(about, role='trial', trial=i, params=params)},
                             identity={'search': dict(about, role='trial')}, force=args.force, outcome=outcome,
                             log=lambda m: bar.write(m))
        recs.append(rec)
        if rec.get('error') is None and (best is None or rec['valid_acc'] > best['valid_acc']):
            best = rec
        if best:
            bar.set_postfix(best=f'{best["valid_acc"]:.4f}')
    if best is None:
        log(f'{kind} search: every trial failed; nothing to retrain')
        return recs, None, outcome
    params = best['search']['params']
    cfg = trial_config(base, params)
    log(f'best of {kind}: {params} with validation score {best["valid_acc"]:.4f}; retraining it once and testing')
    refit = runner.attempt(args.results, cfg, lambda: runner.train(cfg, images, split_, bar=not args.no_bar), env,
                           done, extra={'search': dict(about, role='refit', trial=best['search']['trial'],
                                                       params=params)},
                           identity={'search': dict(about, role='refit')}, force=args.force, outcome=outcome, log=log)
    return recs, refit, outcome


def main(argv=None):
    t0 = time.perf_counter()
    args = parse(argv)
    if args.cv and args.cv < 2:
        raise UsageError(f'--cv needs at least 2 folds, got {args.cv}')
    base = resolve('w4', args.profile, **flag_overrides(args), **({'backbone': args.backbone} if args.backbone else {}),
                   seed=args.seed)
    space = parse_space(args.space, GRID if args.grid else RANDOM)
    args.space_text = describe_space(space)
    trials = draws(space, args.grid, args.random or 0, args.seed)
    cli.validate([trial_config(base, t) for t in trials])
    print(f'{"grid" if args.grid else "random"} search over {args.space_text} (seed {args.seed}, '
          f'{f"{args.cv}-fold CV" if args.cv else "hold-out validation"}): {len(trials)} trials')
    for i, t in enumerate(trials, 1):
        print(f'  trial {i:3d}: ' + ', '.join(f'{k}={v:g}' for k, v in t.items()))
    if args.dry_run:
        return 0
    images = cli.load_images(args.data)
    split_of = cli.split_for(images)
    base = cli.prepare([base], images, split_of)[0]
    cli.prepare([trial_config(base, t) for t in trials], images, split_of)
    split_ = split_of(base)
    splits = data.folds(split_, images, args.cv, seed=base.split_seed) if args.cv else [split_]
    recs, refit, outcome = search(args, base, trials, images, split_, splits)
    if refit and refit.get('error') is None:
        spent = sum((r.get('train_seconds') or 0) + (r.get('eval_seconds') or 0) for r in recs + [refit])
        print(f'result: best {refit["search"]["params"]}, test accuracy {refit["test_acc"]:.4f}; '
              f'{spent:.0f} s of training and evaluation, {time.perf_counter() - t0:.0f} s in all')
    print(f'{outcome.ran} ran, {outcome.skipped} already recorded, {len(outcome.failed)} failed; '
          f'records in {args.results}')
    cli.render(args)
    return 1 if outcome.failed or refit is None or refit.get('error') else 0


if __name__ == '__main__':
    cli.main(main)
