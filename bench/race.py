"""The advisor's race (bench/advise.py): successive halving over (strategy, LR) on the validation split, planned to
fit a time budget. Imports no torch.

- **Candidates** are each strategy at each point of its kind's LR grid (bench/tune.py: three half-decades), or at
  the grid's middle only where the budget affords no more.
- **Rungs** (Jamieson & Talwalkar 2016; Li et al.'s ASHA 2020): every candidate trains the first quarter of a whole
  run's steps and is scored on validation, in the dataset's declared metric; the better half (ETA = 2) trains half a
  run; the better half of those, the whole run (two strategies at least: where the better half is one strategy's
  LRs, the next strategy's best goes on too). A rung shorter than one epoch is skipped: every candidate sees each
  training image once before it is judged (a slow starter at a low LR is not dropped after a dozen steps; with
  W7's 2-epoch runs the race has two rungs, half a run and the whole). A rung's run stops early
  (`Config.stop_at`), and what it trained is
  the whole run's prefix (the same batches at the same LRs, a flat schedule), so a rung's score is exactly what the
  whole run's validation curve shows there: `replay` re-runs the race on the records of an exhaustive sweep.
- **Finalists**: the best candidate of each strategy at the last rung whose validation score the split cannot tell
  from the leader's (within one binomial standard error of it on the validation images: 200 images at 90% put it at
  2.1 pp), the best two at least and MAX_FINALISTS at most. Their whole run is their first seed's; the other seeds
  run at the same LR, and the test split scores them.
- **Levels**: what the budget buys, richest last: every strategy at one LR with 3 seeds for the finalists, then the
  whole grid, then runs 2, 3, 4 ... times longer. `plan` picks the richest level whose estimate fits, from probes
  of each strategy on this machine; none fits: the smallest budget that would.

Every run is a record (`IDENTITY`, with the candidate's role in `advise`), so a race resumes after Ctrl-C, spreads
over Ray, and the leaderboard re-derives it from the records.
"""
import argparse
import math
import sys
from dataclasses import dataclass
from typing import Optional

from bench import stats, tune

ETA = 2                   # each rung keeps the better 1/ETA of its candidates
RUNGS = (0.25, 0.5, 1.0)  # the share of a whole run's steps each rung trains (those of one epoch or more)
MAX_FINALISTS = 4         # strategies confirmed over seeds on test, at most (2 at least)
SEEDS = 3                 # the finalists' seeds: stats.MIN_SEEDS, the fewest a paired verdict needs
MAX_LONGER = 6            # runs at most this many times the profile's epochs
IDENTITY = {'advise': 'race'}  # race runs are never the same runs as another script's


@dataclass(frozen=True)
class Candidate:
    strategy: str
    exponent: int         # the LR's half-decade exponent (tune.lr_at)

    @property
    def lr(self):
        return tune.lr_at(self.exponent)

    @property
    def setting(self):
        """The tuned setting and its value: 'lr 0.00032', 'head_lr 0.01'."""
        return f'{tune.grid_of(self.strategy).field} {self.lr:g}'

    def __str__(self):
        return f'{self.strategy} at {self.setting}'


def candidates(strategies, lr_points):
    """Each strategy (that trains) at `lr_points` of its grid: all three, or the middle one."""
    out = []
    for s in strategies:
        grid = tune.grid_of(s)
        if grid is not None:
            points = grid.exponents if lr_points >= len(grid.exponents) else grid.exponents[1:2]
            out += [Candidate(s, e) for e in points]
    return out


def kept(n):
    """How many of `n` candidates go on to the next rung."""
    return math.ceil(n / ETA)


def rungs(epochs):
    """The shares of a whole run of `epochs` that the rungs train: those of one epoch or more."""
    return tuple(share for share in RUNGS if share * epochs >= 1 or share == 1)


def halved(n, times):
    """`n` candidates, then those kept after each of `times` rungs."""
    out = [n]
    for _ in range(times):
        out.append(kept(out[-1]))
    return out


def sizes(n, epochs):
    """Candidates at each rung."""
    return halved(n, len(rungs(epochs)) - 1)


def ranked(scores):
    """Candidates by validation score, best first; failed ones (None) left out; ties to the smaller LR, then name."""
    ok = [c for c, s in scores.items() if s is not None and math.isfinite(s)]
    return sorted(ok, key=lambda c: (-scores[c], c.exponent, c.strategy))


def survivors(scores):
    """The candidates that go on from a rung with these {candidate: validation score}: the better half, and where
    that is one strategy's LRs alone, the best candidate of the next strategy too: the race compares strategies."""
    order = ranked(scores)
    out = order[:kept(len(scores))]
    others = [c for c in order if c.strategy != order[0].strategy] if order else []
    if others and all(c.strategy == order[0].strategy for c in out):
        out.append(others[0])
    return out


