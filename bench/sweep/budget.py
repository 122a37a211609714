"""What a time budget buys the advisor (bench/advise.py): each strategy's cost on this machine, measured by short
probes, the levels a budget can buy, poorest first, and the richest that fits. Imports no torch.

**Levels**, poorest first, and why in this order:
1. every strategy at the middle of its LR grid, at the profile's image size (W7's 96 px on a CPU), 3 seeds for the
   finalists: the least that answers at all;
2. every LR of its grid: a ranking at one hand-set LR measures the LR, not the strategy;
3. the grid at larger images, up to the backbone's pretrained size (the native one), before longer runs: what W8
   measured (docs/w8.md) is that the image size is what a cheap regime's ranking lacks. At W7's 50 steps, 96 px
   reverses pairs of strategies with significance against Lite0's native 224 px on both of its datasets and 160 px
   on neither (tau +0.20 and +0.47 -> +0.47 and +0.47); four times the steps at 96 px kept 96 px's order (issue
   33's table). The native size itself is the only regime that agrees with the native ranking;
4. runs 2, 3 ... MAX_LONGER times the profile's epochs at the largest size the budget affords (the backbone's own
   where it can): fewer rows still improving.

**Costs at a size** are measured at that size: rates do not scale with the pixels (Lite0 at 224 px trains 7-13x
slower than at 96 px for 5.4x the pixels, W8's records), so an estimate by area would buy a native level the budget
cannot pay. The advisor probes at the smallest size and at the largest whose cost scaled by area, a bound from
below, fits what is left (`area_bound`); a size between them is read off the two by the power of the size they show
(`between`, as bench/analysis/estimate.py does for the dry run).
"""
import math
from dataclasses import dataclass, replace
from typing import Optional

from bench.sweep import race

MAX_LONGER = 6            # runs at most this many times the profile's epochs
MIDDLE = 160 / 224        # W8's middle regime, as a share of the native size


def image_sizes(smallest, native):
    """The plan's image sizes, smallest first: the profile's, W8's middle one (MIDDLE of the native size, to a
    multiple of 32) where it lies between, and the backbone's pretrained size."""
    if native <= smallest:
        return [smallest]
    middle = 32 * round(native * MIDDLE / 32)
    return sorted({smallest, native} | ({middle} if smallest < middle < native else set()))


@dataclass(frozen=True)
class Probe:
    """One strategy's cost on this machine at one image size, measured by a short run."""
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
        return (race.SEEDS - 1) * self.run_s(steps, 1., test=True) + self.retest_s()


COSTS = ('setup_s', 'step_s', 'valid_s', 'test_s', 'peak_mb')


def area_bound(probes, size_from, size):
    """`probes` measured at `size_from`, scaled by area to `size`: what runs there cost at the least (setup and
    memory kept as they are)."""
    k = (size / size_from) ** 2
    return [replace(p, step_s=p.step_s * k, valid_s=p.valid_s * k, test_s=p.test_s * k) for p in probes]


def least_s(level, probes, size_from, steps_per_epoch, parallel=1):
    """What `level` costs at the least, from `probes` measured at a smaller size, scaled by area (`area_bound`)."""
    return estimate(level, area_bound(probes, size_from, level.size), steps_per_epoch) / max(1, parallel)


def between(measured, size):
    """[Probe] at `size` from `measured` ({size: [Probe]}, the same strategies at two sizes or more, in any order):
    each cost by the power of the size its two nearest measurements around `size` show; a strategy that failed at
    the larger of them is taken to fail here too."""
    lo = max(s for s in measured if s <= size)
    hi = min(s for s in measured if s >= size)
    if lo == hi:
        return list(measured[lo])
    out = []
    larger = {p.strategy: p for p in measured[hi]}
    for a, b in ((p, larger[p.strategy]) for p in measured[lo]):
        if a.error or b.error:
            out.append(a if a.error else b)
            continue
        values = {}
        for name in COSTS:
            x, y = getattr(a, name), getattr(b, name)
            values[name] = (x * (size / lo) ** (math.log(y / x) / math.log(hi / lo)) if x > 0 and y > 0 else
                            x + (y - x) * (size - lo) / (hi - lo))
        out.append(replace(a, **values))
    return out


