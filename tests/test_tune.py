"""Tuning (bench/sweep/tune.py): the grid and its edges on known inputs, choices made on validation only, a flag a strategy
does not read leaves its runs alone, and a real tuned sweep on the tiny data: grid, seeds at the chosen LR, resume,
and the leaderboard's evidence (chosen LR, tune s, LR-sensitivity figure, still improving)."""
import json

import pytest

from bench import finetune
from bench.analysis import stats
from bench.declare import record
from bench.declare.config import Config
from bench.report import leaderboard
from bench.sweep import tune
from bench.train import runner
from tests.helpers import TINY, rec, rendered, run_script


def test_half_decade_grids():
    assert [tune.lr_at(e) for e in range(-8, -3)] == [1e-4, 3.2e-4, 1e-3, 3.2e-3, 1e-2]
    assert all(tune.exponent_of(tune.lr_at(e)) == e for e in range(-12, 0))
    assert len({len(g.exponents) for g in tune.GRIDS.values()}) == 1  # the same number of points for every kind


@pytest.mark.parametrize('scores,best,next_,edge', [
    ({-8: .5, -7: .7, -6: .6}, -7, None, False),            # inside: chosen
    ({-8: .5, -7: .6, -6: .7}, -6, -5, False),              # upper edge: extend up
    ({-8: .7, -7: .6, -6: .5}, -8, -9, False),              # lower edge: extend down
    ({-8: .5, -7: .6, -6: .7, -5: .8, -4: .9}, -4, None, True),   # extended twice: the limit, at the edge
    ({-8: .6, -7: .6, -6: .5}, -8, -9, False),              # a tie goes to the smaller LR
    ({-8: .5, -7: .7, -6: None}, -7, None, False),          # a failed point (too high an LR) is no edge to extend
    ({-8: None, -7: None, -6: None}, None, None, False),    # every point failed
])
def test_choose_on_known_scores(scores, best, next_, edge):
    assert tune.choose(scores, (-8, -7, -6)) == tune.Choice(best, next_, edge)


def test_the_head_lr_follows_the_body_lr_and_a_probe_tunes_the_head():
    cfg = Config(strategy='full', lr=1e-4, head_lr=1e-3)
    assert (tune.at(cfg, -6).lr, tune.at(cfg, -6).head_lr) == (1e-3, 1e-2)
    probe = tune.at(Config(strategy='feature_extract', lr=5e-5, head_lr=1e-3), -5)
    assert (probe.lr, probe.head_lr) == (5e-5, 3.2e-3)
    assert tune.grid_of('zero_shot') is None


def test_a_setting_a_strategy_does_not_read_is_no_part_of_its_runs():
    full = Config(strategy='full').to_dict()
    assert record.run_key(full) == record.run_key({**full, 'unfreeze': 3, 'lora_r': 4, 'layer_decay': 0.5})
    assert record.run_key(full) != record.run_key({**full, 'head_lr': 3e-3})
    partial = Config(strategy='partial').to_dict()
    assert record.run_key(partial) != record.run_key({**partial, 'unfreeze': 3})
    probe = Config(strategy='feature_extract').to_dict()
    assert record.run_key(probe) == record.run_key({**probe, 'lr': 1.0, 'lr_mult': 10})


def tuned(strategy, seed, lr, valid, test, role='grid', **kw):
    """A tuned record: `lr` its body LR (head 10x), validation and test scores."""
    r = rec(strategy, seed, test, **kw)
    r['config'].update(lr=lr, head_lr=round(lr * 10, 12), dataset='tiny:abc')
    r.update(valid_acc=valid, key=record.run_key(r['config'], tune.IDENTITY, r['device']),
             tune=dict(kind='body', field='lr', head_mult=10, grid=[1e-4, 3.2e-4, 1e-3], role=role),
             lrs=[lr, lr * 10])
    return r


def test_the_choice_is_made_on_validation_never_on_test():
    records = [tuned('full', 0, 1e-4, valid=.50, test=.90), tuned('full', 0, 3.2e-4, valid=.70, test=.60),
               tuned('full', 0, 1e-3, valid=.60, test=.95)]
    (res,) = tune.results(records).values()
    assert res.chosen == 3.2e-4 and res.points == {1e-4: .5, 3.2e-4: .7, 1e-3: .6}
    assert res.seconds == pytest.approx(2 * (10 + 1))  # the two points not chosen: training + evaluation
    kept, _ = tune.chosen_records(records)
    assert [r['config']['lr'] for r in kept] == [3.2e-4]


