"""The pool executor: runs side by side on this machine's CPU cores, one worker process per slot.

    python bench/finetune.py --preset w7 --seeds 3 --cluster pool          # as many runs at once as cores
    python bench/finetune.py --preset w7 --cluster pool --cpus-per-run 2   # runs of two threads each

On a CPU, small runs use two cores better as two single-threaded runs side by side than as one run with two
threads: a run's host work (Python, fastai's callbacks, the optimizer's dispatch) is serial, and the small kernels of
a 96 px model scale poorly past one thread (the README's Speed section has the measurement). Each worker is a
process of its own, forked from a server process that imported torch, fastai and timm once (multiprocessing's
forkserver, bench/sweep/preload.py): it starts in a fraction of a second, a replacement too, with torch's thread
pools never started and none of the driver's memory; it runs in the driver's environment as it is when the pool
starts it. It has `--cpus-per-run` torch threads for every run it does, whether or not its neighbours are busy, so
that every run of a sweep trains under the same conditions and its training clock measures its own run; the record
says how many runs shared the machine (`side_by_side`) and with how many threads each ran. Workers map the decoded
images from the data cache (the page cache holds them once), run jobs one after another (bench.train.runner.work)
and return plain values; the driver records. A worker that dies mid-run (killed, out of memory) is an error row
naming it, a new one takes its place and the sweep goes on.
Workers ignore Ctrl-C: the driver stops them, keeps every finished record and exits, as it does alone.
"""
import multiprocessing
import os
import signal
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path

from bench.declare import record
from bench.declare.config import UsageError


def serve(conn, threads, images, side_by_side, environ):
    """A worker's life: the driver's environment, the images, then one job after another until the driver closes
    the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it terminates us
    os.environ.clear()
    os.environ.update(environ)  # the server's was the driver's when the server started
    import torch

    from bench.images import data
    from bench.train import memory, runner
    torch.set_num_threads(threads)
    memory.SIDE_BY_SIDE = side_by_side  # each run plans with its share of the machine's free memory
    if isinstance(images, str):
        images = data.read_cache(Path(images))
    conn.send(record.environment('cpu'))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        conn.send(runner.work(job, images, bar=False, log=lambda line: None))


class PoolExecutor:
    """Runs jobs in `slots` worker processes on this machine, each with `threads` torch threads."""
    def __init__(self, cpus_per_run=None, log=print):
        self.threads = max(1, int(cpus_per_run or 1))
        cores = os.cpu_count() or 1
        if self.threads > cores:
            raise UsageError(f'--cpus-per-run {self.threads} asks for more than this machine\'s {cores} cores')
        self.slots = cores // self.threads
        self.hardware = record.hardware('cpu')
        self.log, self.images, self.workers = log, None, []

    def start(self, images, bar=False, log=None):
        """Workers map the cache folder the images came from (or are sent the images, where they are held in
        memory: tests' synthetic data)."""
        self.log = log or self.log
        self.close()
        self.images = images.folder or images
        return self

    def spawn(self, n):
        """`n` more workers, forked from the fork server (started by the first, which waits for its imports), then
        waited for: one that cannot start stops the sweep with what it said."""
        context = multiprocessing.get_context('forkserver')
        context.set_forkserver_preload(['bench.sweep.preload'])  # read when the server starts: once per process
        new = []
        for _ in range(n):
            parent, child = context.Pipe()
            process = context.Process(target=serve, args=(child, self.threads, self.images, self.size,
                                                          dict(os.environ)), daemon=True)
            process.start()
            child.close()
            new.append(Worker(process, parent))
        self.workers += new
        for worker in new:
            try:
                worker.env = worker.conn.recv()
            except EOFError:
                self.close()
                raise RuntimeError(f'a pool worker could not start (exit code {worker.process.exitcode}); its error '
                                   f'is above') from None

    def run(self, jobs):
        """(job, result) as each finishes, in any order; a lost worker's job gets an error result, never a rerun."""
        if not jobs:
            return
        self.size = max(len(self.workers), min(self.slots, len(jobs)))  # an idle worker waits for the next sweep
        self.spawn(self.size - len(self.workers))
        self.log(f'pool: {min(self.size, len(jobs))} run{"s" * (min(self.size, len(jobs)) != 1)} at a time, {self.threads} thread'
                 f'{"s" * (self.threads != 1)} each, on {self.hardware.name}')
        pending, idle, together = deque(jobs), list(self.workers), Overlap()
        while pending or len(idle) < len(self.workers):
            while pending and idle:
                worker = idle.pop()
                worker.give(pending.popleft(), record.now())
                together.start(worker)
                self.log(f'pool: {worker.job.describe()} -> worker pid {worker.process.pid}')
            busy = [w for w in self.workers if w.job is not None]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in [w for w in busy if w.conn in ready or w.process.sentinel in ready]:
                job, started = worker.job, worker.started
                try:
                    result = worker.take()
                    idle.append(worker)
                except (EOFError, OSError):
                    worker.process.join(1)
                    result = dict(started_at=started, env=record.environment('cpu'),
                                  error=f'worker lost (pid {worker.process.pid}, exit code {worker.process.exitcode})')
                    self.workers.remove(worker)
                    self.log(f'pool: worker {worker.process.pid} lost' + ('; starting another' if pending else ''))
                    if pending:
                        self.spawn(1)
                        idle.append(self.workers[-1])
                if 'results' in result:
                    result['results']['side_by_side'] = together.finish(worker)
                else:
                    together.finish(worker)
                yield job, result

    def close(self):
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Worker:
    """One worker process, its pipe, and the job it is running (None: idle)."""
    def __init__(self, process, conn):
        self.process, self.conn, self.job, self.started, self.env = process, conn, None, None, None

    def give(self, job, started):
        self.job, self.started = job, started
        self.conn.send(job)

    def take(self):
        """The finished job's result."""
        message = self.conn.recv()
        self.job = None
        return message

    def stop(self):
        """An idle worker leaves when its pipe closes; a busy one (Ctrl-C mid-run) is ended: its run is lost."""
        self.conn.close()
        self.process.join(timeout=5 if self.job is None else 0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


class Overlap:
    """How many runs shared a machine with each: the most running at once on its node at any moment of its run."""
    def __init__(self):
        self.running = {}  # token -> [its node, the most runs seen at once there while it ran]

    def start(self, token, node=''):
        self.running[token] = [node, 0]
        there = [t for t, (n, _) in self.running.items() if n == node]
        for t in there:
            self.running[t][1] = max(self.running[t][1], len(there))

    def finish(self, token):
        return self.running.pop(token)[1]
