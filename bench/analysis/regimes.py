"""Verdicts across regimes (W8): does the ranking of strategies measured in a cheap regime (small images, few steps)
predict the ranking in the backbone's native one?

An experiment that declares `regimes` (bench/declare/experiments.py) runs every strategy in each, each tuned on validation by
the same rule and confirmed over seeds, on each of its datasets. Per dataset and backbone, against the native regime
(`Experiment.native_regime`; those declared before it are cheaper candidates, those after it contrasts: its budget with
one thing changed, such as the schedule, compared the same way but never a candidate for the verdict):
- Kendall's tau-b between each regime's ranking (mean test metric over seeds) and the native one (scipy);
- the pairs that change order with a difference significant in both regimes (each a paired 95% t interval over
  seeds that excludes 0: bench/analysis/stats.py), and those significant in one regime only;
- whether the native best is best or tied with the best in the regime (what a user acting on the regime would get).
A regime **agrees** with the native one on a dataset when no pair flips with a significant difference in both and
tau is at least AGREE_TAU; the verdict names the cheapest regime that agrees on every dataset. Imports no torch.
"""
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from scipy import stats as sps
from tabulate import tabulate

from bench.analysis import stats
from bench.declare import record
from bench.declare.config import steps_per_epoch
from bench.declare.datasets import BY_FIELD
from bench.declare.experiments import EXPERIMENTS

AGREE_TAU = 0.6   # Kendall's tau at least this: at most 1 pair in 5 ordered differently (ties aside)


@dataclass
class Regime:
    """One regime's table on one dataset: its name, its cost order and what it trains."""
    name: str
    order: int            # its place in the experiment's declaration: cheapest first, native last
    table: stats.Table

    @property
    def rows(self):
        """{strategy: stats.Row}"""
        return {row.records[0]['strategy']: row for row in self.table.rows}

    @property
    def means(self):
        return {s: 100 * row.mean(self.table.metric) for s, row in self.rows.items()}

    @property
    def size(self):
        """The image size its runs trained at, px."""
        return record.trained_px(self.table.rows[0].records[0])

    def words(self):
        """'96 px, 50 steps, flat LR': what the regime is, from its records."""
        return regime_words(self.table.rows[0].records[0])


def regime_words(rec):
    """'96 px, 50 steps, flat LR': the regime a record trained in."""
    cfg = rec['config']
    steps = cfg['epochs'] * steps_per_epoch(rec.get('train_images') or 0, cfg['bs'])
    return f'{record.trained_px(rec)} px, {steps} steps, {SCHEDULES.get(cfg.get("sched"), "flat LR")}'


SCHEDULES = {'flat': 'flat LR', 'one_cycle': 'one-cycle (warm-up, then a cosine decay to 0)'}


@dataclass
class Comparison:
    """Regimes of one backbone on one dataset, hardware and profile."""
    dataset: str
    backbone: str
    device: str
    profile: str
    regimes: list         # Regime, as declared (cheapest first, the native one, its contrasts): those that ran every
                          # strategy the native one ran
    native_order: int     # the native regime's place in the declaration
    partial: dict = field(default_factory=dict)   # regime name -> the native strategies it has no test score of

    @property
    def native(self):
        return next(r for r in self.regimes if r.order == self.native_order)

    @property
    def cheaper(self):
        """The regimes that are candidates for the verdict: cheaper than the native one, cheapest first."""
        return [r for r in self.regimes if r.order < self.native_order]

    @property
    def contrasts(self):
        """The native budget with one thing changed (W8: the schedule)."""
        return [r for r in self.regimes if r.order > self.native_order]

    @property
    def strategies(self):
        """The strategies compared: the native regime's (every regime compared has them)."""
        return sorted(self.native.rows)


