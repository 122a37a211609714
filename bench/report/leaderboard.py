"""Render reports/leaderboard.md (and reports/figures/) from the records, deterministically: the same records
give the same bytes (`python bench/leaderboard.py`).

One section per experiment, one table per hardware and profile inside it (times are only compared on the same
machine), one row per configuration with its seeds pooled (mean ± std, n), sorted by test accuracy, each row
compared with the table's best by a paired t interval over the seeds both ran (bench/analysis/stats.py), and the verdicts
written out under the table. Failed runs are listed apart with their message. Never trains; never edit its output
by hand.
"""
import re
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

from bench.analysis import across, regimes, stats
from bench.declare import record
from bench.declare.config import FIELDS
from bench.declare.datasets import DATASETS
from bench.declare.experiments import EXPERIMENTS
from bench.report import advice, front
from bench.report.tables import error_table, markdown_table, mean_std, provenance, split_words, table_row, verdict_lines
from bench.sweep import search

GUIDE = f"""How to read this: each section is one experiment, with one table per hardware and profile: runs from
different machines are never pooled, and times are only comparable within a table. A row is one configuration;
`n` is how many seeds ran it, and every number is mean ± std over them. Seeds change initialization, data order
and augmentation, while the train/validation/test split stays fixed, so runs of two rows with the same seed are
paired. Each table shows the columns a decision needs (the declared metric, the difference from the best with its
interval, the verdict, time, peak memory, trainable share and LR); the others (backbone, weights, size, epochs,
parameter counts, seconds, img/s, optimizer state, validation, the other metric, test loss, trend and settings) are
folded under the table, one row per row above. A table is one dataset: its rows are sorted by the dataset's declared metric, shown in bold (top-1 test
accuracy; mean per-class test accuracy for Caltech-101 and PBC blood cells, whose classes are imbalanced), and both metrics are
in every row. Each row is compared with the table's best row over the seeds both ran, in that metric: `Δ test` is
the mean paired difference in percentage points with its 95% confidence interval (Student's t
on the per-seed differences; with 3 seeds a bootstrap would have only 10 distinct resamples). A row whose
interval includes 0 is `tied` with the best: the data cannot tell them apart. `time ×` is the row's training time
over the best row's, the geometric mean of the per-seed ratios with its 95% interval. With fewer than
{stats.MIN_SEEDS} paired seeds no verdict is given. The lines under each table say the same in words.
A table says in its heading whether each strategy trained at its own LR, chosen on validation (`--tune lr`,
bench/sweep/tune.py: a half-decade grid per kind of strategy, scored on the validation split at the first seed, the seeds
then at the chosen LR), or at fixed LRs as given; tuned tables come first, and the fixed-LR records of earlier code
stay as they were. `LR: body · head` is the highest LR the optimizer gave the body's and the head's parameter
groups (the head always trains at the head's LR), with `tuned` where it was chosen, and `grid edge` where the best
point was still at the edge of the widest grid allowed. `tune s` is what tuning added: the seconds of the grid runs
at LRs not chosen (the chosen one is the first seed's run). `at the end` says `still improving` where the validation
metric rose over the run's last interval (each run has at least four validation points) by more than it varies
over seeds at the end: such a row's verdicts hold at this budget only. `settings` says `CPU steal up to N%` where the
hypervisor gave more than 5% of a virtual machine's CPU time to other guests while one of the row's runs trained:
that run's clock, and the row's `time ×`, are stretched by it.
`train s` is the training clock only (GPU synchronized, warm-up, validation and test excluded); `img/s` is
training images per second; `epochs` are the epochs that trained (0 for zero_shot); `trainable / total` counts
parameters (the largest trainable set over the schedule; LoRA's adapters count in both); `optimizer state MB` is
what the optimizer held at the end (Adam: two moments per trained parameter). `settings` also says when a run
accumulated gradients over smaller passes to fit in memory, and how many BatchNorm layers updated their running
statistics while training (a layer whose weight is frozen keeps them). `cpu`-profile rows ran a smaller budget sized so that
their ranking holds at twice the budget (see the README); they are not the accuracy the seed's full settings
reach. Peak memory on CPU is the process's peak resident set during the run (reset at its start; it includes the
decoded images the process holds); on CUDA it is the run's peak allocated memory after warm-up."""

def heading(table):
    lrs = 'each strategy at its tuned LR' if table.tuned else 'fixed LRs'
    regime = f' · regime {table.regime}' if table.regime else ''
    return (f'### {table.dataset + " · " if table.dataset else ""}{table.device} · profile {table.profile}{regime} · '
            f'{lrs}')


