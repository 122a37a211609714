"""The leaderboard's front page: one table of the answers, a row per experiment and dataset, each linking to its
experiment's page (reports/<experiment>.md), where the tables, figures and verdicts it summarizes are.

A row is read from the experiment's headline table for that dataset: its tuned table where it has one (each
strategy at its own LR), else its table at fixed LRs; of several machines', the newest. It gives the best row (its
declared metric, mean ± std over seeds), the rows tied with it (their paired 95% interval includes 0), the
recommendation (the cheapest row not practically worse than the best: the rule of bench/analysis/across.py, on one
dataset) and what it costs (its training time, and against the best's). An experiment over several datasets adds
its recommendation across them; a search, its searches' refits; the advisor, its answer; W8, its verdict. Imports no
torch.
"""
from tabulate import tabulate

from bench.analysis import across, regimes, stats
from bench.declare.experiments import EXPERIMENTS
from bench.sweep import search


def headline(tables):
    """{dataset: the table a front-page row reads}: tuned before fixed, the newest machine's."""
    out = {}
    for table in tables:
        newest = max(r['started_at'] for row in table.rows for r in row.records)
        rank = (table.tuned, newest)
        if table.dataset not in out or rank > out[table.dataset][0]:
            out[table.dataset] = (rank, table)
    return {d: t for d, (_, t) in out.items()}


def cells(table, page, label):
    """A front-page row from one table."""
    best = table.best
    tied = [row.label for row in table.rows[1:] if stats.verdict(row, best, table.metric)[0] == 'tied']
    pick, cost = '-', '-'
    if len(table.rows) > 1 and best.n >= stats.MIN_SEEDS:
        rec = across.recommend(across.single(table))
        chosen = next(row for row in table.rows if row.label == rec.pick)
        pick = rec.pick
        seconds = chosen.mean('train_seconds')
        cost = f'{seconds:.0f} s' + (f' ({seconds / best.mean("train_seconds"):.2f}x the best\'s)'
                                     if rec.pick != rec.best and best.mean('train_seconds') > 0 else '')
    score = f'{100 * best.mean(table.metric):.1f} ± {100 * std(best, table.metric):.1f}'
    return [f'[{label}]({page})', table.dataset or '-', f'{table.device} · {table.profile}',
            f'**{best.label}** {score}', ', '.join(tied) or '-', pick, cost]


def std(row, metric):
    import statistics
    values = list(row.by_seed(metric).values())
    return statistics.stdev(values) if len(values) > 1 else 0.


def rows(records, pages):
    """The front page's rows, in the experiments' order; `pages`: {experiment: its page's file name}."""
    from bench.report import advice
    ok, _ = stats.latest_per_run(records)
    out = []
    for exp, page in pages.items():
        recs = [r for r in ok if r['experiment'] == exp]
        label = exp.upper() if exp in EXPERIMENTS and exp.startswith('w') else exp
        for adv in advice.advices([r for r in recs if r.get('advise')]):
            rec = adv.recommendation()
            out.append([f'[{label}]({page})', adv.dataset, f'{adv.device} · {adv.profile}',
                        f'**{rec.best}** {100 * adv.table.best.mean(adv.table.metric):.1f}' if rec else '-',
                        ', '.join(s for s in (rec.remain if rec else []) if s != rec.best) or '-',
                        rec.pick if rec else '-', f'{adv.epochs}-epoch race'])
        plain = [r for r in recs if not r.get('advise') and not r.get('search')]
        searched = [r for r in recs if r.get('search', {}).get('role') == 'refit']
        if searched:
            table = stats.Table(exp, searched[0]['device'], searched[0]['profile'],
                                stats.rows(searched, label=search.label), stats.dataset_name(searched[0]))
            out.append(cells(table, page, label))
        declared = EXPERIMENTS.get(exp)
        tables = stats.tables(plain)
        if declared is not None and declared.regimes:
            comps = regimes.comparisons(tables)
            best, fails = regimes.verdict(comps)
            if fails:  # a cheaper regime compared with the native one
                verdict = (f'cheapest regime agreeing with the native one: {best}' if best else
                           'no cheaper regime agrees with the native one')
                out.append([f'[{label}]({page})', ', '.join(c.dataset for c in comps), f'{comps[0].device} · '
                            f'{comps[0].profile}', verdict, '-', '-', '-'])
            tables = [t for t in tables if t.regime == declared.native_regime]
        for dataset, table in sorted(headline(tables).items()):
            out.append(cells(table, page, label))
        for block in across.experiment_blocks(records, exp):
            if block.fixed:
                continue
            rec = across.recommend(block)
            out.append([f'[{label}]({page})', f'{len(block.names)} datasets', f'{block.device} · {block.profile}',
                        f'**{rec.best}** (mean rank)', ', '.join(s for s in rec.remain if s not in (rec.best,)) or '-',
                        rec.pick, f'{rec.cost:.2f}x the fastest\'s time'])
    return out


def page(records, pages):
    """The front page's markdown: the answers first, then how to read them and the experiments' pages."""
    table = rows(records, pages)
    out = ['# Leaderboard', '', '_Rendered by `bench/leaderboard.py` from the run records; regenerate it, never edit '
           'it._', '']
    if not table:
        return '\n'.join(out + ['No runs recorded yet: run `make bench`.', ''])
    out += ['The answers so far: a row per experiment and dataset, from its headline table (tuned where it was, the '
            'newest machine\'s). **best**: the declared metric, mean ± std over seeds; **tied**: its paired 95% '
            'interval against the best includes 0; **recommended**: the cheapest not practically worse than the best '
            '(its interval not wholly below -1 pp); **cost**: its training time. The pages hold every table, its '
            'verdicts and figures, and say what each budget was.', '',
            tabulate(table, headers=['experiment', 'dataset', 'hardware · profile', 'best', 'tied with it',
                                     'recommended', 'cost'], tablefmt='github', disable_numparse=True), '',
            'Experiments: ' + ' · '.join(f'[{exp}]({name})' for exp, name in pages.items()) + '.', '']
    return '\n'.join(out)
