"""The leaderboard rendered from hand-made records: seeds pooled per hardware, paired verdicts, error rows,
tolerance of bad lines, determinism."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import leaderboard as script
from bench.analysis import stats
from bench.declare import record
from bench.report import leaderboard
from tests.helpers import FIXTURE, rec, rendered

REPO = Path(__file__).resolve().parents[1]


def three_seeds(strategy, accs, secs=(10.0, 10.0, 10.0), **kw):
    return [rec(strategy, s, a, secs=t, **kw) for s, (a, t) in enumerate(zip(accs, secs))]


def table_lines(text, section):
    """Each row of the section's tables as one line: its decision columns, then its columns folded below the table."""
    part = text.split(section)[1].split('\n## ')[0]
    rows, table, folded = [], [], False
    for line in part.splitlines() + ['']:
        if line.startswith('|'):
            table.append(line)
            continue
        if table:
            body = table[2:]  # the header and its rule
            if folded:
                rows[-len(body):] = [a + b for a, b in zip(rows[-len(body):], body)]
            else:
                rows += body
            table = []
        folded = line.startswith('<details>') or (folded and not line.startswith('</details>'))
    return rows


def test_rows_aggregate_seeds_and_sort_by_test_accuracy():
    text = leaderboard.render(FIXTURE)
    rows = [r for r in table_lines(text, '# W1') if 'resnet18' in r]
    assert [r.split('|')[1].strip() for r in rows] == ['partial', 'full', 'zero_shot']
    assert '91.00 ± 1.41' in rows[1] and '| 2 ' in rows[1] and '11.0 ± 1.4' in rows[1]


def test_paired_interval_matches_a_hand_computed_example():
    best = stats.Row('a', three_seeds('full', [0.90, 0.92, 0.91]))
    other = stats.Row('b', three_seeds('partial', [0.85, 0.88, 0.86]))
    iv, n = stats.paired_difference(other, best)
    # differences -5, -4, -5 pp: mean -4.667, sd 0.5774, sem 0.3333, t(0.975, 2 df) = 4.3027
    assert n == 3 and iv.mean == pytest.approx(-14 / 3)
    assert iv.lo == pytest.approx(-14 / 3 - 4.302653 / 3, abs=1e-4)
    assert iv.hi == pytest.approx(-14 / 3 + 4.302653 / 3, abs=1e-4)
    assert not iv.includes_zero
    verdict, words = stats.verdict(other, best)
    assert verdict == 'worse'
    assert words.startswith('a beats b by 4.7 pp (95% CI 3.2 to 6.1, n = 3, paired)')


def test_time_ratio_is_the_geometric_mean_of_paired_ratios():
    best = stats.Row('a', three_seeds('full', [0.9] * 3, secs=(10.0, 20.0, 40.0)))
    other = stats.Row('b', three_seeds('partial', [0.8] * 3, secs=(5.0, 10.0, 20.0)))
    ratio = stats.paired_ratio(other, best)
    assert ratio.mean == pytest.approx(0.5) and ratio.lo == pytest.approx(0.5) and ratio.n == 3


def test_a_row_whose_interval_includes_zero_is_tied_with_the_best():
    records = three_seeds('full', [0.90, 0.92, 0.91]) + three_seeds('partial', [0.91, 0.89, 0.905])
    text = leaderboard.render(records)
    rows = table_lines(text, '# W1')
    assert '| best ' in rows[0] and '| tied ' in rows[1]
    assert 'partial is tied with full: -0.8 pp (95% CI -5.9 to +4.2, n = 3, paired)' in text


def test_verdict_lines_under_each_table():
    records = three_seeds('partial', [0.56, 0.55, 0.57], secs=(5, 5, 5)) + three_seeds('full', [0.50, 0.48, 0.49])
    text = leaderboard.render(records)
    assert '- Best: **partial**, test accuracy 56.00 ± 1.00 % (n = 3).' in text
    assert '- partial beats full by 7.0 pp (95% CI' in text
    assert 'full trains in 2.00x the time of partial (95% CI 2.00 to 2.00)' in text


def test_fewer_than_three_seeds_give_no_verdict():
    records = [rec('full', 0, 0.9), rec('full', 1, 0.92), rec('partial', 0, 0.8), rec('partial', 1, 0.81)]
    text = leaderboard.render(records)
    assert 'No verdict is possible: the best row has 2 seeds' in text
    body = text.split('# W1')[1]
    assert ' beats ' not in body and 'tied with' not in body
    rows = table_lines(text, '# W1')
    assert '| no verdict ' in rows[1]


