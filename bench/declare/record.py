"""The record: one JSON line per run, appended by the driver alone and never rewritten.

This module owns what a record holds (`make`), the environment it captures (`hardware`, `environment`,
`git_sha`), a run's identity (`run_key`: its resolved config, any search bookkeeping, and the hardware it ran
on), appending, tolerant reading (a torn or foreign line is skipped with a warning, never fatal) and what a
rerun skips (`done`). A run whose identity already has a successful record is done; a failed one is retried.
"""
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

from bench.declare.config import FIELDS
from bench.declare.datasets import cache_root
from bench.declare.strategies import HYPERPARAMETERS, STRATEGIES

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Results:
    """What a run measured: the fields every record has beside its config and environment, declared once. A worker
    builds one (a field left out is an error there, not a silently missing column) and sends `as_dict()`."""
    weights: str                  # the weights loaded: 'none', or the file or hub tag with its sha256
    epochs: list                  # per epoch: train_loss, valid_loss, valid_acc, valid_class_acc, seconds, trainable
    valid_curve: list             # validation points (at least MIN_POINTS per run): epoch (fractional), loss, metrics
    valid_loss: float
    valid_acc: float
    valid_class_acc: float
    test_loss: Optional[float]    # None where the run was not tested (search trials)
    test_acc: Optional[float]
    test_class_acc: Optional[float]
    train_seconds: float          # the training clock: warm-up and every evaluation excluded
    warmup_seconds: float
    eval_seconds: float
    images_per_second: Optional[float]
    peak_memory_mb: float
    params_total: int
    params_trainable: int         # the largest trainable set over the schedule
    stage_names: list
    groups: list
    optimizer_state_mb: float
    batchnorm_updating: Optional[list]  # [most layers updating their statistics in an epoch, BatchNorm layers]
    micro_bs: int
    accumulate: int
    memory_estimate_mb: float
    memory_free_mb: float
    image_size: int
    data_decode: Optional[dict]
    train_images: int
    valid_images: int
    test_images: int
    lrs: list                     # per parameter group [body..., head]: the highest LR it trained at (None: never)
    cpu_steal: Optional[float] = None      # share of the machine's CPU time stolen by the hypervisor while training
    fold_valid_acc: Optional[list] = None  # K-fold scoring: each fold's validation accuracy
    wall_seconds: Optional[float] = None   # the whole run here: building, warm-up, training and evaluation
    setup_seconds: Optional[float] = None  # building the run: model, weights, plan, memory fit, batches
    test_seconds: Optional[float] = None   # the test pass (part of eval_seconds)
    eval_bs: Optional[int] = None          # images per evaluation batch
    tested: Optional[str] = None           # how the test split was scored (None: it was not; the record says why)
    threads: Optional[int] = None          # torch's CPU threads for the run
    side_by_side: Optional[int] = None     # runs this machine ran at once while this one ran (1: alone)

    def as_dict(self):
        return asdict(self)


RESULT_FIELDS = tuple(f.name for f in fields(Results))
PACKAGES = ('torch', 'torchvision', 'fastai', 'timm', 'peft', 'numpy')


# ---- environment ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hardware:
    """Where runs land: the device type `auto` resolves to, and the name that is part of a run's identity."""
    device: str   # cuda | cpu
    name: str     # the GPU model, or 'cpu: <model> (<n> cores, <widest vector unit>)'
    cpu_bf16: bool = False     # the CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX)


def hardware(device='auto'):
    """This process's hardware for runs on `device` (auto: cuda if torch sees one)."""
    import torch
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return Hardware(device, device_name(device), cpu_has_bf16())


def device_name(device):
    import torch
    if device == 'cuda':
        return torch.cuda.get_device_name()
    isa = cpu_vector_unit()
    return f'cpu: {cpu_model()} ({os.cpu_count()} cores{", " + isa if isa else ""})'


@lru_cache(maxsize=None)
def cpu_flags():
    try:
        return set(next((line.split(':', 1)[1].split() for line in Path('/proc/cpuinfo').read_text().splitlines()
                         if line.startswith('flags')), []))
    except OSError:
        return set()


def cpu_has_bf16():
    """Without these, bf16 is emulated: EfficientNet-Lite0 and a small CNN trained 10x slower than in fp32 on an
    AVX2 EPYC."""
    return bool(cpu_flags() & {'avx512_bf16', 'amx_bf16'})


@lru_cache(maxsize=None)
def cpu_vector_unit():
    """The widest vector unit torch's CPU kernels use here (AVX-512, AVX2), as torch reports it; '' for any other.
    Part of the hardware's name because a virtual machine's model name can hide it: two 'AMD EPYC' machines of this
    project, one with AVX-512 and one without, trained EfficientNet-Lite0 2.7x apart."""
    import torch
    return {'AVX512': 'AVX-512', 'AVX2': 'AVX2'}.get(torch.backends.cpu.get_cpu_capability(), '')


@lru_cache(maxsize=None)
def cpu_model():
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device):
    """What the machine a run ran on says about itself: device name and library versions."""
    return dict(device_name=device_name(device),
                versions={'python': platform.python_version(), **{p: _version(p) for p in PACKAGES}})


def _version(package):
    try:
        return version(package)
    except PackageNotFoundError:  # peft is needed by lora alone; a worker may lack it
        return None


