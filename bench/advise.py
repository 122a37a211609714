"""Which fine-tuning strategy for my data? Races the strategies within a time budget and recommends one, with its
evidence.

    python bench/advise.py --data caltech101 --backbone tf_efficientnet_lite0 --budget 30m
    python bench/advise.py --data ~/photos --backbone tf_efficientnet_lite0 --budget 15m   # <class>/* or train/, test/
    python bench/advise.py --data uc_merced --backbone tf_efficientnet_lite0 --budget 15m --plan-only

1. Probe: a few steps of each strategy on this machine measure its step time, setup and memory (a strategy that does
   not fit --memory-limit-mb is left out, as the memory planner refuses it), at the profile's image size and at the
   largest up to the backbone's pretrained one that the budget could afford (bench/sweep/budget.py).
2. Plan: the richest level the budget affords (bench/sweep/budget.py): every strategy at one LR, or at every LR of
   its grid, then at larger images up to the pretrained size (`--size` fixes it), then longer runs; a budget too
   small for an answer is refused with the smallest that would do.
3. Race: successive halving over (strategy, LR) on the validation split; the finalists run 3 seeds on test.
4. Answer: the cheapest finalist not practically worse than the best, with its LR, expected accuracy and interval,
   time and memory; its regime (px, steps, schedule) and what W8 says of rankings measured there; the contenders,
   the Pareto figure and W7's view of the backbone, in the leaderboard.

Settings are W7's (VTAB-1k: 1,000 images of the train folder, 800 train / 200 validation; the test folder scores,
or every 5th image of a folder of class folders), with its `cpu` profile on a CPU; flags override them. Every run
is a record in --results: Ctrl-C keeps them, and a rerun resumes the race where it stopped.
"""
import argparse
import functools
import math
import re
import time
from dataclasses import replace

from bench.analysis import across
from bench.command import cli
from bench.command.flags import add_cluster_flags, add_run_flags
from bench.declare import record
from bench.declare.config import RESULTS, UsageError, steps_per_epoch
from bench.declare.datasets import metric_of
from bench.declare.experiments import ADVISE
from bench.images import data
from bench.report import advice
from bench.sweep import budget, race, tune
from bench.sweep.executor import Job

PROBE_STEPS = 5   # training steps a probe times (after the warm-up, which every run has off the clock)


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--backbone', required=True, help='timm model name, optionally with a pretrained tag')
    p.add_argument('--budget', default='30m', help='wall-clock time for the whole answer, probes included: 90s, '
                                                   '15m, 1h, 1h30m (a bare number is minutes; default: 30m)')
    p.add_argument('--strategy', help=f'a comma list of strategies to race (default: {", ".join(ADVISE.strategies)})')
    p.add_argument('--profile', default='auto', choices=['auto', 'full', 'cpu'],
                   help='full: 224 px-class settings; cpu: W7\'s 2-core budget (96 px, 2 epochs); auto: full where '
                        'the runs have CUDA, else cpu (default: auto)')
    p.add_argument('--plan-only', action='store_true', help='probe and print the plan; race nothing, write nothing')
    p.add_argument('--results', default=RESULTS, help='JSON-lines file of records (default: %(default)s)')
    p.add_argument('--out', default=None, help='leaderboard file (default: leaderboard.md beside --results)')
    p.add_argument('--no-render', action='store_true', help='do not render the leaderboard at the end')
    p.add_argument('--bar', action=argparse.BooleanOptionalAction, default=None, help=argparse.SUPPRESS)
    add_cluster_flags(p)
    add_run_flags(p)
    return p


def parse(argv=None):
    return parser().parse_args(argv)


def budget_seconds(text):
    """'90s', '15m', '1h', '1h30m', '20' (minutes) -> seconds; a UsageError otherwise."""
    text = text.strip().lower()
    parts = re.fullmatch(r'((?:\d+(?:\.\d+)?[hms])+|\d+(?:\.\d+)?)', text)
    if not parts:
        raise UsageError(f'--budget {text!r} is not a duration; write it as 90s, 15m, 1h or 1h30m')
    if text[-1].isdigit():
        seconds = float(text) * 60
    else:
        seconds = sum(float(n) * {'h': 3600, 'm': 60, 's': 1}[u] for n, u in re.findall(r'(\d+(?:\.\d+)?)([hms])', text))
    if seconds <= 0:
        raise UsageError(f'--budget must be positive, got {text!r}')
    return seconds