def test_a_table_with_no_test_score_yet_names_no_best():
    records = [rec('full', 0, 0.9), rec('partial', 0, 0.8)]
    for r in records:  # grid runs of a tuned sweep still choosing its LRs: scored on validation only
        r['test_acc'] = None
    text = leaderboard.render(records)
    assert '- No test accuracy yet: its runs are scored on validation only so far' in text
    rows = table_lines(text, '# W1')
    assert all('| best ' not in row for row in rows) and all('| no verdict ' in row for row in rows[1:])


def test_the_same_configuration_on_two_devices_is_never_pooled():
    records = three_seeds('full', [0.9, 0.9, 0.9], device='cpu: A (2 cores)') + \
        three_seeds('full', [0.5, 0.5, 0.5], device='NVIDIA H100')
    text = leaderboard.render(records)
    assert '### cpu: A (2 cores) · profile cpu' in text and '### NVIDIA H100 · profile cpu' in text
    rows = table_lines(text, '# W1')
    assert len(rows) == 2 and '90.00 ± 0.00' in ''.join(rows) and '50.00 ± 0.00' in ''.join(rows)
    assert '70.00' not in text



def test_a_row_shows_each_seeds_latest_run_even_where_code_versions_keyed_it_differently():
    """A later code version may key the same settings differently (a field added with its default): the row, its
    cells, its verdicts and the front page all read each seed's latest run, never both runs of one seed."""
    old = three_seeds('full', [0.30, 0.32, 0.34], secs=(50.0, 50.0, 50.0))
    new = [dict(r, key=f'new{i}', started_at='2026-02-01T00:00:00+00:00', test_acc=acc, train_seconds=20.0)
           for i, (r, acc) in enumerate(zip(three_seeds('full', [0.0] * 3), (0.40, 0.42, 0.44)))]
    records = [new[0], *old, *new[1:]]  # the file need not hold a seed's runs in time order
    row, = stats.tables(stats.latest_per_run(records)[0])[0].rows
    assert [r['key'] for r in row.records] == ['new0', 'new1', 'new2'] and row.n == 3
    text = leaderboard.render(records + three_seeds('partial', [0.1, 0.1, 0.1]))
    full, = [r for r in table_lines(text, '# W1') if r.startswith('| full')]
    assert '42.00 ± 2.00' in full and '20.0 ± 0.0' in full and '| 3 ' in full
    assert 'test accuracy 42.00 ± 2.00 % (n = 3)' in text
def test_a_torn_or_foreign_line_still_renders(tmp_path, capsys):
    results = tmp_path / 'results.jsonl'
    for r in FIXTURE:
        record.append(results, r)
    with open(results, 'a') as f:
        f.write('{"hello": "world"}\n[1, 2]\n{"key": "torn", "conf')
    text = rendered(results)
    assert '# W1' in text and '# W2' in text
    assert capsys.readouterr().err.count('is not a run record') == 3


def test_error_rows_are_listed_apart_and_grouped():
    text = leaderboard.render(FIXTURE)
    assert 'Failed runs' in text
    line = next(line for line in text.splitlines() if 'no weights offline' in line)
    assert 'resnet50' in line and 'full, partial' in line


def test_a_later_success_hides_an_earlier_error():
    failed = rec('full', 0, None, error='boom')
    text = leaderboard.render([failed, rec('full', 0, 0.9)])
    assert 'boom' not in text and '90.00' in text


def test_provenance_and_one_section_per_experiment():
    text = leaderboard.render(FIXTURE)
    assert text.count('\n# W') == 2 and set(leaderboard.pages(FIXTURE)) == {'leaderboard.md', 'w1.md', 'w2.md'}
    assert 'Weights: file:w.safetensors. Code: deadbeef.' in text


def test_same_records_same_bytes(tmp_path):
    results = tmp_path / 'results.jsonl'
    for r in FIXTURE:
        record.append(results, r)
    first = leaderboard.render_file(results).read_bytes()
    assert leaderboard.render_file(results).read_bytes() == first
    shuffled = tmp_path / 'other' / 'results.jsonl'
    for r in reversed(FIXTURE):
        record.append(shuffled, r)
    assert leaderboard.render_file(shuffled).read_bytes() == first