@lru_cache(maxsize=None)
def git_sha(repo=REPO):
    """The code version: HEAD, with -dirty if tracked code changed; None outside a git checkout.

    Files under reports/ are data, not code: the committed results file grows with every run, and a run
    appended to it must not mark the next one as made by uncommitted code.
    """
    try:
        sha = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--', '.', ':!reports'],
                               cwd=repo, capture_output=True, text=True).stdout.strip()
        return sha + ('-dirty' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return None


def now():
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')


# ---- identity and the record ------------------------------------------------------------------------------

def identity(config):
    """What of a config (a dict, as records hold it) makes a run what it is: every setting but those that never
    change what is computed, and the strategy hyperparameters its strategy does not read (a strategy of earlier
    code, no longer registered, keeps them all). So a flag a strategy ignores neither splits its rows nor forces a
    rerun, and a setting added for a new strategy leaves the runs of the others the runs they were."""
    strategy = STRATEGIES.get(config.get('strategy'))
    out = {}
    for name, value in config.items():
        meta = FIELDS[name].metadata if name in FIELDS else {}
        if meta.get('added') and value == FIELDS[name].default:
            continue
        if name in HYPERPARAMETERS and strategy is not None and name not in strategy.reads:
            continue
        if meta.get('identity', True):
            out[name] = value
    return out


def group_key(config, device=None, without=(), **more):
    """What makes runs one group, as a string: what of their config makes a run what it is (`identity`) less the
    settings in `without` (what the group varies: its seeds, its LRs, a race's candidates), on one hardware, with
    `more` beside it (bookkeeping). A run's key is the whole of it, hashed (`run_key`); a table's row, a tuning grid
    and a race are the same with their varying settings left out."""
    kept = {k: v for k, v in identity(config).items() if k not in without}
    return json.dumps({'config': kept, 'device': device, **more}, sort_keys=True, default=str)


def run_key(config, extra=None, device=None):
    """Stable identity of a run: sha1 of its group key with nothing left out, its search or tuning bookkeeping beside
    it."""
    return hashlib.sha1(group_key(config, device, extra=extra or {}).encode()).hexdigest()[:16]


def trained_px(rec):
    """The image size a record's run trained at, px: as measured, else as configured."""
    return rec.get('image_size') or rec['config'].get('size')


def make(cfg, key, started_at, env, code_version, results=None, error=None, extra=None):
    """A record: who ran (config, environment, code) and what came out (results, or the error)."""
    if results is not None and set(results) != set(RESULT_FIELDS):
        raise ValueError(f'a run\'s results must have exactly the fields of record.Results; '
                         f'missing {sorted(set(RESULT_FIELDS) - set(results))}, '
                         f'unknown {sorted(set(results) - set(RESULT_FIELDS))}')
    results = results or {}
    rec = dict(key=key, experiment=cfg.experiment, variant=cfg.variant, backbone=cfg.backbone, strategy=cfg.strategy,
               weights=results.get('weights', cfg.weights), profile=cfg.profile, seed=cfg.seed, config=cfg.to_dict(),
               device=env['device_name'], versions=env['versions'], git_sha=code_version, started_at=started_at,
               peak_memory_kind='cuda_max_allocated' if cfg.device == 'cuda' else 'process_peak_rss', error=error)
    rec.update({name: results.get(name) for name in RESULT_FIELDS})
    rec.update(extra or {})
    return rec


def checkpoint_path(key):
    """Where the run of identity `key` keeps its trained weights until its test is scored (beside the data cache)."""
    return cache_root() / 'checkpoints' / f'{key}.pt'


def tested(rec):
    """Whether a record has its test split scored."""
    return rec.get('test_acc') is not None


TEST_FIELDS = ('test_loss', 'test_acc', 'test_class_acc', 'test_seconds', 'tested')


def with_test(rec, scores):
    """`rec` (a run recorded without its test) with the test scores a later pass on its kept weights gave: the same
    run, completed. Its wall clock and evaluation time grow by that pass's."""
    out = dict(rec, **{k: scores[k] for k in TEST_FIELDS})
    out['eval_seconds'] = (rec.get('eval_seconds') or 0) + scores['test_seconds']
    out['wall_seconds'] = (rec.get('wall_seconds') or 0) + (scores.get('wall_seconds') or scores['test_seconds'])
    return out


# ---- the file ---------------------------------------------------------------------------------------------

def append(path, record):
    """Append one record as a single write, then fsync; a torn tail from an earlier crash is closed off first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str) + '\n'
    with open(path, 'ab') as f:
        if f.tell() > 0:
            with open(path, 'rb') as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b'\n':
                    line = '\n' + line
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


def read(path):
    """All records in `path` (none if it does not exist), skipping lines that are not run records."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, 'rb') as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                rec = None
            if is_record(rec):
                records.append(rec)
            else:
                print(f'warning: {path}:{n} is not a run record; skipped', file=sys.stderr)
    return records


def latest(records, by):
    """{by(record): its latest record} of `records`, by start time, a later one in the list winning a tie. Runs of
    one configuration and seed (or one search's trial) can carry different keys: a key is computed by the code that
    ran it, and a later version may write another for the same run (a field added with its default, a changed
    default). A table's rows, a search's trials, a tuned grid's choice, the advisor's race and its replay on a tuned
    sweep read the latest."""
    out = {}
    for rec in records:
        key = by(rec)
        if key not in out or (rec.get('started_at') or '') >= (out[key].get('started_at') or ''):
            out[key] = rec
    return out


def is_record(rec):
    return (isinstance(rec, dict) and isinstance(rec.get('config'), dict) and isinstance(rec.get('key'), str)
            and isinstance(rec.get('experiment'), str) and 'seed' in rec and 'error' in rec)


def done(path):
    """{key: record} of the runs in `path` recorded without error: what a rerun skips."""
    return {r['key']: r for r in read(path) if r['error'] is None}
