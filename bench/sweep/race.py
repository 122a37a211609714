"""The advisor's race (bench/advise.py): successive halving over (strategy, LR) on the validation split, planned to
fit a time budget. Imports no torch.

- **Candidates** are each strategy at each point of its kind's LR grid (bench/sweep/tune.py: three half-decades), or at
  the grid's middle only where the budget affords no more.
- **Rungs** (Jamieson & Talwalkar 2016; Li et al.'s ASHA 2020): every candidate trains the first quarter of a whole
  run's steps and is scored on validation, in the dataset's declared metric; the better half (ETA = 2) trains half a
  run; the better half of those, the whole run (two strategies at least: where the better half is one strategy's
  LRs, the next strategy's best goes on too). A rung shorter than one epoch is skipped: every candidate sees each
  training image once before it is judged (a slow starter at a low LR is not dropped after a dozen steps; with
  W7's 2-epoch runs the race has two rungs, half a run and the whole). A rung's run stops early
  (`Config.stop_at`), and what it trained is
  the whole run's prefix (the same batches at the same LRs, a flat schedule), so a rung's score is exactly what the
  whole run's validation curve shows there: bench/analysis/replay.py re-runs the race on the records of an
  exhaustive sweep.
- **Finalists**: the best candidate of each strategy at the last rung whose validation score the split cannot tell
  from the leader's (within one binomial standard error of it on the validation images: 200 images at 90% put it at
  2.1 pp), the best two at least and MAX_FINALISTS at most. Their whole run is their first seed's (the last rung is
  scored on validation alone and keeps its weights: a finalist's test is scored from them); the other seeds run at
  the same LR, and the test split scores them.
- **What a budget buys** (the level: image size, LR points, run length) is bench/sweep/budget.py's.

Every run is a record (`IDENTITY`, with the candidate's role in `advise`), so a race resumes after Ctrl-C, spreads
over Ray, and the leaderboard re-derives it from the records.
"""
import math
from collections import defaultdict
from dataclasses import dataclass, replace

from bench.sweep import tune

ETA = 2                   # each rung keeps the better 1/ETA of its candidates
RUNGS = (0.25, 0.5, 1.0)  # the share of a whole run's steps each rung trains (those of one epoch or more)
MAX_FINALISTS = 4         # strategies confirmed over seeds on test, at most (2 at least)
SEEDS = 3                 # the finalists' seeds: stats.MIN_SEEDS, the fewest a paired verdict needs
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


# ---- the finals ----------------------------------------------------------------------------------------

def affordable(finals, cost_s, left_s):
    """The finalists whose confirmation fits in `left_s` seconds, best first (`cost_s(candidate)`: its seeds and its
    test); the best two always: a recommendation needs a comparison."""
    out = list(finals[:2])
    for c in finals[2:]:
        if sum(cost_s(f) for f in out + [c]) > left_s:
            break
        out.append(c)
    return out


# ---- the policy -------------------------------------------------------------------------------------------

def candidate_of(rec):
    """The candidate a race record ran: its strategy and its tuned LR's exponent."""
    return Candidate(rec['strategy'], tune.exponent_of(rec['config'][tune.grid_of(rec['strategy']).field]))


def share_of(rec):
    return rec['config'].get('stop_at', 1.0)


def job(cfg, cand, share, budget_s, seed=0, **kw):
    """A race run: a rung's (scored on validation; the last rung's keep their weights, for a finalist's test), or a
    finalist's seed (tested)."""
    from bench.sweep.executor import Job
    return Job(replace(tune.at(cfg, cand.exponent), stop_at=share, seed=seed), test=seed > 0,
               keep=share == 1 and seed == 0, extra={'advise': dict(budget_s=round(budget_s))}, identity=IDENTITY,
               **kw)


