"""Every experiment of bench/config.py, one after another, then the leaderboard: what `make bench` runs.

    python bench/suite.py --seeds 3 [--profile auto] [--results reports/results.jsonl] [--only w1,w2] [-- FLAGS]

Each experiment runs through its own script (its `bench` argument lists in bench/config.py) with the shared
flags given here; FLAGS after `--` go to every script (e.g. `-- --precision fp32`). A failed run is an error row;
the leaderboard is rendered anyway and the exit code is 1 if any run failed (2 if an experiment's input was
refused).
"""
import argparse

from bench import cli, finetune, leaderboard, scratch, search
from bench.config import EXPERIMENTS, PROFILES, UsageError, add_cluster_flags, split_list

SCRIPTS = {'finetune': finetune, 'scratch': scratch, 'search': search}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--only', help=f'comma list of experiments to run (default: all of {", ".join(EXPERIMENTS)})')
    p.add_argument('--profile', default='auto', choices=['auto', *PROFILES],
                   help='full, cpu, or auto: full where the runs have CUDA, else cpu (default: auto)')
    p.add_argument('--seeds', type=int, default=3, help='seeds per configuration (default: 3)')
    p.add_argument('--results', default='reports/results.jsonl', help='records file (default: %(default)s)')
    p.add_argument('--data', help='folder or .tgz in fastai layout (default $FTBENCH_DATA, else untar_data)')
    p.add_argument('--dry-run', action='store_true', help='print every experiment\'s plan; run nothing')
    add_cluster_flags(p)
    return p


def commands(args, extra=()):
    """(experiment, script module, argv) for every run of every chosen experiment; `extra` goes to each."""
    chosen = split_list(args.only) or list(EXPERIMENTS)
    for name in chosen:
        if name not in EXPERIMENTS:
            raise UsageError(f'unknown experiment {name!r}; choose from {", ".join(EXPERIMENTS)}')
    shared = ['--profile', args.profile, '--seeds', str(args.seeds), '--results', args.results, '--no-render',
              '--cluster', args.cluster, *(['--data', args.data] if args.data else []),
              *(['--dry-run'] if args.dry_run else []),
              *(['--gpus-per-run', str(args.gpus_per_run)] if args.gpus_per_run is not None else []),
              *(['--cpus-per-run', str(args.cpus_per_run)] if args.cpus_per_run is not None else [])]
    return [(name, SCRIPTS[EXPERIMENTS[name].script], ['--preset', name, *own, *shared, *extra])
            for name in chosen for own in EXPERIMENTS[name].bench]


def exit_code(fn):
    """`fn`'s exit code as cli.main would give it, without leaving: 2 for refused input, 130 passes through."""
    try:
        cli.main(fn)
    except SystemExit as e:
        if e.code == 130:
            raise
        return e.code or 0
    return 0


def main(argv=None):
    args, extra = parser().parse_known_args(argv)
    codes = []
    for name, script, argv_ in commands(args, [x for x in extra if x != '--']):
        print(f'==== {name}: bench/{script.__name__.split(".")[-1]}.py {" ".join(argv_)}', flush=True)
        codes.append(exit_code(lambda: script.main(argv_)))
    if not args.dry_run:
        print(f'leaderboard: {leaderboard.render_file(args.results)}')
    return max(codes, default=0)


if __name__ == '__main__':
    cli.main(main)
