"""Verdicts across datasets: does a ranking of strategies found on one dataset hold on others, and which strategy
should a practitioner use?

An experiment that runs on several datasets (W7) or `compare`s itself with others (W6 with W5) gets a block per
backbone, hardware and profile: each strategy's rank on each dataset (by that dataset's declared metric), its mean
rank overall and per domain group (natural, specialized), and:
- Friedman's test over the datasets with Kendall's W (scipy), and, from 4 datasets on, the Nemenyi post-hoc test
  and a critical-difference diagram (Demšar 2006; scikit-posthocs);
- from 4 datasets on, per pair of strategies, the probability that one is practically better than the other
  (more than ROPE, 1 pp, on a dataset's metric), from the Bayesian signed-rank test over the datasets' mean
  metrics (Benavoli et al., ICML 2014; baycomp), which says more than a p-value with few datasets;
- the pairs whose order holds (or flips) on every dataset, each significant over seeds (our paired t, which the
  libraries do not do: they see one number per dataset);
- one recommendation (`recommend`), overall and per domain group where it differs.
Reads tables (bench/analysis/stats.py); imports no torch.
"""
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

from scipy import stats as sps
from tabulate import tabulate

from bench.analysis import stats
from bench.declare.datasets import BY_FIELD, DATASETS, DOMAINS
from bench.declare.experiments import EXPERIMENTS

ROPE = 1.0            # pp: a difference smaller than this is practically none (region of practical equivalence)
DECISIVE = 0.95       # a posterior probability at least this decides a Bayesian comparison
ALPHA = 0.05          # Friedman's and Nemenyi's level
MIN_DATASETS = 4      # fewer datasets give the rank tests and the pairwise posteriors too little to stand on: the
                      # signed-rank test takes each dataset's mean as exact, so with 2 datasets any difference beyond
                      # the ROPE with the same sign on both gets P = 0.97, whatever the seeds say
INTERVALS = {1: 'the interval does not lie', 2: 'neither interval lies', 3: 'no interval lies'}
SAMPLES = 10_000      # draws of baycomp's posterior (fixed seed: the same records render the same bytes)


@dataclass
class Block:
    """One backbone's strategies on several datasets, on one hardware and profile, tuned or at fixed LRs."""
    fixed: bool
    device: str
    profile: str
    backbone: str
    per_dataset: dict     # 'dataset (experiment)' -> (stats.Table, {strategy: stats.Row})
    strategies: list      # the strategies every dataset has, sorted by name

    @property
    def names(self):
        return list(self.per_dataset)

    def domain(self, name):
        table = self.per_dataset[name][0]
        return DATASETS[table.dataset].domain if table.dataset in DATASETS else ''

    def means(self, names=None):
        """{dataset: {strategy: mean test metric over seeds, in %}} over `names` (default: every dataset)."""
        return {d: {s: 100 * self.per_dataset[d][1][s].mean(self.per_dataset[d][0].metric) for s in self.strategies}
                for d in (names or self.names)}

    def groups(self):
        """{domain: [datasets]} where the datasets span more than one declared domain, else {}."""
        out = defaultdict(list)
        for d in self.names:
            out[self.domain(d)].append(d)
        return dict(out) if len(out) > 1 and '' not in out else {}

    @property
    def rank_tests(self):
        """Whether the rank post-hoc and the pairwise posteriors have enough datasets and strategies to speak."""
        return len(self.names) >= MIN_DATASETS and len(self.strategies) >= 3


def experiment_blocks(records, exp):
    """The across-datasets blocks of experiment `exp`: over its own datasets and those of the experiments it
    compares itself with."""
    declared = EXPERIMENTS.get(exp)
    if declared is None or not (declared.compare or len(declared.datasets) > 1):
        return []
    mine = [r for r in records if r['experiment'] in (exp, *declared.compare)]
    return blocks(stats.tables(stats.latest_per_run(mine)[0]))


