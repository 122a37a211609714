"""The finetune script end to end on tiny data: records, resume, --force, error rows, Ctrl-C and bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import backbones
from bench import finetune
from bench.declare import record
from bench.train.learner import prepare_for
from bench.train.resolve import resolve
from tests.helpers import TINY, as_at_a_terminal, resident_mb, run_script

REPO = Path(__file__).resolve().parents[1]


def cli(argv):
    return run_script(finetune, argv)


def records(path):
    return record.read(path)


def test_records_hold_what_the_issue_lists(dataset_dir, tmp_path):
    results = tmp_path / 'r.jsonl'
    assert cli(['--data', str(dataset_dir), '--results', str(results), '--strategy', 'full,feature_extract',
                '--seeds', '2', *TINY]) == 0
    recs = records(results)
    assert len(recs) == 4
    rec = recs[0]
    for field in ('experiment', 'backbone', 'strategy', 'weights', 'profile', 'seed', 'config', 'epochs', 'test_loss',
                  'test_acc', 'train_seconds', 'eval_seconds', 'images_per_second', 'peak_memory_mb', 'params_total',
                  'params_trainable', 'device', 'versions', 'git_sha', 'started_at', 'error'):
        assert field in rec, field
    assert rec['error'] is None and rec['weights'] == 'none'
    assert set(rec['epochs'][0]) >= {'train_loss', 'valid_loss', 'valid_acc', 'train_seconds'}
    assert rec['config']['dataset'].startswith('tiny:')
    assert sorted(r['seed'] for r in recs) == [0, 0, 1, 1]
    assert 0 <= rec['test_acc'] <= 1 and rec['train_seconds'] > 0


def test_rerun_skips_and_force_reruns(dataset_dir, tmp_path, capsys):
    results = tmp_path / 'r.jsonl'
    args = ['--data', str(dataset_dir), '--results', str(results), *TINY]
    assert cli(args) == 0
    assert cli(args) == 0
    assert len(records(results)) == 1
    assert 'already recorded' in capsys.readouterr().out
    assert cli(args + ['--force']) == 0
    assert len(records(results)) == 2
    assert cli(args + ['--epochs', '2']) == 0  # another configuration is another run
    assert len(records(results)) == 3


def test_failing_run_is_an_error_row_and_the_sweep_goes_on(dataset_dir, tmp_path):
    results = tmp_path / 'r.jsonl'
    code = cli(['--data', str(dataset_dir), '--results', str(results), '--strategy', 'full,feature_extract', *TINY,
                '--lr', '1e12', '--head-lr', '1e12', '--opt', 'sgd'])
    recs = records(results)
    assert code == 1
    assert len(recs) == 2 and all(r['error'] for r in recs)
    assert 'training loss became nan' in recs[0]['error']
    assert cli(['--data', str(dataset_dir), '--results', str(results), '--strategy', 'full', *TINY]) == 0
    assert [r['error'] is None for r in records(results)] == [False, False, True]


def test_torn_last_line_is_skipped_and_closed_off(dataset_dir, tmp_path, capsys):
    results = tmp_path / 'r.jsonl'
    results.write_text('{"key": "abc", "config": {}}\n{"key": "torn", "conf')
    assert cli(['--data', str(dataset_dir), '--results', str(results), *TINY]) == 0
    lines = results.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])['error'] is None
    assert 'not a run record' in capsys.readouterr().err


def write_weights(path, name):
    save_file({k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize('args,message', [
    (['--backbone', 'resnet81'], "unknown backbone 'resnet81'; did you mean resnet18"),
    (['--strategy', 'fullest'], "unknown strategy 'fullest'; choose from zero_shot"),
    (['--epochs', '0'], '--epochs must be positive, got 0'),
    (['--lr', '-1'], '--lr must be positive'),
    (['--subset', '-5'], '--subset must not be negative'),
    (['--subset', '2.5'], '--subset is a count (a whole number) or a fraction below 1, got 2.5'),
    (['--subset', '3'], 'a training subset of 3 cannot hold all 4 classes'),
    (['--data', 'imagenet21k'], "unknown dataset 'imagenet21k'; give one of cifar10, caltech101"),
    (['--seeds', '0'], '--seeds must be at least 1'),
    (['--unfreeze', '7', '--strategy', 'partial'], '--unfreeze must be between 1 and 3'),
    (['--lr', 'nan'], '--lr must be a finite number, got nan'),
    (['--lora-r', '0', '--strategy', 'lora'], '--lora-r must be positive'),
    (['--lora-dropout', '1', '--strategy', 'lora'], '--lora-dropout must be in [0, 1)'),
    (['--layer-decay', '1.5', '--strategy', 'llrd'], '--layer-decay must be in (0, 1]'),
    (['--memory-limit-mb', '-1'], '--memory-limit-mb must not be negative'),
    (['--size', '32', '--resize', '16'], '--size 32 is larger than --resize 16: the center crop is cut from the'),
    (['--head', 'fancy'], "unknown head 'fancy'; choose one of auto, fastai, linear, mlp"),
    (['--backbone', 'vit_tiny_patch16_224', '--head', 'fastai', '--size', '32'],
     'vit_tiny_patch16_224: the fastai head needs a (B, C, H, W) feature map'),
    (['--backbone', 'mobilenetv2_100.nonsense'], "timm knows no pretrained tag 'nonsense' for mobilenetv2_100"),
    (['--backbone', 'vgg16', '--strategy', 'norm_only'], 'vgg16 has no normalization layers for norm_only'),
])
def test_bad_input_exits_2_with_one_sentence_and_writes_nothing(args, message, dataset_dir, tmp_path, capsys):
    results = tmp_path / 'r.jsonl'
    code = cli(['--data', str(dataset_dir), '--results', str(results), *TINY, *args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith('error: ')]
    assert code == 2
    assert len(errors) == 1 and message in errors[0] and 'Traceback' not in err
    assert not results.exists()


def test_a_size_above_the_presets_resize_enlarges_it():
    """The crop is cut from the resized image: --size 160 over W7's cpu profile (resize 96) would otherwise train on
    a 32 px corner of each image."""
    preset, cfg = resolve('w7', 'cpu'), resolve('w7', 'cpu', size=160)
    assert (preset.size, preset.resize) == (96, 96) and (cfg.size, cfg.resize) == (160, 160)
    assert resolve('w1', 'full', size=240).resize == 256  # a crop the preset's resize holds keeps it
    assert prepare_for(cfg, backbones.describe(cfg.backbone), False)(torch.zeros(2, 96, 128, 3, dtype=torch.uint8)
                                                                     ).shape == (2, 3, 160, 160)


def test_bad_data_exits_2(tmp_path, dataset_tgz, capsys):
    bad = tmp_path / 'bad.tgz'
    bad.write_bytes(dataset_tgz.read_bytes()[:3000])
    empty = tmp_path / 'empty'
    empty.mkdir()
    for source, message in ((tmp_path / 'missing', 'does not exist'), (bad, 'corrupt'), (empty, 'no images under train')):
        assert cli(['--data', str(source), '--results', str(tmp_path / 'r.jsonl'), *TINY]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / 'r.jsonl').exists()


def test_weights_for_another_architecture_exit_2(dataset_dir, tmp_path, capsys):
    path = write_weights(tmp_path / 'cifar_resnet32.safetensors', 'cifar_resnet32')
    code = cli(['--data', str(dataset_dir), '--results', str(tmp_path / 'r.jsonl'), *TINY, '--weights', str(path)])
    assert code == 2 and 'another architecture' in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_writes_nothing(dataset_dir, tmp_path, capsys):
    results = tmp_path / 'r.jsonl'
    assert cli(['--data', str(dataset_dir), '--results', str(results), *TINY, '--backbone', 'resnet18',
                '--head', 'linear', '--strategy', 'progressive', '--epochs', '4', '--unfreeze-at', '1,3',
                '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'epochs 1-1: train head;' in out and 'trainable 2,052 of' in out
    assert 'epochs 2-3: train layer4, head;' in out and 'epochs 4-4: train layer3, layer4, head;' in out
    assert not results.exists()


def test_all_means_every_strategy_that_applies_and_says_which_it_left_out(tmp_path, capsys):
    argv = ['--backbone', 'vit_tiny_patch16_224', '--weights', 'none', '--strategy', 'all', '--epochs', '2',
            '--size', '32', '--resize', '32', '--results', str(tmp_path / 'r.jsonl'), '--dry-run']
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert 'left out zero_shot on vit_tiny_patch16_224: zero_shot with --weights none evaluates a random' in out
    assert 'left out progressive on vit_tiny_patch16_224: --unfreeze-at must be' in out
    planned = [line.split(' | ')[2] for line in out.splitlines() if line.startswith('finetune | vit_tiny')]
    assert planned == ['feature_extract', 'partial', 'full', 'fine_tune', 'lp_ft', 'bitfit', 'norm_only', 'lora',
                       'llrd']
    assert '"head": "linear"' in out  # auto: a linear head on the token model's own pooled features
    # the exact counts: the head alone 192 * 10 + 10; BitFit adds every bias; LoRA 8 * (in + out) per Linear
    assert 'trainable 1,930 of 5,489,482' in out and 'trainable 27,658 of 5,489,482' in out
    assert 'trainable 304,522 of 5,792,074' in out


def test_a_weights_file_under_a_tag_timm_does_not_know(dataset_dir, tmp_path, monkeypatch):
    state = {k: v.contiguous() for k, v in timm.create_model('test_resnet').state_dict().items()}
    save_file(state, str(tmp_path / 'test_resnet.mine_in1k.safetensors'))
    monkeypatch.setenv('FTBENCH_WEIGHTS', str(tmp_path))
    results = tmp_path / 'r.jsonl'
    assert cli(['--data', str(dataset_dir), '--results', str(results), *TINY, '--backbone', 'test_resnet.mine_in1k',
                '--weights', 'hub', '--head', 'linear']) == 0
    rec, = records(results)
    assert rec['weights'].startswith('file:test_resnet.mine_in1k.safetensors') and rec['error'] is None


def test_dry_run_needs_no_data_and_downloads_nothing(tmp_path, monkeypatch, capsys):
    import fastai.data.external
    monkeypatch.setenv('FASTAI_HOME', str(tmp_path / 'fastai'))
    monkeypatch.setattr(fastai.data.external, 'untar_data', lambda *a, **k: pytest.fail('dry run downloaded'))
    results = tmp_path / 'r.jsonl'
    assert cli(['--preset', 'w1', '--strategy', 'partial', '--results', str(results), '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'no local copy of cifar10' in out and 'the plan assumes 10 classes' in out and 'trainable 8,398,858 of 11,181,642' in out
    assert not results.exists() and not (tmp_path / 'fastai').exists()


@pytest.mark.slow
def test_a_local_run_to_a_file_prints_no_warnings_no_bars_and_never_imports_ray(dataset_dir, tmp_path):
    argv = [sys.executable, '-X', 'importtime', str(REPO / 'bench' / 'finetune.py'), '--data', str(dataset_dir),
            '--results', str(tmp_path / 'r.jsonl'), *[a for a in TINY if a != '--no-bar'], '--strategy',
            'progressive', '--epochs', '2', '--unfreeze-at', '1']
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS=''))
    assert done.returncode == 0, done.stderr
    imported = [line.rsplit('|', 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith('import time:')]
    said = [line for line in done.stderr.splitlines() if not line.startswith('import time:')]
    assert 'torch' in imported and not [m for m in imported if m.split('.')[0] == 'ray']
    assert not [line for line in said if 'warn' in line.lower()], said
    assert '\r' not in done.stdout and '█' not in done.stdout and '<progress' not in done.stdout
    assert 'train_loss' in done.stdout  # the epochs are still logged, as plain lines


def test_scripts_stand_apart_from_the_library():
    """bench/*.py and bench/tools/*.py are scripts a user runs (each with a main); the sub-packages are the library,
    with no script among them."""
    import ast

    def is_script(path):
        return any(isinstance(n, ast.If) and '__main__' in ast.unparse(n.test) for n in ast.parse(path.read_text()).body)
    top = [p for p in (REPO / 'bench').glob('*.py') if p.name != '__init__.py']
    tools = [p for p in (REPO / 'bench' / 'tools').glob('*.py') if p.name != '__init__.py']
    library = [p for p in (REPO / 'bench').glob('*/*.py') if p.parent.name != 'tools']
    assert top and all(is_script(p) for p in top + tools), [p.name for p in top + tools if not is_script(p)]
    assert library and not [p for p in library if is_script(p)]


