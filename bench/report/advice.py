"""The advisor's answer, from its records: the race re-derived (bench/race.py), the finalists compared over seeds,
the recommendation, its regime and what W8 says of rankings measured there, and what W7's datasets say about the same
backbone. The leaderboard's advice section and the
end of `bench/advise.py` print the same words. Imports no torch.
"""
from collections import defaultdict
from dataclasses import dataclass

from tabulate import tabulate

from bench.analysis import across, regimes, stats
from bench.declare import record
from bench.declare.datasets import BY_FIELD, DATASETS
from bench.declare.strategies import HYPERPARAMETERS
from bench.report import tables
from bench.sweep import race, tune

SMALL_VALID = 100  # validation images below which the answer says its race's cuts are a few images apart


@dataclass
class Advice:
    """One race: a dataset, backbone, machine, profile and run length."""
    dataset: str
    backbone: str
    device: str
    profile: str
    epochs: int
    size: int             # image size, px
    scores: dict          # {share: {Candidate: validation score}}
    finalists: list       # race.Candidate, best first at the last rung
    table: stats.Table    # the finalists' seeds at their LR, on test
    budget_s: float
    wall_s: float         # every recorded run of the race and finals, start to end of each, summed
    n_valid: int

    @property
    def name(self):
        return (f'{self.dataset} · {self.backbone} · {self.device} · profile {self.profile} · {self.size} px · '
                f'{self.epochs} epochs')

    def regime(self):
        """'160 px, 50 steps, flat LR': what its whole runs trained."""
        return regimes.regime_words(self.table.rows[0].records[0]) if self.table.rows else f'{self.size} px'

    def block(self):
        """The finalists as an across.Block of one dataset, for the recommendation rule W7 uses."""
        return across.single(self.table)

    def recommendation(self):
        return across.recommend(self.block()) if len(self.table.rows) >= 2 else None


# what differs within one race: the candidate, its seed and share, and what its strategy decides (its
# hyperparameters, and whether it trains on cached features)
RACED = ('strategy', 'lr', 'head_lr', 'seed', 'stop_at', 'cache_features', *HYPERPARAMETERS)


def race_key(rec):
    """What makes runs one race: their identity but what the race varies, on one hardware."""
    return record.group_key(rec['config'], rec.get('device'), without=RACED)


def advices(records):
    """One Advice per race in `records` (the latest successful record of each run)."""
    ok, _ = stats.latest_per_run([r for r in records if r.get('advise') and tune.grid_of(r['strategy'])])
    groups = defaultdict(list)
    for rec in ok:
        groups[race_key(rec)].append(rec)
    out = []
    for _, recs in sorted(groups.items()):
        # each run once: a run of the race again by later code, keyed otherwise, is read as its latest run
        recs = list(record.latest(recs, by=lambda r: (race.candidate_of(r), race.share_of(r), r['seed'])).values())
        first = recs[0]
        dataset = stats.dataset_name(first)
        metric = stats.metric_of(dataset)
        valid = BY_FIELD[metric].valid
        n_valid = first.get('valid_images') or 0
        scores, finals = race.rerun(recs, valid, n_valid)
        seeds = defaultdict(list)
        for r in recs:
            if race.share_of(r) == 1.0 and race.candidate_of(r) in finals:
                seeds[race.candidate_of(r)].append(r)
        kept = [r for c in finals if len(seeds[c]) >= race.SEEDS for r in seeds[c]]
        table = stats.Table('advise', *stats.hardware_key(first), stats.rows(kept, metric=metric), dataset, metric,
                            True)
        out.append(Advice(dataset, first['backbone'], *stats.hardware_key(first), first['config']['epochs'],
                          record.trained_px(first), dict(scores), finals, table,
                          max(r['advise'].get('budget_s') or 0 for r in recs),
                          sum(r.get('wall_seconds') or 0 for r in recs), n_valid))
    return out


# ---- words ------------------------------------------------------------------------------------------------

def minutes(seconds):
    return f'{seconds / 60:.1f} min'


def lr_words(row):
    first = row.records[0]
    grid = tune.grid_of(first['strategy'])
    cfg = first['config']
    return (f'head LR {cfg["head_lr"]:g}' if grid.head_mult is None else
            f'LR {cfg["lr"]:g} (head {cfg["head_lr"]:g})')


