"""Figures rendered from the records, never from a live run, so they can be redrawn at any time.

Per experiment, into the `figures/` folder beside the leaderboard:
- `<experiment>-curves.png`: training loss, validation loss and validation accuracy per epoch, one line per
  configuration, the mean over seeds with a shaded ±1 std band where n > 1;
- `<experiment>-pareto.png`: test accuracy against training time (log axis), every configuration a point, the
  Pareto front (configurations no other beats on both accuracy and time) joined and labelled;
- `search-params.png`: validation score against each hyperparameter, one panel row per search kind.
No figure is drawn for an experiment without successful records.
"""
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter  # noqa: E402

from bench.leaderboard import group_key, latest_per_run  # noqa: E402

LABEL_FIELDS = ('backbone', 'strategy', 'variant')


def pareto_front(points):
    """Indices of the (seconds, accuracy) points that no other point beats on both: at most as slow and at
    least as accurate, and strictly better on one. Sorted by time."""
    front = []
    for i, (t, a) in enumerate(points):
        dominated = any((t2 <= t and a2 >= a) and (t2 < t or a2 > a) for j, (t2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def configurations(records):
    """[(label, [records over seeds])], labelled by whichever of backbone/strategy/variant differ, sorted."""
    groups = defaultdict(list)
    for rec in records:
        groups[group_key(rec)].append(rec)
    varying = [f for f in LABEL_FIELDS if len({r.get(f) or '' for r in records}) > 1] or ['strategy']
    out = []
    for key, recs in sorted(groups.items()):
        label = ' '.join(str(recs[0].get(f) or '') for f in varying).strip() or recs[0]['strategy']
        out.append((label, recs))
    seen = defaultdict(int)  # configurations equal in these fields but not in others get numbered
    for i, (label, recs) in enumerate(out):
        seen[label] += 1
        if seen[label] > 1:
            out[i] = (f'{label} #{seen[label]}', recs)
    return out


def _curve(recs, field):
    """Mean and std over seeds of a per-epoch field, over the epochs every seed has."""
    n = min(len(r['epochs']) for r in recs)
    values = np.array([[e[field] for e in r['epochs'][:n]] for r in recs], dtype=float)
    return np.arange(1, n + 1), values.mean(0), values.std(0)


def curves(records, path, title):
    confs = [(label, recs) for label, recs in configurations(records) if all(r.get('epochs') for r in recs)]
    if not confs:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, recs in confs:
        for ax, field in zip(axes, ('train_loss', 'valid_loss', 'valid_acc')):
            x, mean, std = _curve(recs, field)
            line, = ax.plot(x, mean, marker='o', ms=3, label=f'{label} (n={len(recs)})')
            if len(recs) > 1:
                ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    for ax, name in zip(axes, ('training loss', 'validation loss', 'validation accuracy')):
        ax.set_title(name)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7, loc='lower right')
    fig.suptitle(title)
    return _save(fig, path)


def pareto(records, path, title):
    confs = [(label, recs) for label, recs in configurations(records)
             if all(r.get('test_acc') is not None and r.get('train_seconds') for r in recs)]
    if not confs:
        return None
    points = [(float(np.mean([r['train_seconds'] for r in recs])), float(np.mean([r['test_acc'] for r in recs])))
              for _, recs in confs]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(8, 5))
    t, a = zip(*points)
    ax.scatter(t, np.array(a) * 100, color='0.6', zorder=2, label='configuration')
    ft, fa = zip(*[points[i] for i in front])
    ax.plot(ft, np.array(fa) * 100, color='C3', marker='o', zorder=3, label='Pareto front')
    for i, (label, _) in enumerate(confs):
        ax.annotate(label, (points[i][0], points[i][1] * 100), fontsize=7, xytext=(4, 4), textcoords='offset points',
                    color='C3' if i in front else '0.35')
    _plain_log_axis(ax)
    ax.set_xlabel('training time, s (log scale)')
    ax.set_ylabel('test accuracy, %')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def search_params(records, path):
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
            ys = [r['valid_acc'] * 100 for r in mine]
            ax.scatter(xs, ys, color='C0' if kind == 'grid' else 'C1')
            if p == 'lr':
                _plain_log_axis(ax)
            ax.set_xlabel(p)
            ax.set_ylabel(f'{kind}: validation acc, %')
            ax.grid(alpha=0.3)
    fig.suptitle('Search: validation score against each hyperparameter')
    return _save(fig, path)


def _plain_log_axis(ax):
    """A log x axis labelled with plain numbers (30, not 3x10^1), minor ticks unlabelled."""
    ax.set_xscale('log')
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={'Software': None})
    plt.close(fig)
    return path


def render_all(records, folder, relative_to):
    """Draw every figure the records support; {experiment: [(caption, path relative to the leaderboard)]}."""
    from bench.leaderboard import EXPERIMENTS
    folder = Path(folder)
    by_exp = defaultdict(list)
    for rec in records:
        by_exp[rec['experiment']].append(rec)
    links = {}
    for exp, recs in sorted(by_exp.items()):
        ok, _ = latest_per_run(recs)
        if not ok:
            continue
        title = EXPERIMENTS.get(exp, (exp,))[0]
        trials = [r for r in ok if (r.get('search') or {}).get('role') == 'trial']
        shown = [r for r in ok if r not in trials]
        made = [('Learning curves', curves(shown, folder / f'{exp}-curves.png', title)),
                ('Accuracy against training time, Pareto front in red', pareto(shown, folder / f'{exp}-pareto.png', title)),
                ('Validation score against each hyperparameter', search_params(ok, folder / f'{exp}-params.png'))]
        links[exp] = [(caption, p.relative_to(relative_to).as_posix()) for caption, p in made if p is not None]
    return links
