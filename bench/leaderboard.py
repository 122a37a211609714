"""Render reports/leaderboard.md from the records, deterministically: the same records give the same bytes.

    python bench/leaderboard.py [--results reports/results.jsonl] [--out reports/leaderboard.md]

One table per experiment, one row per configuration with its seeds aggregated (mean ± std, n), sorted by test
accuracy; failed runs are listed apart with their message. Never trains; never edit its output by hand.
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tabulate import tabulate  # noqa: E402

from bench import record  # noqa: E402

EXPERIMENTS = {  # title and what the table answers, for the seed's experiments; others get their name
    'w1': ('W1: fine-tuning an ImageNet backbone on CIFAR-10 (the seed: ResNet18 at 224 px)',
           'Which strategy should I use on a pretrained backbone, and what does it cost?'),
    'w2': ('W2: VGG16 at native 32 px (ImageNet conv weights -> CIFAR-10)',
           'Feature extraction or partial fine-tuning of the last conv block?'),
    'w3': ('W3: training from scratch', 'CIFAR ResNet32 vs VGG16 from random init, and what makes VGG16 learn.'),
    'search': ('W4: hyperparameter search',
               'Grid vs random search on a small CNN: trials scored on validation only; the best retrained once and '
               'tested once (`refit test acc`).'),
}
GUIDE = """How to read this: each table is one experiment. A row is one configuration; `n` is how many seeds
ran it, and accuracies and times are mean ± std over them. Rows are sorted by test accuracy. `train s` is
the training clock only (GPU synchronized, validation excluded); `img/s` is training images per second;
`epochs` are the epochs that trained (0 for zero_shot).
`trainable / total` counts parameters (the largest trainable set over the schedule). Compare times only
between rows made on the same device and profile: `quick` rows ran on a subset at small size for a CPU and
measure the harness, not the accuracy the full settings reach. Peak memory on CPU is the process's RSS
high-water mark (an upper bound for the run); on CUDA it is the run's peak allocated memory."""


def group_key(rec):
    cfg = dict(rec['config'])
    cfg.pop('seed', None)
    return json.dumps({'config': cfg, 'search': rec.get('search')}, sort_keys=True, default=str)


def latest_per_run(records):
    """For each run identity: its latest successful record, else its latest error. File order is time order."""
    ok, failed = {}, {}
    for rec in records:
        (failed if rec.get('error') else ok)[rec['key']] = rec
    return list(ok.values()), [r for k, r in failed.items() if k not in ok]


def mean_std(values, fmt='{:.2f}', scale=1.0):
    values = [v * scale for v in values if v is not None]
    if not values:
        return '-'
    if len(values) == 1:
        return fmt.format(values[0])
    return f'{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}'


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else float('-inf')


def _device(rec):
    """The device, with the speed settings that tell runs on it apart (bf16, channels_last, compiled)."""
    cfg = rec['config']
    extras = [x for x in (cfg.get('precision') if cfg.get('precision') not in (None, 'fp32', 'auto') else None,
                          'channels_last' if cfg.get('channels_last') else None,
                          'compiled' if cfg.get('compile') else None,
                          'cached features' if cfg.get('cache_features') else None) if x]
    return rec['device'] + (f' ({", ".join(extras)})' if extras else '')


def _short_weights(w):
    return (w or '').split(' sha256:')[0]