def test_every_script_imports_bench_before_fastai():
    """bench/__init__ silences fastai's import-time deprecation notice, so it must run before fastai is imported;
    the subprocess test above checks that the silencing works for one script, this that every script has it."""
    import ast
    for script in sorted((REPO / 'bench').rglob('*.py')):
        tree = ast.parse(script.read_text())
        if not any(isinstance(n, ast.If) and 'main' in ast.unparse(n.test) for n in tree.body):
            continue  # a module, not a script: imported through the bench package
        names = [a.name if isinstance(n, ast.Import) else n.module for n in tree.body
                 if isinstance(n, (ast.Import, ast.ImportFrom)) for a in (n.names if isinstance(n, ast.Import) else [n])]
        first = {top: next((i for i, m in enumerate(names) if (m or '').split('.')[0] == top), len(names))
                 for top in ('bench', 'fastai', 'backbones', 'timm')}
        assert first['bench'] <= min(first['fastai'], first['backbones'], first['timm']), script.name


@pytest.mark.parametrize('script', ['finetune', 'scratch', 'search', 'speed', 'leaderboard'])
def test_every_flag_has_help(script):
    import importlib
    actions = [a for a in importlib.import_module(f'bench.{script}' if script != 'speed' else 'bench.tools.speed').parser()._actions if a.option_strings]
    assert len(actions) >= 3
    assert [a.option_strings[0] for a in actions if not (a.help or '').strip()] == []


