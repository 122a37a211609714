"""`make bench-regress`'s verdict: calibrated benchmark runs compared in one line, a slowed benchmark caught."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.tools import regress

REPO = Path(__file__).resolve().parents[1]
WORK = '''
import os


def test_work(calibrated):
    n = int(600_000 * float(os.environ.get('SLOW') or 1))   # SLOW: that many times the work, a deliberate regression
    calibrated(lambda: sum(i * i for i in range(n)))
'''


def benchmark_run(folder, slow=''):
    """One real pytest-benchmark run of a tiny suite, saved under folder/.benchmarks as make bench-regress does.
    One thread, so that the calibration and the benchmark share the CPU alike with whatever else runs beside the
    test (torch's spinning thread pool would not)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('PYTEST_')}  # not an xdist worker's settings
    env.update(SLOW=slow, OMP_NUM_THREADS='1')
    done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'test_work.py',
                           '--benchmark-only', '--benchmark-autosave', '--benchmark-storage', str(folder / '.benchmarks')],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def verdict(folder, capsys):
    code = regress.main(['--storage', str(folder / '.benchmarks'), '--tests', str(folder / 'test_work.py')])
    return code, capsys.readouterr().out.strip()


@pytest.mark.slow
def test_a_slowed_benchmark_is_caught_in_both_passes_and_a_passing_slowdown_is_cleared(tmp_path, capsys, monkeypatch):
    (tmp_path / 'test_work.py').write_text(WORK)
    (tmp_path / 'conftest.py').write_text((REPO / 'tests' / 'benchmarks' / 'conftest.py').read_text())
    monkeypatch.delenv('PYTEST_XDIST_WORKER', raising=False)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    benchmark_run(tmp_path)
    assert verdict(tmp_path, capsys) == (0, f'speed: first saved run ({regress.saved_runs(tmp_path / ".benchmarks")[0].name}); '
                                            f'the next `make bench-regress` compares against it')
    benchmark_run(tmp_path)
    code, line = verdict(tmp_path, capsys)
    assert code == 0 and line.startswith('speed: no regression: 1 benchmarks within their thresholds')
    benchmark_run(tmp_path, slow='3')
    code, line = verdict(tmp_path, capsys)  # the confirmation pass runs the benchmark as it now is: fast again
    assert code == 0 and line.endswith('1 looked slower and, timed again, were not'), line
    monkeypatch.setenv('SLOW', '3')  # the same saved run, the code itself now slower: the confirmation pass too
    code, line = verdict(tmp_path, capsys)
    assert code == 1 and len(line.splitlines()) == 1
    assert line.startswith('speed: 1 of 1 benchmarks regressed in both passes: test_work +'), line
    saved = json.loads(regress.saved_runs(tmp_path / '.benchmarks')[-1].read_text())
    info = saved['benchmarks'][0]['extra_info']
    assert len(info['calibration_s']) == len(info['round_s']) == saved['benchmarks'][0]['stats']['rounds']


def test_each_benchmark_has_its_own_threshold_from_its_noise():
    def run(value, rounds=None, name='t::x'):
        rounds = rounds or [value] * 10
        return dict(machine_info={'cpu': {'brand_raw': 'A'}}, benchmarks=[
            dict(fullname=name, stats={'min': min(rounds)}, extra_info={'calibration_s': [1.0] * len(rounds),
                                                                         'round_s': rounds})])
    steady = [run(1.0), run(1.02), run(0.98), run(1.01)]
    assert regress.thresholds(steady, run(1.0), 0.1) == {'t::x': 0.1}  # noise of 1%: the floor
    noisy = [run(1.0), run(1.3), run(0.8), run(1.1)]
    assert regress.thresholds(noisy, run(1.0), 0.1)['t::x'] == pytest.approx(3 * 0.15 / 1.05)  # MAD 0.15
    assert regress.compare(noisy + [run(1.3)], 0.1)[0] == 0       # +24%: within a noisy benchmark's spread
    assert regress.compare(steady + [run(1.3)], 0.1)[0] == 1      # +30% on a steady one: a regression
    young = [run(1.0), run(1.2, rounds=[1.2, 1.5, 1.8, 2.0, 2.4, 2.4, 2.4, 2.4])]  # few runs: the rounds' spread
    assert regress.thresholds(young[:1], young[1], 0.1)['t::x'] == pytest.approx(3 * (1.65 / 1.2 - 1))


def test_runs_on_another_cpu_are_not_compared():
    run = dict(machine_info={'cpu': {'brand_raw': 'A'}}, benchmarks=[
        dict(fullname='t::x', stats={'min': 1.0}, extra_info={'calibration_s': [1.0]})])
    other = dict(run, machine_info={'cpu': {'brand_raw': 'B'}})
    code, line = regress.compare([run, other], 0.25)
    assert code == 0 and 'another CPU' in line


def test_normalized_times_cancel_a_slower_machine():
    def run(seconds, calibration):
        return dict(machine_info={'cpu': {'brand_raw': 'A'}}, benchmarks=[
            dict(fullname='t::x', stats={'min': seconds}, extra_info={'calibration_s': [calibration, 2 * calibration]})])
    assert regress.compare([run(1.0, 0.1), run(1.6, 0.16)], 0.25)[0] == 0    # everything 60% slower: the machine
    assert regress.compare([run(1.0, 0.1), run(1.6, 0.10)], 0.25)[0] == 1    # only the benchmark: the code


def test_a_corrupt_saved_run_is_one_sentence(tmp_path, capsys):
    folder = tmp_path / '.benchmarks' / 'Linux-CPython-3.11-64bit'
    folder.mkdir(parents=True)
    (folder / '0001_a.json').write_text('{"benchmarks": []}')
    (folder / '0002_b.json').write_text('{"benchm')  # torn by a crash mid-write
    assert regress.main(['--storage', str(tmp_path / '.benchmarks')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: a saved benchmark run under ') and 'not valid JSON' in err and len(err.splitlines()) == 1