def answer(adv):
    """The answer first: the pick, its LR, expected accuracy with its interval, time and memory; then why."""
    rows = {row.records[0]['strategy']: row for row in adv.table.rows}
    metric = adv.table.metric
    rec = adv.recommendation()
    if rec is None:
        only = adv.table.rows[0] if adv.table.rows else None
        return [f'- No comparison: {"only " + only.label if only else "no finalist"} finished its seeds; rerun to '
                f'resume.']
    pick, best = rows[rec.pick], rows[rec.best]
    values = [100 * v for v in pick.by_seed(metric).values()]
    iv = stats.t_interval(values)
    expected = (f'{iv.mean:.1f} % (95% CI {iv.lo:.1f} to {iv.hi:.1f}, {iv.n} seeds)' if iv is not None else
                f'{values[0]:.1f} % (1 seed)')
    out = [f'- **Use {rec.pick}** at {lr_words(pick)}: expected {stats.words(metric)} {expected}; trains in '
           f'{pick.mean("train_seconds"):.0f} s ({rec.cost:.2f}x the fastest finalist), peak memory '
           f'{pick.mean("peak_memory_mb"):,.0f} MB, {pick.records[0]["params_trainable"]:,} trainable parameters.']
    if rec.pick == rec.best:
        out.append(f'- It is the best of the {len(rows)} finalists on test.')
    else:
        diff, _ = stats.paired_difference(pick, best, metric)
        out.append(f'- The best on test is {rec.best} ({100 * best.mean(metric):.1f} %); {rec.pick} is '
                   f'{diff.mean:+.1f} pp from it (95% CI {diff.lo:+.1f} to {diff.hi:+.1f}, paired over {diff.n} seeds), '
                   f'not practically worse (the interval does not lie wholly below -{across.ROPE:g} pp), and the '
                   f'cheapest such finalist.' if diff is not None else
                   f'- The best on test is {rec.best}; too few paired seeds to compare.')
    others = [s for s in rec.remain if s != rec.pick]
    if others:
        out.append(f'- Not practically worse than the best either: {", ".join(others)}; the data cannot single one '
                   f'out, and {rec.pick} costs least.')
    if rec.out_loss:
        out.append('- Practically worse than the best over seeds: ' + ', '.join(
            f'{s} ({next(iter(lost.values())):+.1f} pp)' for s, lost in sorted(rec.out_loss.items())) + '.')
    if adv.n_valid and adv.n_valid < SMALL_VALID:
        out.append(f'- The validation split has {adv.n_valid} images: one image is {100 / adv.n_valid:.1f} pp, so the '
                   f'race\'s cuts rest on differences of an image or two; the seeds on test are the evidence here.')
    unconfirmed = [str(c) for c in adv.finalists if c.strategy not in rows]
    if unconfirmed:
        out.append(f'- A finalist not confirmed over seeds (the budget ran out first): {", ".join(unconfirmed)}.')
    rising = [row.records[0]['strategy'] for row in adv.table.rows if (t := stats.trend(row, metric)) and t.improving]
    if rising:
        out.append(f'- Still improving at the end of the run: {", ".join(rising)}; the answer holds at this budget; a '
                   f'longer run may change it.')
    return out


def race_table(adv):
    """Every candidate's validation score at each rung it reached, and how far it got."""
    shares = sorted(adv.scores)
    last = adv.scores.get(1.0, {})
    rows = []
    for c in sorted(adv.scores[shares[0]], key=lambda c: tuple(-(adv.scores[s].get(c) or -1) for s in reversed(shares))):
        reached = [s for s in shares if c in adv.scores[s]]
        fate = ('finalist' if c in adv.finalists else
                f'{c.strategy} went on at a better LR' if c.strategy in {f.strategy for f in adv.finalists} else
                'at the end, not within one standard error of the leader' if c in last else
                f'dropped after {reached[-1]:g} of a run')
        rows.append([c.strategy, c.setting] +
                    [f'{100 * adv.scores[s][c]:.1f}' if adv.scores[s].get(c) is not None else
                     ('failed' if c in adv.scores[s] else '') for s in shares] + [fate])
    short = BY_FIELD[adv.table.metric].short
    return tabulate(rows, headers=['strategy', 'LR'] + [f'valid {short} at {s:g} of a run' for s in shares] + ['outcome'],
                    tablefmt='github', disable_numparse=True)


def contenders_table(adv):
    """The finalists: the leaderboard's decision columns, and their training seconds."""
    cells = [tables.table_row(row, adv.table.best, adv.table.metric) for row in adv.table.rows]
    return tables.columns_table(cells, adv.table.metric, tables.DECISION + [('train_s', 'train s')])


def w8_comparisons(records):
    """W8's comparisons of regimes (bench/analysis/regimes.py) from `records`."""
    ok, _ = stats.latest_per_run([r for r in records if r.get('experiment') == 'w8'])
    return regimes.comparisons(stats.tables(ok))


