"""One table of the leaderboard in markdown: its rows' cells, the columns a decision needs first and the rest folded
below, and the verdicts under it in words. Imports no torch.
"""
from collections import defaultdict

from tabulate import tabulate

from bench.analysis import stats
from bench.declare import record
from bench.declare.datasets import BY_FIELD, METRICS

# The columns a decision needs, in the table itself; the rest folded below it, so that no table is wider than a
# laptop's screen. `metric` is the dataset's declared test metric; `other` the other one.
DECISION = [('label', 'strategy'), ('metric', ''), ('n', 'n'), ('delta', 'Δ vs best, pp (95% CI)'),
            ('verdict', 'verdict'), ('time', 'time × best (95% CI)'), ('mem', 'peak MB'),
            ('trainable', 'trainable %'), ('lr', 'LR: body · head')]
DETAILS = [('label', 'strategy'), ('backbone', 'backbone'), ('variant', 'variant'), ('weights', 'weights'),
           ('size', 'px'), ('epochs', 'epochs'), ('params', 'trainable / total'), ('train_s', 'train s'),
           ('tune_s', 'tune s'), ('ips', 'img/s'), ('opt_mb', 'optimizer state MB'), ('valid', ''), ('other', ''),
           ('test_loss', 'test loss'), ('end', 'at the end'), ('settings', 'settings')]


def other_metric(field):
    """The metric a table is not ranked by (every row shows both)."""
    return next(m for m in METRICS.values() if m.test != field)


def mean_std(values, fmt='{:.2f}', scale=1.0):
    values = [v * scale for v in values if v is not None]
    if not values:
        return '-'
    if len(values) == 1:
        return fmt.format(values[0])
    import statistics
    return f'{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}'


def settings(rec):
    """The speed settings that tell runs on one device apart, gradient accumulation, and how many BatchNorm layers
    updated their running statistics."""
    cfg, bn = rec['config'], rec.get('batchnorm_updating')
    return ', '.join(x for x in (cfg.get('precision'),
                                 'channels_last' if cfg.get('channels_last') in ('on', True) else None,
                                 'compiled' if cfg.get('compile') else None,
                                 'cached features' if cfg.get('cache_features') in ('on', True) else None,
                                 f'{rec["accumulate"]} passes of {rec["micro_bs"]}' if (rec.get('accumulate') or 1) > 1
                                 else None,
                                 f'BN stats update {bn[0]}/{bn[1]}' if bn else None,
                                 side_by_side(rec)) if x)


def side_by_side(rec):
    """Where the run shared the machine with others (a pool or Ray on one machine): how many ran at once, and with
    how many threads each; its clock is its own run's."""
    n, threads = rec.get('side_by_side') or 1, rec.get('threads')
    if n <= 1:
        return None
    return f'{n} runs side by side' + (f', {threads} thread{"s" * (threads != 1)} each' if threads else '')


STEAL_SHOWN = 0.05  # a run whose machine lost more than this share of its CPU time to other guests says so


def stolen(recs):
    """Where the hypervisor took CPU time from the machine while a row's runs trained (the most of any seed): their
    clock is stretched, and so is the row's `time ×`."""
    most = max((r.get('cpu_steal') or 0 for r in recs), default=0)
    return f'CPU steal up to {most:.0%}' if most > STEAL_SHOWN else None


def lr_cell(row):
    """The LRs a row trained at, body · head (the peak of each, as its optimizer's groups held them), and whether
    they were tuned; records of earlier code, which kept no such list, show the LRs as set."""
    first = row.records[0]
    lrs = first.get('lrs')
    if lrs is None:
        cfg = first['config']
        return f'{cfg.get("lr", 0):.2g} · {cfg.get("head_lr", 0):.2g} (as set; head rule of earlier code)'
    body = [x for x in lrs[:-1] if x is not None]
    text = f'{max(body):.2g}' if body else '-'
    text += f' · {lrs[-1]:.2g}' if lrs and lrs[-1] is not None else ' · -'
    if row.tuned is not None:
        text += ', tuned' + (' (grid edge)' if row.tuned.edge else '')
    return text