def test_a_grid_point_run_again_by_later_code_counts_once_its_latest_run():
    """Two code versions may key one grid point differently: the choice, the grid's scores and its cost read the
    point's latest run, whatever order the file holds them in."""
    later = dict(tuned('full', 0, 1e-4, valid=.80, test=.90), key='later', started_at='2026-02-01T00:00:00+00:00')
    records = [later, tuned('full', 0, 1e-4, valid=.50, test=.90), tuned('full', 0, 3.2e-4, valid=.70, test=.60),
               tuned('full', 0, 1e-3, valid=.60, test=.95)]
    (res,) = tune.results(records).values()
    assert res.chosen == 1e-4 and res.points == {1e-4: .8, 3.2e-4: .7, 1e-3: .6}
    assert res.seconds == pytest.approx(2 * (10 + 1))


def test_a_tuned_table_shows_the_chosen_rows_their_lr_and_stands_apart_from_fixed_ones(tmp_path):
    grid = [tuned('full', 0, lr, valid=v, test=v) for lr, v in ((1e-4, .5), (3.2e-4, .7), (1e-3, .6))]
    seeds = [tuned('full', s, 3.2e-4, valid=.7, test=.7 + s / 100, role='seed') for s in (1, 2)]
    probe = [tuned('feature_extract', s, 1e-3, valid=.6, test=.6 + s / 100, role='seed') for s in (1, 2)]
    for r in probe:
        r['tune'].update(kind='head', field='head_lr', head_mult=None)
    probe_grid = [tuned('feature_extract', 0, 1e-3, valid=.6, test=.6)]
    for r in probe_grid:
        r['tune'].update(kind='head', field='head_lr', head_mult=None)
        r['config'].update(head_lr=1e-3)
    for r in probe:
        r['config'].update(head_lr=1e-3)
    fixed = [rec('full', s, .3) for s in range(3)]
    tables = stats.tables(grid + seeds + probe_grid + probe + fixed)
    assert [t.tuned for t in tables] == [True, False]
    full = next(row for row in tables[0].rows if row.label == 'full')
    assert full.n == 3 and {r['config']['lr'] for r in full.records} == {3.2e-4} and full.tuned.chosen == 3.2e-4
    text = leaderboard.render(grid + seeds + probe_grid + probe + fixed)
    assert 'each strategy at its tuned LR' in text and 'fixed LRs' in text
    assert text.index('each strategy at its tuned LR') < text.index('· fixed LRs')
    assert '0.00032 · 0.0032, tuned' in text
    assert 'tuning\'s other grid points took' in text


def test_a_chosen_run_without_a_test_score_is_said_never_shown_as_a_number():
    """A choice that changed after the sweep (a grid point rerun with --force, records merged from elsewhere) can
    fall on a grid run never scored on test: the row is over the seeds scored, and the page says which is missing."""
    grid = [tuned('full', 0, lr, valid=v, test=None) for lr, v in ((1e-4, .5), (3.2e-4, .7), (1e-3, .6))]
    for r in grid:
        r.update(test_acc=None, tested=None, test_loss=None)
    seeds = [tuned('full', s, 3.2e-4, valid=.7, test=.7 + s / 100, role='seed') for s in (1, 2, 3)]
    probe = [tuned('partial', s, 1e-3, valid=.6, test=.6, role='seed' if s else 'grid') for s in (0, 1, 2)]
    table, = stats.tables(grid + seeds + probe)
    full = next(row for row in table.rows if row.label == 'full')
    assert full.n == 3 and full.unscored == [0] and full.mean('test_acc') == pytest.approx(.72)
    text = leaderboard.render(grid + seeds + probe)
    assert 'Not scored on test: full seed 0' in text
    assert 'nan' not in text and 'None' not in text


def test_a_row_still_rising_at_its_end_is_marked():
    rows = []
    for s in range(3):
        r = rec('full', s, .8)
        r['valid_curve'] = [dict(epoch=e / 2, valid_acc=v) for e, v in zip(range(1, 5), (.2, .4, .6, .8 + s / 1000))]
        rows.append(r)
    row = stats.rows(rows)[0]
    t = stats.trend(row)
    assert t.rise == pytest.approx(20.1) and t.improving
    flat = [dict(r, valid_curve=[dict(epoch=1, valid_acc=.795 + r['seed'] / 50), dict(epoch=2, valid_acc=.8 + r['seed'] / 50)])
            for r in rows]
    assert not stats.trend(stats.rows(flat)[0]).improving  # rose 0.5 pp, the seeds end 2 pp apart: levelled
    text = leaderboard.render(rows + [rec('partial', s, .5) for s in range(3)])
    assert 'still improving (+20.1 pp)' in text and 'hold at this budget only' in text