def comparisons(tables):
    """One Comparison per (dataset, backbone, hardware, profile) of the tuned tables of experiments with regimes
    (bench/analysis/stats.py gives one table per regime), with two regimes or more."""
    groups = defaultdict(dict)
    for table in tables:
        declared = EXPERIMENTS.get(table.experiment)
        if not table.tuned or not table.regime or declared is None:
            continue
        for row in table.rows:
            rec = row.records[0]
            key = (table.experiment, table.dataset, rec['backbone'], table.device, table.profile)
            if table.regime not in groups[key]:
                sub = stats.Table(table.experiment, table.device, table.profile, [], table.dataset, table.metric, True,
                                  table.regime)
                groups[key][table.regime] = Regime(table.regime, list(declared.regimes).index(table.regime), sub)
            groups[key][table.regime].table.rows.append(row)
    out = []
    for (exp, dataset, backbone, device, profile), by in sorted(groups.items()):
        ordered = sorted(by.values(), key=lambda r: r.order)
        native = by.get(EXPERIMENTS[exp].native_regime)
        if native is None:  # nothing to compare with yet
            continue
        lacking = {r.name: sorted(s for s in native.rows if s not in r.rows or not r.rows[s].n) for r in ordered}
        whole = [r for r in ordered if not lacking[r.name]]  # a regime still running (or still tuning) is set aside
        partial = {r.name: lacking[r.name] for r in ordered if r not in whole}
        if len(whole) >= 2:
            out.append(Comparison(dataset, backbone, device, profile, whole, native.order, partial))
    return out


def tau(a, b, strategies):
    """Kendall's tau-b between two {strategy: score} over `strategies` (and its p-value)."""
    result = sps.kendalltau([a[s] for s in strategies], [b[s] for s in strategies])
    return float(result.statistic), float(result.pvalue)


def sign(regime, a, b):
    """+1 where `a` beats `b` in `regime` with a paired interval over seeds excluding 0, -1 the other way, 0 tied or
    too few seeds."""
    iv, _ = stats.paired_difference(regime.rows[a], regime.rows[b], regime.table.metric)
    return 0 if iv is None or iv.includes_zero else (1 if iv.mean > 0 else -1)


@dataclass
class Agreement:
    regime: Regime
    tau: float
    p: float
    flips: list           # pairs ordered one way with significance here and the other way with significance native
    one_sided: list       # pairs that change order, significant in one of the two regimes only
    best_holds: bool      # the native best is this regime's best or tied with it over seeds

    @property
    def agrees(self):
        return not self.flips and self.tau >= AGREE_TAU


def agreement(comparison, regime):
    """How `regime`'s ranking stands against the native one on `comparison`'s dataset."""
    native, strategies = comparison.native, comparison.strategies
    t, p = tau(regime.means, native.means, strategies)
    flips, one_sided = [], []
    for a, b in combinations(strategies, 2):
        here, there = sign(regime, a, b), sign(native, a, b)
        mean_here = regime.means[a] - regime.means[b]
        mean_there = native.means[a] - native.means[b]
        if here * there == -1:
            flips.append((a, b) if here > 0 else (b, a))
        elif mean_here * mean_there < 0 and (here or there):
            one_sided.append((a, b) if mean_here > 0 else (b, a))
    best = native.table.rows[0].records[0]['strategy']
    top = regime.table.rows[0]
    holds = best == top.records[0]['strategy'] or stats.verdict(regime.rows[best], top, regime.table.metric)[0] == 'tied'
    return Agreement(regime, t, p, flips, one_sided, holds)


def verdict(comps):
    """(the cheapest regime that agrees with the native one on every dataset, or None; {regime: datasets where it
    does not})."""
    names = sorted({r.name for c in comps for r in c.cheaper},
                   key=lambda n: min(r.order for c in comps for r in c.regimes if r.name == n))
    fails = {n: [c.dataset for c in comps for r in c.cheaper if r.name == n and not agreement(c, r).agrees]
             for n in names}
    agreeing = [n for n in names if not fails[n]]
    return (agreeing[0] if agreeing else None), fails


# ---- words ------------------------------------------------------------------------------------------------

