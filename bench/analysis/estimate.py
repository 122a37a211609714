"""What a planned sweep will cost here, from the records of runs already made on this hardware: a dry run's time
estimate. Imports no torch.

A run's wall clock is its fixed cost (building, warm-up) plus its training images over its training rate plus its
evaluated images (every validation point, and the test where it is scored) over its evaluation rate. Both rates are
read from the records of the same backbone and strategy on the same hardware and threads (else of the same
backbone) at the image size nearest the run's (the median of that size's records), and scaled to the run's size:
by the power of the size that the records at the next nearest size show, where there are some, else by area. (A
model's work grows with the image's area, but its speed falls faster once its activations outgrow the caches:
EfficientNet-Lite0 trained 7-13x slower at 224 px than at 96 px on a 2-core Intel Xeon, for 5.4x the pixels.)
A tuned sweep runs each strategy's grid (GRID_RUNS, extensions counted as the records show them on average), the
chosen point's test, and the other seeds; runs side by side divide the sum by how many run at once.
"""
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

from bench.declare.config import steps_per_epoch

GRID_RUNS = 3.5   # grid points a strategy runs with its extensions, on average (W7 on four datasets: 3.6)


@dataclass(frozen=True)
class Rate:
    train: float          # training images per second at `size`
    evaluate: float       # evaluated images per second at `size`
    fixed: float          # seconds of building and warm-up
    size: int
    threads: Optional[int]

    def at(self, size, train_power=2., evaluate_power=2.):
        """The rates at another image size: each falls as the size to its power (2: by area)."""
        ratio = self.size / size
        return Rate(self.train * ratio ** train_power, self.evaluate * ratio ** evaluate_power, self.fixed, size,
                    self.threads)


MIN_POWER, MAX_POWER = 1., 4.   # how fast a rate may fall with the image size, as read off two sizes' records


def power(near, far, rate):
    """The power of the size by which `rate` ('train' or 'evaluate') falls from `near` to `far` (two sizes' Rates),
    within [MIN_POWER, MAX_POWER]; area (2) where either is unknown."""
    a, b = getattr(near, rate), getattr(far, rate)
    if not (0 < a < math.inf and 0 < b < math.inf) or near.size == far.size:
        return 2.
    return min(MAX_POWER, max(MIN_POWER, math.log(a / b) / math.log(far.size / near.size)))


def typical(rates):
    """One Rate for records at one size: the median of each."""
    return Rate(statistics.median(r.train for r in rates), statistics.median(r.evaluate for r in rates),
                statistics.median(r.fixed for r in rates), rates[0].size, rates[0].threads)


def rates(records, device):
    """{(backbone, strategy): [Rate]} of `device`'s successful runs that say where their time went."""
    out = defaultdict(list)
    for r in records:
        if r.get('error') or r.get('device') != device or not r.get('wall_seconds') or not r.get('train_seconds'):
            continue
        points = len(r.get('valid_curve') or []) or 1
        evaluated = points * (r.get('valid_images') or 0) + (r.get('test_images') or 0 if r.get('test_acc') is not None else 0)
        eval_s = r.get('eval_seconds') or 0
        out[r['backbone'], r['strategy']].append(Rate(
            train=(r.get('images_per_second') or 0) or 1e-9, evaluate=evaluated / eval_s if eval_s > 0 else math.inf,
            fixed=(r.get('setup_seconds') or 0) + (r.get('warmup_seconds') or 0), size=r.get('image_size') or 0,
            threads=r.get('threads')))
    return out


def nearest(known, cfg, threads):
    """The rates at `cfg`'s size, from the known ones of its backbone and strategy (else its backbone) on `threads`:
    those of the nearest size, scaled by how the next nearest size's differ (else by area)."""
    same = [r for r in known.get((cfg.backbone, cfg.strategy), []) if r.threads == threads and r.size]
    if not same:
        same = [r for (b, _), rs in known.items() if b == cfg.backbone for r in rs if r.threads == threads and r.size]
    if not same:
        return None
    by_size = defaultdict(list)
    for r in same:
        by_size[r.size].append(r)
    order = sorted(by_size, key=lambda s: (abs(math.log(s / cfg.size)), s))
    near = typical(by_size[order[0]])
    if len(order) == 1:
        return near.at(cfg.size)
    far = typical(by_size[order[1]])
    return near.at(cfg.size, power(near, far, 'train'), power(near, far, 'evaluate'))


def run_seconds(rate, cfg, n_train, n_valid, n_test, tested=True):
    """One run's wall-clock estimate."""
    steps = cfg.epochs * steps_per_epoch(n_train, cfg.bs)
    points = max(4, cfg.epochs)
    return (rate.fixed + steps * cfg.bs / rate.train
            + (points * n_valid + (n_test if tested else 0)) / rate.evaluate)


def sweep_seconds(cfgs, records, device, threads, n_train, n_valid, n_test, tuned, side_by_side=1):
    """(seconds, runs, how many configs had no record to estimate from) of running `cfgs` (every seed), tuned or
    not, `side_by_side` at a time."""
    known = rates(records, device)
    total, runs, unknown = 0., 0., 0
    groups = defaultdict(list)
    for cfg in cfgs:
        groups[(cfg.strategy, cfg.variant, cfg.size, cfg.epochs, cfg.sched)].append(cfg)
    for group in groups.values():
        cfg = group[0]
        rate = nearest(known, cfg, threads)
        if rate is None:
            unknown += 1
            continue
        one = lambda tested: run_seconds(rate, cfg, n_train, n_valid, n_test, tested)  # noqa: E731
        if tuned and cfg.strategy != 'zero_shot':
            total += GRID_RUNS * one(False) + rate.fixed + n_test / rate.evaluate + (len(group) - 1) * one(True)
            runs += GRID_RUNS + len(group) - 1
        else:
            total += len(group) * one(True)
            runs += len(group)
    return total / max(1, side_by_side), runs, unknown