def aggregate(records):
    """Rows of one experiment: one per configuration, seeds pooled."""
    groups = defaultdict(list)
    for rec in records:
        groups[group_key(rec)].append(rec)
    rows = []
    for recs in groups.values():
        recs.sort(key=lambda r: r['seed'])
        first, cfg = recs[0], recs[0]['config']
        rows.append(dict(
            strategy=first['strategy'], backbone=first['backbone'], variant=first.get('variant') or '',
            weights=_short_weights(first.get('weights')), size=first.get('image_size') or cfg.get('size'),
            epochs=len(first.get('epochs') or []), params=f'{first["params_trainable"]:,} / {first["params_total"]:,}',
            n=len(recs), train_s=mean_std([r['train_seconds'] for r in recs], '{:.1f}'),
            ips=mean_std([r['images_per_second'] for r in recs], '{:.0f}'),
            mem=mean_std([r['peak_memory_mb'] for r in recs], '{:.0f}'),
            valid=mean_std([r['valid_acc'] for r in recs], scale=100),
            test=mean_std([r['test_acc'] for r in recs], scale=100),
            test_loss=mean_std([r['test_loss'] for r in recs], '{:.3f}'),
            device=_device(first), profile=first['profile'],
            _sort=(-_mean([r['test_acc'] for r in recs]), -_mean([r['valid_acc'] for r in recs]), group_key(first))))
    rows.sort(key=lambda r: r['_sort'])
    return rows


COLUMNS = [('strategy', 'strategy'), ('backbone', 'backbone'), ('variant', 'variant'), ('weights', 'weights'),
           ('size', 'px'), ('epochs', 'epochs'), ('params', 'trainable / total'), ('n', 'n'),
           ('train_s', 'train s'), ('ips', 'img/s'), ('mem', 'peak MB'), ('valid', 'valid acc %'),
           ('test', 'test acc %'), ('test_loss', 'test loss'), ('device', 'device'), ('profile', 'profile')]


def table(rows, columns=COLUMNS):
    if not any(r.get('variant') for r in rows):
        columns = [c for c in columns if c[0] != 'variant']
    return tabulate([[r[k] for k, _ in columns] for r in rows], headers=[h for _, h in columns], tablefmt='github',
                    disable_numparse=True)


def error_table(failed):
    """One row per backbone, weights and message, naming the strategies that failed with it."""
    groups = defaultdict(set)
    for r in failed:
        groups[(r['backbone'], _short_weights(r.get('weights')), r.get('variant') or '', r['error'])].add(r['strategy'])
    rows = [[b, v, w, ', '.join(sorted(s)), msg] for (b, w, v, msg), s in sorted(groups.items())]
    return tabulate(rows, headers=['backbone', 'variant', 'weights', 'strategies', 'error'], tablefmt='github',
                    disable_numparse=True)


def provenance(recs):
    devices = sorted({r['device'] for r in recs})
    profiles = sorted({r['profile'] for r in recs})
    weights = sorted({_short_weights(r.get('weights')) for r in recs})
    shas = sorted({(r.get('git_sha') or 'unknown')[:12] for r in recs})
    versions = sorted({', '.join(f'{k} {v}' for k, v in sorted((r.get('versions') or {}).items())) for r in recs})
    return (f'Made on {"; ".join(devices)}. Profile: {", ".join(profiles)}. Weights: {", ".join(weights)}. '
            f'Code: {", ".join(shas)}. Versions: {" | ".join(versions)}.')


