"""Run one configuration: build the Learner (bench/learner.py), apply the strategy, time it, and return its result
fields.

Shared by every script, so runs differ only in their config. Timing warms up first (every batch shape the run
will see, so cuDNN autotuning, lazy CUDA initialisation and compilation happen off the clock; the warm-up is
recorded apart), synchronizes the GPU, keeps each epoch's training apart from its validation, and keeps the test
evaluation out of the training clock (what each epoch measured: bench/runlog.py).
"""
import copy
import gc
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from fastai.basics import DataLoaders, set_seed
from fastai.callback.training import GradientAccumulation

import backbones
from bench import data, memory, record
from bench.learner import apply_precision, autocast, group_names, learner, loaders, show_progress, sync
from bench.plan import plan
from bench.runlog import NonFiniteLoss, RunLog, StopRun
from bench.strategies import STRATEGIES, prepare


def warm_up(model, cfg, train_dl, eval_dls, backward=True):
    """Forward and backward at every batch shape training will see, and forward at every evaluation shape, then
    every weight, buffer, gradient and random state back as it was: what a first step costs (cuDNN autotuning,
    lazy CUDA initialisation, compilation, allocator growth) is paid here, off the clock. Forward only (eval mode)
    where not `backward`: a run on cached features. Returns its seconds."""
    t = time.perf_counter()
    weights = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if cfg.device == 'cuda' else None)
    if backward:
        model.train()
        for x, y in train_dl.shapes():
            with autocast(cfg):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
        model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), autocast(cfg):
        for dl in ([] if backward else [train_dl]) + list(eval_dls):
            for x, _ in dl.shapes():
                model(x)
    model.load_state_dict(weights)
    torch.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state_all(rng[1])
    sync(cfg.device)
    return time.perf_counter() - t


# ---- one run ----------------------------------------------------------------------------------------------

