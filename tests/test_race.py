"""The race's rungs are prefixes of the whole run, and successive halving keeps what it should."""
from pathlib import Path

import pytest

from bench.analysis import replay
from bench.declare import record
from bench.images import data
from bench.sweep import race
from bench.train import runner
from tests.helpers import rec, tiny_config

REPO = Path(__file__).resolve().parents[1]

CPU = record.Hardware('cpu', 'cpu: test (2 cores)')


@pytest.mark.parametrize('strategy,stop_at', [('full', 0.25), ('lp_ft', 0.5)])
def test_a_run_stopped_early_is_the_whole_runs_prefix(images, strategy, stop_at):
    # tiny data: 60 training images in batches of 8 -> 8 batches an epoch, 2 epochs = 16 steps; lp_ft's linear probe is
    # the first epoch, so a stop at 0.25 ends inside it and one at 0.75 inside the fine-tune
    split = data.split(images, valid_frac=0.25)
    settings = dict(strategy=strategy, epochs=2, bs=8, backbone='resnet18', weights='none', head='linear',
                    cache_features='off')
    whole = runner.train(tiny_config(CPU, **settings), images, split, test=False, log=lambda line: None)
    part = runner.train(tiny_config(CPU, stop_at=stop_at, **settings), images, split, log=lambda line: None)
    steps = int(stop_at * 16)
    assert part['epochs'][-1]['epoch'] == pytest.approx(steps / 8)
    assert part['valid_curve'][-1]['epoch'] == pytest.approx(steps / 8)
    here = [p for p in whole['valid_curve'] if p['epoch'] == pytest.approx(steps / 8)]
    assert here, 'the whole run has a validation point where the part stopped'
    assert part['valid_loss'] == pytest.approx(here[0]['valid_loss'], rel=1e-5)
    assert part['valid_acc'] == here[0]['valid_acc']
    assert part['test_acc'] is not None  # a stopped run is still tested where asked
    assert sum(e['train_seconds'] for e in part['epochs']) == pytest.approx(part['train_seconds'])
    assert part['epochs'][-1]['epoch'] < whole['epochs'][-1]['epoch']  # (steps, not seconds: a loaded machine)


# ---- successive halving --------------------------------------------------------------------------------------

def test_rungs_shorter_than_an_epoch_are_skipped():
    assert race.rungs(2) == (0.5, 1.0)  # W7's 2-epoch runs: half a run, then the whole
    assert race.rungs(4) == (0.25, 0.5, 1.0)
    assert race.rungs(1) == (1.0,)
    assert race.sizes(24, 4) == [24, 12, 6] and race.sizes(9, 2) == [9, 5]


def test_each_rung_keeps_the_better_half_ties_to_the_smaller_lr():
    c = race.Candidate
    scores = {c('full', -7): .80, c('full', -8): .80, c('bitfit', -6): .90, c('lora', -6): None, c('partial', -7): .5}
    assert race.survivors(scores) == [c('bitfit', -6), c('full', -8), c('full', -7)]  # a failed run is out
    one = {c('full', -7): .9, c('full', -8): .9, c('full', -6): .9, c('bitfit', -6): .5, c('lora', -6): .6}
    assert race.survivors(one) == [c('full', -8), c('full', -7), c('full', -6), c('lora', -6)]  # two strategies


def test_finalists_are_the_strategies_validation_cannot_tell_from_the_leader():
    c = race.Candidate
    # 200 validation images at 90%: one standard error is 2.1 pp; one candidate per strategy, its best LR
    scores = {c('lora', -7): .90, c('lora', -6): .89, c('bitfit', -7): .885, c('partial', -7): .88,
              c('full', -7): .87, c('llrd', -7): .70}
    assert race.finalists(scores, 200) == [c('lora', -7), c('bitfit', -7), c('partial', -7)]
    assert race.finalists(scores, 100_000) == [c('lora', -7), c('bitfit', -7)]  # two at least
    close = {c(s, -7): .9 for s in ('a', 'b', 'c', 'd', 'e')}
    assert len(race.finalists(close, 200)) == race.MAX_FINALISTS


