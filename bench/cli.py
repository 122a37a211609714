"""What every bench script does between its flags and its runs: expand, validate, load, plan, run, render.

Every mistake a user can make is found here before anything runs or is written, and ends in one sentence on
stderr and exit code 2. Failed runs are error rows and make the script exit 1 at the end; Ctrl-C exits 130 and
keeps every finished record.
"""
import sys

import backbones
from bench import data
from bench.config import UsageError, print_config, replace, validate_numbers
from bench.runner import plan, format_plan, resolve_runtime, sweep
from bench.strategies import STRATEGIES, problem


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
    names = [s.strip() for s in (text or default).split(',') if s.strip()]
    if names == ['all']:
        return list(STRATEGIES)
    for name in names:
        if name not in STRATEGIES:
            raise UsageError(f'unknown strategy {name!r}; choose from {", ".join(STRATEGIES)} or all')
    return names


def with_seeds(cfgs, first, n):
    if n < 1:
        raise UsageError(f'--seeds must be at least 1, got {n}')
    return [replace(c, seed=s) for c in cfgs for s in range(first, first + n)]


def validate(cfgs):
    """Names, numbers, strategy constraints and weights files, for every planned run, before any runs."""
    checked = set()
    for cfg in cfgs:
        validate_numbers(cfg)
        try:
            spec = backbones.describe(cfg.backbone)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if cfg.head == 'fastai' and spec.feature_ndim != 4:
            raise UsageError(f'{cfg.backbone} gives token features; use --head linear or mlp')
        why = problem(cfg, len(spec.stage_names))
        if why:
            raise UsageError(why)
        if (cfg.backbone, cfg.weights) not in checked:
            backbones.check_weights(cfg.backbone, cfg.weights)
            checked.add((cfg.backbone, cfg.weights))
        if cfg.strategy == 'zero_shot' and cfg.weights == 'none':
            raise UsageError('zero_shot with --weights none evaluates a random network; it measures nothing')


def load_images(source):
    return data.load(data.resolve_source(source), log=lambda m: print(m, file=sys.stderr))


def prepare(cfgs, images, split_of):
    """Resolve what `auto` means here and stamp the dataset; check subsets against the data (via `split_of`)."""
    out = []
    for cfg in cfgs:
        cfg = resolve_runtime(replace(cfg, dataset=images.key))
        split_of(cfg)
        out.append(cfg)
    return out


def split_for(images):
    """cfg -> its Split of `images`, computed once per distinct split setting; make one per script run."""
    cache = {}

    def get(cfg):
        k = (cfg.valid_frac, cfg.split_seed, cfg.subset, cfg.eval_subset)
        if k not in cache:
            cache[k] = data.split(images, cfg.valid_frac, cfg.split_seed, cfg.subset, cfg.eval_subset)
        return cache[k]
    return get


def execute(args, cfgs):
    """Validate every planned run, load the data, then run them (or print their plans). The exit code."""
    validate(cfgs)
    images = load_images(args.data)
    split_of = split_for(images)
    return run(prepare(cfgs, images, split_of), args, images, split_of)


def run(cfgs, args, images, split_of):
    """Dry run (print the plans) or sweep; then render the leaderboard. Returns the exit code."""
    if args.dry_run:
        for cfg in cfgs:
            print_config(cfg)
            print(format_plan(cfg, plan(cfg, len(images.classes))))
        return 0
    for cfg in cfgs[:1]:
        print_config(cfg)
    outcome = sweep(cfgs, images, split_of, args.results, force=args.force, bar=not args.no_bar)
    print(f'{outcome.ran} ran, {outcome.skipped} already recorded, {len(outcome.failed)} failed; '
          f'records in {args.results}')
    render(args)
    return 1 if outcome.failed else 0


def render(args):
    if args.no_render:
        return
    from bench import leaderboard
    out = leaderboard.render_file(args.results, args.out)
    print(f'leaderboard: {out}')

