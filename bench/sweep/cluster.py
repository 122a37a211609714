"""The Ray executor: runs spread over every GPU (or every few cores) of one machine or a cluster.

    python bench/finetune.py --preset w1 --seeds 3 --cluster ray          # a private Ray on this machine
    python bench/search.py --random 12 --cluster ray:auto                  # join the running cluster ($RAY_ADDRESS)
    python bench/finetune.py --preset w1 --cluster ray:10.0.0.1:6379 --gpus-per-run 1

One Ray actor per slot (a slot is --gpus-per-run GPUs, or --cpus-per-run cores where the cluster has no GPUs; no
more actors than runs) runs jobs one after another: it imports torch, fastai and timm once, holds the images (put in
Ray's object store once by the driver, read zero-copy by every actor of a node) and sets torch's threads to its
cores. The actors start together; the first to answer says what hardware the runs land on, so `auto` is resolved for
it. Ray gives each actor its own CUDA_VISIBLE_DEVICES. An actor returns plain values (bench.train.runner.work) and never
writes a file: the driver records. Tasks are never retried (a run killed mid-way would otherwise be run and recorded
again): an actor that dies mid-run (killed, out of memory, its node lost) becomes an error row naming it, a new
actor takes its place, and the sweep goes on. Workers run the driver's code (shipped as py_modules).
"""
import logging
import os
import socket
import tempfile
from collections import deque
from pathlib import Path

import numpy as np

from bench.declare import record
from bench.declare.config import UsageError
from bench.sweep.pool import Overlap

START_TIMEOUT_S = float(os.environ.get('FTBENCH_RAY_START_TIMEOUT', 300))  # a worker that cannot start, say so
PACKAGES = [str(Path(__file__).resolve().parents[2] / name) for name in ('bench', 'backbones')]
ENV_PASSED = ('FTBENCH_WEIGHTS', 'FTBENCH_CACHE', 'HF_HUB_OFFLINE', 'HF_HOME', 'TORCH_HOME')


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--cluster ray needs Ray, which is not installed: pip install -e '.[ray]' "
                         "(make setup installs it)") from None
    return ray


class Worker:
    """One slot's process: the images, and jobs run one after another (bench.train.runner.work)."""
    def __init__(self, threads):
        import torch
        torch.set_num_threads(max(1, int(threads)))
        self.images = None

    def describe(self):
        """Where this actor runs: its node, process and GPUs, and the hardware and library versions it reports."""
        import ray
        hardware = record.hardware()
        return dict(ip=ray.util.get_node_ip_address(), pid=os.getpid(), device=hardware.device, name=hardware.name,
                    cpu_bf16=hardware.cpu_bf16,
                    cuda_visible_devices=os.environ.get('CUDA_VISIBLE_DEVICES', ''),
                    env=record.environment(hardware.device))

    def load(self, arrays, meta):
        """The images, from the object store (zero-copy: every actor of a node shares one copy)."""
        from bench.images import data
        self.images = data.Images(**arrays, **meta)  # read-only arrays: batches are gathered from them, never written

    def run(self, job):
        from bench.train import runner
        return runner.work(job, self.images, bar=False, log=lambda line: None)