def search_tables(ok, failed):
    """Per search (kind, seed, CV, space): a summary row, then its trials sorted by validation score."""
    searches = defaultdict(lambda: {'trial': [], 'refit': [], 'failed': []})
    for r in ok + failed:
        s = r.get('search') or {}
        ident = (s.get('kind', '?'), s.get('seed'), s.get('cv'), s.get('space', ''))
        searches[ident]['failed' if r.get('error') else s.get('role', 'trial')].append(r)
    summary, details = [], []
    for (kind, seed, cv, space), parts in sorted(searches.items(), key=lambda kv: str(kv[0])):
        trials = sorted(parts['trial'], key=lambda r: (-r['valid_acc'], r['search']['trial']))
        refit = parts['refit'][-1] if parts['refit'] else None
        everything = trials + parts['refit'][-1:]
        spent = sum((r.get('train_seconds') or 0) + (r.get('eval_seconds') or 0) for r in everything)
        scoring = f'{cv}-fold CV' if cv else 'hold-out'
        best = trials[0] if trials else None
        summary.append([kind, seed, scoring, f'{len(trials)} ok / {len(parts["failed"])} failed',
                        _params(best['search']['params']) if best else '-',
                        f'{best["valid_acc"] * 100:.2f}' if best else '-',
                        f'{refit["test_acc"] * 100:.2f}' if refit else '-', f'{spent:.0f}',
                        (refit or best or parts['failed'][0])['device'], (refit or best or parts['failed'][0])['profile']])
        rows = [[r['search']['trial'], _params(r['search']['params']), f'{r["valid_acc"] * 100:.2f}',
                 f'{r["train_seconds"]:.1f}', f'{r["images_per_second"]:.0f}'] for r in trials]
        rows += [[r['search']['trial'], _params(r['search']['params']), 'error', '-', r['error']]
                 for r in sorted(parts['failed'], key=lambda r: r['search'].get('trial', 0))]
        details += [f'### {kind} search (seed {seed}, {scoring}) over `{space}`', '',
                    tabulate(rows, headers=['trial', 'params', 'valid acc %', 'train s', 'img/s'], tablefmt='github',
                             disable_numparse=True), '']
    head = tabulate(summary, headers=['search', 'seed', 'scoring', 'trials', 'best params', 'best valid acc %',
                                      'refit test acc %', 'total s', 'device', 'profile'],
                    tablefmt='github', disable_numparse=True)
    return [head, '', *details]


def _params(params):
    return ', '.join(f'{k}={v:g}' for k, v in sorted(params.items()))


def render(records, figures=None):
    """The leaderboard's markdown. `figures`: {experiment: [(title, relative path)]}, linked under each table."""
    figures = figures or {}
    by_exp = defaultdict(list)
    for rec in records:
        by_exp[rec['experiment']].append(rec)
    out = ['# Leaderboard', '',
           '_Rendered by `bench/leaderboard.py` from the run records; regenerate it, never edit it._', '',
           GUIDE, '']
    if not by_exp:
        out += ['No runs recorded yet: run `make bench`.', '']
    order = [e for e in EXPERIMENTS if e in by_exp] + sorted(e for e in by_exp if e not in EXPERIMENTS)
    for exp in order:
        ok, failed = latest_per_run(by_exp[exp])
        title, question = EXPERIMENTS.get(exp, (exp, ''))
        out += [f'## {title}', '']
        if question:
            out += [question, '']
        out += [provenance(ok + failed), '']
        searched = [r for r in ok + failed if r.get('search')]
        if searched:
            out += search_tables([r for r in ok if r.get('search')], [r for r in failed if r.get('search')])
            ok, failed = [r for r in ok if not r.get('search')], [r for r in failed if not r.get('search')]
        if ok:
            out += [table(aggregate(ok)), '']
        for caption, path in figures.get(exp, []):
            out += [f'![{caption}]({path})', '']
        if failed:
            out += ['Failed runs (latest error per configuration; rerun to retry):', '', error_table(failed), '']
    return '\n'.join(out).rstrip() + '\n'


def render_file(results, out=None):
    """Read `results`, write the leaderboard beside it (or to `out`) and its figures into `figures/` beside that;
    returns the leaderboard's path."""
    out = Path(out) if out else Path(results).with_name('leaderboard.md')
    records = record.read(results)
    from bench import figures
    text = render(records, figures.render_all(records, out.parent / 'figures', relative_to=out.parent))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--results', default='reports/results.jsonl', help='records to render')
    p.add_argument('--out', default=None, help='markdown file (default: leaderboard.md beside --results)')
    args = p.parse_args(argv)
    if not Path(args.results).exists():
        print(f'error: no results file at {args.results}; run a bench script first or pass --results', file=sys.stderr)
        return 2
    print(f'leaderboard: {render_file(args.results, args.out)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
