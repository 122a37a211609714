"""Tuning: every strategy at its own learning rate, chosen on validation from a grid of the same size.

A ranking at one hand-set LR measures the LR, not the strategy: the best LR differs by orders of magnitude between
methods (VPT's VTAB-1k grids; LP-FT's "linear probing needs a higher learning rate"; Kornblith et al. 2019 tune
7 LRs x 7 weight decays per dataset), and untuned comparisons are a known artefact (Rothermel et al. 2021;
Mai et al. 2025: tuned with one shared grid, PEFT methods end up close on VTAB-1k). So, with `--tune lr`:

- Each strategy tunes one LR from the grid of its kind (`GRIDS`): half-decade steps, three points for every kind,
  centred where that kind trains best in the literature. Where body parameters train beside the head, the head's
  LR is `HEAD_MULT` times the body's (the rule of bench/declare/strategies.py: the new head always trains at the head's
  rate); where only the head trains, the head's LR is the one tuned.
- Every grid point trains at the first seed on the training split and is scored on the validation split, in the
  dataset's declared metric, at the end of training; the test split is never looked at. Ties go to the smaller LR.
- A best point at the grid's edge extends the grid one step that way, up to `MAX_EXTEND` steps per side; a chosen
  LR still at the edge after that says so (`edge`).
- The seeds then run at the chosen LR; the grid run at the chosen LR is seed 0 (the same run: its test is scored from
  the weights it kept, since a grid point is scored on validation alone).

Tuning is a policy over the one sweep loop (`Tuning`, bench/sweep/loop.py), not an execution path of its own: every
grid point is a record like any other, so a tuning sweep resumes after Ctrl-C, spreads over Ray, and the leaderboard
re-derives each choice from the records (`results`) with the same function the sweep used (`choose`). Imports no
torch.
"""
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Optional

from bench.declare import record
from bench.declare.datasets import metric_of
from bench.declare.strategies import STRATEGIES

MODES = ('auto', 'lr', 'off')
HEAD_MULT = 10      # head LR / body LR where both train: LP-FT's code and Caffe's fine-tuning example (fastai: 100)
MAX_EXTEND = 2      # grid steps added past each edge, at most


@dataclass(frozen=True)
class Grid:
    """A kind's grid: the setting it tunes and its points as half-decade exponents (LR = 10 ** (e / 2))."""
    field: str              # lr (the body's; the head's follows) | head_lr (only the head trains)
    exponents: tuple        # three consecutive half-decades
    head_mult: Optional[float]  # head_lr = head_mult * lr; None where the head's LR is the one tuned


GRIDS = {
    'head': Grid('head_lr', (-6, -5, -4), None),     # 1e-3, 3.2e-3, 1e-2: a linear probe needs a high LR
    'peft': Grid('lr', (-7, -6, -5), HEAD_MULT),     # 3.2e-4, 1e-3, 3.2e-3: few or new parameters
    'body': Grid('lr', (-8, -7, -6), HEAD_MULT),     # 1e-4, 3.2e-4, 1e-3: pretrained weights move slowly
}


def lr_at(exponent):
    """The LR of a half-decade exponent, to two significant digits: -8 -> 1e-4, -7 -> 3.2e-4."""
    return float(f'{10 ** (exponent / 2):.2g}')


def exponent_of(lr):
    return round(2 * math.log10(lr))


def grid_of(strategy):
    """The strategy's Grid, or None where nothing trains (zero_shot)."""
    s = STRATEGIES.get(strategy)
    return GRIDS.get(s.kind) if s else None


def at(cfg, exponent):
    """`cfg` at a grid point: the tuned LR, and the head's where it follows."""
    grid = grid_of(cfg.strategy)
    lr = lr_at(exponent)
    values = {grid.field: lr}
    if grid.head_mult:
        values['head_lr'] = float(f'{lr * grid.head_mult:.2g}')
    return replace(cfg, **values)


def wanted(mode, compared):
    """Whether a script tunes: `lr` or `off` as given; `auto` where strategies are compared (an experiment that
    compares them, or more than one strategy asked for)."""
    return mode == 'lr' or (mode == 'auto' and compared)


# ---- choosing ---------------------------------------------------------------------------------------------

def point(rec):
    """A grid record's exponent and validation score (None where it failed): what the sweep and the leaderboard
    choose from."""
    metric = metric_of((rec['config'].get('dataset') or '').split(':')[0]).valid
    return exponent_of(rec['config'][rec['tune']['field']]), (None if rec.get('error') else rec.get(metric))


