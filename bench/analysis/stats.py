"""From records to verdicts: which configurations a table holds, and whether a difference between two is real.

Records are grouped into tables (one per experiment, hardware and profile: times are only ever compared on the
same machine) and rows (one per configuration, its seeds pooled). Each row is compared with its table's best row
over the seeds both ran. Seeds change initialization, data order and augmentation while the split stays fixed,
so two rows' runs with the same seed are a pair, and the paired difference removes what the seed does to both.

The interval is Student's t on the paired differences (scipy.stats.t), not a bootstrap: with the 3 seeds a
table usually has, a bootstrap can draw only 10 distinct resamples and its percentile interval is far too
narrow; the t interval is exact if the differences are normal and honest about how little 3 pairs say.
Training time is compared as a ratio, with the same t interval on the log of the per-seed ratios.
"""
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from scipy import stats

from bench.declare import datasets
from bench.declare.experiments import EXPERIMENTS
from bench.declare.record import group_key, latest
from bench.sweep import tune

MIN_SEEDS = 3     # fewer paired seeds than this give no verdict: the interval would be wider than any effect
CONFIDENCE = 0.95


@dataclass
class Row:
    """One configuration of a table: its records, one per seed (the latest successful one), the field it is ranked
    by, and, in a tuned table, how its LR was chosen (a tune.Result)."""
    label: str
    records: list
    tuned: object = None
    metric: str = 'test_acc'

    @property
    def n(self):
        """The seeds scored in the row's metric (a run whose test was never scored counts for nothing)."""
        return len(self.by_seed(self.metric))

    @property
    def unscored(self):
        """Seeds of the row's runs without a score in its metric."""
        return sorted(r['seed'] for r in self.records if r.get(self.metric) is None)

    def by_seed(self, field_name):
        return {r['seed']: r.get(field_name) for r in self.records if r.get(field_name) is not None}

    def mean(self, field_name):
        values = list(self.by_seed(field_name).values())
        return statistics.mean(values) if values else float('-inf')


@dataclass
class Table:
    experiment: str
    device: str
    profile: str
    rows: list = field(default_factory=list)   # sorted, best first
    dataset: str = ''                          # the dataset's name (cifar10, caltech101, a folder's)
    metric: str = 'test_acc'                   # the record field rows are ranked and compared by
    tuned: bool = False                        # every strategy at its own LR, chosen on validation (bench/sweep/tune.py)
    regime: str = ''                           # the experiment's regime (px, steps, schedule) the rows trained in

    @property
    def best(self):
        return self.rows[0] if self.rows else None


@dataclass(frozen=True)
class Interval:
    """A paired estimate: `mean` with its 95% interval [lo, hi] over `n` pairs."""
    mean: float
    lo: float
    hi: float
    n: int

    @property
    def includes_zero(self):
        return self.lo <= 0 <= self.hi


def t_interval(values):
    """Mean of `values` and its two-sided 95% Student's t interval; None with fewer than MIN_SEEDS values."""
    n = len(values)
    if n < MIN_SEEDS:
        return None
    mean = statistics.mean(values)
    sem = statistics.stdev(values) / math.sqrt(n)
    if sem == 0:
        return Interval(mean, mean, mean, n)
    lo, hi = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=sem)
    return Interval(mean, float(lo), float(hi), n)


def paired_difference(row, best, field_name='test_acc', scale=100.0):
    """`row` minus `best` in `field_name` (scaled: accuracy in percentage points), paired by seed."""
    a, b = row.by_seed(field_name), best.by_seed(field_name)
    seeds = sorted(set(a) & set(b))
    return t_interval([(a[s] - b[s]) * scale for s in seeds]), len(seeds)


def paired_ratio(row, best, field_name='train_seconds'):
    """`row` / `best` in `field_name`, paired by seed: geometric mean ratio and its interval (t on logs)."""
    a, b = row.by_seed(field_name), best.by_seed(field_name)
    seeds = sorted(s for s in set(a) & set(b) if a[s] > 0 and b[s] > 0)
    iv = t_interval([math.log(a[s] / b[s]) for s in seeds])
    if iv is None:
        return None
    return Interval(math.exp(iv.mean), math.exp(iv.lo), math.exp(iv.hi), iv.n)


# ---- grouping ---------------------------------------------------------------------------------------------

LABEL_FIELDS = ('backbone', 'strategy', 'variant')


def latest_per_run(records):
    """For each run identity: its latest successful record, else its latest error. File order is time order."""
    ok, failed = {}, {}
    for rec in records:
        (failed if rec.get('error') else ok)[rec['key']] = rec
    return list(ok.values()), [r for k, r in failed.items() if k not in ok]


def config_key(rec):
    """What makes records the same configuration (a row): its identity but the seed, on the same hardware, tuned or
    not, of the same search."""
    search = {k: v for k, v in (rec.get('search') or {}).items() if k != 'trial'}
    return group_key(rec['config'], rec.get('device'), without=('seed',), search=search, tuned=bool(rec.get('tune')))


def hardware_key(rec):
    return rec.get('device') or 'unknown device', rec.get('profile') or '?'


def dataset_name(rec):
    """The name of the dataset a record ran on (its config's `dataset` is name:fingerprint)."""
    return (rec.get('config', {}).get('dataset') or '').split(':')[0]


def metric_of(dataset):
    """The record field a dataset is ranked by: its declared metric's test field (top-1 where nothing is declared)."""
    return datasets.metric_of(dataset).test


def words(field):
    """'test accuracy': a table's metric in words."""
    return datasets.BY_FIELD[field].test_words


