"""Verdicts across datasets: does a ranking of strategies found on one dataset hold on another?

An experiment that `compare`s itself with others (W6 on Caltech-101 with W5 on CIFAR-10) gets a section per backbone
and hardware: each strategy's rank on each dataset (by that dataset's declared metric), its mean rank, a Friedman
test over the datasets with Kendall's W, every pair of strategies whose order holds (or flips) with a paired
difference significant on each dataset, and one recommendation: the cheapest strategy not significantly worse than
the best on any dataset. Reads tables (bench/stats.py); imports no torch.
"""
import math
import statistics
from collections import defaultdict
from itertools import combinations

from scipy import stats as sps
from tabulate import tabulate

from bench import stats

METRIC_SHORT = {'test_acc': 'top-1 %', 'test_class_acc': 'mean per-class %'}


def section(declared, tables):
    """Markdown lines: one cross-dataset block per (hardware, profile, backbone) seen on two datasets or more."""
    groups = defaultdict(dict)  # (fixed LRs, device, profile, backbone) -> dataset -> (table, {strategy: row})
    for table in tables:
        by_backbone = defaultdict(dict)
        for row in table.rows:
            first = row.records[0]
            if not first.get('variant'):
                by_backbone[first['backbone']][first['strategy']] = row
        for backbone, rows in by_backbone.items():
            groups[(not table.tuned, table.device, table.profile, backbone)][
                f'{table.dataset} ({table.experiment})'] = (table, rows)
    out = []
    for (fixed, device, profile, backbone), per_dataset in sorted(groups.items()):
        if len(per_dataset) < 2:
            continue
        common = sorted(set.intersection(*(set(rows) for _, rows in per_dataset.values())))
        if len(common) < 2:
            continue
        out += [f'### Across datasets: {backbone} · {device} · profile {profile} · '
                f'{"fixed LRs (earlier code)" if fixed else "each strategy at its tuned LR"}', '',
                *block(per_dataset, common), '']
    if out:
        out = ['Across datasets: each strategy\'s rank on each dataset (1 = best, by the dataset\'s declared metric; '
               'ties share a mean rank), and whether the order holds. A pair "holds" when one strategy beats the other '
               'on every dataset, each difference significant (paired 95% t interval over seeds excluding 0); it '
               '"flips" when each wins significantly somewhere. The recommendation is the cheapest strategy '
               '(training time relative to the fastest strategy on each dataset, geometric mean) that is not '
               'significantly worse than the best on any dataset.', '', *out]
    return out


def block(per_dataset, strategies):
    names = list(per_dataset)
    means = {d: {s: per_dataset[d][1][s].mean(per_dataset[d][0].metric) for s in strategies} for d in names}
    ranks = {d: dict(zip(strategies, sps.rankdata([-means[d][s] for s in strategies]))) for d in names}
    mean_rank = {s: statistics.mean(ranks[d][s] for d in names) for s in strategies}
    cost = relative_cost(per_dataset, strategies)
    order = sorted(strategies, key=lambda s: (mean_rank[s], s))
    headers = ['strategy'] + [f'{d}: {METRIC_SHORT[per_dataset[d][0].metric]} (rank)' for d in names] + \
        ['mean rank', 'time × fastest']
    rows = [[s] + [f'{100 * means[d][s]:.1f} ({ranks[d][s]:g})' for d in names] +
            [f'{mean_rank[s]:.2f}', f'{cost[s]:.2f}'] for s in order]
    lines = [tabulate(rows, headers=headers, tablefmt='github', disable_numparse=True), '']
    lines.append('- ' + friedman_words(means, strategies, names))
    held, flipped, unclear = pair_orders(per_dataset, strategies)
    lines.append(f'- Holds on all {len(names)} datasets, significant on each ({len(held)} of '
                 f'{len(held) + len(flipped) + unclear} pairs): ' + (', '.join(held) or 'none') + '.')
    lines.append('- Flips between datasets, significant both ways: ' + (', '.join(flipped) or 'none') + '.')
    lines.append('- ' + recommendation(per_dataset, strategies, cost))
    return lines


def relative_cost(per_dataset, strategies):
    """Each strategy's training time over the fastest strategy's on each dataset, geometric mean over datasets."""
    out = {}
    for s in strategies:
        logs = []
        for table, rows in per_dataset.values():
            secs = {t: rows[t].mean('train_seconds') for t in strategies}
            fastest = min(v for v in secs.values() if v > 0)
            logs.append(math.log(max(secs[s], 1e-9) / fastest))
        out[s] = math.exp(statistics.mean(logs))
    return out


def friedman_words(means, strategies, names):
    """Friedman's test of the strategies (treatments) over the datasets (blocks), with Kendall's W."""
    if len(strategies) < 3:
        return 'Friedman test: needs 3 strategies or more.'
    chi2, p = sps.friedmanchisquare(*[[means[d][s] for d in names] for s in strategies])
    w = chi2 / (len(names) * (len(strategies) - 1))
    agree = 'the datasets rank the strategies alike' if p < 0.05 else \
        'the datasets\' rankings do not agree beyond chance'
    return (f'Friedman test over {len(names)} datasets and {len(strategies)} strategies: χ² = {chi2:.2f}, '
            f'p = {p:.3f}; Kendall\'s W = {w:.2f} (1: the same order on every dataset, 0: no agreement): {agree}'
            + (' (with 2 datasets the test has little power: read W and the pairs below)' if len(names) < 3 else '')
            + '.')


def pair_orders(per_dataset, strategies):
    """(pairs holding on every dataset, pairs flipping, how many neither): 'a > b' words."""
    held, flipped, unclear = [], [], 0
    for a, b in combinations(strategies, 2):
        signs = set()
        for table, rows in per_dataset.values():
            iv, _ = stats.paired_difference(rows[a], rows[b], table.metric)
            signs.add(0 if iv is None or iv.includes_zero else (1 if iv.mean > 0 else -1))
        if signs == {1} or signs == {-1}:
            held.append(f'{a} > {b}' if signs == {1} else f'{b} > {a}')
        elif {1, -1} <= signs:
            flipped.append(f'{a} vs {b}')
        else:
            unclear += 1
    return held, flipped, unclear


def recommendation(per_dataset, strategies, cost):
    """The cheapest strategy tied with (or being) the best on every dataset."""
    safe = []
    for s in strategies:
        ok = True
        for table, rows in per_dataset.values():
            best = max(strategies, key=lambda t: rows[t].mean(table.metric))
            if s != best:
                kind, _ = stats.verdict(rows[s], rows[best], table.metric)
                ok &= kind == 'tied'
        if ok:
            safe.append(s)
    if not safe:
        return ('Recommendation: none; no strategy is within noise of the best on every dataset (the best differs '
                'between datasets, each significantly).')
    pick = min(safe, key=lambda s: (cost[s], s))
    others = [s for s in safe if s != pick]
    return (f'Recommendation: **{pick}**, the cheapest strategy ({cost[pick]:.2f}x the fastest\'s time) not '
            f'significantly worse than the best on any dataset'
            + (f'; also within noise everywhere: {", ".join(sorted(others, key=cost.get))}' if others else '') + '.')