def end_cell(row, metric):
    trend = stats.trend(row, metric)
    if trend is None:
        return '-'
    return f'still improving (+{trend.rise:.1f} pp)' if trend.improving else 'levelled'


def short_weights(w):
    return (w or '').split(' sha256:')[0]


def table_row(row, best, metric='test_acc'):
    recs, first = row.records, row.records[0]
    column = {name: [r.get(name) for r in recs] for name in ('train_seconds', 'images_per_second', 'peak_memory_mb',
                                                               'optimizer_state_mb', 'valid_acc', 'test_acc',
                                                               'test_class_acc', 'test_loss')}
    verdict, _ = stats.verdict(row, best, metric)
    diff, _ = stats.paired_difference(row, best, metric) if row is not best else (None, 0)
    ratio = stats.paired_ratio(row, best) if row is not best else None
    other = other_metric(metric).test
    return dict(
        label=row.label, strategy=first['strategy'], backbone=first['backbone'], variant=first.get('variant') or '',
        weights=short_weights(first.get('weights')), size=record.trained_px(first),
        epochs=len(first.get('epochs') or []), lr=lr_cell(row),
        params=f'{first["params_trainable"]:,} / {first["params_total"]:,}',
        n=row.n, train_s=mean_std(column['train_seconds'], '{:.1f}'),
        tune_s=f'{row.tuned.seconds:.0f}' if row.tuned is not None else '-', end=end_cell(row, metric),
        ips=mean_std(column['images_per_second'], '{:.0f}'),
        mem=mean_std(column['peak_memory_mb'], '{:.0f}'), opt_mb=mean_std(column['optimizer_state_mb'], '{:.1f}'),
        valid=mean_std([r.get(BY_FIELD[metric].valid) for r in recs], scale=100),
        metric=mean_std(column[metric], scale=100), other=mean_std(column[other], scale=100),
        trainable=f'{100 * first["params_trainable"] / first["params_total"]:.2f}' if first.get('params_total') else '-',
        test_loss=mean_std(column['test_loss'], '{:.3f}'),
        delta=f'{diff.mean:+.1f} ({diff.lo:+.1f} to {diff.hi:+.1f})' if diff else '-',
        verdict=verdict, time=f'{ratio.mean:.2f} ({ratio.lo:.2f} to {ratio.hi:.2f})' if ratio else '-',
        settings=', '.join(x for x in (settings(first), stolen(recs)) if x))


def columns_table(rows, metric, columns):
    """`rows` (table_row's cells) in `columns`, the headers named for the dataset's declared metric; a column no row
    has a value in (variant, optimizer state, tune s) left out."""
    named = {'label': 'strategy' if all(r['label'] == r['strategy'] for r in rows) else 'configuration',
             'metric': f'**test {BY_FIELD[metric].column}**', 'valid': f'valid {BY_FIELD[metric].column}',
             'other': f'test {other_metric(metric).column}'}
    shown = {'variant': any(r['variant'] for r in rows), 'opt_mb': any(r['opt_mb'] != '-' for r in rows),
             'tune_s': any(r['tune_s'] != '-' for r in rows)}
    columns = [(k, named.get(k, h)) for k, h in columns if shown.get(k, True)]
    return tabulate([[r[k] for k, _ in columns] for r in rows], headers=[h for _, h in columns], tablefmt='github',
                    disable_numparse=True)


def markdown_table(rows, metric='test_acc'):
    """The decision's columns, led by the dataset's declared metric in bold; the rest in a folded block below."""
    return '\n'.join([columns_table(rows, metric, DECISION), '', '<details><summary>More columns: backbone, weights, '
                      'size, epochs, parameters, times, throughput, optimizer state, validation, the other metric, '
                      'test loss, trend, settings</summary>', '', columns_table(rows, metric, DETAILS), '',
                      '</details>'])


