"""Figures drawn from the records, never from a live run, so they can be redrawn at any time.

Per leaderboard table (one experiment on one hardware and profile), into the `figures/` folder beside it:
- `<table>-curves.png`: training loss, validation loss and validation accuracy per epoch, one line per
  configuration, the mean over seeds with a shaded ±1 std band where n > 1;
- `<table>-pareto.png`: test accuracy against training time (log axis), every configuration a point with ±1 std
  bars over seeds, the Pareto front (configurations no other beats on both accuracy and time) joined in red;
- `<table>-trainable.png`: the same against trainable parameters, where the configurations train different counts;
- `<table>-params.png`, for a search: validation score against each hyperparameter, one panel row per search kind;
- `<table>-lr.png`, for a tuned table: LR sensitivity, each strategy's validation score against its tuned LR (one
  line per strategy, the chosen point ringed): how forgiving each strategy is of its LR.
Per across-datasets block (bench/analysis/across.py), `<experiment>-across-<backbone>-...-cd.png`: the critical-difference
diagram of the strategies' mean ranks (scikit-posthocs, from Nemenyi's p-values), from 4 datasets on.
Per across-regimes comparison (bench/analysis/regimes.py, W8), `<experiment>-regimes-<dataset>-...png`: each strategy's score in
each regime, cheapest to native (then its contrasts), ±1 std over seeds.
No figure is drawn for a table without what it needs. Every axis has labelled ticks, log axes included.
"""
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from bench.analysis import across, stats  # noqa: E402