def slug(table):
    """A file-name-safe name for a table's figures, naming the dataset where the experiment has tables on several
    (W7; a preset run with --data): the fixed-LR tables keep the names they had."""
    declared = EXPERIMENTS.get(table.experiment)
    own = (declared.settings.get('data') if declared else None) or FIELDS['data'].default
    several = declared is not None and len(declared.datasets) > 1
    dataset = f'-{table.dataset}' if table.dataset and (several or table.dataset != own) else ''
    regime = f'-{table.regime}' if table.regime else ''
    return file_stem(f'{table.experiment}{dataset}-{table.device}-{table.profile}{regime}'
                     f'{"-tuned" if table.tuned else ""}')


def cross_slug(exp, block):
    """The same for an across-datasets block of experiment `exp` (W6's and W7's can share backbone, machine and
    profile)."""
    return file_stem(f'{exp}-across-{block.backbone}-{block.device}-{block.profile}{"" if block.fixed else "-tuned"}')


def regime_slug(exp, comp):
    return file_stem(f'{exp}-regimes-{comp.dataset}-{comp.backbone}-{comp.device}-{comp.profile}')


def advice_slug(adv):
    return file_stem(f'advise-{adv.dataset}-{adv.backbone}-{adv.device}-{adv.profile}-{adv.epochs}ep')


def file_stem(text):
    return re.sub(r'[^a-z0-9]+', '-', text.lower().replace('cpu: ', '')).strip('-')


# ---- searches ---------------------------------------------------------------------------------------------

def search_section(recs):
    """Per search: a summary row (the refits' test accuracy over seeds), the verdict between searches, and each
    search's trials sorted by validation score; a trial or a refit run again (by later code) shows its latest run."""
    searches = defaultdict(lambda: {'trial': [], 'refit': []})
    for r in recs:
        s = r['search']
        searches[(s['kind'], s.get('seed'), s.get('cv'), s.get('space', ''))][s.get('role', 'trial')].append(r)
    summary, details = [], []
    for (kind, seed, cv, space), parts in sorted(searches.items(), key=lambda kv: str(kv[0])):
        trials = sorted(record.latest(parts['trial'], by=lambda r: r['search']['trial']).values(),
                        key=lambda r: (-r['valid_acc'], r['search']['trial']))
        refits = sorted(record.latest(parts['refit'], by=lambda r: r['seed']).values(), key=lambda r: r['seed'])
        best = trials[0] if trials else None
        scoring = f'{cv}-fold CV' if cv else 'hold-out'
        summary.append([kind, seed, scoring, len(trials), _params(best['search']['params']) if best else '-',
                        f'{best["valid_acc"] * 100:.2f}' if best else '-',
                        mean_std([r['test_acc'] for r in refits], scale=100), len(refits),
                        f'{stats.seconds_spent(trials + refits):.0f}'])
        rows = [[r['search']['trial'], _params(r['search']['params']), f'{r["valid_acc"] * 100:.2f}',
                 f'{r["train_seconds"]:.1f}', f'{r["images_per_second"]:.0f}'] for r in trials]
        details += [f'#### {kind} search (seed {seed}, {scoring}) over `{space}`', '',
                    tabulate(rows, headers=['trial', 'params', 'valid acc %', 'train s', 'img/s'], tablefmt='github',
                             disable_numparse=True), '']
    out = [tabulate(summary, headers=['search', 'seed', 'scoring', 'trials', 'best params', 'best valid acc %',
                                      'refit test acc %', 'refit n', 'total s'],
                    tablefmt='github', disable_numparse=True), '']
    refits = [r for r in recs if r['search'].get('role') == 'refit']
    if refits:
        table = stats.Table('', '', '', stats.rows(refits, label=search.label))
        out += ['Refits compared (the best configuration of each search, retrained per seed):', '',
                *verdict_lines(table), '']
    return out + details


def _params(params):
    return ', '.join(f'{k}={v:g}' for k, v in sorted(params.items()))


# ---- the page ---------------------------------------------------------------------------------------------

def page_name(exp):
    """An experiment's page, beside the front page: w7.md, advise.md."""
    return f'{file_stem(exp)}.md'


def pages(records, figures=None):
    """{file name: markdown}: the front page (leaderboard.md: the answers, then how to read them) and a page per
    experiment. `figures`: {table slug: [(caption, relative path)]}, linked under each table."""
    figures = figures or {}
    by_exp = defaultdict(list)
    for rec in records:
        by_exp[rec['experiment']].append(rec)
    order = [e for e in EXPERIMENTS if e in by_exp] + sorted(e for e in by_exp if e not in EXPERIMENTS)
    names = {exp: page_name(exp) for exp in order}
    out = {'leaderboard.md': front.page(records, names) + '\n## How to read the tables\n\n' + GUIDE + '\n'}
    for exp in order:
        out[names[exp]] = experiment_page(exp, by_exp[exp], records, figures)
    return out