def train(cfg, images, split, bar=False, test=True, log=print):
    """Train and evaluate `cfg` (resolved); returns the result fields of its record."""
    set_seed(cfg.seed)
    torch.backends.cudnn.benchmark = cfg.device == 'cuda'
    size = cfg.size or cfg.resize or images.train_x.shape[1]
    spec = backbones.describe(cfg.backbone, size)
    net, weights = backbones.build(cfg.backbone, len(images.classes), cfg.head, cfg.head_hidden, cfg.head_dropout,
                                   cfg.weights, img_size=size)
    prepare(net, cfg)
    net.to(cfg.device)
    if cfg.channels_last == 'on':
        net.to(memory_format=torch.channels_last)
    train_dl, valid_dl, test_dl = loaders(cfg, images, split, spec)
    # memory for the phase that trains the most; on cached features the body never sees a gradient
    phases = plan(cfg, len(images.classes))['phases'] if cfg.cache_features != 'on' else []
    trains = max((set(ph['names']) for ph in phases), key=len, default=set())
    fits = memory.plan_batches(net, cfg, train_dl.prepare(train_dl.gather(np.arange(min(2, train_dl.n)))), autocast(cfg), trains)
    cbs = [runlog := RunLog(cfg.device, cfg)]
    runlog.accumulate = fits.accumulate
    if fits.accumulate > 1:  # the same optimizer steps on the same batches of cfg.bs, in smaller passes
        train_dl, valid_dl, test_dl = loaders(cfg, images, split, spec, bs=fits.micro_bs)
        cbs.append(GradientAccumulation(cfg.bs))
        log(f'    batches of {cfg.bs} as {fits.accumulate} passes of {fits.micro_bs}: about {fits.estimate_mb:,.0f} '
            f'MB, of {fits.free_mb:,.0f} MB free')
    params_total = sum(p.numel() for p in backbones.counted(net))
    full = learner(cfg, DataLoaders(train_dl, valid_dl, device=cfg.device), net, cbs)
    apply_precision(full, cfg)
    # on cached features the body only ever runs forward, in eval mode: a backward through it would cost memory
    # the run never needs
    warmup_seconds = warm_up(full.model, cfg, train_dl, [valid_dl, test_dl], backward=cfg.cache_features != 'on')
    reset_peak_memory(cfg.device)
    extract_seconds = 0.
    learn = full
    if cfg.cache_features == 'on':
        t = time.perf_counter()
        features = cached_features(net.body, cfg, (train_dl, valid_dl))  # on the training clock
        extract_seconds = time.perf_counter() - t
        learn = learner(cfg, DataLoaders(*features, device=cfg.device), net, cbs, head_only=True)
        apply_precision(learn, cfg)
    show_progress(learn, bar, log)

    steal = cpu_times()
    try:
        STRATEGIES[cfg.strategy](learn, cfg)
    except StopRun:
        pass  # stopped early (cfg.stop_at): its last epoch entry is the point it stopped at
    steal = stolen_share(steal, cpu_times())

    t = time.perf_counter()
    last = runlog.epochs[-1] if runlog.epochs else None
    valid_loss, valid_acc, valid_class_acc = (last['valid_loss'], last['valid_acc'], last['valid_class_acc']) \
        if last else map(float, learn.validate())
    if test and cfg.cache_features == 'on':
        test_dl, = cached_features(net.body, cfg, (test_dl,))  # on the evaluation clock
    test_loss, test_acc, test_class_acc = map(float, learn.validate(dl=test_dl)) if test else (None, None, None)
    sync(cfg.device)
    eval_seconds = time.perf_counter() - t + sum(e['valid_seconds'] for e in runlog.epochs)
    train_seconds = sum(e['train_seconds'] for e in runlog.epochs) + extract_seconds
    n_groups = len(learn.opt.param_lists) if learn.opt else 0
    return record.Results(
        weights=weights, epochs=runlog.epochs, valid_curve=runlog.curve, valid_loss=valid_loss, valid_acc=valid_acc,
        valid_class_acc=valid_class_acc, test_loss=test_loss, test_acc=test_acc, test_class_acc=test_class_acc,
        train_seconds=train_seconds, warmup_seconds=warmup_seconds, eval_seconds=eval_seconds,
        images_per_second=runlog.train_images / train_seconds if train_seconds else None,
        peak_memory_mb=peak_memory_mb(cfg.device), params_total=params_total,
        params_trainable=runlog.trainable_max, stage_names=list(spec.stage_names), groups=group_names(net, cfg),
        optimizer_state_mb=memory.optimizer_state_mb(learn.opt.opt) if learn.opt else 0.,
        batchnorm_updating=list(runlog.batchnorm) if runlog.batchnorm and runlog.batchnorm[1] else None,
        micro_bs=fits.micro_bs, accumulate=fits.accumulate, memory_estimate_mb=fits.estimate_mb,
        memory_free_mb=fits.free_mb, image_size=size, data_decode=images.decode, train_images=len(split.train),
        valid_images=len(split.valid), test_images=len(split.test), cpu_steal=steal,
        lrs=runlog.lrs(n_groups) if cfg.cache_features != 'on' else [None] * (len(group_names(net, cfg)) - 1)
        + runlog.lrs(n_groups)).as_dict()


@torch.no_grad()
def cached_features(body, cfg, dls):
    """The frozen body's outputs for every image, computed once in eval mode; the head then trains on them."""
    body = body.to(cfg.device).eval()
    out = []
    for dl in dls:
        with autocast(cfg):
            feats = torch.cat([body(dl.prepare(dl.gather(np.arange(i, min(i + dl.bs, dl.n))))).float()
                               for i in range(0, dl.n, dl.bs)])
        sync(cfg.device)
        out.append(data.Batches(feats, dl.y, data.Unchanged(), dl.bs, shuffle=dl.shuffle, drop_last=dl.drop_last,
                                seed=cfg.seed, device=cfg.device))
    return out


