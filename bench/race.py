"""Replay the advisor's race on an exhaustive tuned sweep's records: does it keep the sweep's winner among its
finalists? (bench/analysis/replay.py)

    python bench/race.py [--results reports/results.jsonl] [--experiment w7]
"""
import argparse
import sys

from bench.analysis.replay import replay, replay_table
from bench.declare import record
from bench.declare.config import RESULTS


def main(argv=None):
    p = argparse.ArgumentParser(description='Replay the advisor\'s race on an exhaustive tuned sweep\'s records: '
                                            'does it keep the sweep\'s winner among its finalists?')
    p.add_argument('--results', default=RESULTS)
    p.add_argument('--experiment', default='w7')
    args = p.parse_args(argv)
    replays = replay(record.read(args.results), args.experiment)
    if not replays:
        print(f'error: {args.results} has no tuned records of {args.experiment}', file=sys.stderr)
        return 2
    print(replay_table(replays))
    lost = [r.dataset for r in replays if not r.kept_winner]
    print(f'the race kept the exhaustive winner among its finalists on {len(replays) - len(lost)} of {len(replays)} '
          f'datasets' + (f'; lost it on {", ".join(lost)}' if lost else ''))
    return 1 if lost else 0


if __name__ == '__main__':
    sys.exit(main())