def test_the_finals_keep_the_finalists_whose_seeds_fit_the_budget_left_the_best_two_always():
    c = race.Candidate
    finals = [c('lora', -7), c('bitfit', -7), c('full', -7), c('partial', -7)]
    cost = {'lora': 10, 'bitfit': 5, 'full': 20, 'partial': 1}
    assert race.affordable(finals, lambda f: cost[f.strategy], left_s=1e9) == finals
    assert race.affordable(finals, lambda f: cost[f.strategy], left_s=35) == finals[:3]
    assert race.affordable(finals, lambda f: cost[f.strategy], left_s=0) == finals[:2]


# ---- the race replayed on an exhaustive sweep -----------------------------------------------------------------

def grid_record(strategy, lr, curve, test, seed=0, role='grid'):
    """A W7-like tuned record: 2 epochs of 25 steps, validation points at 0.48, 1, 1.48 and 2 epochs."""
    r = rec(strategy, seed, test, experiment='w7', backbone='tf_efficientnet_lite0', lr=lr, dataset='uc_merced:ab',
            secs=10.0)
    r['config'].update(bs=32, epochs=2, head_lr=10 * lr)
    r['key'] = record.run_key(r['config'], {'tune': 'lr'}, r['device'])
    r.update(train_images=800, valid_images=200, valid_acc=curve[-1], eval_seconds=1.0,
             valid_curve=[dict(epoch=e, valid_acc=v) for e, v in zip((0.48, 1, 1.48, 2), curve)],
             tune=dict(kind='body', field='lr', head_mult=10, grid=[1e-4, 3.2e-4, 1e-3], role=role))
    return r


def test_the_replay_runs_the_race_on_the_curves_of_a_sweep():
    # full starts last at half a run and is dropped there; bitfit leads then and ends behind lora, the winner on test
    curves = {'bitfit': [.5, .9, .9, .90], 'lora': [.5, .8, .85, .91], 'full': [.5, .5, .7, .93]}
    records = [grid_record(s, lr, [v - (lr != 3.2e-4) * .1 for v in curve], .9 + .01 * (s == 'lora'))
               for s, curve in curves.items() for lr in (1e-4, 3.2e-4, 1e-3)]
    records += [grid_record(s, 3.2e-4, curves[s], .9 + .01 * (s == 'lora') + .001 * seed, seed, role='seed')
                for s in curves for seed in (1, 2)]
    # an earlier code version's run of one grid point, keyed differently and later in the file: the replay reads the
    # point's latest run, as the tables do
    records.append(dict(grid_record('full', 3.2e-4, [.5, .99, .99, .99], .99), key='earlier code',
                        started_at='2025-01-01T00:00:00+00:00'))
    found, = replay.replay(records, 'w7')
    assert found.exact and [len(r) for r in found.rungs] == [9, 5]
    assert found.rungs[1][0] == race.Candidate('bitfit', -7)  # the leader at half a run (epoch 1 of 2)
    assert {c.strategy for c in found.rungs[1]} == {'bitfit', 'lora'}
    assert found.finalists == [race.Candidate('lora', -7), race.Candidate('bitfit', -7)]
    assert found.winner == 'lora' and found.kept_winner
    assert found.seconds < found.exhaustive_s == pytest.approx(15 * (10 + 1))  # 9 grid runs, 6 seeds: once each


def test_the_race_keeps_w7s_exhaustive_winner_among_its_finalists_on_every_dataset():
    # the committed records of W7's tuned sweep (every strategy, every LR, 3 seeds at the chosen one)
    replays = replay.replay(record.read(REPO / 'reports' / 'results.jsonl'), 'w7')
    assert {r.dataset for r in replays} >= {'cifar10', 'caltech101', 'uc_merced', 'pbc_blood_cells'}
    for r in replays:
        assert r.exact, r.dataset  # W7's curves have a point where each rung stops
        assert r.kept_winner, f'{r.dataset}: {r.winner} not among {r.finalists}'
        assert r.seconds < r.exhaustive_s
