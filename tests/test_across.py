"""Verdicts across datasets (bench/analysis/across.py): the statistics on inputs whose answer is known by hand, and the
recommendation on four synthetic datasets in two domain groups."""
import math

import pytest

from bench.analysis import across, stats
from bench.declare import record
from tests.helpers import rec, rendered


def test_friedman_of_one_order_on_every_dataset_is_n_times_k_minus_1_with_full_agreement():
    means = {d: {'a': 90., 'b': 80., 'c': 70.} for d in 'wxyz'}  # 4 datasets, 3 strategies, the same order
    chi2, p, w = across.friedman(means, ['a', 'b', 'c'])
    assert chi2 == pytest.approx(4 * (3 - 1)) and w == pytest.approx(1.0)


def test_critical_difference_matches_demsar():
    # Demšar (2006), Table 5(a): q_0.05 = 2.569 for 4 classifiers; CD = q sqrt(k (k + 1) / (6 N))
    assert across.critical_difference(4, 4) == pytest.approx(2.569 * math.sqrt(20 / 24), abs=2e-3)


def test_nemenyi_tells_apart_ranks_further_apart_than_the_critical_difference():
    # 10 datasets, always a > b > c: mean ranks 1, 2, 3; CD(3, 10) = 2.343 sqrt(12 / 60) = 1.05
    means = {str(d): {'a': 90. + d, 'b': 80. + d, 'c': 70. + d} for d in range(10)}
    p = across.nemenyi(means, ['a', 'b', 'c'])
    assert p.loc['a', 'c'] < 0.05 < p.loc['a', 'b'] and p.loc['b', 'c'] > 0.05


def test_bayesian_signed_rank_probabilities():
    # every difference within the ROPE: every pairwise (Walsh) sum is too, so P(equivalent) is exactly 1
    assert across.practically([80.2, 70.1, 90.3, 60.0], [80., 70., 90., 60.]) == (0., 1., 0.)
    # a ahead by 5 pp on all 4 datasets: practically better, decisively; the order of the arguments is the answer's
    left, rope, right = across.practically([85., 75., 95., 65.], [80., 70., 90., 60.])
    assert left >= across.DECISIVE and right == 0.
    assert across.practically([80., 70., 90., 60.], [85., 75., 95., 65.])[2] == pytest.approx(left)
    with pytest.raises(ValueError):
        across.practically([1.], [2.])


# Four datasets, two natural and two specialized, 3 seeds; A is best everywhere and the slowest; B (cheaper) is
# within 0.3 pp of A everywhere but on PBC, where it trails by 2 pp with seeds 6 pp apart; C (cheapest) ties A on the natural datasets and loses 8 pp on the specialized ones;
# D loses 5 pp everywhere.
DATASETS = {'cifar10': 'top1', 'caltech101': 'class_mean', 'uc_merced': 'top1', 'pbc_blood_cells': 'class_mean'}
SECS = {'A': 40., 'B': 20., 'C': 5., 'D': 10.}


def four_domains(experiment='w7'):
    out = []
    for i, name in enumerate(DATASETS):
        specialized = name in ('uc_merced', 'pbc_blood_cells')
        base = 0.70 + 0.05 * i
        noisy = name == 'pbc_blood_cells'
        for strategy, delta in (('A', 0.), ('B', -0.02 if noisy else -0.003), ('C', -0.08 if specialized else -0.001),
                                ('D', -0.05)):
            for seed in range(3):
                jitter = (0.03, -0.03, 0.) if noisy and strategy == 'B' else (0.002, -0.002, 0.)
                acc = base + delta + jitter[seed] * (strategy != 'A')
                r = rec(strategy, seed, acc, experiment=experiment, backbone='lite0', secs=SECS[strategy],
                        dataset=f'{name}:{i}', class_acc=acc)
                out.append(dict(r, train_images=800, valid_images=200, test_images=420 if name == 'uc_merced' else 2000))
    return out


def block():
    (b,) = across.blocks(stats.tables(four_domains()))
    return b


def test_the_recommendation_is_the_cheapest_strategy_not_practically_worse_than_the_best():
    overall = across.recommend(block())
    assert overall.best == 'A' and overall.pick == 'B'
    assert 'D' in overall.out_bayes                     # 5 pp behind on all 4 datasets
    assert set(overall.out_loss) == {'C'}               # 8 pp behind on two datasets, over seeds
    assert set(overall.out_loss['C']) == {'uc_merced (w7)', 'pbc_blood_cells (w7)'}
    assert overall.remain == ['B', 'A']                 # cheapest first
    assert list(overall.trails) == ['pbc_blood_cells (w7)'] and overall.trails['pbc_blood_cells (w7)'].mean == \
        pytest.approx(-2.0)                             # said beside the pick: behind, within the seeds' noise


def test_each_domain_group_gets_its_own_recommendation_where_it_differs():
    b = block()
    groups = b.groups()
    assert groups == {'natural': ['caltech101 (w7)', 'cifar10 (w7)'],
                      'specialized': ['pbc_blood_cells (w7)', 'uc_merced (w7)']}
    assert across.recommend(b, groups['natural']).pick == 'C'       # ties A on photos, 8x cheaper
    assert across.recommend(b, groups['specialized']).pick == 'B'


def test_the_leaderboard_gives_w7_ranks_per_group_the_tests_the_bayesian_matrix_and_the_recommendation(tmp_path):
    from tests.test_leaderboard import two_datasets  # W5 and W6 on the same backbone and machine: their own block
    for r in four_domains() + two_datasets():
        record.append(tmp_path / 'results.jsonl', r)
    text = rendered(tmp_path / 'results.jsonl')
    assert 'Each run: 800 training, 200 validation and 420 test images. Ranked by test accuracy.' in text
    curves = [line for line in text.splitlines() if line.startswith('![Learning curves](figures/w7')]
    assert len(curves) == 4 and len(set(curves)) == 4 and '-uc-merced-' in ' '.join(curves)  # a figure per dataset
    w7 = text[text.index('# W7'):]
    section = w7[w7.index('### Across datasets: lite0'):]
    header = next(line for line in section.splitlines() if line.startswith('| strategy'))
    assert 'mean rank, natural' in header and 'mean rank, specialized' in header and 'uc_merced (w7)' in header
    assert 'Friedman test over 4 datasets and 4 strategies' in section
    assert 'Nemenyi post-hoc over 4 datasets' in section
    assert 'P(row practically better than column' in section and 'A > D' in section
    assert '**Recommendation for lite0**: **B**' in section
    assert 'on average it trails A by more than 1 pp on pbc_blood_cells (-2.0 pp, 95% CI' in section
    assert 'the interval does not lie wholly below -1 pp, so 3 seeds cannot call it practically worse' in section
    assert 'Natural (everyday photos): caltech101, cifar10: **C**' in section
    assert 'on any of the 2 datasets over seeds (too few datasets for the Bayesian test)' in section
    assert 'Specialized (aerial, medical): pbc_blood_cells, uc_merced: the same pick, **B**' in section
    assert text.count('![Critical-difference') == 1  # W7's; W6's two datasets draw none, nor borrow W7's
    cd = [line for line in section.splitlines() if line.startswith('![Critical-difference')]
    assert len(cd) == 1 and (tmp_path / cd[0].split('](')[1].rstrip(')')).stat().st_size > 1000