def test_rendering_imports_no_torch_timm_or_fastai():
    code = ('import sys, bench.report.leaderboard; heavy = {"torch", "timm", "fastai", "peft"} & set(sys.modules); '
            'sys.exit(", ".join(sorted(heavy)) or None)')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_optimizer_state_and_accumulation_are_shown_where_recorded():
    recs = [dict(rec(s, seed, 0.9 - i / 10), optimizer_state_mb=mb, accumulate=acc, micro_bs=64 // acc,
                 batchnorm_updating=[0, 49]) for i, (s, mb, acc) in enumerate((('full', 25.8, 1), ('lora', 1.5, 2)))
            for seed in range(3)]
    text = leaderboard.render(recs)
    assert '| optimizer state MB' in text and re.search(r'\| 25\.8 ± 0\.0 +\|', text) and re.search(r'\| 1\.5 ± 0\.0 +\|', text)
    assert '2 passes of 32' in text and 'BN stats update 0/49' in text
    assert '| optimizer state MB' not in leaderboard.render(FIXTURE)  # records from before it was measured


def test_empty_results_render_a_placeholder(tmp_path):
    results = tmp_path / 'results.jsonl'
    results.write_text('')
    assert 'No runs recorded yet' in leaderboard.render_file(results).read_text()


def test_cli_without_results_file_exits_2(tmp_path, capsys):
    assert script.main(['--results', str(tmp_path / 'none.jsonl')]) == 2
    assert 'no results file' in capsys.readouterr().err


def test_append_is_one_line_per_record(tmp_path):
    path = tmp_path / 'r.jsonl'
    record.append(path, rec('full', 0, 0.5))
    record.append(path, rec('full', 1, 0.5))
    assert [json.loads(line)['seed'] for line in path.read_text().splitlines()] == [0, 1]


def at(accs, name):
    return stats.Row(name, three_seeds(name, accs))


def test_stability_flags_a_pair_that_changes_order_and_lets_ties_move():
    from bench.tools import stability
    b = {'a': at([0.60, 0.61, 0.62], 'a'), 'b': at([0.50, 0.52, 0.51], 'b'), 'c': at([0.55, 0.50, 0.60], 'c')}
    holds = {'a': at([0.70, 0.71, 0.72], 'a'), 'b': at([0.69, 0.72, 0.70], 'b'), 'c': at([0.65, 0.66, 0.64], 'c')}
    lines, broken = stability.compare(b, holds)
    assert not broken and lines[-1] == 'The ranking holds: 0 of 3 pairs separated at both budgets, none of them changing order.'
    flips = {'a': at([0.50, 0.51, 0.52], 'a'), 'b': at([0.60, 0.62, 0.61], 'b'), 'c': at([0.55, 0.56, 0.54], 'c')}
    lines, broken = stability.compare(b, flips)
    assert broken and '- a vs b: ahead at B, behind at 2B' in lines


def test_stability_without_comparable_files_is_one_sentence(tmp_path, capsys):
    from bench.tools import stability
    assert stability.main([str(tmp_path / 'B.jsonl'), str(tmp_path / '2B.jsonl')]) == 2
    assert capsys.readouterr().err == f'error: no results file at {tmp_path / "B.jsonl"}\n'
    (tmp_path / 'B.jsonl').write_text('not a record\n')
    (tmp_path / '2B.jsonl').write_text('')
    assert stability.main([str(tmp_path / 'B.jsonl'), str(tmp_path / '2B.jsonl')]) == 2
    assert 'hold no experiment in common' in capsys.readouterr().err


def test_stability_compares_each_machines_table_in_its_datasets_metric(tmp_path, capsys):
    """Caltech-101 rows are compared in mean per-class accuracy (here top-1 keeps its order while the declared metric
    flips), and B's records of another machine are a table of their own, not pooled with this one's."""
    from bench.tools import stability
    here, there = 'cpu: this (2 cores)', 'cpu: that (2 cores)'
    caltech = dict(experiment='w6', dataset='caltech101:abc')

    def runs(top1, class_mean, device=here):
        return [r for name in ('a', 'b') for r in
                [rec(name, s, top1[name][s], class_acc=class_mean[name][s], device=device, **caltech)
                 for s in range(3)]]
    ahead, behind = [0.80, 0.81, 0.82], [0.70, 0.72, 0.71]
    budget = runs({'a': ahead, 'b': behind}, {'a': ahead, 'b': behind})
    budget += runs({'a': behind, 'b': ahead}, {'a': behind, 'b': ahead}, device=there)
    double = runs({'a': ahead, 'b': behind}, {'a': behind, 'b': ahead})
    for name, recs in (('B.jsonl', budget), ('2B.jsonl', double)):
        for r in recs:
            record.append(tmp_path / name, r)
    assert stability.main([str(tmp_path / 'B.jsonl'), str(tmp_path / '2B.jsonl')]) == 1
    out = capsys.readouterr().out
    assert out.count('## w6') == 1 and f'## w6 · caltech101 · {here}, by test mean per-class accuracy' in out
    assert '- resnet18 a vs resnet18 b: ahead at B, behind at 2B' in out