@dataclass(frozen=True)
class Choice:
    best: Optional[int]     # the chosen exponent (None: every point failed)
    next: Optional[int]     # the exponent to run next (the grid extends), or None: the choice is made
    edge: bool              # the chosen LR is at an edge the grid could not extend past


def choose(scores, initial):
    """From {exponent: validation score (None where the run failed)} and the initial grid's exponents: the best
    point (ties to the smaller LR), and whether the grid must extend past an edge first."""
    ok = {e: s for e, s in scores.items() if s is not None and math.isfinite(s)}
    if not ok:
        return Choice(None, None, False)
    best = max(ok, key=lambda e: (ok[e], -e))
    lo, hi = min(scores), max(scores)
    if best == lo and best - 1 >= min(initial) - MAX_EXTEND:
        return Choice(best, best - 1, False)
    if best == hi and best + 1 <= max(initial) + MAX_EXTEND:
        return Choice(best, best + 1, False)
    return Choice(best, None, best in (lo, hi))


# ---- the expansion ----------------------------------------------------------------------------------------

def group_key(config, device=None):
    """What makes grid runs one search: the run's identity less its seed and tuned LRs, on one hardware."""
    return record.group_key(config, device, without=('seed', 'lr', 'head_lr'))


IDENTITY = {'tune': 'lr'}  # tuned runs are never the same runs as fixed-LR ones, whatever their LR


def bookkeeping(cfg, role, chosen=None):
    """What a tuned run's record holds beside its config: its strategy's grid, and its role (grid point or seed).
    A strategy that trains nothing (zero_shot) has no grid; its runs join the tuned table as they are."""
    grid = grid_of(cfg.strategy)
    if grid is None:
        return {'tune': dict(kind=STRATEGIES[cfg.strategy].kind, field=None, role=role)}
    out = dict(kind=STRATEGIES[cfg.strategy].kind, field=grid.field, head_mult=grid.head_mult,
               grid=[lr_at(e) for e in grid.exponents], role=role)
    if chosen is not None:
        out['chosen'] = lr_at(chosen)
    return {'tune': out}


def grid_runs(cfgs):
    """{group: (the first seed's config, every seed's config)} for the configs that can be tuned."""
    groups = defaultdict(list)
    for cfg in cfgs:
        if grid_of(cfg.strategy) is not None:
            groups[group_key(cfg.to_dict())].append(cfg)
    return {key: (min(seeds, key=lambda c: c.seed), seeds) for key, seeds in groups.items()}


def describe(cfg, seeds):
    """One line for a plan: the grid, the runs it makes, and the head's rule."""
    grid = grid_of(cfg.strategy)
    if grid is None:
        return f'  tuning: none ({cfg.strategy} trains nothing); {seeds} seed run{"s" * (seeds != 1)}'
    points = ', '.join(f'{lr_at(e):g}' for e in grid.exponents)
    head = (f'head_lr = {grid.head_mult:g} x lr' if grid.head_mult else 'the head alone trains: its LR is tuned')
    return (f'  tuning: {grid.field} in {{{points}}} (half-decades; up to {MAX_EXTEND} more per side where the best '
            f'is at an edge), {len(grid.exponents)} to {len(grid.exponents) + 2 * MAX_EXTEND} grid runs at seed '
            f'{cfg.seed} scored on validation ({metric_of(cfg.dataset.split(":")[0] or cfg.data).valid}), then {seeds} seed '
            f'run{"s" * (seeds != 1)} at the chosen LR (the grid run is seed {cfg.seed}); {head}')


def summary(cfg, scores, choice):
    """One line: the strategy's chosen LR and every grid point's validation score."""
    grid = grid_of(cfg.strategy)
    points = ', '.join(f'{lr_at(e):g}: ' + (f'{100 * v:.1f}' if v is not None else 'failed')
                       for e, v in sorted(scores.items()))
    if choice.best is None:
        return f'tuned {cfg.strategy} on {cfg.backbone}: every grid point failed ({points}); no seed runs'
    return (f'tuned {cfg.strategy} on {cfg.backbone}: {grid.field} {lr_at(choice.best):g}'
            f'{" (at the grid edge, not extended further)" if choice.edge else ""}; validation % by LR: {points}')


# ---- the policy -------------------------------------------------------------------------------------------

def job(cfg, role, chosen=None, **kw):
    """A tuned run: its role (grid point or seed) in the record, the same identity whatever the role."""
    from bench.sweep.executor import Job
    return Job(cfg, extra=bookkeeping(cfg, role, chosen), identity=IDENTITY, **kw)