def single(table):
    """A one-dataset table as a Block, its rows by label: the recommendation rule on one dataset (the advisor's answer,
    the leaderboard's front page)."""
    rows = {row.label: row for row in table.rows}
    return Block(not table.tuned, table.device, table.profile, table.rows[0].records[0]['backbone'],
                 {table.dataset or table.experiment: (table, rows)}, sorted(rows))


def blocks(tables):
    """One Block per (tuned or not, hardware, profile, backbone) seen on two datasets or more with two strategies
    or more in common."""
    groups = defaultdict(dict)
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
        common = sorted(set.intersection(*(set(rows) for _, rows in per_dataset.values())))
        if len(per_dataset) >= 2 and len(common) >= 2:
            out.append(Block(fixed, device, profile, backbone, per_dataset, common))
    return out


# ---- statistics -------------------------------------------------------------------------------------------

def ranks(means):
    """{dataset: {strategy: rank}}, 1 = best, ties sharing their mean rank."""
    return {d: dict(zip(m, sps.rankdata([-v for v in m.values()]))) for d, m in means.items()}


def mean_ranks(means, strategies):
    r = ranks(means)
    return {s: statistics.mean(r[d][s] for d in means) for s in strategies}


def friedman(means, strategies):
    """(χ², p, Kendall's W) of the strategies (treatments) over the datasets (blocks)."""
    chi2, p = sps.friedmanchisquare(*[[means[d][s] for d in means] for s in strategies])
    return float(chi2), float(p), float(chi2 / (len(means) * (len(strategies) - 1)))


def nemenyi(means, strategies):
    """Nemenyi's post-hoc p-values after Friedman's test (scikit-posthocs), a pandas DataFrame by strategy."""
    import numpy as np
    import scikit_posthocs as sp
    p = sp.posthoc_nemenyi_friedman(np.array([[means[d][s] for s in strategies] for d in means]))
    p.index = p.columns = strategies
    return p


def practically(a, b):
    """(P(a better by more than ROPE), P(within ROPE), P(b better by more than ROPE)): baycomp's Bayesian
    signed-rank test over paired per-dataset values in pp (a Dirichlet process prior of weight 0.5 at 0)."""
    import baycomp
    import numpy as np
    if len(a) < 2:
        raise ValueError('the Bayesian signed-rank test needs two datasets or more')
    left, rope, right = baycomp.SignedRankTest.probs(np.asarray(a, float), np.asarray(b, float), rope=ROPE,
                                                     nsamples=SAMPLES, random_state=0)
    return float(left), float(rope), float(right)


def relative_cost(block, names=None):
    """Each strategy's training time over the fastest strategy's on each dataset, geometric mean over datasets."""
    out = {}
    for s in block.strategies:
        logs = []
        for d in names or block.names:
            rows = block.per_dataset[d][1]
            secs = {t: rows[t].mean('train_seconds') for t in block.strategies}
            fastest = min(v for v in secs.values() if v > 0)
            logs.append(math.log(max(secs[s], 1e-9) / fastest))
        out[s] = math.exp(statistics.mean(logs))
    return out


def behind(block, s, best, names):
    """{dataset: paired Interval (pp)} where `s` trails `best` by more than ROPE on average over seeds."""
    out = {}
    for d in names:
        table, rows = block.per_dataset[d]
        iv, _ = stats.paired_difference(rows[s], rows[best], table.metric)
        if iv is not None and iv.mean < -ROPE:
            out[d] = iv
    return out


def losses(block, s, best, names):
    """{dataset: Δ pp} where `s` is practically worse than `best` on that dataset: their paired 95% t interval over
    seeds lies below -ROPE."""
    return {d: iv.mean for d, iv in behind(block, s, best, names).items() if iv.hi < -ROPE}