def clock(seconds):
    seconds = max(0, round(seconds))
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}' if seconds >= 3600 else \
        f'{seconds // 60}:{seconds % 60:02d}'


# ---- probe and plan ---------------------------------------------------------------------------------------

def probe(cfgs, where, per_epoch, n_valid, n_test):
    """Each strategy's budget.Probe: a run stopped after PROBE_STEPS steps, at its grid's middle LR, recorded nowhere."""
    total = cfgs[0].epochs * per_epoch
    jobs = [Job(replace(tune.at(c, tune.grid_of(c.strategy).exponents[1]), stop_at=min(1., PROBE_STEPS / total)),
                test=False) for c in cfgs]
    out = []
    for job, result in where.run(jobs):
        res = result.get('results')
        if res is None:
            out.append(budget.Probe(job.cfg.strategy, 0, 0, 0, 0, 0, result['error']))
            continue
        steps = round(res['epochs'][-1]['epoch'] * per_epoch)  # where RunLog stopped it
        trained = sum(e['train_seconds'] for e in res['epochs'])
        valid_s = res['eval_seconds']
        out.append(budget.Probe(job.cfg.strategy, max(0., res['wall_seconds'] - trained - valid_s), trained / steps,
                                valid_s, valid_s * n_test / max(n_valid, 1), res['peak_memory_mb']))
    return out


def at_size(cfg, size):
    return cfg if size == cfg.size else replace(cfg, size=size, resize=size)


def race_configs(cfgs, level, probes):
    """{strategy: config} the race runs at `level`: its image size and run length, the strategies whose probes at
    that size trained."""
    fit = {p.strategy for p in probes if p.error is None}
    return {c.strategy: replace(at_size(c, level.size), epochs=level.epochs) for c in cfgs if c.strategy in fit}


def probe_sizes(cfgs, sizes, where, per_epoch, n_valid, n_test, left_s, parallel):
    """{size: [Probe]}: measured at the smallest of `sizes`, and at the largest whose cost scaled by area (a bound
    from below) fits in `left_s()` seconds; the sizes between read off the two (budget.between). Sizes above that
    get no probes: no level of theirs can fit."""
    first = sizes[0]
    measured = {first: probe(cfgs, where, per_epoch, n_valid, n_test)}
    if not any(p.error is None for p in measured[first]):
        return measured
    top = max((s for s in sizes[1:] if budget.least_s(budget.Level(s, 3, cfgs[0].epochs), measured[first], first,
                                                     per_epoch, parallel) <= left_s()), default=None)
    if top is None:
        return measured
    measured[top] = probe([at_size(c, top) for c in cfgs], where, per_epoch, n_valid, n_test)
    return {s: budget.between(measured, s) for s in sizes if s <= top}


def plan_lines(plan, probes, sizes, base, budget_s, spent_s, per_epoch, parallel=1):
    """The probes, every level with its estimate (the chosen one marked), and the plan."""
    first = probes[sizes[0]]
    ok = [p for p in first if p.error is None]
    lines = [f'probed {len(first)} strategies in {clock(spent_s)} (setup s, ms per step, peak MB):']
    for size, measured in sorted(probes.items()):
        read_off = ' (read off the sizes around it)' if min(probes) < size < max(probes) else ''
        lines.append(f'  {size} px{read_off}: ' + ', '.join(
            f'{p.strategy} {p.setup_s:.1f}/{1000 * p.step_s:.0f}/{p.peak_mb:,.0f}' for p in measured if p.error is None))
    lines += [f'left out {p.strategy}: {p.error}' for p in first if p.error is not None]
    unprobed = [s for s in sizes if s not in probes]
    lines.append('levels, poorest first (bench/sweep/budget.py: the LR grid, then image size up to the backbone\'s '
                 'pretrained one, then longer runs):')
    for level, seconds in plan.options:
        mark = '  <- the plan' if level == plan.level else (' (over the budget)' if seconds > budget_s - spent_s else '')
        lines.append(f'  {level.words(base.epochs)}: about {clock(seconds)}{mark}')
    for level in (budget.Level(size, 3, base.epochs) for size in unprobed):
        bound = budget.least_s(level, first, sizes[0], per_epoch, parallel)
        lines.append(f'  {level.words(base.epochs)}: at least {clock(bound)} (not probed: {sizes[0]} px\'s costs '
                     f'scaled by area, a bound from below, are over the budget)')
    if plan.level is not None:
        level = plan.level
        n = len(race.candidates([p.strategy for p in ok], level.lr_points))
        shares = race.rungs(level.epochs)
        lines.append(f'plan: {len(ok)} strategies, {level.words(base.epochs)} ({level.epochs * per_epoch} steps '
                     f'of {base.bs}); {" → ".join(map(str, race.sizes(n, level.epochs)))} candidates at '
                     f'{", ".join(f"{s:g}" for s in shares)} of a run, then up to {race.MAX_FINALISTS} finalists x '
                     f'{race.SEEDS} seeds on test; about {clock(plan.seconds)} (at the mean cost of a candidate), '
                     f'{clock(budget_s - spent_s)} of the budget left')
    return lines


# ---- the race ---------------------------------------------------------------------------------------------

class Progress:
    """A bar over the whole answer: its share done (by the plan's estimates of the runs finished and to come, scaled
    by how long the finished runs really took), the time spent against the budget, and the time left."""
    def __init__(self, budget_s, start, probes, steps, out=functools.partial(print, flush=True)):
        self.budget_s, self.start, self.steps, self.out = budget_s, start, steps, out
        self.began = time.monotonic()  # the race's own clock: what the estimates are scaled by
        self.cost = {p.strategy: p for p in probes if p.error is None}
        self.done_est, self.todo_est, self.stage = 0., 0., ''

    def estimate(self, job):
        probe = self.cost[job.cfg.strategy]
        return probe.retest_s() if job.test_only else probe.run_s(self.steps, job.cfg.stop_at, job.test)

    def begin(self, stage, jobs, later_s=0.):
        self.stage, self.stage_n, self.stage_done = stage, len(jobs), 0
        self.todo_est = sum(self.estimate(j) for j in jobs) + later_s

    def scaled(self, estimate_s):
        """An estimate, scaled by how long the finished runs took against theirs."""
        return estimate_s * (time.monotonic() - self.began) / self.done_est if self.done_est else estimate_s

    def after(self, job, rec):
        e = self.estimate(job)
        self.done_est, self.todo_est, self.stage_done = self.done_est + e, max(0., self.todo_est - e), \
            self.stage_done + 1
        self.show()

    def show(self):
        now = time.monotonic()
        share = self.done_est / (self.done_est + self.todo_est) if self.done_est + self.todo_est else 1.
        left = self.scaled(self.todo_est)
        spent = now - self.start
        bar = '█' * round(24 * share) + '░' * (24 - round(24 * share))
        self.out(f'advise {bar} {share:4.0%} · {clock(spent)} of a {clock(self.budget_s)} budget · about '
                 f'{clock(left)} left · {self.stage}: {self.stage_done}/{self.stage_n} runs')


def stage(progress, policy, jobs):
    """What the bar says of the round `jobs` begin, with the plan's estimate (budget.expected_s) of what comes after:
    the later rungs and the finals, over the candidates alive."""
    share = jobs[0].cfg.stop_at
    if jobs[0].cfg.seed or jobs[0].test_only:
        return progress.begin(f'finals ({len(policy.kept)} x {race.SEEDS} seeds)', jobs)
    rung = policy.shares.index(share)
    alive = [race.candidate_of(dict(strategy=j.cfg.strategy, config=j.cfg.to_dict())) for j in jobs]
    mean_s = lambda s: sum(progress.cost[c.strategy].run_s(progress.steps, s) for c in alive) / len(alive)  # noqa: E731
    later = policy.shares[rung + 1:]
    final_s = sum(progress.cost[c.strategy].final_s(progress.steps) for c in alive) / len(alive)
    progress.begin(f'rung {rung + 1} of {len(policy.shares)} ({share:g} of a run)', jobs,
                   budget.expected_s(mean_s, later, race.halved(len(alive), len(later))[1:],
                               len({c.strategy for c in alive}), final_s))


def plan_sizes(cfg, fixed):
    """The image sizes the plan weighs (budget.image_sizes): from the profile's up to the backbone's pretrained one;
    the run's alone where `fixed` (--size) or the model takes one size only."""
    import backbones
    spec = backbones.describe(cfg.backbone, cfg.size)
    return [cfg.size] if fixed or spec.fixed_size else budget.image_sizes(cfg.size, spec.img_size)


def main(argv=None):
    args = parse(argv)
    opts = cli.Options.of(args, force=False)  # a race reruns nothing it has recorded
    budget_s = budget_seconds(args.budget)
    start = time.monotonic()
    with cli.executor(opts) as where:
        strategies = [s for s in cli.expand_strategies(args.strategy, ADVISE.strategies) if tune.grid_of(s)]
        if not strategies:
            raise UsageError('no strategy to race: each of those given trains nothing (zero_shot)')
        rows = [dict(backbone=args.backbone, strategy=s) for s in strategies]
        cfgs = cli.validate(cli.runs(ADVISE, args, where.hardware, rows, seeds=False), leave_out=True)
        images = cli.load_images(cfgs[0].data)
        if len(images.classes) < 2:
            raise data.DataError(f'{cfgs[0].data} has one class ({images.classes[0]!r}); choosing a strategy needs '
                                 f'two classes or more')
        cfgs = cli.stamp(cfgs, images)
        split = data.split_for(images, cfgs[0])
        per_epoch = steps_per_epoch(len(split.train), cfgs[0].bs)
        where.start(images, bar=False)
        sizes = plan_sizes(cfgs[0], fixed=args.size is not None)
        parallel = getattr(where, 'slots', 1)
        probes = probe_sizes(cfgs, sizes, where, per_epoch, len(split.valid), len(split.test),
                             lambda: budget_s - (time.monotonic() - start), parallel)
        fits = [p for p in probes[sizes[0]] if p.error is None]
        if not fits:
            raise UsageError(f'{args.backbone} cannot train here with any strategy: {probes[sizes[0]][0].error}')
        spent = time.monotonic() - start
        plan = budget.plan(probes, per_epoch, cfgs[0].epochs, budget_s, spent, longer=args.epochs is None,
                           parallel=parallel)
        print(f'{images.key.split(":")[0]}: {len(images.classes)} classes; {len(split.train):,} training, '
              f'{len(split.valid):,} validation and {len(split.test):,} test images, stored at '
              f'{images.stored or "their own size"} px; image sizes the plan weighs: '
              f'{", ".join(f"{s} px" for s in sizes)}' + (' (--size)' if args.size is not None else ''))
        print('\n'.join(plan_lines(plan, probes, sizes, cfgs[0], budget_s, spent, per_epoch, parallel)))
        if plan.level is None:
            raise UsageError(f'a budget of {clock(budget_s)} is too small for an answer here: the smallest (every '
                             f'strategy at one LR, {race.SEEDS} seeds for the finalists) needs about '
                             f'{clock(plan.smallest_s)}; pass --budget {math.ceil(plan.smallest_s / 60)}m or more')
        if args.plan_only:
            return 0
        base = race_configs(cfgs, plan.level, probes[plan.level.size])
        progress = Progress(budget_s, start, probes[plan.level.size], plan.level.epochs * per_epoch)
        policy = race.Race(base, plan.level, budget_s, metric_of(images.key.split(':')[0]).valid, len(split.valid),
                           lambda c: progress.scaled(progress.cost[c.strategy].final_s(progress.steps)),
                           lambda: budget_s - (time.monotonic() - progress.start))
        failed = bool(cli.run(opts, policy, where, after=progress.after,
                              begin=lambda jobs: stage(progress, policy, jobs)).failed)
    print(f'done in {clock(time.monotonic() - start)} of a {clock(budget_s)} budget')
    found = [a for a in advice.advices(record.read(opts.results))
             if (a.dataset, a.backbone, a.epochs, a.size) == (images.key.split(':')[0], cfgs[0].backbone,
                                                              plan.level.epochs, plan.level.size)
             and a.device == where.hardware.name]
    recs = record.read(opts.results)
    for adv in found:
        print('\n'.join(['', f'advice for {adv.name}:', *advice.answer(adv), '', advice.contenders_table(adv), '',
                         *advice.regime_lines(adv, advice.w8_comparisons(recs)),
                         *advice.context_lines(adv, across.experiment_blocks(recs, 'w7'))]))
    cli.render(opts)
    return 1 if failed else 0


if __name__ == '__main__':
    cli.main(main)
