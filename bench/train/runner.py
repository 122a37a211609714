"""Run one configuration: build it once (bench/train/run.py), apply the strategy, time it, and return its result fields.

Shared by every script, so runs differ only in their config. Timing warms up first (every batch shape training will
see, so cuDNN autotuning, lazy CUDA initialisation and compilation happen off the clock; the warm-up is recorded
apart), synchronizes the GPU, keeps each epoch's training apart from its validation, and keeps the test evaluation
out of the training clock (what each epoch measured: bench/train/runlog.py). A record says where the run's wall clock went:
setup (building), warm-up, training, evaluation.

A run scores the test split where a verdict reads it. A tuned grid point does not know yet whether it will be the
chosen LR: it is scored on validation only and keeps its trained weights (`keep`), and the one chosen is scored on
test afterwards from them (`test_checkpoint`), with the same numbers a test at the end of the run gives.
"""
import functools
import gc
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from fastai.basics import set_seed

import backbones
from bench.declare import record
from bench.declare.config import image_size
from bench.images import data
from bench.train import memory
from bench.train import run as runs
from bench.train.learner import group_names, sync
from bench.train.runlog import NonFiniteLoss, StopRun

TESTED_AT_END, TESTED_FROM_CHECKPOINT = 'at the end of the run', 'from the run\'s kept weights'


def train(cfg, images, split, bar=False, test=True, log=print, keep=None):
    """Train and evaluate `cfg` (resolved); returns the result fields of its record. `keep`: a path the trained
    weights are saved to, for a test scored later."""
    collect_garbage()  # and what the runs before freed goes back to the OS before this one plans on what is free
    t0 = time.perf_counter()
    set_seed(cfg.seed)
    torch.backends.cudnn.benchmark = cfg.device == 'cuda'
    run = runs.build(cfg, images, split, log)
    setup_seconds = time.perf_counter() - t0
    warmup_seconds = run.warm_up()
    reset_peak_memory(cfg.device)

    steal = cpu_times()
    try:
        run.train(bar, log)
    except StopRun:
        pass  # stopped early (cfg.stop_at): its last epoch entry is the point it stopped at
    steal = stolen_share(steal, cpu_times())
    runlog, learn = run.runlog, run.learn

    t = time.perf_counter()
    last = runlog.epochs[-1] if runlog.epochs else None
    if last:
        valid_loss, valid_acc, valid_class_acc = last['valid_loss'], last['valid_acc'], last['valid_class_acc']
    else:  # nothing trained (zero_shot)
        valid_loss, valid_acc, valid_class_acc = run.evaluate(run.valid_dl)
    valid_seconds = time.perf_counter() - t
    test_seconds, test_scores = timed_test(run) if test else (None, (None, None, None))
    if keep is not None:
        run.save(Path(keep))
    eval_seconds = valid_seconds + (test_seconds or 0) + sum(e['valid_seconds'] for e in runlog.epochs)
    train_seconds = sum(e['train_seconds'] for e in runlog.epochs) + run.extract_seconds
    n_groups = len(learn.opt.param_lists) if learn.opt else 0
    names = group_names(run.net, cfg)
    return record.Results(
        weights=run.weights, epochs=runlog.epochs, valid_curve=runlog.curve, valid_loss=valid_loss,
        valid_acc=valid_acc, valid_class_acc=valid_class_acc, test_loss=test_scores[0], test_acc=test_scores[1],
        test_class_acc=test_scores[2], train_seconds=train_seconds, warmup_seconds=warmup_seconds,
        eval_seconds=eval_seconds, images_per_second=runlog.train_images / train_seconds if train_seconds else None,
        peak_memory_mb=peak_memory_mb(cfg.device), params_total=sum(p.numel() for p in backbones.counted(run.net)),
        params_trainable=runlog.trainable_max, stage_names=list(run.spec.stage_names), groups=names,
        optimizer_state_mb=memory.optimizer_state_mb(learn.opt.opt) if learn.opt else 0.,
        batchnorm_updating=list(runlog.batchnorm) if runlog.batchnorm and runlog.batchnorm[1] else None,
        micro_bs=run.fit.micro_bs, accumulate=run.fit.accumulate, memory_estimate_mb=run.fit.estimate_mb,
        memory_free_mb=run.fit.free_mb, image_size=image_size(cfg, images.stored),
        data_decode=images.decode, train_images=len(split.train), valid_images=len(split.valid),
        test_images=len(split.test), cpu_steal=steal,
        lrs=runlog.lrs(n_groups) if not run.cached else [None] * (len(names) - 1) + runlog.lrs(n_groups),
        eval_bs=run.fit.eval_bs, setup_seconds=setup_seconds, test_seconds=test_seconds,
        tested=TESTED_AT_END if test else None, threads=torch.get_num_threads()).as_dict()


def timed_test(run):
    """(seconds, (loss, accuracy, mean per-class accuracy)) of the run's net on its test split."""
    t = time.perf_counter()
    scores = run.evaluate(run.test_dl)
    sync(run.cfg.device)
    return time.perf_counter() - t, scores