def section(comps, figures=None):
    """Markdown lines: per dataset, each regime's ranking beside the native one, tau, the flips; then the verdict.
    `figures`: per comparison, in the same order, its [(caption, path)]."""
    if not comps:
        return []
    out = ['### Across regimes', '',
           f'Each regime ranks the strategies by their mean test score over seeds (each strategy at the LR it chose on '
           f'validation in that regime). Against the native regime: Kendall\'s tau-b of the two rankings; '
           f'a **flip** is a pair ordered one way with a paired 95% interval over seeds excluding 0 in one regime and '
           f'the other way, equally significant, in the native one; a regime **agrees** with the native one on a '
           f'dataset when nothing flips and tau >= {AGREE_TAU:g}. A contrast (declared after the native regime) is its '
           f'budget with one thing changed: compared the same way, never a candidate for the verdict.', '']
    for comp, made in zip(comps, figures or [[]] * len(comps)):
        short = BY_FIELD[comp.native.table.metric].words
        out += [f'#### {comp.dataset} · {comp.backbone} · {comp.device} · profile {comp.profile}', '']
        strategies = sorted(comp.strategies, key=lambda s: -comp.native.means[s])
        rows = [[s] + [f'{r.means[s]:.1f} ± {std(r.rows[s]):.1f}' + (' ↑' if rising(r.rows[s]) else '')
                       for r in comp.regimes] for s in strategies]
        out += [tabulate(rows, headers=['strategy'] + [f'{r.name}: {r.words()}' for r in comp.regimes],
                         tablefmt='github', disable_numparse=True), '',
                f'{short.capitalize()} %, mean ± std over seeds, by regime; ↑ still improving at the end of its run '
                f'(its verdicts hold at that budget only).', '']
        for r in comp.cheaper:
            a = agreement(comp, r)
            flips = ', '.join(f'{x} > {y}' for x, y in a.flips) or 'none'
            one = ', '.join(f'{x} > {y}' for x, y in a.one_sided) or 'none'
            out.append(f'- **{r.name}** against {comp.native.name}: tau = {a.tau:+.2f} (p = {a.p:.2f}); significant '
                       f'flips: {flips} (native order reversed); order changed, significant in one regime only: {one}; '
                       f'the native best ({comp.native.table.rows[0].records[0]["strategy"]}) is '
                       f'{"best or tied with the best" if a.best_holds else "behind the best, with significance,"} '
                       f'here. **{"Agrees" if a.agrees else "Does not agree"}.**')
        out += [contrast_line(comp, r) for r in comp.contrasts]
        out += [f'- **{name}** is not compared yet: it has no test scores of {", ".join(missing)}, which the native '
                f'regime ranks.' for name, missing in comp.partial.items()]
        out.append('')
        out += [line for caption, path in made for line in (f'![{caption}]({path})', '')]
    best, fails = verdict(comps)
    native = comps[0].native
    if fails and best is None:  # (no fails: no cheaper regime compared yet, contrasts only)
        out.append(f'- **Verdict: no cheaper regime agrees with the native one ({native.name}: {native.words()}) on '
                   f'every dataset**: ' + '; '.join(f'{n} fails on {", ".join(d)}' for n, d in fails.items()) +
                   '. Rankings measured in those regimes are theirs, not the native one\'s.')
    elif best is not None:
        regime = next(r for c in comps for r in c.regimes if r.name == best)
        compared = sorted({c.dataset for c in comps})
        out.append(f'- **Verdict: the cheapest regime that agrees with the native one on every dataset is {best} '
                   f'({regime.words()})**' + ''.join(f'; {n} fails on {", ".join(d)}' for n, d in fails.items() if d)
                   + f' (datasets compared: {", ".join(compared)}).')
    return out + ['']


def contrast_line(comp, regime):
    """A contrast against the native regime: the rankings' agreement, then each strategy's paired difference."""
    native, a = comp.native, agreement(comp, regime)
    flips = ', '.join(f'{x} > {y}' for x, y in a.flips) or 'none'
    diffs, higher, lower = [], 0, 0
    for s in sorted(comp.strategies, key=lambda s: -native.means[s]):
        iv, _ = stats.paired_difference(native.rows[s], regime.rows[s], native.table.metric)
        if iv is None:
            diffs.append(f'{s} {native.means[s] - regime.means[s]:+.1f} pp (too few paired seeds)')
            continue
        higher, lower = higher + (iv.lo > 0), lower + (iv.hi < 0)
        diffs.append(f'{s} {iv.mean:+.1f} pp ({iv.lo:+.1f} to {iv.hi:+.1f})')
    still = lambda r: sum(rising(row) for row in r.rows.values())  # noqa: E731
    return (f'- **{regime.name}** ({regime.words()}), a contrast with {native.name}: tau = {a.tau:+.2f} (p = {a.p:.2f}); '
            f'significant flips: {flips}. {native.name} minus {regime.name}, paired over seeds (95% CI): '
            f'{"; ".join(diffs)}. {native.name} scores higher with significance on {higher} of '
            f'{len(comp.strategies)} strategies and lower on {lower}; rows still improving: {still(native)} in '
            f'{native.name}, {still(regime)} in {regime.name}.')


def std(row):
    values = list(row.by_seed(row.metric).values())
    return 100 * stats.statistics.stdev(values) if len(values) > 1 else 0.


def rising(row):
    t = stats.trend(row, row.metric)
    return bool(t and t.improving)