def rows(records, label=None, metric='test_acc'):
    """Rows over `records` (one table's), sorted best first: by mean test accuracy, then validation accuracy.
    Labels name whichever of backbone / strategy / variant differ between the rows, unless `label` is given."""
    groups = defaultdict(list)
    for rec in records:
        groups[config_key(rec)].append(rec)
    varying = [f for f in LABEL_FIELDS if len({r.get(f) or '' for r in records}) > 1] or ['strategy']
    out = []
    for key, recs in sorted(groups.items()):
        recs = sorted(latest(recs, by=lambda r: r['seed']).values(), key=lambda r: r['seed'])
        name = label(recs[0]) if label else ' '.join(str(recs[0].get(f) or '') for f in varying).strip()
        out.append(Row(name or recs[0]['strategy'], recs, metric=metric))
    seen = defaultdict(int)  # configurations equal in the label's fields but not in others get numbered
    for row in sorted(out, key=lambda r: config_key(r.records[0])):
        seen[row.label] += 1
        if seen[row.label] > 1:
            row.label = f'{row.label} #{seen[row.label]}'
    out.sort(key=lambda r: (-r.mean(metric), -r.mean('test_acc'), -r.mean('valid_acc'), config_key(r.records[0])))
    return out


def tables(records, label=None):
    """One Table per (experiment, hardware, profile, dataset, tuned or not, regime) of successful `records`, in a
    stable order, tuned tables first; rows ranked by the dataset's declared metric. A tuned table's rows are each
    strategy's runs at its chosen LR (the other grid points are in each row's `tuned`). An experiment that declares
    regimes (W8) has a table per regime: its variant names it."""
    groups = defaultdict(list)
    for rec in records:
        groups[(rec['experiment'], not rec.get('tune'), *hardware_key(rec), dataset_name(rec), regime_of(rec))].append(rec)
    out = []
    for (exp, untuned, device, profile, ds, regime), recs in sorted(groups.items(), key=lambda kv: table_order(kv[0])):
        found = {}
        if not untuned:
            kept, found = tune.chosen_records([r for r in recs if tune.grid_of(r['strategy'])])
            recs = kept + [r for r in recs if not tune.grid_of(r['strategy'])]
        table = Table(exp, device, profile, rows(recs, label, metric_of(ds)), ds, metric_of(ds), not untuned, regime)
        for row in table.rows:
            row.tuned = found.get(tune.group_key(row.records[0]['config'], row.records[0].get('device')))
        out.append(table)
    return out


def regime_of(rec):
    """The regime a record trained in, where its experiment declares regimes (its variant), else ''."""
    declared = EXPERIMENTS.get(rec['experiment'])
    return rec.get('variant') or '' if declared is not None and declared.regimes else ''


def table_order(key):
    """Tables in a stable order, a regime experiment's in the order it declares its regimes (cheapest first)."""
    exp, *rest, regime = key
    declared = EXPERIMENTS.get(exp)
    place = list(declared.regimes).index(regime) if declared is not None and regime in declared.regimes else -1
    return (exp, *rest, place, regime)


@dataclass(frozen=True)
class Trend:
    """How a row's validation metric moved over its last interval (between its last two validation points)."""
    rise: float       # mean over seeds, percentage points
    spread: float     # std over seeds of the final validation metric, percentage points (0 with one seed)
    n: int

    @property
    def improving(self):
        """Still rising at the end by more than the seeds disagree about where it ended."""
        return self.rise > self.spread


def trend(row, metric='test_acc'):
    """The row's Trend in the validation counterpart of `metric`, or None where no run has two points."""
    name = datasets.BY_FIELD[metric].valid
    rises, finals = [], []
    for r in row.records:
        points = [p[name] for p in (r.get('valid_curve') or r.get('epochs') or []) if p.get(name) is not None]
        if len(points) >= 2:
            rises.append(100 * (points[-1] - points[-2]))
            finals.append(100 * points[-1])
    if not rises:
        return None
    return Trend(statistics.mean(rises), statistics.stdev(finals) if len(finals) > 1 else 0., len(rises))


# ---- words ------------------------------------------------------------------------------------------------

def verdict(row, best, metric='test_acc'):
    """('best' | 'tied' | 'worse' | 'no verdict', sentence) for `row` against its table's `best` row, in `metric`."""
    if not best.n:  # nothing scored yet (a tuned sweep still choosing its LRs): no row is best
        return 'no verdict', None
    if row is best:
        return 'best', None
    iv, n = paired_difference(row, best, metric)
    if iv is None:
        return 'no verdict', (f'{row.label} vs {best.label}: no verdict, {n} paired seed{"s" * (n != 1)} '
                              f'({MIN_SEEDS} needed)')
    if iv.includes_zero:
        words = (f'{row.label} is tied with {best.label}: {iv.mean:+.1f} pp '
                 f'(95% CI {iv.lo:+.1f} to {iv.hi:+.1f}, n = {iv.n}, paired)')
    else:  # the best row's lead, and its interval, as positive numbers
        words = (f'{best.label} beats {row.label} by {-iv.mean:.1f} pp '
                 f'(95% CI {-iv.hi:.1f} to {-iv.lo:.1f}, n = {iv.n}, paired)')
    return ('tied' if iv.includes_zero else 'worse'), words + time_words(row, best)


def time_words(row, best):
    ratio = paired_ratio(row, best)
    if ratio is None:
        return ''
    return (f'; {row.label} trains in {ratio.mean:.2f}x the time of {best.label} '
            f'(95% CI {ratio.lo:.2f} to {ratio.hi:.2f})')


def seconds_spent(records):
    """Training and evaluation seconds of `records`, all together."""
    return sum((r.get('train_seconds') or 0) + (r.get('eval_seconds') or 0) for r in records)