def render(records, figures=None):
    """Every page, the front page first, one after another: what `pages` writes, as one text."""
    return '\n'.join(pages(records, figures).values())


def experiment_page(exp, recs, records, figures):
    """One experiment's page: its tables (one per dataset, hardware, profile and regime), their verdicts and figures,
    its failed runs, and what its records add: the searches, the advisor's answers, across datasets, across regimes."""
    ok, failed = stats.latest_per_run(recs)
    declared = EXPERIMENTS.get(exp)
    out = [f'# {declared.title if declared else exp}', '',
           '_Rendered by `bench/leaderboard.py` from the run records; regenerate it, never edit it. '
           '[The answers, and how to read the tables](leaderboard.md)._', '']
    if declared and declared.question:
        out += [declared.question, '']
    advs = advice.advices([r for r in ok if r.get('advise')])
    if advs:
        out += advice.section(advs, across.experiment_blocks(records, 'w7'), advice.w8_comparisons(records),
                              [figures.get(advice_slug(a), []) for a in advs])
    for table in stats.tables([r for r in ok if not r.get('advise')]):
        rows_ = [r for row in table.rows for r in row.records]
        out += [heading(table), '', provenance(rows_), '']
        searched = [r for r in rows_ if r.get('search')]
        if searched:
            out += search_section(searched)
        else:
            if table.dataset in DATASETS:
                out += [f'Data: {DATASETS[table.dataset].about}. {split_words(rows_)}Ranked by '
                        f'{stats.words(table.metric)}.', '']
            out += [markdown_table([table_row(row, table.best, table.metric) for row in table.rows], table.metric),
                    '', *verdict_lines(table), '']
        for caption, path in figures.get(slug(table), []):
            out += [f'![{caption}]({path})', '']
    if failed:
        out += ['Failed runs (latest error per configuration; rerun to retry):', '', error_table(failed), '']
    blocks = across.experiment_blocks(records, exp)
    out += across.section(blocks, [figures.get(cross_slug(exp, b), []) for b in blocks])
    comps = regimes.comparisons(stats.tables(ok)) if declared and declared.regimes else []
    out += regimes.section(comps, [figures.get(regime_slug(exp, c), []) for c in comps])
    return '\n'.join(out).rstrip() + '\n'


def render_file(results, out=None):
    """Read `results`, write the leaderboard beside it (or to `out`) and its figures into `figures/` beside that;
    returns the leaderboard's path."""
    from bench.report import figures
    out = Path(out) if out else Path(results).with_name('leaderboard.md')
    records = record.read(results)
    links = {}
    ok = stats.latest_per_run(records)[0]
    for adv in advice.advices([r for r in ok if r.get('advise')]):
        made = figures.pareto(adv.table.rows, out.parent / 'figures' / f'{advice_slug(adv)}-pareto.png',
                              f'Advice: {adv.name}') if len(adv.table.rows) > 1 else None
        links[advice_slug(adv)] = [('The finalists: accuracy against training time, ±1 std over seeds, Pareto front '
                                    'in red', made.relative_to(out.parent).as_posix())] if made else []
    for table in stats.tables([r for r in ok if not r.get('advise')]):
        declared = EXPERIMENTS.get(table.experiment)
        title = (f'{declared.title if declared else table.experiment}\n'
                 f'{table.dataset + ", " if table.dataset else ""}{table.device}, profile {table.profile}')
        made = figures.draw(table, out.parent / 'figures', slug(table), title)
        links[slug(table)] = [(caption, path.relative_to(out.parent).as_posix()) for caption, path in made]
    for exp in sorted({r['experiment'] for r in records}):
        declared = EXPERIMENTS.get(exp)
        if declared is not None and declared.regimes:
            for comp in regimes.comparisons(stats.tables([r for r in ok if r['experiment'] == exp])):
                made = figures.regimes(comp, out.parent / 'figures' / f'{regime_slug(exp, comp)}.png')
                if made is not None:
                    links[regime_slug(exp, comp)] = [('Each strategy\'s score in each regime, ±1 std over seeds',
                                                      made.relative_to(out.parent).as_posix())]
        for block in across.experiment_blocks(records, exp):
            made = figures.critical_difference(block, out.parent / 'figures' / f'{cross_slug(exp, block)}-cd.png')
            if made is not None:
                links[cross_slug(exp, block)] = [('Critical-difference diagram: mean ranks over the datasets; '
                                                  'strategies joined by a bar are not told apart by Nemenyi\'s test',
                                                  made.relative_to(out.parent).as_posix())]
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, text in pages(records, links).items():
        path = out if name == 'leaderboard.md' else out.parent / name
        tmp = path.with_name(path.name + '.tmp')
        tmp.write_text(text)
        tmp.replace(path)
    return out