def reset_peak_memory(device):
    """Start the run's memory high-water mark afresh: CUDA's peak allocation (after freeing what the allocator
    caches), or (Linux) the process's peak RSS."""
    gc.collect()
    if torch.device(device).type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return
    trim_heap()  # what earlier runs and the warm-up freed goes back to the OS, not into this run's peak
    try:
        Path('/proc/self/clear_refs').write_text('5')  # resets VmHWM, the peak resident set size
    except OSError:
        pass  # elsewhere the mark covers the whole process so far: an upper bound for the run


def trim_heap():
    """glibc keeps freed memory in its heap, resident: hand it back (malloc_trim), where there is glibc."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_times():
    """(stolen, total) CPU time of the machine so far, from /proc/stat (Linux), or None elsewhere."""
    try:
        values = [int(x) for x in Path('/proc/stat').read_text().split('\n', 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (values[7] if len(values) > 7 else 0), sum(values[:8])


def stolen_share(before, after):
    """The share of the machine's CPU time the hypervisor gave to others between two cpu_times(): on a shared virtual
    machine a run's clock can stretch 2-9x while steal is high (seen on this project's 2-core machines), and the
    record says so."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def peak_memory_mb(device):
    if torch.device(device).type == 'cuda':
        return torch.cuda.max_memory_allocated() / 2 ** 20
    try:
        status = Path('/proc/self/status').read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith('VmHWM:'))) / 1024
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- a job, as a worker runs it --------------------------------------------------------------------------

_splits = {}  # one Split per images and split settings, computed once per process


def split_of(cfg, images):
    key = (images.key, *(getattr(cfg, name) for name in data.SPLIT_SETTINGS))
    if key not in _splits:
        _splits[key] = data.split_for(images, cfg)
    return _splits[key]


def score(cfg, images, splits, bar=False, log=print):
    """Train on each of `splits` without touching the test set; the mean validation accuracy is the score."""
    results = [train(cfg, images, s, bar=bar, test=False, log=log) for s in splits]
    out = dict(results[0])
    out.update(valid_acc=float(np.mean([r['valid_acc'] for r in results])),
               valid_loss=float(np.mean([r['valid_loss'] for r in results])),
               valid_class_acc=float(np.mean([r['valid_class_acc'] for r in results])),
               train_seconds=sum(r['train_seconds'] for r in results),
               eval_seconds=sum(r['eval_seconds'] for r in results),
               fold_valid_acc=[r['valid_acc'] for r in results])
    return out


def work(job, images, bar=False, log=print):
    """Run `job` (an executor.Job) on `images`: {'started_at', 'env', and 'results' or 'error'}, plain values
    only, so that the driver can record it wherever it ran. Never raises, except on Ctrl-C."""
    cfg = job.cfg
    out = dict(started_at=record.now(), env=record.environment(cfg.device))
    t = time.perf_counter()
    try:
        split = split_of(cfg, images)
        if job.folds:
            out['results'] = score(cfg, images, data.folds(split, images, job.folds, seed=cfg.split_seed), bar, log)
        else:
            out['results'] = train(cfg, images, split, bar=bar, test=job.test, log=log)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        out['error'] = error_message(e)
        if not isinstance(e, EXPECTED_ERRORS):
            traceback.print_exc(file=sys.stderr)
        if cfg.device == 'cuda':
            torch.cuda.empty_cache()
    if 'results' in out:  # everything the run took here: what a budget is spent on
        out['results']['wall_seconds'] = time.perf_counter() - t
    return out


EXPECTED_ERRORS = (backbones.WeightsError, NonFiniteLoss, memory.MemoryRefused, torch.cuda.OutOfMemoryError)


def error_message(e):
    if isinstance(e, (backbones.WeightsError, NonFiniteLoss, memory.MemoryRefused)):
        return str(e)
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return 'out of GPU memory; lower --bs or --size'
    lines = str(e).strip().splitlines()
    return f'{type(e).__name__}: {lines[0] if lines else ""}'.rstrip(': ')