def verdict_lines(table):
    """The table's verdicts in words, best first; or why there are none."""
    best = table.best
    if not best.n:
        return [f'- No {stats.words(table.metric)} yet: its runs are scored on validation only so far (a tuned sweep '
                f'scores test once each strategy\'s LR is chosen).']
    lines = [f'- Best: **{best.label}**, {stats.words(table.metric)} '
             f'{mean_std([r.get(table.metric) for r in best.records], scale=100)} % (n = {best.n}).']
    if len(table.rows) == 1:
        return lines
    if best.n < stats.MIN_SEEDS:
        return lines + [f'- No verdict is possible: the best row has {best.n} seed{"s" * (best.n != 1)}, and a paired '
                        f'comparison needs at least {stats.MIN_SEEDS} (`--seeds {stats.MIN_SEEDS}`).']
    lines += [f'- {words}.' for row in table.rows[1:] for _, words in [stats.verdict(row, best, table.metric)]]
    return lines + unscored_lines(table) + budget_lines(table) + lr_lines(table)


def unscored_lines(table):
    """Runs without a test score (a tuned grid point chosen after its weights were gone): said, never shown as a
    number; the row's figures are over its scored seeds."""
    missing = [(row, row.unscored) for row in table.rows if row.unscored]
    if not missing:
        return []
    return ['- Not scored on test: ' + '; '.join(f'{row.label} seed{"s" * (len(seeds) > 1)} '
                                                  f'{", ".join(map(str, seeds))}' for row, seeds in missing)
            + ' (each a grid point whose LR was chosen after its kept weights were gone; rerun to score it). Their '
              'rows are over the seeds scored.']


def budget_lines(table):
    """Rows still improving at the end: their verdicts hold at this budget only."""
    rising = [(row, t) for row in table.rows for t in [stats.trend(row, table.metric)] if t and t.improving]
    if not rising:
        return []
    named = ', '.join(f'{row.label} (+{t.rise:.1f} pp over its last interval, seed spread {t.spread:.1f} pp)'
                      for row, t in rising)
    return [f'- Still improving at the end: {named}. Verdicts involving '
            f'{"it" if len(rising) == 1 else "them"} hold at this budget only; a longer run may change them.']


def lr_lines(table):
    """Whether the comparison is at tuned LRs, and what tuning cost beside training."""
    if not table.tuned:
        return ['- Every row trained at the LRs it was given (fixed, not tuned): a ranking here may measure the LRs '
                'as much as the strategies.']
    tuned = [row for row in table.rows if row.tuned is not None]
    spent = sum(row.tuned.seconds for row in tuned)
    trained = sum(r.get('train_seconds') or 0 for row in table.rows for r in row.records)
    edge = [row.label for row in tuned if row.tuned.edge]
    return [f'- Each strategy trained at its own LR, chosen on validation (`--tune lr`). Times above are training '
            f'only; tuning\'s other grid points took {spent:.0f} s more ({spent / trained:.1f}x the training time '
            f'of every row\'s seeds).' if trained else '']+ ([f'- Chosen at the edge of the widest grid allowed, '
                                                               f'so the best LR may lie beyond it: {", ".join(edge)}.']
                                                             if edge else [])


def error_table(failed):
    """One row per backbone, weights, device and message, naming the strategies that failed with it."""
    groups = defaultdict(set)
    for r in failed:
        groups[(r['backbone'], r.get('variant') or '', short_weights(r.get('weights')), r.get('device') or '',
                r['error'])].add(r['strategy'])
    rows = [[b, v, w, ', '.join(sorted(s)), d, msg] for (b, v, w, d, msg), s in sorted(groups.items())]
    return tabulate(rows, headers=['backbone', 'variant', 'weights', 'strategies', 'device', 'error'],
                    tablefmt='github', disable_numparse=True)


def provenance(recs):
    weights = sorted({short_weights(r.get('weights')) for r in recs})
    shas = sorted({(r.get('git_sha') or 'unknown')[:12] for r in recs})
    versions = sorted({', '.join(f'{k} {v}' for k, v in sorted((r.get('versions') or {}).items())) for r in recs})
    return f'Weights: {", ".join(weights)}. Code: {", ".join(shas)}. Versions: {" | ".join(versions)}.'


def split_words(recs):
    """How many images each run trained, chose on and was tested on, where the records say (they all agree)."""
    counts = {(r.get('train_images'), r.get('valid_images'), r.get('test_images')) for r in recs}
    if len(counts) != 1 or None in next(iter(counts)):
        return ''
    train, valid, test = counts.pop()
    return f'Each run: {train:,} training, {valid:,} validation and {test:,} test images. '
