"""A run's identity: its resolved config, search bookkeeping and the hardware it ran on; resume by identity."""
import subprocess
from dataclasses import replace

import pytest

from bench import finetune
from bench.declare import record
from bench.declare.config import Config
from bench.sweep.executor import Job
from tests.helpers import TINY, run_script


def test_identity_changes_with_the_hardware_and_not_otherwise():
    job = Job(Config(strategy='full', seed=1))
    assert job.key('cpu: A (2 cores)') == Job(Config(strategy='full', seed=1)).key('cpu: A (2 cores)')
    assert len({job.key('cpu: A (2 cores)'), job.key('cpu: A (4 cores)'), job.key('NVIDIA H100 80GB HBM3')}) == 3
    assert job.key('cpu: A (2 cores)') != Job(replace(job.cfg, seed=2)).key('cpu: A (2 cores)')
    assert job.key('x') != Job(job.cfg, identity={'search': {'role': 'refit'}}).key('x')


def test_new_hardware_runs_everything_and_the_same_hardware_resumes(dataset_dir, tmp_path, monkeypatch, capsys):
    results = tmp_path / 'r.jsonl'
    args = ['--data', str(dataset_dir), '--results', str(results), *TINY, '--strategy', 'full,feature_extract']
    assert run_script(finetune, args) == 0
    assert run_script(finetune, args) == 0
    assert len(record.read(results)) == 2 and '0 ran, 2 already recorded' in capsys.readouterr().out
    here = record.device_name('cpu')
    monkeypatch.setattr(record, 'cpu_model', lambda: 'Another CPU')
    assert run_script(finetune, args) == 0
    recs = record.read(results)
    assert len(recs) == 4 and '2 ran, 0 already recorded' in capsys.readouterr().out
    assert sorted({r['device'] for r in recs}) == sorted({here, record.device_name('cpu')})
    assert run_script(finetune, args) == 0
    assert len(record.read(results)) == 4 and '0 ran, 2 already recorded' in capsys.readouterr().out


def test_every_record_names_its_hardware_and_is_keyed_by_it(dataset_dir, tmp_path):
    results = tmp_path / 'r.jsonl'
    assert run_script(finetune, ['--data', str(dataset_dir), '--results', str(results), *TINY]) == 0
    rec, = record.read(results)
    assert rec['device'] == record.device_name('cpu') and rec['device'].startswith('cpu: ')
    assert rec['key'] == record.run_key(rec['config'], None, rec['device'])


def test_code_version_is_dirty_for_changed_code_and_not_for_appended_results(tmp_path):
    def git(*args):
        subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=tmp_path, check=True,
                       capture_output=True)
    (tmp_path / 'bench').mkdir()
    (tmp_path / 'reports').mkdir()
    (tmp_path / 'bench' / 'run.py').write_text('x = 1\n')
    (tmp_path / 'reports' / 'results.jsonl').write_text('{}\n')
    git('init', '-q')
    git('add', '.')
    git('commit', '-qm', 'one')
    code_version = record.git_sha.__wrapped__  # uncached: the state changes between calls
    sha = code_version(tmp_path)
    assert len(sha) == 40
    (tmp_path / 'reports' / 'results.jsonl').write_text('{}\n{}\n')
    assert code_version(tmp_path) == sha
    (tmp_path / 'bench' / 'run.py').write_text('x = 2  # changed\n')
    assert code_version(tmp_path) == sha + '-dirty'


def test_a_setting_is_part_of_the_identity_of_the_runs_it_changes_only():
    from bench.declare.config import Config
    full, lora = Config(strategy='full').to_dict(), Config(strategy='lora').to_dict()
    assert record.run_key(full) == record.run_key({**full, 'lora_r': 4, 'memory_limit_mb': 512})
    assert record.run_key(lora) != record.run_key({**lora, 'lora_r': 4})
    assert record.run_key(lora) == record.run_key({**lora, 'memory_limit_mb': 512})  # it never changes the result
    before = {k: v for k, v in full.items() if k not in ('lora_r', 'lora_alpha', 'lora_dropout', 'layer_decay',
                                                          'memory_limit_mb')}
    assert record.run_key(before) == record.run_key(full)  # records made before these settings existed resume


def test_a_record_has_exactly_the_declared_result_fields():
    fields = {name: None for name in record.RESULT_FIELDS}
    env = dict(device_name='cpu: test', versions={})
    rec = record.make(Config(), 'k', 'now', env, 'sha', results=fields)
    assert set(record.RESULT_FIELDS) <= set(rec)
    missing = dict(fields)
    del missing['valid_curve']
    with pytest.raises(ValueError, match=r"missing \['valid_curve'\]"):
        record.make(Config(), 'k', 'now', env, 'sha', results=missing)
    with pytest.raises(ValueError, match=r"unknown \['typo'\]"):
        record.make(Config(), 'k', 'now', env, 'sha', results={**fields, 'typo': 1})