def test_checkpoint(cfg, images, split, path, log=print):
    """The test split scored on the weights a finished run kept at `path`: the result fields a tested record adds
    (test_*, tested, test_seconds), or FileNotFoundError where nothing is kept there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    set_seed(cfg.seed)
    run = runs.build(cfg, images, split, log, plan=False)
    run.load(path)
    seconds, (loss, acc, class_acc) = timed_test(run)
    return dict(test_loss=loss, test_acc=acc, test_class_acc=class_acc, test_seconds=seconds,
                tested=TESTED_FROM_CHECKPOINT)


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


def collect_garbage():
    """Free what the runs before left in reference cycles (a Learner and its callbacks hold one another), before a run
    builds anything (and, on a CPU, as a job ends). The first call then freezes what the process holds (torch, fastai,
    timm, the images: ~0.3 s to walk, at every collection) into the generation no collection scans, and so does any
    later call after the process imported more (peft, at its first LoRA run: 59,000 objects, 19 ms a collection): each
    collection walks only what came since. (Whether to freeze is read off the count of modules: gc.get_freeze_count()
    walks the frozen list, 50 ms for 590,000 objects.) Then the memory freed goes back to the OS (trim_heap), where the
    heap kept it."""
    global _modules_frozen
    gc.collect()
    if len(sys.modules) != _modules_frozen:
        gc.freeze()
        _modules_frozen = len(sys.modules)
    trim_heap()


_modules_frozen = 0  # how many modules this process had imported when it last froze


def trim_heap():
    """glibc keeps freed memory in its heap, resident: hand it back (malloc_trim), where there is glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache  # once per process
def keep_freed_memory():
    """Let a run reuse the memory its previous step freed, where there is glibc. glibc serves each allocation over its
    mmap threshold (at most 32 MB) from pages of its own and hands them back to the OS when it is freed, so the next
    step's tensor of that size is fresh pages, each faulted in and zeroed by the kernel: EfficientNet-Lite0 training
    at 224 px, batch 32, one thread, took 444,000 page faults a step, 1.0 s of kernel time in a 3.4 s step (AMD
    EPYC, AVX2). Served from the heap and never trimmed behind the run's back (mallopt: no mmap, no automatic trim),
    the same step takes 17,000 and 2.3 s, the same numbers. The runner trims the heap itself between runs
    (collect_garbage: before a run plans its batches, and as a job ends), so a run plans on, and its peak counts, what
    is its own. For CPU runs (`work`, bench/tools/speed.py)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, -1)  # -1: never, as man mallopt says


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h


@functools.cache
def _glibc():
    """The C library, where it is glibc (Linux); else None."""
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6')
        return libc if hasattr(libc, 'mallopt') and hasattr(libc, 'malloc_trim') else None
    except OSError:
        return None


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
    """The run's peak memory: CUDA's peak allocation; on a CPU (Linux) the process's peak resident set since the run
    began (VmHWM) less the file pages resident at its end (RssFile: the libraries' code, the image cache's map), which
    the OS shares between processes and can drop. So the figure does not depend on how the process started: a pool
    worker, forked from a server that imported the libraries, holds only the library pages it touches (8 MB right
    after it starts), a process that imported them itself (a local run's, a Ray actor) the 340 MB its imports touched
    too (Intel Xeon, torch 2.14). Elsewhere the process's peak resident set so far."""
    if torch.device(device).type == 'cuda':
        return torch.cuda.max_memory_allocated() / 2 ** 20
    try:
        status = dict(line.split(':', 1) for line in Path('/proc/self/status').read_text().splitlines() if ':' in line)
        peak, files = (int(status.get(k, '0 kB').split()[0]) for k in ('VmHWM', 'RssFile'))
        if peak:
            return (peak - files) / 1024
    except (OSError, ValueError):
        pass
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
    only, so that the driver can record it wherever it ran. A test-only job (`job.test_only`) gives just the test
    fields where its run's weights were kept, and trains the whole run, tested, where they were not. Never raises,
    except on Ctrl-C."""
    cfg = job.cfg
    if cfg.device == 'cpu':
        keep_freed_memory()
    out = dict(started_at=record.now(), env=record.environment(cfg.device))
    t = time.perf_counter()
    key = job.key(out['env']['device_name'])
    try:
        split = split_of(cfg, images)
        if job.folds:
            out['results'] = score(cfg, images, data.folds(split, images, job.folds, seed=cfg.split_seed), bar, log)
        elif job.test_only and record.checkpoint_path(key).is_file():
            out['results'] = test_checkpoint(cfg, images, split, record.checkpoint_path(key), log)
        else:
            out['results'] = train(cfg, images, split, bar=bar, test=job.tests, log=log,
                                   keep=record.checkpoint_path(key) if job.keep else None)
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
    if cfg.device == 'cpu':  # the memory the run held goes back now, not at this worker's next run: a run beside it
        collect_garbage()    # plans on what the OS has free
    return out


EXPECTED_ERRORS = (backbones.WeightsError, NonFiniteLoss, memory.MemoryRefused, torch.cuda.OutOfMemoryError)


def error_message(e):
    if isinstance(e, (backbones.WeightsError, NonFiniteLoss, memory.MemoryRefused)):
        return str(e)
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return 'out of GPU memory; lower --bs or --size'
    lines = str(e).strip().splitlines()
    return f'{type(e).__name__}: {lines[0] if lines else ""}'.rstrip(': ')
