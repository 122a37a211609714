"""The search (W4) as a policy over the one sweep loop (bench/sweep/loop.py): its space, its draws, its trials scored on
validation (or K-fold CV), then the best trial's configuration retrained once per seed and tested.

Spaces and draws come from scikit-learn (ParameterGrid, ParameterSampler with scipy's loguniform), seeded, so a
search's trials are the same on every rerun; every trial and refit is a record, so a search resumes where it
stopped, and the leaderboard finds the best trial with the function the search used (`best_trial`). Imports no
torch.
"""
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats
from sklearn.model_selection import ParameterGrid, ParameterSampler

from bench.declare.config import FIELDS, UsageError, resize_for
from bench.sweep.executor import Job

GRID = {'lr': [1e-3, 5e-4], 'bs': [64, 128], 'h': [128, 256, 512]}
RANDOM = {'lr': stats.loguniform(1e-4, 1e-3), 'bs': [64, 96, 128, 160], 'h': [128, 256, 384, 512]}
ALIASES = {'h': 'head_hidden', 'dropout': 'head_dropout'}  # short names in a space -> Config fields
NOT_SEARCHABLE = ('experiment', 'variant', 'backbone', 'strategy', 'dataset', 'profile', 'device', 'seed')
DISTRIBUTIONS = {'loguniform': lambda a, b: stats.loguniform(a, b), 'uniform': lambda a, b: stats.uniform(a, b - a),
                 'randint': lambda a, b: stats.randint(int(a), int(b) + 1)}


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
    (body and head, as the seed searched it), unless the space searches `head_lr` too; a searched `size` above the
    base's resize raises it (config.resize_for)."""
    values = {ALIASES.get(k, k): v for k, v in params.items()}
    if 'lr' in values and 'head_lr' not in values:
        values['head_lr'] = values['lr']
    if 'size' in values and 'resize' not in values:
        values['resize'] = resize_for(values['size'], base.resize)
    return replace(base, **values)


# ---- the search ---------------------------------------------------------------------------------------------

def label(rec):
    """A search's name in a table: its kind and scoring."""
    s = rec['search']
    return f'{s["kind"]} search' + (f' ({s["cv"]}-fold CV)' if s.get('cv') else '')


def trial_jobs(base, trials, about, cv):
    """One job per trial, scored on validation (or K folds) without touching the test set."""
    return [Job(trial_config(base, params), folds=cv, test=False,
                extra={'search': dict(about, role='trial', trial=i, params=params)},
                identity={'search': dict(about, role='trial')})
            for i, params in enumerate(trials, 1)]


def best_trial(records):
    """The successful trial with the highest validation score (the earlier trial on a tie), or None."""
    ok = [r for r in records if r['error'] is None and r['search'].get('role', 'trial') == 'trial']
    return max(ok, key=lambda r: (r['valid_acc'], -r['search']['trial'])) if ok else None


def refit_jobs(base, best, about, seeds):
    """The best configuration retrained on the training split once per seed, each tested once."""
    params = best['search']['params']
    return [Job(replace(trial_config(base, params), seed=s),
                extra={'search': dict(about, role='refit', trial=best['search']['trial'], params=params)},
                identity={'search': dict(about, role='refit')})
            for s in seeds]


@dataclass
class Search:
    """Trials first; once every trial has a record, the best one's configuration retrained with every seed."""
    base: object          # the trials' Config (the first seed's)
    trials: list          # each trial's parameters
    seeds: list           # the refits' seeds
    about: dict           # the search's bookkeeping: kind, seed, cv, space
    cv: int = 0

    def propose(self, seen):
        if not any(r['search'].get('role') == 'trial' for r in seen):
            return trial_jobs(self.base, self.trials, self.about, self.cv)
        best = best_trial(seen)
        return refit_jobs(self.base, best, self.about, self.seeds) if best is not None else []

    def decide(self, records):
        """(the best trial's record, its refits' records)."""
        best = best_trial(records)
        return best, [r for r in records if r['search'].get('role') == 'refit' and r['error'] is None]
