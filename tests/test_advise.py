"""bench/advise.py end to end on the tiny data: the plan, the race's records, the answer and its section, a rerun that
resumes, and every mistake a user can make ending in one sentence and exit 2 with nothing written."""
import os

import pytest

from bench import advise
from bench.declare import record
from bench.report import advice
from bench.sweep import race
from bench.train import runner
from tests.conftest import make_dataset
from tests.helpers import run_script

# three strategies x three LRs, 4 epochs of 4 steps: rungs at 1, 2 and 4 epochs
TINY = ['--backbone', 'test_resnet', '--weights', 'none', '--size', '16', '--resize', '16', '--bs', '16', '--epochs', '4',
        '--strategy', 'feature_extract,bitfit,norm_only', '--profile', 'cpu', '--no-render', '--cluster', 'local']
# (executors have tests of their own, tests/test_cluster.py; a race on Ray is below)


def cli(argv):
    return run_script(advise, argv)


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason='runs side by side need two cores')
def test_the_race_recommends_from_its_records_and_a_rerun_resumes(dataset_dir, tmp_path, capsys):
    """The race runs on worker processes (the pool, `--cluster auto`'s choice on a CPU: its probes, rungs and finals
    cross a process boundary, as on Ray's actors); its reruns on the local executor find its runs: the race's
    identities do not depend on where it ran."""
    results = tmp_path / 'r.jsonl'
    assert cli(['--data', str(dataset_dir), '--budget', '10m', '--results', str(results), *TINY, '--cluster',
                'pool']) == 0
    out = capsys.readouterr().out
    assert 'plan: 3 strategies, 16 px, every LR of its grid (3); whole runs of 4 epochs' in out
    assert 'image sizes the plan weighs: 16 px (--size)' in out
    assert '- Regime: 16 px, 16 steps, flat LR. W8 has no records here' in out  # the answer names its regime
    assert 'pool: ' in out and max(r['side_by_side'] for r in record.read(results)) >= 2
    assert 'of a 10:00 budget' in out and 'left · finals' in out  # the bar, over the whole answer
    recs = record.read(results)
    rungs = [r for r in recs if r['config']['stop_at'] < 1]
    assert sorted({r['config']['stop_at'] for r in rungs}) == [0.25, 0.5]
    assert len([r for r in rungs if r['config']['stop_at'] == 0.25]) == 9
    assert len([r for r in rungs if r['config']['stop_at'] == 0.5]) == 5
    assert all(r['test_acc'] is None for r in rungs)  # the race chooses on validation; test is for the finalists
    whole = [r for r in recs if r['config']['stop_at'] == 1]
    adv, = advice.advices(recs)
    assert len({r['key'] for r in whole}) == len(adv.scores[1.0]) + 2 * len(adv.finalists)  # the last rung's run is
    latest = {r['key']: r for r in whole if r['seed'] == 0}.values()                        # the first seed's, its
    assert {race.candidate_of(r): r['tested'] for r in latest} == {                          # test scored from its
        c: runner.TESTED_FROM_CHECKPOINT if c in adv.finalists else None for c in adv.scores[1.0]}  # kept weights
    assert 2 <= len(adv.finalists) <= race.MAX_FINALISTS and len(adv.scores[1.0]) in (3, 4)  # 5 -> 3 (+ a 2nd strategy)
    assert {row.n for row in adv.table.rows} == {race.SEEDS}
    # the same race recorded again by earlier code under other keys, later in the file: the answer reads each run's
    # latest record, its scores, finalists, seeds and time unchanged
    earlier = [dict(r, key=f'earlier {r["key"]}', started_at='2000-01-01T00:00:00+00:00', valid_acc=0.0,
                    test_acc=0.0, wall_seconds=1e6) for r in recs]
    twice, = advice.advices(recs + earlier)
    assert (twice.scores, twice.finalists, twice.wall_s) == (adv.scores, adv.finalists, adv.wall_s)
    assert [row.mean('test_acc') for row in twice.table.rows] == [row.mean('test_acc') for row in adv.table.rows]
    rec = adv.recommendation()
    assert f'**Use {rec.pick}**' in out and rec.pick in {c.strategy for c in adv.finalists}
    assert all(r['wall_seconds'] > r['train_seconds'] for r in recs)
    said = out.split('finalists: ')[1].splitlines()[0]
    assert said == ', '.join(str(c) for c in adv.finalists)
    # the same command again: every run is found, none is run
    assert cli(['--data', str(dataset_dir), '--budget', '10m', '--results', str(results), *TINY]) == 0
    assert '[1/' not in capsys.readouterr().out and len(record.read(results)) == len(recs)
    # interrupted after the last 4 of the first rung's 9 runs: the rerun finds those 4 first and runs the rest,
    # and every score still goes to its own candidate
    lines = results.read_text().splitlines(keepends=True)
    results.write_text(''.join(lines[5:9]))
    assert cli(['--data', str(dataset_dir), '--budget', '10m', '--results', str(results), *TINY]) == 0
    out = capsys.readouterr().out
    assert '4 already recorded' in out and out.split('finalists: ')[1].splitlines()[0] == said
    from bench.report import leaderboard
    text = leaderboard.render(record.read(results))
    section = text.split('# Advice')[1]
    # the pick is the cheapest finalist not practically worse: the rerun's finals have timings of their own
    again, = advice.advices(record.read(results))
    assert f'**Use {again.recommendation().pick}**' in section and '<details><summary>The race' in section
    assert 'W7 has no tuned records of test_resnet' in section


@pytest.mark.parametrize('argv,message', [
    (['--budget', 'soon'], "--budget 'soon' is not a duration"),
    (['--memory-limit-mb', '1', '--strategy', 'bitfit,full', '--size', '48', '--resize', '48'],
     'cannot train here with any strategy'),
    (['--backbone', 'resnet_nope'], 'resnet_nope'),
    (['--strategy', 'zero_shot'], 'no strategy to race'),
])
def test_mistakes_end_in_one_sentence_and_exit_2_with_nothing_written(argv, message, dataset_dir, tmp_path, capsys):
    results = tmp_path / 'r.jsonl'
    assert cli(['--data', str(dataset_dir), '--results', str(results), *TINY, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith('error: ')
    assert not results.exists()


def test_a_budget_too_small_is_told_the_smallest_that_would_do(dataset_dir, tmp_path, capsys):
    assert cli(['--data', str(dataset_dir), '--results', str(tmp_path / 'r.jsonl'), *TINY, '--budget', '2s']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('error: a budget of 0:02 is too small for an answer here: the smallest')
    assert int(err[-1].split('pass --budget ')[1].split('m or more')[0]) >= 1
    assert not (tmp_path / 'r.jsonl').exists()


def test_one_class_is_refused(tmp_path, capsys):
    folder = make_dataset(tmp_path / 'one')
    for extra in ('bee', 'cat', 'dog'):
        for split in ('train', 'test'):
            for f in (folder / split / extra).iterdir():
                f.unlink()
            (folder / split / extra).rmdir()
    assert cli(['--data', str(folder), '--results', str(tmp_path / 'r.jsonl'), *TINY]) == 2
    assert "has one class ('ant')" in capsys.readouterr().err
    assert not (tmp_path / 'r.jsonl').exists()


@pytest.mark.parametrize('text,seconds', [('90s', 90), ('15m', 900), ('1h', 3600), ('1h30m', 5400), ('20', 1200),
                                          ('2.5m', 150)])
def test_budgets_read_as_durations(text, seconds):
    assert advise.budget_seconds(text) == seconds