def test_the_gpu_check_runs_the_scripts_as_modules():
    """On the GPU machine nothing is installed: `python3 bench/x.py` would put bench/ first on sys.path and fail
    to import the bench package; `python3 -m bench.x` from the checkout's root finds it."""
    lines = (REPO / 'bench' / 'tools' / 'gpu_check.sh').read_text().splitlines()
    calls = [line for line in lines if line.lstrip().startswith('python3 ') and '-m pip' not in line
             and not line.lstrip().startswith('python3 - ')]
    assert len(calls) >= 3 and all(' -m bench.' in line for line in calls), calls


def test_w6_plans_on_caltech101_by_name(capfd):
    from bench import finetune  # in this process: the suite's passing of presets is test_make_bench_runs_w7_...'s
    assert run_script(finetune, ['--preset', 'w6', '--seeds', '1', '--dry-run']) == 0
    out = capfd.readouterr().out
    assert 'no local copy of caltech101' in out
    configs = [json.loads(line[len('config: '):]) for line in out.splitlines() if line.startswith('config: ')]
    assert len(configs) == 8 and {c['data'] for c in configs} == {'caltech101'}
    assert {c['strategy'] for c in configs} == {'feature_extract', 'bitfit', 'norm_only', 'lora', 'partial', 'full',
                                                  'lp_ft', 'llrd'}
    # precision auto: fp32 on any CPU for EfficientNet (its depthwise convs are slower in bf16 even with AMX)
    assert all(c['size'] == 160 and c['precision'] == 'fp32' for c in configs)


