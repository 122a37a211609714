"""Scale-out: the driver's contract with any executor, the local path without Ray, and one real Ray smoke test
(a private local cluster, tiny data, a worker killed with SIGKILL mid-sweep, a hard timeout)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import finetune
from bench.declare import record
from bench.declare.config import Config
from bench.sweep.executor import Job, LocalExecutor, sweep
from tests.helpers import TINY, as_at_a_terminal, run_script, tiny_config

REPO = Path(__file__).resolve().parents[1]


def tiny_jobs(images, n=3):
    cfg = tiny_config(dataset=images.key)
    return [Job(Config(**{**cfg.__dict__, 'seed': s})) for s in range(n)]


class ReversedExecutor(LocalExecutor):
    """Runs every job here, but hands the results back last-first and loses the worker of one job, as a cluster
    may: what the driver must cope with."""
    def __init__(self, lose):
        super().__init__()
        self.lose = lose

    def run(self, jobs):
        from bench.train import runner
        results = []
        for job in jobs:
            if job.cfg.seed == self.lose:
                results.append((job, dict(started_at=record.now(), env=record.environment('cpu'),
                                          error='worker lost (test): ActorDiedError')))
            else:
                results.append((job, runner.work(job, self.images)))
        yield from reversed(results)


def test_the_driver_records_each_run_once_in_the_order_they_finish(images, tmp_path):
    results = tmp_path / 'r.jsonl'
    jobs = tiny_jobs(images)
    outcome = sweep(jobs, ReversedExecutor(lose=1).start(images), results, log=lambda line: None)
    recs = record.read(results)
    assert [r['seed'] for r in recs] == [2, 1, 0]
    assert outcome.ran == 3 and len(outcome.failed) == 1 and recs[1]['error'].startswith('worker lost')
    assert len({r['key'] for r in recs}) == 3
    again = sweep(jobs, LocalExecutor().start(images), results, log=lambda line: None)
    assert (again.ran, again.skipped, again.failed) == (1, 2, [])
    assert [r['seed'] for r in record.read(results)] == [2, 1, 0, 1]


def test_cluster_ray_without_ray_installed_is_one_sentence(dataset_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'ray', None)  # what `import ray` meets where Ray is not installed
    assert run_script(finetune, ['--data', str(dataset_dir), '--results', str(tmp_path / 'r.jsonl'), *TINY, '--cluster', 'ray']) == 2
    err = capsys.readouterr().err
    assert "error: --cluster ray needs Ray, which is not installed: pip install -e '.[ray]'" in err
    assert 'Traceback' not in err and not (tmp_path / 'r.jsonl').exists()


@pytest.mark.parametrize('spec,message', [('ray:127.0.0.1:1', 'cannot reach a Ray cluster at 127.0.0.1:1'),
                                          ('slurm', "unknown --cluster 'slurm'")])
def test_a_cluster_that_cannot_be_reached_is_one_sentence(spec, message, dataset_dir, tmp_path, capsys):
    t = time.perf_counter()
    assert run_script(finetune, ['--data', str(dataset_dir), '--results', str(tmp_path / 'r.jsonl'), *TINY, '--cluster', spec]) == 2
    assert message in capsys.readouterr().err and time.perf_counter() - t < 30
    assert not (tmp_path / 'r.jsonl').exists()


@pytest.mark.slow
def test_ray_smoke_a_killed_worker_is_an_error_row_and_a_rerun_finishes(dataset_dir, tmp_path, capsys):
    """A real private Ray cluster (2 CPUs, 2 workers), a real SIGKILL of the worker running the first job; then
    the local executor resumes: the same identities, so it runs only the lost job."""
    results = tmp_path / 'r.jsonl'
    argv = [sys.executable, '-u', str(REPO / 'bench' / 'finetune.py'), '--data', str(dataset_dir), '--results',
            str(results), *TINY, '--strategy', 'full,feature_extract', '--seeds', '2', '--epochs', '6']
    env = dict(os.environ, FTBENCH_RAY_START_TIMEOUT='200')
    proc = subprocess.Popen([*argv, '--cluster', 'ray', '--cpus-per-run', '1'], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    deadline, killed, out = time.time() + 280, None, []
    try:
        for line in proc.stdout:
            out.append(line)
            if killed is None and ' -> worker ' in line:
                killed = int(line.split(' pid ')[1].split()[0])
                os.kill(killed, signal.SIGKILL)
            if time.time() > deadline:
                break
        proc.wait(timeout=max(1, deadline - time.time()))
    finally:
        proc.kill()
    text = ''.join(out)
    assert killed and proc.returncode == 1, text
    recs = record.read(results)
    lost = [r for r in recs if r['error']]
    assert len(recs) == 4 and len({r['key'] for r in recs}) == 4, text
    assert len(lost) == 1 and lost[0]['error'].startswith('worker lost (') and f'pid {killed}' in lost[0]['error']
    assert all(r['device'] == record.device_name('cpu') and r['error'] is None for r in recs if r not in lost)
    assert run_script(finetune, [*argv[3:], '--cluster', 'local']) == 0
    assert '1 ran, 3 already recorded, 0 failed' in capsys.readouterr().out
    done = record.done(results)
    assert len(done) == 4 and {json.dumps(r['config'], sort_keys=True) for r in recs} == \
        {json.dumps(r['config'], sort_keys=True) for r in done.values()}


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason='runs side by side need two cores')
def test_a_pool_survives_a_killed_worker_and_ctrl_c_keeps_its_finished_runs(dataset_dir, tmp_path, capsys):
    """Two worker processes of one thread each (this machine's cores, `--cluster auto`'s choice on a CPU): a real
    SIGKILL of the worker running the first job is an error row naming it, a new worker takes its place and the other
    runs are recorded with the machine they shared; then a real Ctrl-C (the terminal's SIGINT to the whole process
    group) stops the sweep with every finished record intact and the workers gone; the local executor resumes the
    rest, the lost job included."""
    results = tmp_path / 'r.jsonl'
    argv = [sys.executable, '-u', str(REPO / 'bench' / 'finetune.py'), '--data', str(dataset_dir), '--results',
            str(results), *TINY, '--strategy', 'full,feature_extract', '--seeds', '3', '--epochs', '6']
    proc = subprocess.Popen([*argv, '--cluster', 'pool'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=as_at_a_terminal)
    deadline, killed, interrupted, out = time.time() + 120, None, False, []
    try:
        for line in proc.stdout:
            out.append(line)
            if killed is None and ' -> worker pid ' in line:
                killed = int(line.rsplit(' pid ', 1)[1])
                os.kill(killed, signal.SIGKILL)
            if not interrupted and len([r for r in record.read(results) if not r['error']]) >= 2:
                os.killpg(proc.pid, signal.SIGINT)
                interrupted = True
            if time.time() > deadline:
                break
        proc.wait(timeout=max(1, deadline - time.time()))
    finally:
        proc.kill()
    text = ''.join(out)
    assert killed and interrupted and proc.returncode == 130, text
    assert 'pool: 2 runs at a time, 1 thread each' in text and 'interrupted' in text and 'Traceback' not in text, text
    kept = record.read(results)
    lost = [r for r in kept if r['error']]
    ran = [r for r in kept if not r['error']]
    assert len(lost) == 1 and lost[0]['error'].startswith(f'worker lost (pid {killed}'), text
    assert 2 <= len(ran) < 5 and all(r['threads'] == 1 for r in ran) and max(r['side_by_side'] for r in ran) == 2
    assert run_script(finetune, [*argv[3:], '--cluster', 'local']) == 0  # where runs ran is no part of their identity
    assert f'{6 - len(ran)} ran, {len(ran)} already recorded, 0 failed' in capsys.readouterr().out
    done = record.done(results)
    assert len(done) == 6 and all(r['error'] is None for r in done.values())


def test_pool_workers_are_forked_from_one_server_and_run_in_the_drivers_environment(images, tmp_path, monkeypatch):
    """Every worker, a second pool's too, is a fork of the one server that imported torch, fastai and timm (its
    parent, not the driver); each pool's runs see the driver's environment of that moment, not the server's (a run's
    kept weights land in the data cache the driver names now)."""
    from bench.sweep.pool import PoolExecutor

    def parent(pid):
        return int(Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[1])
    servers = set()
    for i in range(2):
        monkeypatch.setenv('FTBENCH_CACHE', str(tmp_path / f'cache{i}'))
        job = Job(tiny_config(dataset=images.key, seed=i), keep=True)
        with PoolExecutor(cpus_per_run=os.cpu_count()) as pool:  # one worker
            (_, result), = pool.start(images).run([job])
            servers |= {parent(w.process.pid) for w in pool.workers}
        assert 'results' in result, result
        assert record.checkpoint_path(job.key(result['env']['device_name'])).is_file()
    server, = servers
    assert server != os.getpid() and 'forkserver' in Path(f'/proc/{server}/cmdline').read_text()
    assert 'libtorch' in Path(f'/proc/{server}/maps').read_text()  # torch is loaded before it forks
