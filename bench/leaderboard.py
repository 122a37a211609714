"""Render reports/leaderboard.md (and reports/figures/) from the records, deterministically: the same records give
the same bytes. Never trains, imports no torch; never edit its output by hand.

    python bench/leaderboard.py [--results reports/results.jsonl] [--out reports/leaderboard.md]   # make leaderboard
"""
import argparse
import sys
from pathlib import Path

from bench.declare.config import RESULTS
from bench.report.leaderboard import render_file


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--results', default=RESULTS, help='records to render (default: %(default)s)')
    p.add_argument('--out', default=None, help='markdown file (default: leaderboard.md beside --results)')
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if not Path(args.results).exists():
        print(f'error: no results file at {args.results}; run a bench script first or pass --results', file=sys.stderr)
        return 2
    print(f'leaderboard: {render_file(args.results, args.out)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
