"""The advisor's race (bench/sweep/race.py) replayed on an exhaustive tuned sweep's records: with the race's own
rules, which candidates each rung would have kept, the finalists, and whether the sweep's winner is among them.
Exact where the sweep's validation curves have a point at each rung's step (a rung's run is the whole run's prefix).
Imports no torch.
"""
import math
from dataclasses import dataclass

from bench.analysis import stats
from bench.declare import record
from bench.declare.config import steps_at, steps_per_epoch
from bench.declare.datasets import BY_FIELD
from bench.sweep.race import SEEDS, candidate_of, finalists, rungs, survivors


@dataclass
class Replay:
    dataset: str
    backbone: str
    device: str
    winner: str                   # the exhaustive sweep's best strategy (seeds at tuned LRs, test)
    tied: list                    # strategies the sweep cannot tell from the winner (paired interval includes 0)
    finalists: list               # the race's, best first
    rungs: list                   # candidates at each rung
    seconds: float                # what the replayed race and its finals would have trained and evaluated
    exhaustive_s: float           # the sweep's grid and seed runs
    exact: bool                   # every rung's score is a curve point where the rung stops (else the one before)

    @property
    def kept_winner(self):
        return self.winner in [c.strategy for c in self.finalists]


def score_at(rec, share, metric):
    """(the validation score a run stopped at `share` of its steps would have had, whether exactly): the whole run's
    curve point there, or (a run of earlier code, with points elsewhere) its last point before it."""
    if share >= 1:
        return rec.get(metric), True
    per_epoch = steps_per_epoch(rec['train_images'], rec['config']['bs'])
    at = steps_at(share, rec['config']['epochs'], per_epoch) / per_epoch
    before = [p for p in rec.get('valid_curve') or [] if p['epoch'] <= at + 1e-6]
    if not before:
        return None, False
    return before[-1].get(metric), math.isclose(before[-1]['epoch'], at, abs_tol=1e-6)


def replay(records, experiment):
    """The race on each dataset of `experiment`'s tuned sweep, from its grid runs at the first seed (the grids'
    first three points: an extension past an edge is the sweep's, not the race's)."""
    ok, _ = stats.latest_per_run([r for r in records if r['experiment'] == experiment])
    out = []
    for table in stats.tables(ok):
        if not table.tuned:
            continue
        grid = [r for r in ok if r.get('tune', {}).get('role') == 'grid' and stats.dataset_name(r) == table.dataset
                and stats.hardware_key(r) == (table.device, table.profile)
                and r['config'][r['tune']['field']] in r['tune']['grid']]
        for backbone in sorted({r['backbone'] for r in grid}):
            runs = record.latest([r for r in grid if r['backbone'] == backbone and r['seed'] == 0], by=candidate_of)
            metric = BY_FIELD[table.metric].valid
            alive, seen, seconds, exact = list(runs), [], 0., True
            for share in rungs(next(iter(runs.values()))['config']['epochs']):
                seen.append(alive)
                scored = {c: score_at(runs[c], share, metric) for c in alive}
                exact &= all(e for _, e in scored.values())
                scores = {c: s for c, (s, _) in scored.items()}
                seconds += sum(share * runs[c]['train_seconds'] + runs[c]['eval_seconds'] * share for c in alive)
                alive = finalists(scores, runs[alive[0]]['valid_images']) if share == 1 else survivors(scores)
            seconds += (SEEDS - 1) * stats.seconds_spent([runs[c] for c in alive])  # the finalists' other seeds
            rows = [row for row in table.rows if row.records[0]['backbone'] == backbone]
            best = rows[0]
            tied = [row.records[0]['strategy'] for row in rows[1:] if stats.verdict(row, best, table.metric)[0] == 'tied']
            swept = [r for r in ok if stats.dataset_name(r) == table.dataset and r.get('tune')
                     and r['backbone'] == backbone and stats.hardware_key(r) == (table.device, table.profile)]
            spent = stats.seconds_spent(record.latest(swept, by=lambda r: (
                r['strategy'], r['seed'], r['config'].get('lr'), r['config'].get('head_lr'))).values())
            out.append(Replay(table.dataset, backbone, table.device, best.records[0]['strategy'], tied, alive, seen,
                              seconds, spent, exact))
    return out


def replay_table(replays):
    from tabulate import tabulate
    rows = [[r.dataset, r.backbone, r.winner, ', '.join(r.tied) or '-', ', '.join(str(c) for c in r.finalists),
             'yes' if r.kept_winner else '**no**', ' → '.join(str(len(x)) for x in r.rungs) +
             ('' if r.exact else ' (approximate: scores at earlier points)'),
             f'{r.seconds / 60:.1f} ({r.exhaustive_s / 60:.1f})'] for r in replays]
    return tabulate(rows, headers=['dataset', 'backbone', 'exhaustive best', 'tied with it', 'race finalists',
                                   'winner kept', 'candidates per rung', 'race and finals, min (the sweep\'s)'],
                    tablefmt='github', disable_numparse=True)
