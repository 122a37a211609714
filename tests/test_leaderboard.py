"""The leaderboard rendered from hand-made records: aggregation over seeds, order, error rows, determinism."""
import json

from bench import leaderboard, record


def rec(strategy, seed, test_acc, *, experiment='w1', backbone='resnet18', error=None, lr=1e-4, secs=10.0):
    config = dict(experiment=experiment, backbone=backbone, strategy=strategy, seed=seed, lr=lr, epochs=3, size=64)
    return dict(key=record.run_key(config), experiment=experiment, variant='', backbone=backbone, strategy=strategy,
                weights='file:w.safetensors sha256:abc', profile='quick', seed=seed, config=config, device='cpu: test',
                versions={'torch': '2'}, git_sha='deadbeef', started_at='2026-01-01T00:00:00+00:00', error=error,
                epochs=[] if error else [dict(epoch=1, train_loss=1.0, valid_loss=1.0, valid_acc=test_acc,
                                               train_seconds=secs, valid_seconds=1.0, trainable=5)],
                valid_acc=None if error else test_acc, test_acc=None if error else test_acc,
                test_loss=None if error else 1.234, train_seconds=None if error else secs,
                eval_seconds=None if error else 1.0, images_per_second=None if error else 100.0,
                peak_memory_mb=None if error else 512.0, params_total=None if error else 100,
                params_trainable=None if error else 5, image_size=64)


FIXTURE = [rec('full', 0, 0.90), rec('full', 1, 0.92, secs=12.0), rec('partial', 0, 0.95),
           rec('zero_shot', 0, 0.10), rec('full', 0, None, backbone='resnet50', error='no weights offline'),
           rec('partial', 0, None, backbone='resnet50', error='no weights offline'),
           rec('full', 0, 0.50, experiment='w2', backbone='vgg16')]


def test_rows_aggregate_seeds_and_sort_by_test_accuracy():
    text = leaderboard.render(FIXTURE)
    w1 = text.split('## W1')[1].split('## W2')[0]
    rows = [line for line in w1.splitlines() if line.startswith('| ') and 'resnet18' in line]
    assert [r.split('|')[1].strip() for r in rows] == ['partial', 'full', 'zero_shot']
    full = rows[1]
    assert '91.00 ± 1.41' in full and '| 2 ' in full and '11.0 ± 1.4' in full


def test_error_rows_are_listed_apart_and_grouped():
    text = leaderboard.render(FIXTURE)
    assert 'Failed runs' in text
    line = next(line for line in text.splitlines() if 'no weights offline' in line)
    assert 'resnet50' in line and 'full, partial' in line


def test_a_later_success_hides_an_earlier_error():
    failed = rec('full', 0, None, error='boom')
    text = leaderboard.render([failed, rec('full', 0, 0.9)])
    assert 'boom' not in text and '90.00' in text


def test_provenance_and_one_table_per_experiment():
    text = leaderboard.render(FIXTURE)
    assert text.count('## ') == 2
    assert 'Made on cpu: test. Profile: quick. Weights: file:w.safetensors.' in text


def test_same_records_same_bytes(tmp_path):
    results = tmp_path / 'results.jsonl'
    for r in FIXTURE:
        record.append(results, r)
    first = leaderboard.render_file(results).read_bytes()
    second = leaderboard.render_file(results).read_bytes()
    assert first == second
    shuffled = tmp_path / 'other' / 'results.jsonl'
    for r in reversed(FIXTURE):
        record.append(shuffled, r)
    assert leaderboard.render_file(shuffled).read_bytes() == first


def test_empty_results_render_a_placeholder(tmp_path):
    results = tmp_path / 'results.jsonl'
    results.write_text('')
    assert 'No runs recorded yet' in leaderboard.render_file(results).read_text()


def test_cli_without_results_file_exits_2(tmp_path, capsys):
    assert leaderboard.main(['--results', str(tmp_path / 'none.jsonl')]) == 2
    assert 'no results file' in capsys.readouterr().err


def test_append_is_one_line_per_record(tmp_path):
    path = tmp_path / 'r.jsonl'
    record.append(path, {'config': {}, 'key': 'a'})
    record.append(path, {'config': {}, 'key': 'b'})
    assert [json.loads(line)['key'] for line in path.read_text().splitlines()] == ['a', 'b']
