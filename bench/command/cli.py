"""What every bench script does between its flags and its runs: validate, plan, execute, render.

Every mistake a user can make is found here before anything runs or is written, and ends in one sentence on
stderr and exit code 2. Failed runs are error rows and make the script exit 1 at the end; Ctrl-C exits 130 and
keeps every finished record.
"""
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Optional

import backbones
from bench.command.exits import main  # noqa: F401  (every script ends through cli.main)
from bench.command.flags import flag_overrides
from bench.declare import record
from bench.declare.config import RESULTS, UsageError, image_size, validate_numbers
from bench.declare.datasets import METRICS, declared
from bench.declare.experiments import CUSTOM, EXPERIMENTS
from bench.declare.strategies import STRATEGIES, problem, unknown_strategy_message
from bench.images import data
from bench.report import leaderboard
from bench.sweep import tune
from bench.sweep.executor import Job, make_executor
from bench.sweep.loop import Runs, Sweep, drive
from bench.train.resolve import fit_size


@dataclass(frozen=True)
class Options:
    """How a script runs and records its sweep, read from its flags once (nothing patches them on the way)."""
    results: str = RESULTS            # the records file
    out: Optional[str] = None         # the leaderboard (default: leaderboard.md beside `results`)
    force: bool = False               # rerun what is recorded
    render: bool = True               # render the leaderboard at the end
    bar: Optional[bool] = None        # progress bars (None: where the output is a terminal)
    dry_run: bool = False             # plan, run nothing
    seeds: int = 1                    # seeds per configuration, from `seed`
    seed: int = 0
    cluster: str = 'auto'             # where runs happen (bench/sweep/executor.py)
    gpus_per_run: Optional[float] = None
    cpus_per_run: Optional[float] = None

    @classmethod
    def of(cls, args, **given):
        """The options `args` (a script's parsed flags) give, where it has them; `given` over them."""
        values = {f: getattr(args, f) for f in cls.__dataclass_fields__ if hasattr(args, f)}
        if hasattr(args, 'no_render'):
            values['render'] = not args.no_render
        return cls(**{**values, **given})

    @property
    def show_bar(self):
        return sys.stdout.isatty() if self.bar is None else self.bar


def expand_strategies(text, default):
    names = [s.strip() for s in text.split(',') if s.strip()] if text else list(default)
    if names == ['all']:
        return list(STRATEGIES)
    for name in names:
        if name not in STRATEGIES:
            raise UsageError(unknown_strategy_message(name))
    return names


def full_profile_backbones(exp, args, target):
    """The experiment's full-profile backbones whose weights can be had here (a line for each left out)."""
    from bench.train.resolve import resolve_device, resolve_profile
    if not exp.full_backbones or resolve_profile(args.profile, resolve_device(args.device or 'auto', target)) != 'full':
        return []
    kept = []
    for name in exp.full_backbones:
        why = backbones.unavailable(name)
        if why:
            print(f'left out {name}: its pretrained weights cannot be had ({why})')
        else:
            kept.append(name)
    return kept


def runs(exp, args, target, rows=({},), seeds=True):
    """The one expansion of an experiment and a script's arguments into run configs, every script's: Config's
    defaults <- the experiment <- its profile <- each row's settings (a backbone and strategy, a variant) <- the
    flags <- `auto` on `target`; then every seed (`seeds`)."""
    from bench.train.resolve import resolve
    flags = flag_overrides(args)
    preset = exp.name if exp is not CUSTOM else None
    cfgs = [resolve(preset, args.profile, target, **{**row, **flags}) for row in rows]
    return with_seeds(cfgs, args.seed, args.seeds) if seeds else cfgs


def regimes_of(exp, text):
    """The experiment's regimes `--regime` names (all it declares where not given): {name: settings}."""
    wanted = [x.strip() for x in text.split(',') if x.strip()] if text else list(exp.regimes)
    for name in wanted:
        if name not in exp.regimes:
            raise UsageError(f'unknown regime {name!r}' + (f'; {exp.name} declares {", ".join(exp.regimes)}'
                                                           if exp.regimes else f'; {exp.name} declares none'))
    return {name: exp.regimes[name] for name in wanted}


def experiment_of(args):
    return EXPERIMENTS.get(args.preset, CUSTOM)


def with_seeds(cfgs, first, n):
    if n < 1:
        raise UsageError(f'--seeds must be at least 1, got {n}')
    return [replace(c, seed=s) for c in cfgs for s in range(first, first + n)]


def validate(cfgs, leave_out=False):
    """Names, numbers, strategy constraints and weights files, for every planned run, before any runs; returns the
    configs with the backbone's `auto` head resolved. `leave_out` (the user asked for every strategy): a strategy
    that cannot run on a backbone is left out with a line saying why, instead of stopping everything."""
    checked, kept, left_out = set(), [], {}
    for cfg in cfgs:
        validate_numbers(cfg)
        size = image_size(cfg)
        try:
            spec = backbones.describe(cfg.backbone, size)
            cfg = replace(cfg, head=backbones.resolve_head(cfg.head, spec.features))
        except ValueError as e:
            raise UsageError(str(e) if cfg.backbone in str(e) else f'{cfg.backbone}: {e}') from None
        why = problem(cfg, spec)
        if why and leave_out and cfg.strategy in STRATEGIES:
            left_out.setdefault((cfg.backbone, cfg.strategy), why)
            continue
        if why:
            raise UsageError(why)
        if (cfg.backbone, cfg.weights) not in checked:
            backbones.check_weights(cfg.backbone, cfg.weights, size)
            checked.add((cfg.backbone, cfg.weights))
        kept.append(cfg)
    for (backbone, strategy), why in left_out.items():
        print(f'left out {strategy} on {backbone}: {why}')
    if not kept:
        raise UsageError('no strategy can run with these settings (see the lines above)')
    return kept


