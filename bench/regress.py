"""Did the harness get slower? Compares the newest saved pytest-benchmark run with the one before, in one line.

    python bench/regress.py [--storage .benchmarks] [--threshold 25]     # what `make bench-regress` ends with

Raw seconds move with whatever else a shared machine is doing (medians of identical runs moved by up to 35% on
the project's 2-core VM). So every benchmark round is preceded by a fixed calibration workload, timed off the
clock (tests/benchmarks/conftest.py), and what is compared is the benchmark's fastest round in units of the
fastest calibration among its rounds: a slower machine slows both, a slower harness only the benchmark. A benchmark regressed if that
normalized time grew by more than --threshold percent. Runs on different CPU models are not compared.
Prints one line; exits 1 if anything regressed, else 0.
"""
import argparse
import json
import sys
from pathlib import Path


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--storage', default='.benchmarks', help='pytest-benchmark storage folder (default: %(default)s)')
    p.add_argument('--threshold', type=float, default=25.0,
                   help='percent growth of a normalized time that counts as a regression (default: %(default)s)')
    return p


def saved_runs(storage):
    """The saved runs of the platform saved last, oldest first (pytest-benchmark numbers them 0001_..., one
    folder per platform)."""
    runs = list(Path(storage).glob('*/[0-9][0-9][0-9][0-9]_*.json'))
    if not runs:
        return []
    folder = max(runs, key=lambda p: p.stat().st_mtime).parent
    return sorted(p for p in runs if p.parent == folder)


def normalized(run):
    """{benchmark name: its fastest round in units of the fastest calibration timed among its rounds}. Each minimum
    picks the round least disturbed by the rest of the machine, so their ratio holds under bursts of load (a
    per-round ratio would not: a calibration caught in a burst makes its round look fast)."""
    out = {}
    for b in run['benchmarks']:
        calibrations = (b.get('extra_info') or {}).get('calibration_s') or []
        if calibrations:
            out[b['fullname']] = b['stats']['min'] / min(calibrations)
    return out


def cpu(run):
    info = run.get('machine_info', {}).get('cpu', {})
    return info.get('brand_raw') or info.get('arch') or 'unknown CPU'


def compare(before, after, threshold):
    """(exit code, one line) for `after` against `before` (two loaded pytest-benchmark JSON runs)."""
    if cpu(before) != cpu(after):
        return 0, (f'speed: the saved run before this one was on another CPU ({cpu(before)}, now {cpu(after)}); '
                   f'nothing compared: the next run compares against this one')
    old, new = normalized(before), normalized(after)
    common = sorted(set(old) & set(new))
    if not common:
        return 0, 'speed: no benchmark in common with the saved run before this one; nothing compared'
    change = {name: new[name] / old[name] - 1 for name in common}
    slower = sorted((c, name) for name, c in change.items() if c * 100 > threshold)
    if slower:
        listed = ', '.join(f'{short(name)} +{c:.0%} ({old[name]:.3g} -> {new[name]:.3g} calibration units)'
                           for c, name in reversed(slower))
        return 1, f'speed: {len(slower)} of {len(common)} benchmarks regressed beyond {threshold:g}%: {listed}'
    worst = max(common, key=lambda name: change[name])
    return 0, (f'speed: no regression: {len(common)} benchmarks within {threshold:g}% of the saved run before this '
               f'one (largest change {change[worst]:+.0%}, {short(worst)})')


def short(fullname):
    return fullname.split('::')[-1]


def main(argv=None):
    args = parser().parse_args(argv)
    runs = saved_runs(args.storage)
    if not runs:
        print(f'error: no saved benchmark run under {args.storage}; run `make bench-regress`', file=sys.stderr)
        return 2
    if len(runs) == 1:
        print(f'speed: first saved run ({runs[0].name}); the next `make bench-regress` compares against it')
        return 0
    try:
        before, after = (json.loads(path.read_text()) for path in runs[-2:])
    except ValueError:
        print(f'error: a saved benchmark run under {args.storage} is not valid JSON ({runs[-2].name} or '
              f'{runs[-1].name}); delete it and run `make bench-regress` again', file=sys.stderr)
        return 2
    code, line = compare(before, after, args.threshold)
    print(line)
    return code


if __name__ == '__main__':
    sys.exit(main())
