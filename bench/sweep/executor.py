"""Running a list of configurations: the driver (`sweep`) and where the runs happen (an executor).

The driver is the only writer of the results file. It skips runs already recorded (on this hardware), hands the
rest to an executor, and appends one record per run as each finishes, in whatever order they finish. A worker
returns plain values: result fields and its environment, or an error message; a failed run becomes an error row
and the sweep goes on. Ctrl-C stops the sweep and keeps every record already appended.

Executors (`make_executor`):
- `local`: runs here, one after another, in this process; never imports Ray.
- `pool`: runs side by side in worker processes on this machine's CPU cores (bench/sweep/pool.py); `auto`, the default,
  is `pool` on a CPU of two cores or more and `local` elsewhere.
- `ray`, `ray:auto`, `ray:HOST:PORT`: Ray actors, one per GPU or per few cores, on a private local cluster or a
  running one (bench/sweep/cluster.py).
"""
from dataclasses import dataclass, field
from typing import Optional

from bench.declare import record
from bench.declare.config import Config, UsageError


@dataclass(frozen=True)
class Job:
    """One run: its resolved config, and for a search how it is scored and what the record also holds."""
    cfg: Config
    folds: int = 0                    # > 1: score by K-fold CV over train + valid, no test (search trials)
    test: bool = True                 # evaluate the test set once at the end
    extra: Optional[dict] = None      # stored in the record (search bookkeeping)
    identity: Optional[dict] = None   # beside config and hardware, what makes it a run (default: extra)
    keep: bool = False                # keep the trained weights, so that the test can be scored later
    test_only: bool = False           # score the test split of this recorded run from its kept weights (where
                                      # none are kept, the run is trained again, tested)

    @property
    def tests(self):
        return self.test or self.test_only

    def key(self, device_name):
        return record.run_key(self.cfg.to_dict(), self.extra if self.identity is None else self.identity,
                              device_name)

    def describe(self):
        c = self.cfg
        return ' '.join(str(x) for x in (c.experiment, c.backbone, c.strategy, c.variant, f'seed {c.seed}') if x)


@dataclass
class Outcome:
    """What a sweep did: how many ran, were skipped, failed, and every job's record (new or earlier)."""
    ran: int = 0
    skipped: int = 0
    failed: list = field(default_factory=list)
    records: list = field(default_factory=list)   # every job's record, the earlier one for a skipped job


def sweep(jobs, executor, results_path, force=False, log=print, after=None):
    """Run every job not already recorded on the executor's hardware, appending a record as each finishes;
    `after(job, record)` then, if given (a progress bar). A job that asks for a test is done only where its record
    has one; a test-only job's record is its run's record with the test scores added."""
    done, outcome, todo = record.done(results_path), Outcome(), []
    code_version = record.git_sha()
    for job in jobs:
        key = job.key(executor.hardware.name)
        if key in done and not force and (record.tested(done[key]) or not job.tests):
            outcome.skipped += 1
            outcome.records.append(done[key])
            log(f'skip (already recorded): {job.describe()}')
        else:
            todo.append(job)
    for i, (job, result) in enumerate(executor.run(todo), 1):
        # the key names the hardware the run really landed on (the same as planned, unless a cluster is mixed)
        key = job.key(result['env']['device_name'])
        res = result.get('results')
        if job.test_only and key in done and res and set(res) < set(record.RESULT_FIELDS):
            rec = record.with_test(done[key], res)
        else:
            rec = record.make(job.cfg, key, result['started_at'], result['env'], code_version, res,
                              result.get('error'), job.extra)
        record.append(results_path, rec)
        if job.test_only and not rec['error']:
            record.checkpoint_path(key).unlink(missing_ok=True)
        outcome.ran += 1
        outcome.records.append(rec)
        if rec['error']:
            outcome.failed.append(rec)
            log(f'[{i}/{len(todo)}] {job.describe()}: error: {rec["error"]}')
        else:
            log(f'[{i}/{len(todo)}] {job.describe()}: ' + summary(rec))
        if after is not None:
            after(job, rec)
    return outcome


def summary(rec):
    score = f'test acc {rec["test_acc"]:.4f}' if rec.get('test_acc') is not None else f'valid acc {rec["valid_acc"]:.4f}'
    return f'{score}  train {rec["train_seconds"]:.1f} s  {rec["images_per_second"] or 0:.0f} img/s'


class LocalExecutor:
    """Runs jobs one after another in this process, on this machine's hardware."""
    slots = 1  # runs at a time

    def __init__(self):
        import torch
        self.hardware = record.hardware()
        self.threads = torch.get_num_threads()  # each run's
        self.images = None

    def start(self, images, bar=False, log=print):
        self.images, self.bar, self.log = images, bar, log
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, jobs):
        from bench.train import runner
        for i, job in enumerate(jobs, 1):
            self.log(f'run {i}/{len(jobs)}: {job.describe()}')
            result = runner.work(job, self.images, bar=self.bar, log=self.log)
            if 'results' in result:
                result['results']['side_by_side'] = 1
            yield job, result

    def close(self):
        pass


def make_executor(spec, gpus_per_run=None, cpus_per_run=None):
    """The executor `--cluster` names: auto (pool on a CPU with two cores or more, else local), local, pool (runs side
    by side on this machine's cores), ray (a private local cluster), ray:auto or ray:HOST:PORT."""
    if spec in (None, 'auto'):
        spec = auto_cluster()
    if spec == 'local':
        if gpus_per_run is not None or cpus_per_run is not None:
            raise UsageError('--gpus-per-run and --cpus-per-run apply to --cluster pool or ray only')
        return LocalExecutor()
    if spec == 'pool':
        if gpus_per_run is not None:
            raise UsageError('--gpus-per-run applies to --cluster ray only; a pool runs on this machine\'s CPU cores')
        from bench.sweep.pool import PoolExecutor
        return PoolExecutor(cpus_per_run)
    if spec == 'ray' or spec.startswith('ray:'):
        from bench.sweep import cluster
        return cluster.RayExecutor(spec.partition(':')[2] or None, gpus_per_run, cpus_per_run)
    raise UsageError(f'unknown --cluster {spec!r}; choose auto, local, pool, ray, ray:auto or ray:HOST:PORT')


def auto_cluster():
    """`--cluster auto`: runs side by side on a CPU of two cores or more (faster than one run on every core: the
    README's Speed section), one at a time in this process where there is a GPU or a single core."""
    import os

    import torch
    return 'pool' if not torch.cuda.is_available() and (os.cpu_count() or 1) >= 2 else 'local'