@dataclass
class Recommendation:
    pick: str
    best: str
    p_worse: object             # P(best practically better than pick) over the datasets; None below MIN_DATASETS
    cost: float                 # pick's time over the fastest strategy's
    remain: list                # every candidate, cheapest first
    out_bayes: dict             # strategy -> P(best practically better) >= DECISIVE
    out_loss: dict              # strategy -> {dataset: Δ pp}: practically worse than the best there, over seeds
    n: int                      # datasets
    trails: dict                # dataset -> paired Interval: where the pick trails the best by more than ROPE on
                                # average, within the seeds' noise


def recommend(block, names=None):
    """The cheapest strategy not practically worse than the best, over `names` (default: every dataset).
    The best is the strategy with the lowest mean rank (then the highest mean metric). Another is out where the
    Bayesian signed-rank test over the datasets (from MIN_DATASETS on) gives P(the best is better by more than ROPE)
    >= DECISIVE, or where its seeds show it practically worse than the best on one dataset (`losses`)."""
    names = names or block.names
    means = block.means(names)
    mr = mean_ranks(means, block.strategies)
    average = {s: statistics.mean(means[d][s] for d in names) for s in block.strategies}
    best = min(block.strategies, key=lambda s: (mr[s], -average[s], s))
    cost = relative_cost(block, names)
    bayes = len(names) >= MIN_DATASETS
    p = {s: practically([means[d][best] for d in names], [means[d][s] for d in names])[0]
         if bayes and s != best else None for s in block.strategies}
    out_bayes = {s: p[s] for s in block.strategies if p[s] is not None and p[s] >= DECISIVE}
    out_loss = {s: lost for s in block.strategies if s != best and s not in out_bayes
                for lost in [losses(block, s, best, names)] if lost}
    remain = sorted((s for s in block.strategies if s not in out_bayes and s not in out_loss),
                    key=lambda s: (cost[s], s))
    pick = remain[0]
    trails = behind(block, pick, best, names) if pick != best else {}
    return Recommendation(pick, best, p[pick], cost[pick], remain, out_bayes, out_loss, len(names), trails)


# ---- words ------------------------------------------------------------------------------------------------

def section(blocks_, figures=None):
    """Markdown lines for every Block; `figures`: per block, in the same order, its [(caption, path)]."""
    if not blocks_:
        return []
    out = ['Across datasets: each strategy\'s rank on each dataset (1 = best, by the dataset\'s declared metric; ties '
           f'share a mean rank), its mean rank overall and per domain group, and whether the order holds. From '
           f'{MIN_DATASETS} datasets on, Nemenyi\'s post-hoc test after Friedman\'s draws the critical-difference '
           f'diagram (strategies joined by a bar are not told apart at {ALPHA}), and the Bayesian signed-rank test '
           f'over the datasets gives, per pair, the probability that one is practically better (by more than '
           f'{ROPE:g} pp); {DECISIVE} decides. That test takes each dataset\'s mean as exact (it sees no seeds): it '
           'weighs how consistently a difference recurs across datasets, not how noisy it is on each. A pair "holds" '
           'when one strategy beats the other on every dataset, each difference significant over seeds (paired 95% t '
           'interval excluding 0); it "flips" when each wins significantly somewhere. The recommendation is the cheapest strategy (training time over the fastest '
           'strategy\'s on each dataset, geometric mean) that is not practically worse than the best (the lowest '
           f'mean rank): neither by the Bayesian test (P >= {DECISIVE}, from {MIN_DATASETS} datasets on) nor on any '
           f'one dataset over seeds (the paired interval of its difference from the best below -{ROPE:g} pp).', '']
    for block, made in zip(blocks_, figures or [[]] * len(blocks_)):
        lrs = 'fixed LRs (earlier code)' if block.fixed else 'each strategy at its tuned LR'
        out += [f'### Across datasets: {block.backbone} · {block.device} · profile {block.profile} · {lrs}', '',
                *block_lines(block), '']
        out += [line for caption, path in made for line in (f'![{caption}]({path})', '')]
    return out