def finalists(scores, n_valid):
    """The best candidate of each strategy at the last rung, best first, that `n_valid` validation images cannot tell
    from the leader (within one binomial standard error of its score); two at least, MAX_FINALISTS at most."""
    best = []
    for c in ranked(scores):
        if c.strategy not in {f.strategy for f in best}:
            best.append(c)
    if not best:
        return []
    lead = scores[best[0]]
    se = math.sqrt(max(lead * (1 - lead), 0.) / max(n_valid, 1))
    close = [c for c in best if scores[c] >= lead - se - 1e-12]
    return best[:max(2, min(len(close), MAX_FINALISTS))]


# ---- the plan ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """One strategy's cost on this machine, measured by a short run."""
    strategy: str
    setup_s: float        # building, loading weights, memory planning, warm-up: every run pays it
    step_s: float         # one training step
    valid_s: float        # one pass over the validation split
    test_s: float         # one pass over the test split (scaled from the validation pass)
    peak_mb: float
    error: Optional[str] = None

    def run_s(self, steps, share=1.0, test=False):
        """A run of `steps` whole steps stopped at `share` of them: setup, training, its validation points (about
        four in a whole run), and the test pass where tested."""
        return (self.setup_s + share * steps * self.step_s + (1 + 4 * share) * self.valid_s
                + (self.test_s if test else 0))

    def retest_s(self):
        """A finished run's test scored from its kept weights: building the run, and the test pass."""
        return self.setup_s + self.test_s

    def final_s(self, steps):
        """A finalist's confirmation: its other seeds' whole runs, tested, and its race run's test."""
        return (SEEDS - 1) * self.run_s(steps, 1., test=True) + self.retest_s()


@dataclass(frozen=True)
class Level:
    lr_points: int        # 1 (the grid's middle) or 3 (the grid)
    epochs: int

    def words(self, base_epochs):
        lrs = 'every LR of its grid (3)' if self.lr_points > 1 else 'the middle of its LR grid only'
        longer = f', {self.epochs // base_epochs}x the profile\'s' if self.epochs != base_epochs else ''
        return f'{lrs}; whole runs of {self.epochs} epoch{"s" * (self.epochs != 1)}{longer}'


def levels(base_epochs):
    """What a budget buys, poorest first."""
    return [Level(1, base_epochs)] + [Level(3, base_epochs * m) for m in range(1, MAX_LONGER + 1)]


def estimate(level, probes, steps_per_epoch):
    """Seconds the race and the finals take at `level` (`expected_s`, at the mean cost of its candidates)."""
    ok = [p for p in probes if p.error is None]
    steps = level.epochs * steps_per_epoch
    pool = [p for p in ok for _ in candidates([p.strategy], level.lr_points)]
    mean_s = lambda share: sum(p.run_s(steps, share) for p in pool) / len(pool)  # noqa: E731
    return expected_s(mean_s, rungs(level.epochs), sizes(len(pool), level.epochs), len(ok),
                      sum(p.final_s(steps) for p in ok) / len(ok))


def expected_s(mean_s, shares, counts, strategies, final_s):
    """Seconds of rungs at `shares` running `counts` candidates, every run at `mean_s(share)`, a candidate's mean cost
    (scored on validation alone), then of the finals (MAX_FINALISTS of `strategies` at most, each `final_s`): what is
    expected where a candidate's cost says nothing of its score (the finals shrink where the race ran long:
    `affordable`)."""
    race_s = sum(n * mean_s(share) for share, n in zip(shares, counts))
    return race_s + min(MAX_FINALISTS, strategies) * final_s


def affordable(finals, cost_s, left_s):
    """The finalists whose confirmation fits in `left_s` seconds, best first (`cost_s(candidate)`: its seeds and its
    test); the best two always: a recommendation needs a comparison."""
    out = list(finals[:2])
    for c in finals[2:]:
        if sum(cost_s(f) for f in out + [c]) > left_s:
            break
        out.append(c)
    return out


@dataclass(frozen=True)
class Plan:
    level: Optional[Level]    # None: no level fits
    seconds: float            # the chosen level's estimate (or the poorest level's, where none fits)
    smallest_s: float         # the budget the poorest level needs, counting what was spent already


def plan(probes, steps_per_epoch, base_epochs, budget_s, spent_s, longer=True, parallel=1):
    """The richest level whose estimate fits in what is left of the budget; `longer` False: the profile's epochs
    only (the user set them); `parallel`: runs at a time (a Ray cluster's slots), which divide the estimate."""
    options = [lv for lv in levels(base_epochs) if longer or lv.epochs == base_epochs]
    costs = [estimate(lv, probes, steps_per_epoch) / max(1, parallel) for lv in options]
    fitting = [(lv, c) for lv, c in zip(options, costs) if c <= budget_s - spent_s]
    if not fitting:
        return Plan(None, costs[0], spent_s + costs[0])
    level, cost = fitting[-1]
    return Plan(level, cost, spent_s + costs[0])


# ---- the race replayed on an exhaustive sweep's records ---------------------------------------------------