class RayExecutor:
    """Runs jobs on a Ray cluster: `address` None starts a private one here, 'auto' or 'HOST:PORT' joins one."""
    def __init__(self, address=None, gpus_per_run=None, cpus_per_run=None, init=None, log=print):
        self.ray = ray = import_ray()
        self.log, self.private, self.actors, self.starting = log, address is None, [], {}
        self.where, self.envs, self.data = {}, {}, None  # actor -> where it runs, its environment; the images
        env = {k: os.environ[k] for k in ENV_PASSED if k in os.environ}
        options = dict(runtime_env=dict(py_modules=PACKAGES, env_vars=env), logging_level=logging.ERROR,
                       log_to_driver=False)
        where = None if self.private else address if address != 'auto' else known_address()
        if where and not reachable(where):  # Ray itself would wait for an unreachable head for minutes
            raise UsageError(f'cannot reach a Ray cluster at {where}: nothing answers there; start one with '
                             f'`ray start --head`, or use --cluster ray for a private one')
        try:
            if self.private:  # never an existing cluster, whatever the temp folder or RAY_ADDRESS says
                ray.init(address='local', include_dashboard=False, **options, **(init or {}))
            else:
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UsageError(f'cannot connect to a Ray cluster at {where or "this machine"} ({type(e).__name__}: '
                             f'{first_line(e)}); start one with `ray start --head`, use --cluster ray for a private '
                             f'one, or, if its head has token authentication on (Ray 2.60 does by default), set '
                             f'RAY_AUTH_MODE=token here with the head\'s token in RAY_AUTH_TOKEN or '
                             f'~/.ray/auth_token') from None
        resources = ray.cluster_resources()
        gpus, cpus = resources.get('GPU', 0), resources.get('CPU', 0)
        self.gpus_per_run = (1 if gpus else 0) if gpus_per_run is None else gpus_per_run
        self.cpus_per_run = 1 if cpus_per_run is None else cpus_per_run
        if self.gpus_per_run > gpus or self.cpus_per_run > cpus or (self.gpus_per_run <= 0 and self.cpus_per_run <= 0):
            self.close()
            raise UsageError(f'a run asks for {self.gpus_per_run:g} GPUs and {self.cpus_per_run:g} CPUs, but the Ray '
                             f'cluster has {gpus:g} GPUs and {cpus:g} CPUs; lower --gpus-per-run or --cpus-per-run')
        self.slots = int(min(gpus // self.gpus_per_run if self.gpus_per_run else float('inf'),
                             cpus // self.cpus_per_run if self.cpus_per_run else float('inf')))
        self.threads = max(1, int(self.cpus_per_run))
        self.actor_class = ray.remote(num_gpus=self.gpus_per_run, num_cpus=self.cpus_per_run, max_restarts=0,
                                      max_task_retries=0)(Worker)
        self.spawn(self.slots)  # all at once: each spends seconds importing torch, fastai and timm, in parallel
        first, = self.ready(1)  # the first to answer says what hardware the runs land on
        self.hardware = record.Hardware(first['device'], first['name'], first.get('cpu_bf16', False))
        log(f'ray: up to {self.slots} run{"s" * (self.slots != 1)} at a time, each with {self.gpus_per_run:g} GPU and '
            f'{self.cpus_per_run:g} CPU, on a cluster of {gpus:g} GPUs and {cpus:g} CPUs; runs land on '
            f'{first["name"]}')

    def spawn(self, n):
        """Start `n` actors without waiting for them (`ready` does)."""
        for _ in range(n):
            actor = self.actor_class.remote(max(1, self.cpus_per_run))
            self.starting[actor] = actor.describe.remote()

    def ready(self, n=None):
        """Wait until `n` of the starting actors (all by default) answer, and put them to work; a worker that cannot
        start ends in one sentence."""
        actor_of = {ref: actor for actor, ref in self.starting.items()}
        n = len(actor_of) if n is None else n
        answered, _ = self.ray.wait(list(actor_of), num_returns=n, timeout=START_TIMEOUT_S)
        if len(answered) < n:
            self.close()
            raise UsageError(f'Ray workers did not start within {START_TIMEOUT_S:.0f} s (set FTBENCH_RAY_START_TIMEOUT '
                             f'to wait longer); check `ray status`, and that every node has this suite\'s Python '
                             f'environment')
        about = self.ray.get(answered)
        for ref, a in zip(answered, about):
            actor = actor_of[ref]
            del self.starting[actor]
            self.where[actor] = f'{a["ip"]} pid {a["pid"]}' + (
                f' CUDA_VISIBLE_DEVICES={a["cuda_visible_devices"]}' if a['cuda_visible_devices'] else '')
            self.envs[actor] = a['env']
            if self.data is not None:
                actor.load.remote(*self.data)
            self.actors.append(actor)
        return about

    def start(self, images, bar=False, log=None):
        """Put the images in the object store once; every actor loads them."""
        self.log = log or self.log
        arrays = {k: np.asarray(getattr(images, k)) for k in ('train_x', 'train_y', 'test_x', 'test_y')}
        self.data = (self.ray.put(arrays), dict(classes=images.classes, name=images.name,
                                                fingerprint=images.fingerprint, decode=images.decode))
        for actor in self.actors:
            actor.load.remote(*self.data)
        return self

    def run(self, jobs):
        """(job, result) as each finishes, in any order; a lost actor's job gets an error result, never a rerun."""
        ray = self.ray
        wanted = min(self.slots, len(jobs))
        surplus = len(self.actors) + len(self.starting) - wanted
        for actor in [*self.starting, *reversed(self.actors)][:max(0, surplus)]:
            ray.kill(actor)  # no more actors than runs: a slot's GPU goes back to the cluster
            if actor in self.starting:
                del self.starting[actor]
            else:
                self.actors.remove(actor)
        self.spawn(max(0, wanted - len(self.actors) - len(self.starting)))
        if self.starting:
            self.ready()
        for actor in self.actors:
            self.log(f'ray: worker {self.where[actor]}')
        pending, running, idle, together = deque(jobs), {}, list(self.actors), Overlap()
        while pending or running:
            while pending and idle:
                actor, job = idle.pop(), pending.popleft()
                ref = actor.run.remote(job)
                running[ref] = (job, actor, record.now())
                together.start(ref, self.where[actor].split(' ')[0])
                self.log(f'ray: {job.describe()} -> worker {self.where[actor]}')
            (ref,), _ = ray.wait(list(running), num_returns=1)
            job, actor, started = running.pop(ref)
            shared = together.finish(ref)
            try:
                result = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayActorError as e:
                result = dict(started_at=started, env=self.envs[actor],
                              error=f'worker lost ({self.where[actor]}): {type(e).__name__}: {first_line(e)}')
                self.actors.remove(actor)
                self.log(f'ray: worker {self.where[actor]} lost' + ('; starting another' if pending else ''))
                if pending:
                    self.spawn(1)
                    self.ready()
                    idle.append(self.actors[-1])
            if 'results' in result:
                result['results']['side_by_side'] = shared
            yield job, result

    def close(self):
        ray = self.ray
        if not ray.is_initialized():
            return
        for actor in [*self.actors, *self.starting]:
            ray.kill(actor)
        self.actors, self.starting = [], {}
        ray.shutdown()  # a private cluster stops with it; a joined one only loses this driver

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def known_address():
    """Where `ray:auto` will connect: $RAY_ADDRESS, else the head started on this machine (Ray's own note of it)."""
    address = os.environ.get('RAY_ADDRESS')
    if not address:
        note = Path(tempfile.gettempdir()) / 'ray' / 'ray_current_cluster'
        address = note.read_text().strip() if note.is_file() else None
    return address.split('://')[-1] if address else None


def reachable(address, timeout=5.0):
    host, _, port = address.rpartition(':')
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def first_line(e):
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(e).__name__