def pareto_front(points):
    """Indices of the (seconds, accuracy) points that no other point beats on both: at most as slow and at
    least as accurate, and strictly better on one. Sorted by time."""
    front = []
    for i, (t, a) in enumerate(points):
        dominated = any((t2 <= t and a2 >= a) and (t2 < t or a2 > a) for j, (t2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _curve(recs, field):
    """Mean and std over seeds of a per-epoch field, over the epochs every seed has."""
    n = min(len(r['epochs']) for r in recs)
    values = np.array([[e[field] for e in r['epochs'][:n]] for r in recs], dtype=float)
    return np.arange(1, n + 1), values.mean(0), values.std(0)


def curves(rows, path, title):
    rows = [row for row in rows if all(r.get('epochs') for r in row.records)]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for row in rows:
        for ax, field in zip(axes, ('train_loss', 'valid_loss', 'valid_acc')):
            x, mean, std = _curve(row.records, field)
            line, = ax.plot(x, mean, marker='o', ms=3, label=f'{row.label} (n={row.n})')
            if row.n > 1:
                ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    for ax, name in zip(axes, ('training loss', 'validation loss', 'validation accuracy')):
        ax.set_title(name)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7, loc='lower right')
    fig.suptitle(title)
    return _save(fig, path)


AXES = {  # what accuracy is plotted against: the record field, the axis label
    'time': ('train_seconds', 'training time, s (log scale)'),
    'trainable': ('params_trainable', 'trainable parameters (log scale)'),
}


def pareto(rows, path, title, against='time'):
    fig = pareto_figure(rows, title, against)
    return _save(fig, path) if fig else None


def pareto_figure(rows, title, against='time'):
    """Test accuracy against `against` (AXES) for every row with both, ±1 std bars, the Pareto front in red."""
    field_name, xlabel = AXES[against]
    rows = [row for row in rows if all(r.get('test_acc') is not None and r.get(field_name) for r in row.records)]
    if not rows or (against == 'trainable' and len({row.records[0][field_name] for row in rows}) < 2):
        return None
    xs = [np.array([r[field_name] for r in row.records], dtype=float) for row in rows]
    accs = [np.array([r['test_acc'] for r in row.records], dtype=float) * 100 for row in rows]
    points = [(float(t.mean()), float(a.mean())) for t, a in zip(xs, accs)]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (t, a) in enumerate(zip(xs, accs)):
        ax.errorbar(t.mean(), a.mean(), xerr=t.std(ddof=1) if len(t) > 1 and t.std() else None,
                    yerr=a.std(ddof=1) if len(a) > 1 else None, fmt='o', color='C3' if i in front else '0.55',
                    ecolor='0.7', capsize=3, zorder=2)
    ft, fa = zip(*[points[i] for i in front])
    ax.plot(ft, fa, color='C3', zorder=3, label='Pareto front')
    for i, row in enumerate(rows):
        ax.annotate(row.label, points[i], fontsize=7, xytext=(4, 4), textcoords='offset points',
                    color='C3' if i in front else '0.35')
    spread = [t.mean() + s * (t.std(ddof=1) if len(t) > 1 else 0) for t in xs for s in (-1, 1)]
    log_x_axis(ax, max(min(spread), min(t.min() for t in xs) / 2), max(spread))
    ax.set_xlabel(xlabel)
    ax.set_ylabel('test accuracy, % (bars: ±1 std over seeds)')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def search_params(records, path, title):
    """Validation score against each hyperparameter, grid and random side by side."""
    trials = [r for r in records if (r.get('search') or {}).get('role') == 'trial' and r.get('valid_acc') is not None]
    if not trials:
        return None
    kinds = sorted({r['search']['kind'] for r in trials})
    params = sorted({p for r in trials for p in r['search']['params']})
    fig, axes = plt.subplots(len(kinds), len(params), figsize=(4 * len(params), 3.4 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        mine = [r for r in trials if r['search']['kind'] == kind]
        for col, p in enumerate(params):
            ax = axes[row][col]
            xs = [r['search']['params'].get(p) for r in mine]
            ax.scatter(xs, [r['valid_acc'] * 100 for r in mine], color='C0' if kind == 'grid' else 'C1')
            if p == 'lr':
                log_x_axis(ax, min(xs), max(xs))
            ax.set_xlabel(p)
            ax.set_ylabel(f'{kind}: validation acc, %')
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def lr_sensitivity(rows, path, title, metric='test_acc'):
    """Validation score against LR, one line per tuned row (its grid at the first seed), the chosen LR ringed."""
    rows = [row for row in rows if row.tuned is not None and len(row.tuned.points) > 1]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = []
    for row in rows:
        points = sorted((lr, v * 100) for lr, v in row.tuned.points.items() if v is not None)
        if not points:
            continue
        lr, score = zip(*points)
        xs += lr
        line, = ax.plot(lr, score, marker='o', ms=4, label=f'{row.label} ({"head" if row.tuned.field == "head_lr" else "body"} LR)')
        if row.tuned.chosen in row.tuned.points and row.tuned.points[row.tuned.chosen] is not None:
            ax.scatter([row.tuned.chosen], [row.tuned.points[row.tuned.chosen] * 100], s=140, facecolors='none',
                       edgecolors=line.get_color(), linewidths=2, zorder=3)
    if not xs:
        plt.close(fig)
        return None
    log_x_axis(ax, min(xs), max(xs))
    ax.set_xlabel('tuned LR (log scale): the body\'s, the head at its multiple; the head\'s where only it trains')
    ax.set_ylabel(f'{"validation mean per-class acc" if metric == "test_class_acc" else "validation acc"}, % '
                  f'(first seed)')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=7, loc='best')
    ax.set_title(title + '\nLR sensitivity: ringed = chosen', fontsize=10)
    return _save(fig, path)


def log_ticks(lo, hi):
    """Tick positions for a log axis over [lo, hi]: 1-2-5 steps, finer steps when the range is short, and a few
    rounded points spread evenly (in log) when it spans too little for either."""
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0 ** k for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
                 for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) >= 3:
            return ticks
    return sorted({float(f'{x:.2g}') for x in np.geomspace(lo, hi, 4)})


def log_x_axis(ax, lo, hi):
    """Make `ax`'s x axis logarithmic over [lo, hi] (with a margin), labelled with plain numbers whatever its span."""
    lo, hi = (lo, hi) if hi > lo else (lo / 1.5, hi * 1.5)
    lo, hi = lo / 1.15, hi * 1.15
    ax.set_xscale('log')
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={'Software': None})
    plt.close(fig)
    return path