class Tuning:
    """The sweep loop's policy for a tuned comparison (bench/sweep/loop.py): each strategy's grid at the first seed,
    scored on validation and extended past an edge where the best is there; once its choice is made, its other seeds
    at the chosen LR, and the test of the grid's run there, scored from the weights it kept (the grid's points are
    scored on validation only). A strategy's seeds start with the next round of another's grid points, so that runs
    side by side have work. Strategies that train nothing run as they are. Every decision is read from the records."""
    def __init__(self, cfgs, log=print):
        self.cfgs, self.log = cfgs, log
        self.groups = grid_runs(cfgs)  # group -> (the first seed's config, every seed's)
        self.said = set()

    def scores(self, key, seen):
        """{exponent: validation score} and {exponent: run key} of group `key`'s grid records among `seen`."""
        recs = [r for r in seen if r.get('tune', {}).get('role') == 'grid' and group_key(r['config']) == key]
        return dict(point(r) for r in recs), {point(r)[0]: r['key'] for r in recs}

    def propose(self, seen):
        jobs = [job(cfg, 'seed') for cfg in self.cfgs if grid_of(cfg.strategy) is None]
        for key, (first, seeds) in self.groups.items():
            initial = grid_of(first.strategy).exponents
            scores, _ = self.scores(key, seen)
            missing = [e for e in initial if e not in scores]
            choice = choose(scores, initial) if not missing else None
            if missing or choice.next is not None:
                jobs += [job(at(first, e), 'grid', test=False, keep=True) for e in (missing or [choice.next])]
            elif choice.best is not None:
                jobs += [job(at(cfg, choice.best), 'grid', test_only=True) if cfg is first else
                         job(at(cfg, choice.best), 'seed', choice.best) for cfg in seeds]
        return jobs

    def settle(self, seen):
        """Where a group's choice is made: say it, once, and delete the weights its grid points kept that no test
        will read (the points not chosen; the chosen one once tested)."""
        tested = {r['key'] for r in seen if r.get('test_acc') is not None}
        for key, (first, _) in self.groups.items():
            scores, keys = self.scores(key, seen)
            initial = grid_of(first.strategy).exponents
            if any(e not in scores for e in initial):
                continue
            choice = choose(scores, initial)
            if choice.next is not None:
                continue
            if key not in self.said:
                self.said.add(key)
                self.log(summary(first, scores, choice))
            forget(k for e, k in keys.items() if e != choice.best or k in tested)

    def decide(self, records):
        return results(records)


def forget(keys):
    """Delete the weights these runs kept: their test is scored, or never will be."""
    from bench.declare.record import checkpoint_path
    for key in keys:
        checkpoint_path(key).unlink(missing_ok=True)


# ---- from records -----------------------------------------------------------------------------------------

@dataclass
class Result:
    """One strategy's tuning as the records tell it."""
    field: str
    points: dict            # {LR: validation score}
    chosen: Optional[float]
    edge: bool
    seconds: float          # training and evaluation of the grid runs at LRs not chosen: what tuning added


def results(records):
    """{group key: Result} over tuned records (any role)."""
    grids = defaultdict(list)
    for rec in records:
        if rec.get('tune') and rec['tune'].get('role') == 'grid':
            grids[group_key(rec['config'], rec.get('device'))].append(rec)
    out = {}
    for key, recs in grids.items():
        recs = list(record.latest(recs, by=lambda r: point(r)[0]).values())  # a point run again: its latest run
        t = recs[0]['tune']
        scores = dict(point(r) for r in recs)
        choice = choose(scores, [exponent_of(x) for x in t['grid']])
        chosen = lr_at(choice.best) if choice.best is not None else None
        spent = sum((r.get('train_seconds') or 0) + (r.get('eval_seconds') or 0) for r in recs
                    if chosen is None or exponent_of(r['config'][t['field']]) != choice.best)
        out[key] = Result(t['field'], {lr_at(e): s for e, s in sorted(scores.items())}, chosen, choice.edge, spent)
    return out


def chosen_records(records):
    """The tuned records at their strategy's chosen LR (the rows a table shows), and {group key: Result}."""
    found = results(records)
    kept = []
    for rec in records:
        res = found.get(group_key(rec['config'], rec.get('device')))
        if res and res.chosen is not None and math.isclose(rec['config'][res.field], res.chosen):
            kept.append(rec)
    return kept, found
