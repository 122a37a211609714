"""Did the harness get slower? Compares the newest saved pytest-benchmark run with the runs before it, confirms what
looks slower by timing it again, and says so in one line.

    python bench/tools/regress.py [--storage .benchmarks] [--floor 10] [--tests tests/benchmarks] [--no-confirm]
                                                                          # what `make bench-regress` ends with

Raw seconds move with whatever else a shared machine is doing (medians of identical runs moved by up to 35% on the
project's 2-core VM). So every benchmark round is preceded by a fixed calibration workload, timed off the clock
(tests/benchmarks/conftest.py), and a benchmark's speed is its fastest round in units of the fastest calibration
among its rounds (its normalized time): a slower machine slows both, a slower harness only the benchmark.

- **Against what**: the median normalized time of the saved runs before the newest (up to BASELINE_RUNS of them, on
  the same CPU model; runs of other CPUs are never compared).
- **Each benchmark's own threshold**: NOISE_MULT times its measured noise, never below --floor percent. Its noise is
  how far its normalized time strays over the saved runs (the median absolute deviation from their median, relative
  to it), once there are MIN_HISTORY of them; before that, how far its rounds stray within a run (each round over
  the calibration just before it: the spread between the fastest rounds).
- **Confirmation**: a benchmark past its threshold is timed again at once (pytest on it alone), and only one slower in
  both passes is a regression; the faster pass counts, since other work on the machine only ever slows a round.

Prints one line; exits 1 if anything regressed, else 0.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BASELINE_RUNS = 5   # saved runs the newest is compared with, at most (their median)
MIN_HISTORY = 3     # saved runs before the newest from which a benchmark's noise is measured across runs
NOISE_MULT = 3      # a benchmark is slower when its normalized time grew by more than this many times its noise
REPO = Path(__file__).resolve().parents[2]


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--storage', default='.benchmarks', help='pytest-benchmark storage folder (default: %(default)s)')
    p.add_argument('--floor', type=float, default=10.0,
                   help='the smallest threshold, in percent, whatever the noise (default: %(default)s)')
    p.add_argument('--tests', default=str(REPO / 'tests' / 'benchmarks'),
                   help='the benchmarks, for the confirmation pass (default: tests/benchmarks)')
    p.add_argument('--no-confirm', action='store_true', help='no confirmation pass: the first one decides')
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


def round_noise(run):
    """{benchmark name: how far its fast rounds stray within the run}: each round over the calibration before it,
    the relative gap between the fastest and the median of the faster half (what a rerun's fastest round may land
    on), where the run kept its rounds' times."""
    out = {}
    for b in run['benchmarks']:
        info = b.get('extra_info') or {}
        rounds, calibrations = info.get('round_s') or [], info.get('calibration_s') or []
        if len(rounds) >= 4 and len(rounds) == len(calibrations):
            ratios = sorted(t / c for t, c in zip(rounds, calibrations))
            out[b['fullname']] = statistics.median(ratios[:len(ratios) // 2]) / ratios[0] - 1
    return out


def cpu(run):
    info = run.get('machine_info', {}).get('cpu', {})
    return info.get('brand_raw') or info.get('arch') or 'unknown CPU'


def thresholds(history, newest, floor):
    """{benchmark name: the growth (a fraction) past which it counts as slower}: NOISE_MULT times its noise (across
    `history`, the saved runs before `newest`, once there are MIN_HISTORY; else within `newest`'s rounds), at least
    `floor`."""
    values = [normalized(run) for run in history]
    within = round_noise(newest)
    out = {}
    for name in normalized(newest):
        seen = [v[name] for v in values if name in v]
        if len(seen) >= MIN_HISTORY:
            mid = statistics.median(seen)
            noise = statistics.median(abs(x - mid) for x in seen) / mid
        else:
            noise = within.get(name, 0.)
        out[name] = max(floor, NOISE_MULT * noise)
    return out


def growth(history, new):
    """{name: (the newest normalized time over the median of `history`'s) - 1} for the benchmarks in both."""
    base = {}
    for run in history:
        for name, value in normalized(run).items():
            base.setdefault(name, []).append(value)
    return {name: value / statistics.median(base[name]) - 1 for name, value in new.items() if name in base}


def compare(runs, floor, confirm=None):
    """(exit code, one line) for the newest of `runs` (loaded pytest-benchmark JSON runs, oldest first) against the
    ones before it on the same CPU. `confirm(names)`: a second run of just those benchmarks (None: none)."""
    newest = runs[-1]
    history = [r for r in runs[:-1] if cpu(r) == cpu(newest)][-BASELINE_RUNS:]
    if not history:
        return 0, (f'speed: the saved run before this one was on another CPU ({cpu(runs[-2])}, now {cpu(newest)}); '
                   f'nothing compared: the next run compares against this one')
    limit, new = thresholds(history, newest, floor), normalized(newest)
    change = growth(history, new)
    if not change:
        return 0, 'speed: no benchmark in common with the saved runs before this one; nothing compared'
    suspects = sorted(name for name, g in change.items() if g > limit[name])
    if suspects and confirm is not None:  # the faster of the two passes counts
        again = normalized(confirm(suspects))
        change = growth(history, {name: min(v, again.get(name, v)) for name, v in new.items()})
    regressed = sorted((name for name in suspects if change[name] > limit[name]), key=lambda n: -change[n])
    if regressed:
        listed = ', '.join(f'{short(name)} +{change[name]:.0%} (threshold {limit[name]:.0%})' for name in regressed)
        how = ' in both passes' if confirm is not None else ''
        return 1, f'speed: {len(regressed)} of {len(change)} benchmarks regressed{how}: {listed}'
    worst = max(change, key=change.get)
    cleared = f'; {len(suspects)} looked slower and, timed again, were not' if suspects else ''
    return 0, (f'speed: no regression: {len(change)} benchmarks within their thresholds '
               f'({min(limit[n] for n in change):.0%}-{max(limit[n] for n in change):.0%}) of the median of the '
               f'{len(history)} saved run{"s" * (len(history) != 1)} before this one (largest change '
               f'{change[worst]:+.0%}, {short(worst)}){cleared}')


def rerun(tests):
    """A confirmation pass: pytest on just the named benchmarks, its JSON run loaded (not saved among the runs)."""
    def run(names):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / 'again.json'
            selected = ' or '.join(short(name).split('[')[0] for name in names)
            done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', str(tests), '-k',
                                   selected, '--benchmark-only', '--benchmark-json', str(out)],
                                  cwd=Path(tests).parent if Path(tests).is_file() else REPO, capture_output=True,
                                  text=True)
            if done.returncode != 0 or not out.is_file():
                raise RuntimeError(f'the confirmation pass failed: {done.stdout[-500:]}{done.stderr[-500:]}')
            return json.loads(out.read_text())
    return run


def short(fullname):
    return fullname.split('::')[-1]


def main(argv=None):
    args = parser().parse_args(argv)
    paths = saved_runs(args.storage)
    if not paths:
        print(f'error: no saved benchmark run under {args.storage}; run `make bench-regress`', file=sys.stderr)
        return 2
    if len(paths) == 1:
        print(f'speed: first saved run ({paths[0].name}); the next `make bench-regress` compares against it')
        return 0
    try:
        runs = [json.loads(path.read_text()) for path in paths]
    except ValueError:
        print(f'error: a saved benchmark run under {args.storage} is not valid JSON (of {", ".join(p.name for p in paths)}'
              f'); delete it and run `make bench-regress` again', file=sys.stderr)
        return 2
    code, line = compare(runs, args.floor / 100, None if args.no_confirm else rerun(args.tests))
    print(line)
    return code


if __name__ == '__main__':
    sys.exit(main())
