"""What every bench script does between its flags and its runs: validate, plan, execute, render.

Every mistake a user can make is found here before anything runs or is written, and ends in one sentence on
stderr and exit code 2. Failed runs are error rows and make the script exit 1 at the end; Ctrl-C exits 130 and
keeps every finished record.
"""
import sys
from collections import defaultdict
from dataclasses import replace

import backbones
from bench import data, record, tune
from bench.config import UsageError, flag_overrides, print_config, validate_numbers
from bench.experiments import CUSTOM, EXPERIMENTS
from bench.datasets import METRICS, declared
from bench.executor import Job, make_executor, sweep
from bench.resolve import fit_size
from bench.strategies import STRATEGIES, problem, unknown_strategy_message


def main(fn):
    """Run `fn()` and turn its outcome into an exit code."""
    try:
        sys.exit(fn())
    except (UsageError, data.DataError, backbones.WeightsError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('\ninterrupted: every finished run is kept in the results file; rerun to resume', file=sys.stderr)
        sys.exit(130)


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
    from bench.resolve import resolve_device, resolve_profile
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
    from bench.resolve import resolve
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
        size = cfg.size or cfg.resize or None
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


def stamp(cfgs, images):
    """Name the dataset in every config, and check its split and subsets against the data before anything runs."""
    for cfg in cfgs:
        data.split_for(images, cfg)
    return [replace(fit_size(cfg, images.stored), dataset=images.key) for cfg in cfgs]


def executor(args):
    """Where the runs happen, from --cluster, --gpus-per-run and --cpus-per-run."""
    return make_executor(args.cluster, args.gpus_per_run, args.cpus_per_run)


def tuning(args, cfgs):
    """Whether these runs tune each strategy's LR: --tune lr or off as given; auto where they compare strategies."""
    return tune.wanted(getattr(args, 'tune', 'off'), len({c.strategy for c in cfgs}) > 1)


def execute(args, configs):
    """A script's flow: where runs happen; `configs(args, hardware)` for the hardware they land on, validated;
    their plans (--dry-run) or the runs (each strategy tuned first, where it is); then the leaderboard. The exit
    code."""
    with executor(args) as where:
        cfgs = validate(configs(args, where.hardware), leave_out=getattr(args, 'strategy', None) == 'all')
        tuned = tuning(args, cfgs)
        if args.dry_run:
            return dry_run(args, cfgs, tuned, where)
        failed = False
        for source, group in by_data(cfgs):
            images = load_images(source)
            group = stamp(group, images)
            print_config(group[0])
            where.start(images, bar=show_bar(args))
            if tuned:
                failed |= run_tuned(args, group, where)
            else:
                failed |= bool(run(args, [Job(cfg) for cfg in group], where).failed)
    render(args)
    return 1 if failed else 0


def tuned_job(cfg, role, chosen=None, **job):
    return Job(cfg, extra=tune.bookkeeping(cfg, role, chosen), identity=tune.IDENTITY, **job)


def run_tuned(args, cfgs, where):
    """Each strategy's grid at the first seed, scored on validation, extended past an edge where the best is there;
    then every seed at the chosen LR (the grid's run is the first seed's: its test is scored from the weights it
    kept). A strategy's seeds start with the next round of grid points once its choice is made, so that runs side by
    side have work. Strategies that train nothing run as they are. Every run is a record; a rerun resumes. Whether
    any run failed."""
    groups = tune.grid_runs(cfgs)
    scores = {key: {} for key in groups}
    pending = {key: list(tune.grid_of(first.strategy).exponents) for key, (first, _) in groups.items()}
    kept = {key: {} for key in groups}  # group -> {exponent: its grid run's key}
    jobs = [tuned_job(cfg, 'seed') for cfg in cfgs if tune.grid_of(cfg.strategy) is None]
    failed = False
    while jobs or any(pending.values()):
        jobs += [tuned_job(tune.at(groups[key][0], e), 'grid', test=False, keep=True)
                 for key, points in pending.items() for e in points]
        outcome = run(args, jobs, where)
        failed |= bool(outcome.failed)
        for rec in outcome.records:
            if rec.get('tune', {}).get('role') == 'grid':
                exponent, score = tune.point(rec)
                scores[tune.group_key(rec['config'])][exponent] = score
                kept[tune.group_key(rec['config'])][exponent] = rec['key']
        jobs = []
        for key, (first, seeds) in groups.items():
            if not pending[key]:
                continue  # chosen in an earlier round
            choice = tune.choose(scores[key], tune.grid_of(first.strategy).exponents)
            pending[key] = [choice.next] if choice.next is not None else []
            if choice.next is None:  # chosen: the seeds, and the test of the grid's run; the other points' weights go
                print(tune.summary(first, scores[key], choice))
                forget([k for e, k in kept[key].items() if e != choice.best])
                jobs += [tuned_job(tune.at(cfg, choice.best), 'grid', test_only=True) if cfg is first else
                         tuned_job(tune.at(cfg, choice.best), 'seed', choice.best)
                         for cfg in seeds if choice.best is not None]
    forget([k for by in kept.values() for k in by.values()])
    return failed


def forget(keys):
    """Delete the kept weights of these runs: their test is scored, or never will be."""
    for key in keys:
        record.checkpoint_path(key).unlink(missing_ok=True)


def run(args, jobs, executor, after=None):
    """Sweep `jobs` on a started `executor` and say what happened; returns the sweep's Outcome. `after(job, record)`
    follows each new record (a progress bar)."""
    outcome = sweep(jobs, executor, args.results, force=args.force, after=after)
    print(f'{outcome.ran} ran, {outcome.skipped} already recorded, {len(outcome.failed)} failed; '
          f'records in {args.results}')
    return outcome


def dry_run(args, cfgs, tuned=False, where=None):
    """Each run's phases, from the strategy's own code on a parameter-free model. Needs no data and downloads
    nothing: the class count comes from the data if it is here, else CIFAR-10's 10 are assumed. Tuned: one plan per
    strategy, at its grid's middle point, with its grid, its runs and the head's rule. Where the data is here, what
    the runs will cost on `where`'s hardware (bench/estimate.py, from the records of earlier runs there)."""
    from bench.plan import format_plan
    from bench.run import planned
    total, counted, unknown = 0., 0., 0
    for spec, group in by_data(cfgs):
        source = data.local_source(spec)
        if source is None:
            n_classes = 10
            print(f'no local copy of {spec} ($FTBENCH_DATA or a finished fastai download): the plan assumes 10 classes')
        else:
            images = data.load(source, log=lambda m: print(m, file=sys.stderr))
            group, n_classes = stamp(group, images), len(images.classes)
            metric = METRICS[declared(spec).metric]
            print(f'{spec}: {n_classes} classes, {len(images.train_y):,} training and {len(images.test_y):,} test '
                  f'images stored at {images.stored} px; ranked by {metric}')
            if where is not None:
                seconds, runs, missing = cost(args, group, images, tuned, where)
                total, counted, unknown = total + seconds, counted + runs, unknown + missing
        if tuned:
            seeds = {key: len(s) for key, (_, s) in tune.grid_runs(group).items()}
            group = [tune.at(first, tune.grid_of(first.strategy).exponents[1]) if tune.grid_of(first.strategy)
                     else first for first in group if first.seed == min(c.seed for c in group)]
        for cfg in group:
            print_config(cfg)
            print(format_plan(cfg, planned(cfg, n_classes)))
            if tuned:
                print(tune.describe(cfg, seeds.get(tune.group_key(cfg.to_dict()), args.seeds)))
    if counted:
        print(f'estimate: about {round(counted)} runs, {total / 3600:.1f} h on {where.hardware.name} '
              f'({where.slots} at a time)' + (f'; {unknown} configurations have no record to estimate from and are '
                                              f'left out of it' if unknown else '') +
              f' (bench/estimate.py: from the records in {args.results} of this hardware, scaled by pixels)')
    return 0


def cost(args, group, images, tuned, where):
    """(seconds, runs, configurations without an estimate) of `group` on `where`, from the records of its hardware."""
    from bench import estimate
    by_split = defaultdict(list)
    for cfg in group:
        by_split[tuple(getattr(cfg, name) for name in data.SPLIT_SETTINGS)].append(cfg)
    out = (0., 0., 0)
    for same in by_split.values():
        split = data.split_for(images, same[0])
        seconds, runs, unknown = estimate.sweep_seconds(
            same, record.read(args.results), where.hardware.name, where.threads, len(split.train), len(split.valid),
            len(split.test), tuned, where.slots)
        out = (out[0] + seconds, out[1] + runs, out[2] + unknown)
    return out


def show_bar(args):
    return sys.stdout.isatty() if args.bar is None else args.bar


def render(args):
    if args.no_render:
        return
    from bench import leaderboard
    out = leaderboard.render_file(args.results, args.out)
    print(f'leaderboard: {out}')
