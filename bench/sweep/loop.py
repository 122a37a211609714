"""The one loop every sweep runs: a policy proposes runs from the records it has seen, the executor runs them, the
driver records them (bench/sweep/executor.py: skipping what is recorded, appending as each finishes), and the policy
proposes again from what came back, until it proposes nothing new; its decision is then read from the same records.

A policy is two functions of records, nothing else: `propose(seen)`, the jobs it wants next given every record of
this sweep so far (its own earlier proposals' included, latest per run), and `decide(records)`, what the records
say (the chosen LR, the best trial, the finalists); `settle(seen)`, where a policy has it, follows each round with
what is done with the decisions made so far (the weights a decided grid keeps, deleted; a line said). Because both read records alone, a sweep resumes after Ctrl-C
where it stopped, runs the same on every executor, and the leaderboard re-derives every decision with the function
the sweep used. Plain runs (`Runs`), tuning (bench/sweep/tune.py), the search (bench/sweep/search.py) and the
advisor's race (bench/sweep/race.py) are policies; W8's regimes are tuning over each regime's configs.
"""
from dataclasses import dataclass, field

from bench.sweep.executor import Outcome, sweep


@dataclass
class Runs:
    """Plain runs: every job once."""
    jobs: list

    def propose(self, seen):
        return self.jobs

    def decide(self, records):
        return records


@dataclass
class Sweep:
    """Where and how a sweep's runs happen and are recorded."""
    where: object                 # a started executor (bench/sweep/executor.py)
    results: str                  # the records file
    force: bool = False           # rerun what is recorded, once each in this sweep
    log: object = print
    after: object = None          # after(job, record) as each run is recorded (a progress bar)
    begin: object = None          # begin(jobs) before each round (a progress bar's stage)
    outcome: Outcome = field(default_factory=Outcome)


def drive(policy, how):
    """Rounds of `policy.propose(seen)` and the runs it asks for, until it asks for nothing it has not had; returns the
    records seen (latest per run) and updates `how.outcome` (what ran, was skipped, failed). A job runs at most once
    per drive, whatever the policy asks: a policy that keeps asking for a run that fails cannot loop."""
    seen, done = {}, set()
    while True:
        jobs = [job for job in policy.propose(list(seen.values()))
                if (job.key(how.where.hardware.name), job.test_only) not in done]
        if not jobs:
            return list(seen.values())
        done |= {(job.key(how.where.hardware.name), job.test_only) for job in jobs}
        if how.begin is not None:
            how.begin(jobs)
        outcome = sweep(jobs, how.where, how.results, force=how.force, log=how.log, after=how.after)
        how.outcome.ran += outcome.ran
        how.outcome.skipped += outcome.skipped
        how.outcome.failed += outcome.failed
        how.outcome.records += outcome.records
        how.log(f'{outcome.ran} ran, {outcome.skipped} already recorded, {len(outcome.failed)} failed; records in '
                f'{how.results}')
        for rec in outcome.records:  # a later error (a test pass that failed) does not hide the run's record
            if rec['error'] is None or seen.get(rec['key'], rec)['error'] is not None:
                seen[rec['key']] = rec
        settle = getattr(policy, 'settle', None)
        if settle is not None:
            settle(list(seen.values()))