@dataclass(frozen=True)
class Level:
    size: int             # image size, px
    lr_points: int        # 1 (the grid's middle) or 3 (the grid)
    epochs: int

    def words(self, base_epochs):
        lrs = 'every LR of its grid (3)' if self.lr_points > 1 else 'the middle of its LR grid only'
        longer = f', {self.epochs // base_epochs}x the profile\'s' if self.epochs != base_epochs else ''
        return f'{self.size} px, {lrs}; whole runs of {self.epochs} epoch{"s" * (self.epochs != 1)}{longer}'


def levels(base_epochs, sizes):
    """What a budget buys at these image sizes (smallest first), poorest first."""
    first, last = sizes[0], sizes[-1]
    return ([Level(first, 1, base_epochs), Level(first, 3, base_epochs)] + [Level(s, 3, base_epochs) for s in sizes[1:]]
            + [Level(last, 3, base_epochs * m) for m in range(2, MAX_LONGER + 1)])


def estimate(level, probes, steps_per_epoch):
    """Seconds the race and the finals take at `level` (`expected_s`, at the mean cost of its candidates), from
    `probes` at the level's size."""
    ok = [p for p in probes if p.error is None]
    if not ok:
        return math.inf
    steps = level.epochs * steps_per_epoch
    pool = [p for p in ok for _ in race.candidates([p.strategy], level.lr_points)]
    mean_s = lambda share: sum(p.run_s(steps, share) for p in pool) / len(pool)  # noqa: E731
    return expected_s(mean_s, race.rungs(level.epochs), race.sizes(len(pool), level.epochs), len(ok),
                      sum(p.final_s(steps) for p in ok) / len(ok))


def expected_s(mean_s, shares, counts, strategies, final_s):
    """Seconds of rungs at `shares` running `counts` candidates, every run at `mean_s(share)`, a candidate's mean cost
    (scored on validation alone), then of the finals (MAX_FINALISTS of `strategies` at most, each `final_s`): what is
    expected where a candidate's cost says nothing of its score (the finals shrink where the race ran long:
    race.affordable)."""
    race_s = sum(n * mean_s(share) for share, n in zip(shares, counts))
    return race_s + min(race.MAX_FINALISTS, strategies) * final_s


@dataclass(frozen=True)
class Plan:
    level: Optional[Level]    # None: no level fits
    seconds: float            # the chosen level's estimate (or the poorest level's, where none fits)
    smallest_s: float         # the budget the poorest level needs, counting what was spent already
    options: tuple = ()       # ((Level, seconds), ...): every level considered, poorest first


def plan(probes, steps_per_epoch, base_epochs, budget_s, spent_s, longer=True, parallel=1):
    """The richest level whose estimate fits in what is left of the budget. `probes`: {image size: [Probe]} (a size
    without probes is not a level); `longer` False: the profile's epochs only (the user set them); `parallel`: runs
    at a time (a pool's or a Ray cluster's slots), which divide the estimate."""
    left = budget_s - spent_s
    cost = lambda lv: estimate(lv, probes[lv.size], steps_per_epoch) / max(1, parallel)  # noqa: E731
    options = [(lv, cost(lv)) for lv in levels(base_epochs, sorted(probes)) if longer or lv.epochs == base_epochs]
    fitting = [i for i, (_, c) in enumerate(options) if c <= left]
    if not fitting:
        return Plan(None, options[0][1], spent_s + options[0][1], tuple(options))
    at = fitting[-1]
    level, seconds = options[at]
    if longer and level.size != max(probes):  # the next size is past the budget: longer runs at this one, listed
        here = []                             # up to the first that does not fit
        for m in range(2, MAX_LONGER + 1):
            here.append((Level(level.size, 3, base_epochs * m), cost(Level(level.size, 3, base_epochs * m))))
            if here[-1][1] > left:
                break
            level, seconds = here[-1]
        options[at + 1:at + 1] = here
    return Plan(level, seconds, spent_s + options[0][1], tuple(options))