def load_images(source):
    return data.load(data.resolve_source(source), log=lambda m: print(m, file=sys.stderr))


def by_data(cfgs):
    """The configs grouped by dataset, in the order they first appear."""
    groups = {}
    for cfg in cfgs:
        groups.setdefault(cfg.data, []).append(cfg)
    return list(groups.items())


def stamp(cfgs, found):
    """Name the dataset (`found`, its Images) in every config, and check its split and subsets against the data before
    anything runs."""
    for cfg in cfgs:
        data.split_for(found, cfg)
    return [replace(fit_size(cfg, found.stored), dataset=found.key) for cfg in cfgs]


def executor(opts):
    """Where the runs happen, from --cluster, --gpus-per-run and --cpus-per-run."""
    return make_executor(opts.cluster, opts.gpus_per_run, opts.cpus_per_run)


def tuning(args, cfgs):
    """Whether these runs tune each strategy's LR: --tune lr or off as given; auto where they compare strategies."""
    return tune.wanted(getattr(args, 'tune', 'off'), len({c.strategy for c in cfgs}) > 1)


def execute(args, configs):
    """A script's flow: where runs happen; `configs(args, hardware)` for the hardware they land on, validated;
    their plans (--dry-run) or the runs, through the sweep loop (each strategy tuned, where it is); then the
    leaderboard. The exit code."""
    opts = Options.of(args)
    with executor(opts) as where:
        cfgs = validate(configs(args, where.hardware), leave_out=getattr(args, 'strategy', None) == 'all')
        tuned = tuning(args, cfgs)
        if opts.dry_run:
            return dry_run(opts, cfgs, tuned, where)
        failed = False
        for source, group in by_data(cfgs):
            found = load_images(source)
            group = stamp(group, found)
            print_config(group[0])
            where.start(found, bar=opts.show_bar)
            policy = tune.Tuning(group) if tuned else Runs([Job(cfg) for cfg in group])
            failed |= bool(run(opts, policy, where).failed)
    render(opts)
    return 1 if failed else 0


def run(opts, policy, where, **how):
    """`policy` through the sweep loop on a started executor: the sweep's Outcome (what ran, was skipped, failed)."""
    sweep = Sweep(where, opts.results, force=opts.force, **how)
    drive(policy, sweep)
    return sweep.outcome


def dry_run(opts, cfgs, tuned=False, where=None):
    """Each run's phases, from the strategy's own code on a parameter-free model. Needs no data and downloads
    nothing: the class count comes from the data if it is here, else CIFAR-10's 10 are assumed. Tuned: one plan per
    strategy, at its grid's middle point, with its grid, its runs and the head's rule. Where the data is here, what
    the runs will cost on `where`'s hardware (bench/analysis/estimate.py, from the records of earlier runs there)."""
    from bench.train.plan import format_plan
    from bench.train.run import planned
    total, counted, unknown = 0., 0., 0
    for spec, group in by_data(cfgs):
        source = data.local_source(spec)
        if source is None:
            n_classes = 10
            print(f'no local copy of {spec} ($FTBENCH_DATA or a finished fastai download): the plan assumes 10 classes')
        else:
            found = data.load(source, log=lambda m: print(m, file=sys.stderr))
            group, n_classes = stamp(group, found), len(found.classes)
            metric = METRICS[declared(spec).metric].words
            print(f'{spec}: {n_classes} classes, {len(found.train_y):,} training and {len(found.test_y):,} test '
                  f'images stored at {found.stored} px; ranked by {metric}')
            if where is not None:
                seconds, runs, missing = cost(opts, group, found, tuned, where)
                total, counted, unknown = total + seconds, counted + runs, unknown + missing
        if tuned:
            seeds = {key: len(s) for key, (_, s) in tune.grid_runs(group).items()}
            group = [tune.at(first, tune.grid_of(first.strategy).exponents[1]) if tune.grid_of(first.strategy)
                     else first for first in group if first.seed == min(c.seed for c in group)]
        for cfg in group:
            print_config(cfg)
            print(format_plan(cfg, planned(cfg, n_classes)))
            if tuned:
                print(tune.describe(cfg, seeds.get(tune.group_key(cfg.to_dict()), opts.seeds)))
    if counted:
        print(f'estimate: about {round(counted)} runs, {total / 3600:.1f} h on {where.hardware.name} '
              f'({where.slots} at a time)' + (f'; {unknown} configurations have no record to estimate from and are '
                                              f'left out of it' if unknown else '') +
              f' (bench/analysis/estimate.py: from the records in {opts.results} of this hardware, scaled to each '
              f'image size as records at two sizes show, else by pixels)')
    return 0


def cost(opts, group, found, tuned, where):
    """(seconds, runs, configurations without an estimate) of `group` (on the images `found`) on `where`, from the
    records of its hardware."""
    from bench.analysis import estimate
    by_split = defaultdict(list)
    for cfg in group:
        by_split[tuple(getattr(cfg, name) for name in data.SPLIT_SETTINGS)].append(cfg)
    out = (0., 0., 0)
    for same in by_split.values():
        split = data.split_for(found, same[0])
        seconds, runs, unknown = estimate.sweep_seconds(
            same, record.read(opts.results), where.hardware.name, where.threads, len(split.train), len(split.valid),
            len(split.test), tuned, where.slots)
        out = (out[0] + seconds, out[1] + runs, out[2] + unknown)
    return out


def print_config(cfg):
    print('config: ' + json.dumps(cfg.to_dict(), sort_keys=True))


def render(opts):
    if opts.render:
        print(f'leaderboard: {leaderboard.render_file(opts.results, opts.out)}')