def regime_lines(adv, comps):
    """The answer's regime, and what W8 (`comps`) says of rankings measured there: whether W8's regime at this image
    size ranks the strategies as the native one does, on each dataset it ran."""
    head = f'- Regime: {adv.regime()}.'
    if not comps:
        return [head + ' W8 has no records here to say whether a ranking at this regime holds at the backbone\'s '
                'pretrained size (`python bench/finetune.py --preset w8 --seeds 3` adds them).']
    native = comps[0].native
    other = ('' if all(c.backbone == adv.backbone for c in comps) else
             f' W8 measured {comps[0].backbone}, not {adv.backbone}: how far its finding carries is not known.')
    if adv.size >= native.size:
        return [head + f' W8\'s native regime trains at this size ({native.words()}): the one W8 compares the cheap '
                f'regimes with.' + other]
    said = []
    for comp in comps:
        for r in comp.cheaper:
            if r.size == adv.size:
                a = regimes.agreement(comp, r)
                said.append(f'on {comp.dataset} its {r.name} regime ({r.words()}) {"agrees" if a.agrees else "does not agree"} '
                            f'with the native ranking ({comp.native.words()}): tau {a.tau:+.2f}, {len(a.flips)} '
                            f'significant flip{"s" * (len(a.flips) != 1)}')
    if not said:
        return [head + f' W8 measured no regime at {adv.size} px: whether this ranking holds at {native.size} px is '
                f'not known.' + other]
    return [head + ' W8: ' + '; '.join(said) + '.' + other]


def context_lines(adv, blocks):
    """What W7's datasets say about this backbone: each one's best, W7's recommendation, and where this data's
    best stands in W7's mean ranks."""
    mine = [b for b in blocks if b.backbone == adv.backbone and not b.fixed]
    same = [b for b in mine if (b.device, b.profile) == (adv.device, adv.profile)] or mine
    if not same:
        return [f'- W7 has no tuned records of {adv.backbone}: `python bench/finetune.py --preset w7 --backbone '
                f'{adv.backbone} --seeds 3` adds them, and this section then says whether this data behaves like '
                f'W7\'s four datasets.']
    block = same[0]
    means = block.means()
    mr = across.mean_ranks(means, block.strategies)
    bests = ', '.join(f'{d.split(" (")[0]} {max(means[d], key=means[d].get)}' for d in block.names)
    overall = across.recommend(block)
    rec = adv.recommendation()
    here = rec.best if rec else (adv.finalists[0].strategy if adv.finalists else None)
    where = '' if (block.device, block.profile) == (adv.device, adv.profile) else f' ({block.device}, profile {block.profile})'
    line = (f'- On W7\'s {len(block.names)} datasets{where}, {adv.backbone}\'s best strategy was: {bests}; W7 '
            f'recommends {overall.pick} across them.')
    here_too = [d for d in block.names if block.per_dataset[d][0].dataset == adv.dataset]
    if here_too:
        table = block.per_dataset[here_too[0]][0]
        line += (f' W7 ran this dataset too ({table.rows[0].records[0]["config"]["epochs"]} epochs, every strategy at '
                 f'its tuned LR, 3 seeds): its best there was {table.best.records[0]["strategy"]}.')
    if here in mr:
        order = sorted(block.strategies, key=lambda s: (mr[s], s))
        line += (f' This data\'s best, {here}, has mean rank {mr[here]:.2f} there ({order.index(here) + 1} of '
                 f'{len(order)}): {"like" if order.index(here) < 3 else "unlike"} W7\'s datasets, where the top three '
                 f'by mean rank are {", ".join(order[:3])}.')
    return [line]


def section(advs, blocks, comps=(), figures=None):
    """Markdown lines: per race, the answer, the contenders, its regime (W8's `comps`), the race, and W7's context;
    `figures`: per race, in the same order, its [(caption, path)]."""
    out = ['How to read this: each strategy trained at each LR of its grid on the training split and was scored on '
           'the validation split, in the dataset\'s declared metric; at each rung the better half went on to train '
           'longer (successive halving; a rung\'s run is the first part of the whole run, so the scores are the whole '
           'run\'s at that point). At the end, the strategies the validation split cannot tell from the leader (within '
           'one binomial standard error; two at least, four at most) ran 3 seeds at their LR and were scored on test. '
           'The recommendation is the cheapest finalist not practically worse than the best: its paired 95% interval '
           f'over seeds does not lie wholly below -{across.ROPE:g} pp (the rule of the across-datasets '
           'recommendation, on one dataset).', '']
    for adv, made in zip(advs, figures or [[]] * len(advs)):
        out += [f'### {adv.name}', '']
        meta = DATASETS[adv.dataset].about + '. ' if adv.dataset in DATASETS else ''
        runs = sum(len(v) for v in adv.scores.values()) + sum(row.n - 1 for row in adv.table.rows)
        out += [f'{meta}Race: {" → ".join(str(len(adv.scores[s])) for s in sorted(adv.scores))} candidates at '
                f'{", ".join(f"{s:g}" for s in sorted(adv.scores))} of a run; {len(adv.finalists)} finalists; {runs} '
                f'runs recorded, {minutes(adv.wall_s)} of run time' +
                (f' (budget {minutes(adv.budget_s)})' if adv.budget_s else '') + '.', '']
        out += answer(adv) + regime_lines(adv, comps) + ['']
        if adv.table.rows:
            out += [contenders_table(adv), '']
        out += ['What the other datasets say:', '', *context_lines(adv, blocks), '']
        out += [line for caption, path in made for line in (f'![{caption}]({path})', '')]
        out += ['<details><summary>The race: every candidate\'s validation score at each rung</summary>', '',
                race_table(adv), '', '</details>', '']
    return out

