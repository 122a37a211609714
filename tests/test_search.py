"""Grid and random search: the spaces, reproducible draws, resume, a test set touched once, and bad input."""
import re

import pytest

from bench import search
from bench.declare import record
from bench.images import loader
from bench.sweep.search import GRID, RANDOM, describe_space, draws, parse_space, trial_config
from bench.train.resolve import resolve
from tests.helpers import rendered, run_script

TINY = ['--epochs', '1', '--profile', 'full', '--no-bar', '--no-render', '--cluster', 'local']  # the preset's small CNN, one epoch, here


def run(argv):
    return run_script(search, argv)


def test_the_seeds_grid_has_12_distinct_trials():
    trials = draws(GRID, True, 0, 0)
    assert len(trials) == 12 == len({tuple(sorted(t.items())) for t in trials})
    assert {t['lr'] for t in trials} == {1e-3, 5e-4} and {t['h'] for t in trials} == {128, 256, 512}


def test_random_draws_are_reproducible_and_in_bounds():
    a = draws(RANDOM, False, 12, seed=0)
    assert a == draws(RANDOM, False, 12, seed=0)
    assert a != draws(RANDOM, False, 12, seed=1)
    assert len(a) == 12
    for t in a:
        assert 1e-4 <= t['lr'] <= 1e-3 and t['bs'] in (64, 96, 128, 160) and t['h'] in (128, 256, 384, 512)
        assert isinstance(t['bs'], int) and isinstance(t['h'], int)


def test_space_overrides():
    space = parse_space(['lr=loguniform:1e-4:1e-2', 'bs=32,64', 'dropout=uniform:0.1:0.5'], RANDOM)
    trials = draws(space, False, 30, seed=3)
    assert all(1e-4 <= t['lr'] <= 1e-2 and t['bs'] in (32, 64) and 0.1 <= t['dropout'] <= 0.5 for t in trials)
    assert describe_space(space).startswith('bs=32,64 dropout=uniform:0.1:0.5 h=128,256,384,512')


def test_a_searched_size_above_the_resize_raises_it():
    """W4's cpu profile stores images at 16 px: a trial at 32 px is resized to 32, not cropped past a 16 px edge."""
    base = resolve('w4', 'cpu')
    assert (base.size, base.resize) == (16, 16)
    assert (trial_config(base, {'size': 32}).size, trial_config(base, {'size': 32}).resize) == (32, 32)
    assert trial_config(base, {'size': 8}).resize == 16


@pytest.mark.parametrize('args,message', [
    (['--random', '0'], '--random must be at least 1'),
    (['--random', '3', '--space', 'lr'], 'is not NAME=VALUES'),
    (['--random', '3', '--space', 'lr=loguniform:1e-2'], 'loguniform needs two numbers'),
    (['--random', '3', '--space', 'lr=loguniform:0:1'], '0 < LOW < HIGH'),
    (['--random', '3', '--space', 'bs=sixty'], 'values must be numbers'),
    (['--random', '3', '--space', 'colour=1,2'], "'colour' is not a hyperparameter"),
    (['--grid', '--space', 'lr=loguniform:1e-4:1e-3'], 'a grid needs lists'),
    (['--random', '2', '--cv', '1'], '--cv needs at least 2 folds'),
    (['--random', '2', '--space', 'lr=-1'], '--lr must be positive'),
])
def test_bad_search_input_exits_2(args, message, dataset_dir, tmp_path, capsys):
    code = run(['--data', str(dataset_dir), '--results', str(tmp_path / 'r.jsonl'), *TINY, *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and 'Traceback' not in err
    assert not (tmp_path / 'r.jsonl').exists()


def spy_on_test_loaders(monkeypatch):
    made = []
    real = loader.batches

    def batches(*args, **kwargs):
        dl = real(*args, **kwargs)
        if kwargs.get('test'):
            made.append(dl)
        return dl
    monkeypatch.setattr(loader, 'batches', batches)
    return made


@pytest.mark.parametrize('cv,seeds', [(0, 1), (2, 1), (0, 3)])
def test_search_runs_once_and_tests_the_best_once_per_seed(cv, seeds, dataset_dir, tmp_path, monkeypatch):
    test_loaders = spy_on_test_loaders(monkeypatch)
    results = tmp_path / 'r.jsonl'
    code = run(['--data', str(dataset_dir), '--results', str(results), '--random', '3', '--cv', str(cv),
                '--seeds', str(seeds), '--space', 'bs=16,32', 'h=16,32', *TINY])
    assert code == 0
    assert sum(dl.passes for dl in test_loaders) == seeds
    recs = record.read(results)
    trials = [r for r in recs if r['search']['role'] == 'trial']
    refits = [r for r in recs if r['search']['role'] == 'refit']
    assert len(trials) == 3 and {r['seed'] for r in trials} == {0}
    assert sorted(r['seed'] for r in refits) == list(range(seeds))
    assert all(r['test_acc'] is None for r in trials) and all(r['test_acc'] is not None for r in refits)
    best = max(trials, key=lambda r: r['valid_acc'])
    assert all(r['search']['params'] == best['search']['params'] for r in refits)
    if cv:
        assert all(len(r['fold_valid_acc']) == 2 for r in trials)


def test_resume_runs_only_the_missing_trials(dataset_dir, tmp_path, capsys):
    results = tmp_path / 'r.jsonl'
    argv = ['--data', str(dataset_dir), '--results', str(results), '--grid', '--space', 'lr=1e-3,5e-4',
            'bs=16,32', 'h=16', *TINY]
    assert run(argv) == 0
    lines = results.read_text().splitlines()
    assert len(lines) == 5
    results.write_text('\n'.join(lines[:2]) + '\n')  # interrupted after two trials
    capsys.readouterr()
    assert run(argv) == 0
    out = capsys.readouterr()
    assert '2 ran, 2 already recorded' in out.out and '1 ran, 0 already recorded' in out.out
    recs = record.read(results)
    assert sorted(r['search']['trial'] for r in recs if r['search']['role'] == 'trial') == [1, 2, 3, 4]


def test_leaderboard_shows_both_searches(dataset_dir, tmp_path):
    results = tmp_path / 'r.jsonl'
    common = ['--data', str(dataset_dir), '--results', str(results), '--space', 'bs=16', 'h=16,32', *TINY]
    assert run(common + ['--grid', '--space', 'lr=1e-3', 'bs=16', 'h=16,32']) == 0
    assert run(common + ['--random', '2']) == 0
    text = rendered(results)
    assert '| grid ' in text and '| random ' in text
    assert '#### grid search' in text and '#### random search' in text
    assert 'Refits compared' in text
    assert re.search(r'\(figures/w4-[a-z0-9-]+-params\.png\)', text)
    # a trial run again by later code that keys it differently (a changed default): the table shows its latest run
    first = next(r for r in record.read(results)
                 if r['search'] == dict(r['search'], kind='grid', role='trial', trial=1))
    record.append(results, dict(first, key='0' * 16, started_at='2099-01-01T00:00:00+00:00', valid_acc=0.987,
                                config=dict(first['config'], head_lr=first['config']['head_lr'] / 2)))
    grid = rendered(results).split('#### grid search')[1].split('####')[0]
    assert '98.70' in grid and len([line for line in grid.splitlines() if re.match(r'\| 1 ', line)]) == 1
    assert re.search(r'\| grid +\| 0 +\| hold-out +\| 2 ', rendered(results))
