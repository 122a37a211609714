"""The one sweep loop (bench/sweep/loop.py): a policy proposes runs from the records it has seen, the loop runs and
records them, and asks again; the same loop runs tuning, the search and the race."""
from dataclasses import dataclass, replace

from bench.declare import record
from bench.sweep.executor import Job, LocalExecutor
from bench.sweep.loop import Runs, Sweep, drive
from tests.helpers import tiny_config


@dataclass
class Doubling:
    """A small policy: seed 0 first; then, from its record, one more seed for every run that scored below `bar` on
    validation, up to `most` seeds; then nothing. It proposes its first run again every round (the loop runs it once)."""
    cfg: object
    bar: float
    most: int = 3

    def propose(self, seen):
        jobs = [Job(self.cfg)]
        below = [r for r in seen if r['error'] is None and r['valid_acc'] < self.bar]
        if seen and len(seen) < self.most and len(below) == len(seen):
            jobs.append(Job(replace(self.cfg, seed=len(seen))))
        return jobs

    def decide(self, records):
        return max(r['valid_acc'] for r in records)


def test_a_policy_proposes_from_the_records_it_has_seen_and_the_loop_runs_each_job_once(images, tmp_path):
    cfg = tiny_config(dataset=images.key)
    results = tmp_path / 'r.jsonl'
    rounds = []
    how = Sweep(LocalExecutor().start(images, log=lambda line: None), results, log=lambda line: None,
                begin=lambda jobs: rounds.append([j.cfg.seed for j in jobs]))
    seen = drive(Doubling(cfg, bar=2.0), how)  # no run reaches 200%: a new seed each round, up to three
    assert rounds == [[0], [1], [2]] and sorted(r['seed'] for r in seen) == [0, 1, 2]
    assert how.outcome.ran == 3 and len(record.read(results)) == 3
    again = Sweep(LocalExecutor().start(images, log=lambda line: None), results, log=lambda line: None)
    assert len(drive(Doubling(cfg, bar=2.0), again)) == 3 and again.outcome.ran == 0  # resumed: all recorded
    stopped = Sweep(LocalExecutor().start(images, log=lambda line: None), tmp_path / 's.jsonl', log=lambda line: None)
    assert len(drive(Doubling(cfg, bar=-1.0), stopped)) == 1  # the first run is good enough: no second round
    assert Doubling(cfg, bar=-1.0).decide(seen) == max(r['valid_acc'] for r in seen)


def test_plain_runs_are_the_one_round_policy(images, tmp_path):
    cfg = tiny_config(dataset=images.key)
    how = Sweep(LocalExecutor().start(images, log=lambda line: None), tmp_path / 'r.jsonl', log=lambda line: None)
    seen = drive(Runs([Job(replace(cfg, seed=s)) for s in range(2)]), how)
    assert sorted(r['seed'] for r in seen) == [0, 1] and how.outcome.ran == 2