@pytest.mark.slow
def test_a_tuned_sweep_runs_the_grid_then_the_seeds_at_the_chosen_lr_and_resumes(dataset_dir, tmp_path):
    results = tmp_path / 'r.jsonl'
    argv = ['--data', str(dataset_dir), '--results', str(results), *TINY, '--tune', 'lr', '--epochs', '2',
            '--strategy', 'full,feature_extract', '--seeds', '2']
    assert run_script(finetune, argv) == 0
    records = record.read(results)
    by = {s: [r for r in records if r['strategy'] == s] for s in ('full', 'feature_extract')}
    for strategy, recs in by.items():
        grid = [r for r in recs if r['tune']['role'] == 'grid']
        field = tune.grid_of(strategy).field
        scores = {tune.exponent_of(r['config'][field]): r['valid_acc'] for r in grid}
        choice = tune.choose(scores, tune.grid_of(strategy).exponents)
        assert len(grid) >= 3 and {r['seed'] for r in grid} == {0} and choice.next is None
        seeds = [r for r in recs if r['tune']['role'] == 'seed']
        assert [r['seed'] for r in seeds] == [1]  # seed 0 is the grid's run at the chosen LR
        assert seeds[0]['config'][field] == tune.lr_at(choice.best)
        assert all(len(r['valid_curve']) >= 4 for r in recs)
        latest = {r['key']: r for r in grid}.values()  # the chosen point's record, completed with its test
        assert {r['config'][field]: r['tested'] for r in latest} == {
            tune.lr_at(e): runner.TESTED_FROM_CHECKPOINT if e == choice.best else None for e in scores}
        assert all(r['test_acc'] is None for r in latest if r['tested'] is None)
        if strategy == 'full':  # the head at 10x the body, as the optimizer held them
            assert all(r['lrs'][-1] == pytest.approx(10 * r['config']['lr']) for r in recs)
    assert not list((tmp_path / 'cache' / 'checkpoints').glob('*'))  # kept weights go once scored or not chosen
    n = len(records)
    assert run_script(finetune, argv) == 0
    assert len(record.read(results)) == n  # everything recorded: nothing runs again
    text = rendered(results)
    assert (results.parent / 'figures').glob('*-tuned-lr.png')
    assert 'LR sensitivity' in text and ', tuned' in text


def test_the_dry_run_says_each_strategys_grid_runs_and_head_rule(dataset_dir, capsys):
    argv = ['--data', str(dataset_dir), *TINY, '--tune', 'auto', '--strategy', 'full,feature_extract,zero_shot',
            '--weights', 'none', '--seeds', '3', '--dry-run']
    assert run_script(finetune, argv) == 2  # zero_shot on random weights is refused: nothing to tune there
    argv.remove('--dry-run')
    argv[argv.index('full,feature_extract,zero_shot')] = 'full,feature_extract'
    assert run_script(finetune, [*argv, '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'tuning: lr in {0.0001, 0.00032, 0.001}' in out and 'head_lr = 10 x lr' in out
    assert 'tuning: head_lr in {0.001, 0.0032, 0.01}' in out and 'the head alone trains: its LR is tuned' in out
    assert out.count('then 3 seed runs at the chosen LR') == 2
    assert 'tiny: 4 classes, 80 training and 24 test images' in out and 'ranked by top-1 accuracy' in out
    configs = [json.loads(line.removeprefix('config: ')) for line in out.splitlines() if line.startswith('config: ')]
    assert [c['seed'] for c in configs] == [0, 0]  # one plan per strategy, at its first seed


def test_tuning_is_on_by_default_where_strategies_are_compared_only():
    assert tune.wanted('auto', compared=True) and not tune.wanted('auto', compared=False)
    assert tune.wanted('lr', compared=False) and not tune.wanted('off', compared=True)


def test_cpu_time_stolen_by_the_hypervisor_is_measured_and_shown():
    from bench.train import runner
    assert runner.stolen_share((100, 1000), (400, 2000)) == 0.3
    assert runner.stolen_share(None, (1, 2)) is None and runner.stolen_share((5, 10), (5, 10)) is None
    rows = [dict(rec('full', s, .8), cpu_steal=0.3 if s == 1 else 0.01) for s in range(3)]
    assert 'CPU steal up to 30%' in leaderboard.render(rows)
    assert 'CPU steal' not in leaderboard.render([dict(r, cpu_steal=0.02) for r in rows]).split('## ')[-1]


def test_a_strategy_that_trains_nothing_joins_the_tuned_table_as_it_is():
    assert tune.bookkeeping(Config(strategy='zero_shot'), 'seed') == {'tune': dict(kind='none', field=None,
                                                                                   role='seed')}
    floor = [dict(rec('zero_shot', s, .1), tune=dict(kind='none', field=None, role='seed')) for s in range(3)]
    for r in floor:
        r['config']['dataset'] = 'tiny:abc'
    grid = [tuned('full', 0, lr, valid=v, test=v) for lr, v in ((1e-4, .5), (3.2e-4, .7), (1e-3, .6))]
    table, = stats.tables(floor + grid)
    assert table.tuned and [row.label for row in table.rows] == ['full', 'zero_shot']