def test_w7_plans_every_strategy_on_its_four_datasets_and_data_narrows_it_to_one(capfd):
    from bench import finetune
    assert run_script(finetune, ['--preset', 'w7', '--seeds', '3', '--dry-run']) == 0
    out = capfd.readouterr().out
    configs = [json.loads(line[len('config: '):]) for line in out.splitlines() if line.startswith('config: ')]
    assert {c['data'] for c in configs} == {'cifar10', 'caltech101', 'uc_merced', 'pbc_blood_cells'}
    assert len(configs) == 4 * 8  # tuned: one plan per strategy and dataset, at its grid's middle point
    assert all(c['pool'] == 1000 and c['valid_frac'] == 0.2 and c['size'] == 96 for c in configs)
    assert run_script(finetune, ['--preset', 'w7', '--data', 'uc_merced', '--dry-run']) == 0
    out = capfd.readouterr().out
    assert {json.loads(line[len('config: '):])['data'] for line in out.splitlines()
            if line.startswith('config: ')} == {'uc_merced'}


def test_make_bench_runs_w7_in_place_of_w5_and_w6_which_run_by_name():
    from bench import suite
    planned = [name for name, _, _ in suite.commands(suite.parser().parse_args([]))]
    assert 'w7' in planned and 'w5' not in planned and 'w6' not in planned and 'w1' in planned
    by_name = suite.commands(suite.parser().parse_args(['--only', 'w5,w6', '--seeds', '1', '--dry-run']))
    assert [(name, script, argv[:2]) for name, script, argv in by_name] == [
        ('w5', 'finetune', ['--preset', 'w5']), ('w6', 'finetune', ['--preset', 'w6'])]
    assert all('--dry-run' in argv and argv[argv.index('--seeds') + 1] == '1' for _, _, argv in by_name)