def two_datasets():
    """W5 on CIFAR-10 (top-1) and W6 on Caltech-101 (mean per-class), 3 seeds, 3 strategies on one backbone:
    full > partial > feature_extract on CIFAR; on Caltech feature_extract ties full, and partial is last."""
    out = []
    for seed in range(3):
        jitter = 0.002 * seed
        for strategy, top1, secs in (('full', 0.90, 30.0), ('partial', 0.80, 15.0), ('feature_extract', 0.60, 3.0)):
            out.append(rec(strategy, seed, top1 + jitter, experiment='w5', backbone='lite0', secs=secs,
                           dataset='cifar10:abc', class_acc=top1 + jitter))
        for strategy, top1, cls, secs in (('full', 0.91, 0.880, 60.0), ('partial', 0.85, 0.70, 30.0),
                                          ('feature_extract', 0.92, 0.881, 6.0)):
            wobble = (0.01, -0.01, 0.0)[seed] if strategy == 'feature_extract' else 0.0
            out.append(rec(strategy, seed, top1 + jitter, experiment='w6', backbone='lite0', secs=secs,
                           dataset='caltech101:def', class_acc=cls + jitter + wobble))
    return out


def test_a_dataset_with_a_declared_metric_is_ranked_by_it_and_shows_both():
    text = leaderboard.render(two_datasets())
    w6 = text[text.index('# W6'):]
    table = w6[w6.index('| strategy'):w6.index('\n\n', w6.index('| strategy'))]
    folded = w6[w6.index('| strategy', w6.index('<details>')):]
    assert '**test mean per-class acc %**' in table.splitlines()[0]  # the decision's columns: the declared metric
    assert 'test acc %' in folded.splitlines()[0] and 'test acc %' not in table  # the other, folded below
    assert '- Best: **feature_extract**, test mean per-class accuracy 88.' in w6  # by its metric, not by top-1 (full 91.x)


def test_cross_dataset_section_ranks_tests_and_recommends():
    text = leaderboard.render(two_datasets())
    across = text[text.index('### Across datasets: lite0'):]
    rows = {line.split('|')[1].strip(): line for line in across.splitlines() if line.startswith('| ')}
    assert '90.2 (1)' in rows['full'] and '88.2 (2)' in rows['full']  # rank 1 on CIFAR, 2 on Caltech
    assert 'Friedman test over 2 datasets and 3 strategies' in across and "Kendall's W" in across
    assert 'full > partial' in across  # significant on both datasets
    assert 'Flips between datasets, significant both ways: feature_extract vs partial' in across
    # feature_extract ties the best on Caltech but loses significantly on CIFAR: the recommendation is full
    assert '**Recommendation for lite0**: **full**' in across


def test_the_front_page_answers_first_and_links_a_page_per_experiment(tmp_path):
    results = tmp_path / 'results.jsonl'
    for r in FIXTURE:
        record.append(results, r)
    front = leaderboard.render_file(results).read_text()
    assert (tmp_path / 'w1.md').read_text().startswith('# W1') and (tmp_path / 'w2.md').exists()
    answers = front.split('## How to read the tables')[0]
    assert len(answers.splitlines()) <= 30  # a first screen: the answers before the guide
    w1 = next(line for line in answers.splitlines() if line.startswith('| [W1](w1.md)'))
    assert '**partial** 95.0 ± 0.0' in w1 and 'test (2 cores) · cpu' in w1
    assert '[w1](w1.md) · [w2](w2.md)' in answers
    assert 'Learning curves' not in front and 'Learning curves' in (tmp_path / 'w1.md').read_text()
