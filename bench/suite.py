"""Every experiment of bench/declare/experiments.py that `make bench` runs (W5 and W6, whose questions W7 asks, run by name
with --only), one after another, then the leaderboard.

    python bench/suite.py --seeds 3 [--profile auto] [--results reports/results.jsonl] [--only w1,w2] [-- FLAGS]

Each experiment runs through its own script (its `bench` argument lists in bench/declare/experiments.py) with the shared
flags given here, in a process of its own: what a run records (its peak memory above all) is never what an earlier
experiment left in the process (its images, splits and heap). FLAGS after `--` go to every script (e.g.
`-- --precision fp32`). A failed run is an error row; the leaderboard is rendered anyway and the exit code is 1 if
any run failed (2 if an experiment's input was refused). Ctrl-C stops the experiment running (it keeps its finished
runs) and the suite, with exit code 130.
"""
import argparse
import signal
import subprocess
import sys

from bench.command import exits
from bench.command.flags import add_cluster_flags, split_list
from bench.declare.config import PROFILES, RESULTS, UsageError
from bench.declare.experiments import EXPERIMENTS
from bench.report import leaderboard

INTERRUPTED = 130
BENCH = [name for name, e in EXPERIMENTS.items() if e.in_make_bench]  # what `make bench` runs


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--only', help=f'comma list of experiments to run, of {", ".join(EXPERIMENTS)} (default: '
                                  f'{", ".join(BENCH)})')
    p.add_argument('--profile', default='auto', choices=['auto', *PROFILES],
                   help='full, cpu, or auto: full where the runs have CUDA, else cpu (default: auto)')
    p.add_argument('--seeds', type=int, default=3, help='seeds per configuration (default: 3)')
    p.add_argument('--results', default=RESULTS, help='records file (default: %(default)s)')
    p.add_argument('--data', help='a dataset name (cifar10, caltech101, ...) or a folder/.tgz in fastai layout, '
                                  'for every experiment instead of its own (default: each experiment\'s dataset)')
    p.add_argument('--dry-run', action='store_true', help='print every experiment\'s plan; run nothing')
    add_cluster_flags(p)
    return p


def commands(args, extra=()):
    """(experiment, script name, argv) for every script run of every chosen experiment; `extra` goes to each."""
    chosen = split_list(args.only) or BENCH
    for name in chosen:
        if name not in EXPERIMENTS:
            raise UsageError(f'unknown experiment {name!r}; choose from {", ".join(EXPERIMENTS)}')
    shared = ['--profile', args.profile, '--seeds', str(args.seeds), '--results', args.results, '--no-render',
              '--cluster', args.cluster, *(['--data', args.data] if args.data else []),
              *(['--dry-run'] if args.dry_run else []),
              *(['--gpus-per-run', str(args.gpus_per_run)] if args.gpus_per_run is not None else []),
              *(['--cpus-per-run', str(args.cpus_per_run)] if args.cpus_per_run is not None else [])]
    return [(name, EXPERIMENTS[name].script, ['--preset', name, *own, *shared, *extra])
            for name in chosen for own in EXPERIMENTS[name].bench]


def run_script(script, argv):
    """`python -m bench.<script> argv` in a process of its own: its exit code (2 for refused input, 1 if it was
    killed). A Ctrl-C reaches the script too: it keeps its finished runs, says so and exits 130, and so does the
    suite, running nothing more; a Ctrl-C sent to the suite alone is passed on to the script."""
    child = subprocess.Popen([sys.executable, '-m', f'bench.{script}', *argv])
    try:
        code = child.wait()
    except KeyboardInterrupt:
        try:
            child.wait(timeout=5)  # a Ctrl-C at the terminal reached the whole process group
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGINT)
            child.wait()
        sys.exit(INTERRUPTED)
    if code in (INTERRUPTED, -signal.SIGINT):
        sys.exit(INTERRUPTED)
    return code if code >= 0 else 1


def main(argv=None):
    args, extra = parser().parse_known_args(argv)
    codes = []
    for name, script, argv_ in commands(args, [x for x in extra if x != '--']):
        print(f'==== {name}: bench/{script}.py {" ".join(argv_)}', flush=True)
        codes.append(run_script(script, argv_))
    if not args.dry_run:
        print(f'leaderboard: {leaderboard.render_file(args.results)}')
    return max(codes, default=0)


if __name__ == '__main__':
    exits.main(main)