def block_lines(block):
    names, strategies = block.names, block.strategies
    means = block.means()
    r = ranks(means)
    groups = block.groups()
    mr = mean_ranks(means, strategies)
    group_mr = {g: mean_ranks(block.means(ds), strategies) for g, ds in groups.items()}
    cost = relative_cost(block)
    order = sorted(strategies, key=lambda s: (mr[s], s))
    metric = {d: block.per_dataset[d][0].metric for d in names}
    headers = (['strategy'] + [f'{d}: {BY_FIELD[metric[d]].short} (rank)' for d in names] +
               [f'mean rank, {g}' for g in groups] + ['mean rank', 'time × fastest'])
    rows = [[s] + [f'{means[d][s]:.1f} ({r[d][s]:g})' for d in names] + [f'{group_mr[g][s]:.2f}' for g in groups] +
            [f'{mr[s]:.2f}', f'{cost[s]:.2f}'] for s in order]
    lines = [tabulate(rows, headers=headers, tablefmt='github', disable_numparse=True), '']
    lines.append('- ' + friedman_words(means, strategies))
    if block.rank_tests:
        lines.append('- ' + nemenyi_words(means, order))
        lines += ['', *bayes_table(means, order), '']
    held, flipped, unclear = pair_orders(block)
    lines.append(f'- Holds on all {len(names)} datasets, significant on each ({len(held)} of '
                 f'{len(held) + len(flipped) + unclear} pairs): ' + (', '.join(held) or 'none') + '.')
    lines.append('- Flips between datasets, significant both ways: ' + (', '.join(flipped) or 'none') + '.')
    overall = recommend(block)
    lines.append(f'- **Recommendation for {block.backbone}**: ' + recommendation_words(overall))
    for g, ds in groups.items():
        within = recommend(block, ds)
        scope = f'{DOMAINS.get(g, g)}: {", ".join(d.split(" (")[0] for d in ds)}'
        lines.append(f'- {scope[0].upper() + scope[1:]}: ' + (
            recommendation_words(within) if within.pick != overall.pick else
            f'the same pick, **{within.pick}**.'))
    return lines


def friedman_words(means, strategies):
    if len(strategies) < 3:
        return 'Friedman test: needs 3 strategies or more.'
    chi2, p, w = friedman(means, strategies)
    agree = 'the datasets rank the strategies alike' if p < ALPHA else \
        'the datasets\' rankings do not agree beyond chance'
    return (f'Friedman test over {len(means)} datasets and {len(strategies)} strategies: χ² = {chi2:.2f}, '
            f'p = {p:.3f}; Kendall\'s W = {w:.2f} (1: the same order on every dataset, 0: no agreement): {agree}'
            + (' (with 2 datasets the test has little power: read W and the pairs below)' if len(means) < 3 else '')
            + '.')


def nemenyi_words(means, order):
    p = nemenyi(means, order)
    apart = [f'{a} > {b} (p = {p.loc[a, b]:.3f})' for i, a in enumerate(order) for b in order[i + 1:]
             if p.loc[a, b] < ALPHA]
    return (f'Nemenyi post-hoc over {len(means)} datasets (scikit-posthocs): pairs told apart at {ALPHA}: '
            + (', '.join(apart) if apart else
               f'none (with {len(means)} datasets and {len(order)} strategies, two mean ranks must differ by about '
               f'{critical_difference(len(order), len(means)):.1f} to be told apart)') + '.')