def rerun(recs, valid, n_valid):
    """The race the records tell, rung by rung with the race's own rules: ({share: {candidate: score}} of the
    candidates each rung ran, the finalists). Runs of another budget's race (another level, the same run length)
    are found where this race would have run them, and left out where it would not."""
    first = min(r['seed'] for r in recs)
    recorded = defaultdict(dict)
    for r in recs:
        if r['seed'] == first:
            recorded[share_of(r)][candidate_of(r)] = None if r.get('error') else r.get(valid)
    shares = sorted(recorded)
    alive, scores, finals = list(recorded[shares[0]]), {}, []
    for share in shares:
        scores[share] = {c: recorded[share][c] for c in alive if c in recorded[share]}
        if share == 1.0:
            finals = finalists(scores[share], n_valid)
        else:
            alive = survivors(scores[share])
    return scores, finals


class Race:
    """The advisor's race as a policy over the sweep loop (bench/sweep/loop.py): each rung's candidates, scored on
    validation; the better half on; at the last rung the finalists, of whom those whose seeds fit what is left of the
    budget (decided once, `affordable`) run their other seeds and have their race run's test scored. Every score is
    read from the records (`rerun`), so a race resumes where it stopped."""
    def __init__(self, base, level, budget_s, valid, n_valid, final_s, left_s, log=print):
        self.base, self.level, self.budget_s, self.valid, self.n_valid = base, level, budget_s, valid, n_valid
        self.final_s, self.left_s, self.log = final_s, left_s, log  # a finalist's confirmation cost; time left
        self.shares = rungs(level.epochs)
        self.kept, self.said = None, set()

    def walk(self, seen):
        """(the rung the race is at, the candidates it runs there, {candidate: score} recorded there): the first rung
        with a candidate unrecorded, or the finals (rung = len(shares)) with the finalists."""
        recorded = defaultdict(dict)
        for r in seen:
            if r.get('advise') and r['seed'] == 0:
                recorded[share_of(r)][candidate_of(r)] = None if r.get('error') else r.get(self.valid)
        alive = candidates(list(self.base), self.level.lr_points)
        for rung, share in enumerate(self.shares):
            scores = {c: recorded[share][c] for c in alive if c in recorded[share]}
            if len(scores) < len(alive):
                return rung, alive, scores
            alive = finalists(scores, self.n_valid) if share == 1 else survivors(scores)
            if rung not in self.said:
                self.said.add(rung)
                self.log(f'rung {rung + 1}, validation %: ' + ', '.join(f'{c} {100 * scores[c]:.1f}'
                                                                        for c in ranked(scores)))
        return len(self.shares), alive, {}

    def propose(self, seen):
        rung, alive, scores = self.walk(seen)
        if rung < len(self.shares):
            return [job(self.base[c.strategy], c, self.shares[rung], self.budget_s) for c in alive if c not in scores]
        if self.kept is None and alive:
            self.log('finalists: ' + ', '.join(str(c) for c in alive))
            left = self.left_s()
            self.kept = affordable(alive, self.final_s, left)
            if len(self.kept) < len(alive):
                self.log(f'not confirmed over seeds: {", ".join(str(c) for c in alive[len(self.kept):])}: their seeds '
                         f'would not fit in the {left / 60:.1f} min left of the budget')
        return [job(self.base[c.strategy], c, 1., self.budget_s, seed, test_only=seed == 0)
                for c in self.kept or [] for seed in range(SEEDS)]

    def settle(self, seen):
        """Once the finals are decided, the last rung's weights that no finalist's test will read go; once tested,
        the finalists' too."""
        if self.kept is None:
            return
        tested = {r['key'] for r in seen if r.get('test_acc') is not None}
        finals = {job(self.base[c.strategy], c, 1., self.budget_s).key(r['device']) for c in self.kept
                  for r in seen[:1]}
        tune.forget(r['key'] for r in seen if r.get('advise') and share_of(r) == 1 and r['seed'] == 0
                    and (r['key'] not in finals or r['key'] in tested))

    def decide(self, records):
        return rerun(records, self.valid, self.n_valid)