def suite_args(dataset_dir, results, seeds=1, epochs=1):
    """The suite's flags for W2 then W3 on the tiny data, TINY's run for every script."""
    return ['--only', 'w2,w3', '--data', str(dataset_dir), '--seeds', str(seeds), '--results', str(results), '--',
            *TINY, '--epochs', str(epochs)]


@pytest.mark.slow
def test_ctrl_c_stops_the_suite_keeps_finished_runs_and_a_rerun_resumes(dataset_dir, tmp_path):
    """Ctrl-C at a terminal reaches the suite and the script it runs: the script keeps its finished runs, the suite
    runs no further experiment and exits 130; the rerun runs only the rest, each experiment in a process of its own:
    a run's peak memory is its own, not what the suite's process (or an earlier experiment in it) holds."""
    results = tmp_path / 'r.jsonl'
    args = suite_args(dataset_dir, results, seeds=2, epochs=4)
    proc = subprocess.Popen([sys.executable, str(REPO / 'bench' / 'suite.py'), *args], start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_at_a_terminal)
    deadline = time.time() + 120
    while time.time() < deadline and not records(results):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole foreground process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert 'interrupted' in err and 'Traceback' not in err
    kept = records(results)
    assert kept and {r['experiment'] for r in kept} == {'w2'} and all(r['error'] is None for r in kept)
    import numpy as np

    from bench import suite
    ballast = np.ones(2 ** 30 // 8)  # 1 GiB, resident in the process that runs the suite
    held = resident_mb()
    assert run_script(suite, args) == 0
    after = records(results)
    rerun = after[len(kept):]
    assert 'w3' in {r['experiment'] for r in rerun}  # (and whatever of w2 the Ctrl-C left)
    assert all(r['peak_memory_mb'] < held - 512 for r in rerun), ([r['peak_memory_mb'] for r in rerun], held)
    assert ballast[-1] == 1.0
    assert len(after) == 6 and len({r['key'] for r in after}) == 6  # W2's 2 strategies and W3's 1, 2 seeds each
    assert [r['key'] for r in after[:len(kept)]] == [r['key'] for r in kept]


def test_a_declared_dataset_is_found_by_name_in_the_data_folder(dataset_tgz, tmp_path, monkeypatch):
    from bench.declare import datasets
    from bench.images import data
    folder = tmp_path / 'offline'
    folder.mkdir()
    (folder / 'caltech101.tgz').write_bytes(dataset_tgz.read_bytes())
    monkeypatch.setenv('FTBENCH_DATA', str(folder))
    path, ds = data.resolve_source('caltech101')
    assert path == folder / 'caltech101.tgz' and ds is datasets.CALTECH101
    with pytest.raises(data.DataError, match='caltech101 has no download'):
        monkeypatch.setenv('FTBENCH_DATA', str(tmp_path))
        data.resolve_source('caltech101')


def test_the_suite_starts_without_torch_and_every_kind_of_mistake_ends_in_one_sentence(capsys):
    """bench/suite.py only starts the experiments' scripts: it imports no torch (seconds per `make bench`); how a
    script ends is decided without importing the modules whose errors are mistakes."""
    done = subprocess.run([sys.executable, '-c', 'import sys, bench.suite; print("torch" in sys.modules)'],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.stdout.strip() == 'False', done.stderr
    from backbones import WeightsError
    from bench.command import exits
    from bench.declare.config import UsageError
    from bench.images.data import DataError
    for error in (UsageError, DataError, WeightsError):
        def fail():
            raise error('what to do')
        with pytest.raises(SystemExit) as e:
            exits.main(fail)
        assert e.value.code == 2 and capsys.readouterr().err == 'error: what to do\n'

    def bug():
        raise RuntimeError('a bug')
    with pytest.raises(RuntimeError):  # not a mistake: its traceback is shown
        exits.main(bug)