def critical_difference(k, n):
    """Demšar's critical difference of mean ranks at ALPHA: q_α sqrt(k (k + 1) / (6 n)), q_α the studentized
    range quantile over sqrt 2."""
    q = sps.studentized_range.ppf(1 - ALPHA, k, math.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


def bayes_table(means, order):
    """A matrix: P(row practically better than column), from the Bayesian signed-rank test over the datasets; and
    the pairs it decides, in words."""
    names = list(means)
    better, decided, equal = {}, [], []
    for a, b in combinations(order, 2):
        pa, rope, pb = practically([means[d][a] for d in names], [means[d][b] for d in names])
        better[a, b], better[b, a] = pa, pb
        if pa >= DECISIVE or pb >= DECISIVE:
            decided.append(f'{a} > {b} ({pa:.2f})' if pa >= DECISIVE else f'{b} > {a} ({pb:.2f})')
        elif rope >= DECISIVE:
            equal.append(f'{a} ≈ {b} ({rope:.2f})')
    rows = [[a] + ['·' if a == b else f'{better[a, b]:.2f}' for b in order] for a in order]
    return [f'P(row practically better than column: by more than {ROPE:g} pp), Bayesian signed-rank test over '
            f'the {len(names)} datasets (baycomp):', '',
            tabulate(rows, headers=['P(row > column)'] + order, tablefmt='github', disable_numparse=True), '',
            f'- Practically better with P >= {DECISIVE}: ' + (', '.join(decided) or 'no pair') +
            f'. Practically equivalent (within {ROPE:g} pp) with P >= {DECISIVE}: ' + (', '.join(equal) or 'no pair') +
            '. Every other pair is undecided on these datasets.']


def pair_orders(block):
    """(pairs holding on every dataset, pairs flipping, how many neither): 'a > b' words."""
    held, flipped, unclear = [], [], 0
    for a, b in combinations(block.strategies, 2):
        signs = set()
        for table, rows in block.per_dataset.values():
            iv, _ = stats.paired_difference(rows[a], rows[b], table.metric)
            signs.add(0 if iv is None or iv.includes_zero else (1 if iv.mean > 0 else -1))
        if signs == {1} or signs == {-1}:
            held.append(f'{a} > {b}' if signs == {1} else f'{b} > {a}')
        elif {1, -1} <= signs:
            flipped.append(f'{a} vs {b}')
        else:
            unclear += 1
    return held, flipped, unclear


def recommendation_words(rec):
    short = lambda d: d.split(' (')[0]  # noqa: E731
    words = f'**{rec.pick}** ({rec.cost:.2f}x the fastest strategy\'s training time)'
    if rec.pick == rec.best:
        words += f', the best (lowest mean rank over {rec.n} datasets)'
    elif rec.p_worse is None:
        words += (f', not practically worse than the best, {rec.best}, on any of the {rec.n} datasets over seeds (too '
                  f'few datasets for the Bayesian test)')
    else:
        words += (f', not practically worse than the best, {rec.best}: P({rec.best} better by more than {ROPE:g} '
                  f'pp) = {rec.p_worse:.2f} over {rec.n} datasets')
    if rec.trails:
        words += (f'; on average it trails {rec.best} by more than {ROPE:g} pp on ' + ', '.join(
            f'{short(d)} ({iv.mean:+.1f} pp, 95% CI {iv.lo:+.1f} to {iv.hi:+.1f})' for d, iv in rec.trails.items()) +
            f' ({INTERVALS[min(len(rec.trails), 3)]} wholly below -{ROPE:g} pp, so '
            f'{min(iv.n for iv in rec.trails.values())} seeds cannot call it practically worse)')
    others = [s for s in rec.remain if s != rec.pick]
    if others:
        words += (f'. The evidence does not single it out: {", ".join(others)} {"is" if len(others) == 1 else "are"} '
                  f'not practically worse than the best either (by neither test); {rec.pick} is the cheapest')
    if rec.out_bayes:
        words += '. Out, practically worse over the datasets: ' + ', '.join(
            f'{s} (P = {p:.2f})' for s, p in sorted(rec.out_bayes.items(), key=lambda kv: -kv[1]))
    if rec.out_loss:
        words += f'. Out, practically worse than {rec.best} on a dataset over seeds: ' + ', '.join(
            f'{s} ({", ".join(f"{short(d)} {v:+.1f} pp" for d, v in lost.items())})'
            for s, lost in sorted(rec.out_loss.items()))
    return words + '.'