def draw(table, folder, name, title):
    """Every figure `table` (a stats.Table) supports, as [(caption, path)], files named `<name>-<kind>.png`."""
    folder = Path(folder)
    records = [r for row in table.rows for r in row.records]
    searched = [r for r in records if r.get('search')]
    rows = table.rows
    if searched:
        rows = stats.rows([r for r in searched if r['search'].get('role') == 'refit'],
                          label=lambda r: f'{r["search"]["kind"]} search (refit)')
    made = [('Learning curves', curves(rows, folder / f'{name}-curves.png', title)),
            ('Accuracy against training time, ±1 std over seeds, Pareto front in red',
             pareto(rows, folder / f'{name}-pareto.png', title)),
            ('Accuracy against trainable parameters, ±1 std over seeds, Pareto front in red',
             pareto(rows, folder / f'{name}-trainable.png', title, against='trainable')),
            ('Validation score against each hyperparameter', search_params(searched, folder / f'{name}-params.png',
                                                                          title)),
            ('LR sensitivity: validation score against each strategy\'s tuned LR, the chosen point ringed',
             lr_sensitivity(rows, folder / f'{name}-lr.png', title, table.metric) if table.tuned else None)]
    return [(caption, path) for caption, path in made if path is not None]


def critical_difference(block, path):
    """The block's critical-difference diagram (Demšar 2006) drawn by scikit-posthocs: each strategy at its mean
    rank over the datasets, a bar over those Nemenyi's test does not tell apart; None below 4 datasets."""
    if not block.rank_tests:
        return None
    import scikit_posthocs as sp
    means = block.means()
    ranks = across.mean_ranks(means, block.strategies)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(ranks) + 1.2))
    drawn = sp.critical_difference_diagram(ranks, across.nemenyi(means, block.strategies), ax=ax,
                                           alpha=across.ALPHA)
    for line in [line for bar in drawn['crossbars'] for line in bar]:
        line.set_data(*zip(*sorted(zip(*line.get_data()))))  # a bar's points come in a set's (per-process) order
    ax.set_title(f'{block.backbone}: mean rank over {len(means)} datasets (1 = best), {block.device}, '
                 f'profile {block.profile}', fontsize=9)
    return _save(fig, path)


def regimes(comparison, path):
    """W8's across-regime figure: each strategy's test score in each regime (cheapest left, then the native one, then
    its contrasts), mean with ±1 std bars over seeds, one line per strategy; None with fewer than two regimes."""
    if len(comparison.regimes) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    x = np.arange(len(comparison.regimes))
    native = comparison.native.means
    for i, s in enumerate(sorted(comparison.strategies, key=lambda s: -native[s])):
        rows = [r.rows[s] for r in comparison.regimes]
        means = [100 * row.mean(row.metric) for row in rows]
        stds = [100 * np.std(list(row.by_seed(row.metric).values()), ddof=1) if row.n > 1 else 0. for row in rows]
        ax.errorbar(x + (i - len(comparison.strategies) / 2) * 0.02, means, yerr=stds, marker='o', ms=4, capsize=3,
                    label=s)
    ax.set_xticks(x, [f'{r.name}{" (native)" * (r is comparison.native)}\n{textwrap.fill(r.words(), 24)}'
                      for r in comparison.regimes], fontsize=7)
    ax.set_ylabel(stats.words(comparison.native.table.metric) + ' %')
    ax.set_title(f'{comparison.dataset} · {comparison.backbone}: each strategy at its tuned LR in each regime\n'
                 f'{comparison.device}, profile {comparison.profile}', fontsize=9)
    ax.legend(fontsize=8, loc='best')
    ax.grid(alpha=0.3)
    return _save(fig, path)