@dataclass
class Replay:
    dataset: str
    backbone: str
    device: str
    winner: str                   # the exhaustive sweep's best strategy (seeds at tuned LRs, test)
    tied: list                    # strategies the sweep cannot tell from the winner (paired interval includes 0)
    finalists: list               # the race's, best first
    rungs: list                   # candidates at each rung
    seconds: float                # what the replayed race and its finals would have trained and evaluated
    exhaustive_s: float           # the sweep's grid and seed runs
    exact: bool                   # every rung's score is a curve point where the rung stops (else the one before)

    @property
    def kept_winner(self):
        return self.winner in [c.strategy for c in self.finalists]


def score_at(rec, share, metric):
    """(the validation score a run stopped at `share` of its steps would have had, whether exactly): the whole run's
    curve point there, or (a run of earlier code, with points elsewhere) its last point before it."""
    if share >= 1:
        return rec.get(metric), True
    steps_per_epoch = math.ceil(rec['train_images'] / rec['config']['bs'])
    steps = max(1, math.floor(share * rec['config']['epochs'] * steps_per_epoch))
    at = steps / steps_per_epoch
    before = [p for p in rec.get('valid_curve') or [] if p['epoch'] <= at + 1e-6]
    if not before:
        return None, False
    return before[-1].get(metric), math.isclose(before[-1]['epoch'], at, abs_tol=1e-6)


def replay(records, experiment):
    """The race on each dataset of `experiment`'s tuned sweep, from its grid runs at the first seed (the grids'
    first three points: an extension past an edge is the sweep's, not the race's)."""
    ok, _ = stats.latest_per_run([r for r in records if r['experiment'] == experiment])
    out = []
    for table in stats.tables(ok):
        if not table.tuned:
            continue
        grid = [r for r in ok if r.get('tune', {}).get('role') == 'grid' and stats.dataset_name(r) == table.dataset
                and stats.hardware_key(r) == (table.device, table.profile)
                and r['config'][r['tune']['field']] in r['tune']['grid']]
        for backbone in sorted({r['backbone'] for r in grid}):
            runs = {Candidate(r['strategy'], tune.exponent_of(r['config'][r['tune']['field']])): r
                    for r in grid if r['backbone'] == backbone and r['seed'] == 0}
            metric = stats.VALID_OF[table.metric]
            alive, seen, seconds, exact = list(runs), [], 0., True
            for share in rungs(next(iter(runs.values()))['config']['epochs']):
                seen.append(alive)
                scored = {c: score_at(runs[c], share, metric) for c in alive}
                exact &= all(e for _, e in scored.values())
                scores = {c: s for c, (s, _) in scored.items()}
                seconds += sum(share * runs[c]['train_seconds'] + runs[c]['eval_seconds'] * share for c in alive)
                alive = finalists(scores, runs[alive[0]]['valid_images']) if share == 1 else survivors(scores)
            seconds += (SEEDS - 1) * stats.seconds_spent([runs[c] for c in alive])  # the finalists' other seeds
            rows = [row for row in table.rows if row.records[0]['backbone'] == backbone]
            best = rows[0]
            tied = [row.records[0]['strategy'] for row in rows[1:] if stats.verdict(row, best, table.metric)[0] == 'tied']
            spent = stats.seconds_spent([r for r in ok if stats.dataset_name(r) == table.dataset and r.get('tune')
                                         and r['backbone'] == backbone
                                         and stats.hardware_key(r) == (table.device, table.profile)])
            out.append(Replay(table.dataset, backbone, table.device, best.records[0]['strategy'], tied, alive, seen,
                              seconds, spent, exact))
    return out


def replay_table(replays):
    from tabulate import tabulate
    rows = [[r.dataset, r.backbone, r.winner, ', '.join(r.tied) or '-', ', '.join(str(c) for c in r.finalists),
             'yes' if r.kept_winner else '**no**', ' → '.join(str(len(x)) for x in r.rungs) +
             ('' if r.exact else ' (approximate: scores at earlier points)'),
             f'{r.seconds / 60:.1f} ({r.exhaustive_s / 60:.1f})'] for r in replays]
    return tabulate(rows, headers=['dataset', 'backbone', 'exhaustive best', 'tied with it', 'race finalists',
                                   'winner kept', 'candidates per rung', 'race and finals, min (the sweep\'s)'],
                    tablefmt='github', disable_numparse=True)


def main(argv=None):
    p = argparse.ArgumentParser(description='Replay the advisor\'s race on an exhaustive tuned sweep\'s records: '
                                            'does it keep the sweep\'s winner among its finalists?')
    p.add_argument('--results', default='reports/results.jsonl')
    p.add_argument('--experiment', default='w7')
    args = p.parse_args(argv)
    from bench import record
    replays = replay(record.read(args.results), args.experiment)
    if not replays:
        print(f'error: {args.results} has no tuned records of {args.experiment}', file=sys.stderr)
        return 2
    print(replay_table(replays))
    lost = [r.dataset for r in replays if not r.kept_winner]
    print(f'the race kept the exhaustive winner among its finalists on {len(replays) - len(lost)} of {len(replays)} '
          f'datasets' + (f'; lost it on {", ".join(lost)}' if lost else ''))
    return 1 if lost else 0


if __name__ == '__main__':
    sys.exit(main())
