"""Does a profile's ranking hold at twice its budget? Compares the records of a budget B and of 2B, experiment by
experiment: how the cpu profile was sized (README, "The cpu profile").

    python bench/tools/stability.py B.jsonl 2B.jsonl       # e.g. make bench, then the same with --subset doubled

Tables are matched as the leaderboard draws them: one experiment on one hardware and one dataset (B's file may hold
other machines' records too). For every pair of rows (configurations, matched by their label) that both tables hold,
the paired t interval of their difference in the dataset's declared metric (top-1; mean per-class accuracy for
Caltech-101) is computed at each budget. The ranking holds if no pair whose interval excludes 0 at both budgets
changes order; a pair tied at either budget may move. Prints both tables and the verdict per table; exits 1 if any
ranking breaks, 2 if a file is missing or the two share no table.
"""
import argparse
import itertools
import sys
from pathlib import Path

from tabulate import tabulate

from bench.analysis import stats
from bench.declare import record


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('budget', help='records made at the profile\'s budget B')
    p.add_argument('double', help='records made at twice the budget (2B)')
    return p


def label(rec):
    s = rec.get('search')
    if s:
        return f'{s["kind"]} search'
    return ' '.join(str(x) for x in (rec['backbone'], rec['strategy'], rec.get('variant')) if x)


def tables_by_key(path):
    """{(experiment, hardware, dataset): Table} of the successful records (search refits stand for their search)."""
    ok, _ = stats.latest_per_run(record.read(path))
    ok = [r for r in ok if (r.get('search') or {}).get('role', 'refit') == 'refit']
    return {(t.experiment, t.device, t.dataset): t for t in stats.tables(ok, label=label)}


def separated(a, b, metric='test_acc'):
    """+1 if `a` beats `b` in `metric` (paired 95% interval above 0), -1 if below, 0 if tied or too few seeds."""
    iv, _ = stats.paired_difference(a, b, metric)
    if iv is None or iv.includes_zero:
        return 0
    return 1 if iv.mean > 0 else -1


def compare(budget, double, metric='test_acc'):
    """(lines, broken) for one table's rows at B and 2B ({label: Row} each), compared in `metric`."""
    labels = sorted(set(budget) & set(double), key=lambda k: -budget[k].mean(metric))
    name = stats.words(metric)
    table = [[k, budget[k].n, f'{budget[k].mean(metric) * 100:.2f}', double[k].n,
              f'{double[k].mean(metric) * 100:.2f}'] for k in labels]
    lines = [tabulate(table, headers=['row', 'n (B)', f'{name} % (B)', 'n (2B)', f'{name} % (2B)'],
                      tablefmt='github', disable_numparse=True), '']
    both, broken = 0, []
    for a, b in itertools.combinations(labels, 2):
        at_b, at_2b = separated(budget[a], budget[b], metric), separated(double[a], double[b], metric)
        if at_b and at_2b:
            both += 1
            if at_b != at_2b:
                broken.append(f'{a} vs {b}: {"ahead" if at_b > 0 else "behind"} at B, '
                              f'{"ahead" if at_2b > 0 else "behind"} at 2B')
    if broken:
        lines += ['The ranking breaks:', *[f'- {x}' for x in broken]]
    else:
        pairs = len(labels) * (len(labels) - 1) // 2
        lines += [f'The ranking holds: {both} of {pairs} {"pair" if pairs == 1 else "pairs"} separated at both '
                  f'budgets, none of them changing order.']
    return lines, bool(broken)


def main(argv=None):
    args = parser().parse_args(argv)
    missing = [path for path in (args.budget, args.double) if not Path(path).is_file()]
    if missing:
        print(f'error: no results file at {missing[0]}', file=sys.stderr)
        return 2
    budget, double = tables_by_key(args.budget), tables_by_key(args.double)
    common = sorted(set(budget) & set(double))
    if not common:
        print(f'error: {args.budget} and {args.double} hold no experiment in common with successful runs on the same '
              f'hardware and dataset; nothing to compare', file=sys.stderr)
        return 2
    broken = False
    for key in common:
        exp, device, dataset = key
        metric = budget[key].metric
        lines, bad = compare({r.label: r for r in budget[key].rows}, {r.label: r for r in double[key].rows}, metric)
        print(f'## {exp} · {dataset or "?"} · {device}, by {stats.words(metric)}\n\n'
              + '\n'.join(lines) + '\n')
        broken |= bad
    return 1 if broken else 0


if __name__ == '__main__':
    sys.exit(main())
