"""Run one configuration: build the Learner (bench/learner.py), apply the strategy, time it, and return its result
fields.

Shared by every script, so runs differ only in their config. Timing warms up first (every batch shape the run
will see, so cuDNN autotuning, lazy CUDA initialisation and compilation happen off the clock; the warm-up is
recorded apart), synchronizes the GPU, keeps each epoch's training apart from its validation, and keeps the test
evaluation out of the training clock. Nothing reads a value back from the device during an epoch: losses and
metrics are summed where they are computed and read once per epoch.
"""
import contextlib
import copy
import gc
import math
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from fastai.basics import Callback, DataLoaders, Recorder, set_seed
from fastai.callback.training import GradientAccumulation
from fastai.torch_core import find_bs

import backbones
from bench import data, memory, record
from bench.learner import apply_precision, autocast, group_names, learner, loaders, show_progress, sync
from bench.plan import plan
from bench.strategies import STRATEGIES, prepare


class NonFiniteLoss(RuntimeError):
    pass


class StopRun(Exception):
    """Raised by RunLog where a run stops early (`cfg.stop_at`): out of every phase the strategy still has."""


# ---- timing -----------------------------------------------------------------------------------------------

MIN_POINTS = 4  # validation points per run at least: with few epochs, more than one per epoch


class RunLog(Callback):
    """Per epoch: training loss (mean over the epoch), validation loss and accuracy, seconds spent training and
    validating (GPU synchronized), trainable parameters and the peak LR of each parameter group that trained.
    Validation points: at least MIN_POINTS per run (`cfg.epochs` of them, or more evenly spaced within each epoch
    where epochs are few), so that a run still improving at its end shows it; a point within an epoch is evaluated
    here, off the training clock. Raises on a non-finite training loss. Where `cfg.stop_at` < 1, stops the run
    (StopRun, whatever phase it is in) after that share of its steps, with a validation point there: the steps
    before it are the whole run's."""
    order = Recorder.order + 1

    def __init__(self, device, cfg=None):
        self.device, self.cfg, self.epochs, self.curve, self.trainable_max, self.train_images = device, cfg, [], [], 0, 0
        self.per_epoch = math.ceil(MIN_POINTS / cfg.epochs) if cfg is not None and cfg.epochs else 1
        self.lr_max = {}  # parameter group -> the highest LR it trained at
        self.batchnorm = None  # (most layers updating their running statistics in an epoch, BatchNorm layers)
        self.accumulate, self.steps, self.stop, self.stopping = 1, 0, None, False  # loader batches per step

    def before_batch(self):
        if self.training and self.iter == 0:  # the first batch of each epoch: phases can freeze and unfreeze
            layers = [m for m in self.learn.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            updating = sum(m.training and m.track_running_stats for m in layers)
            self.batchnorm = (max(updating, self.batchnorm[0] if self.batchnorm else 0), len(layers))
            self.trains = [any(p.requires_grad for p in g) for g in self.learn.opt.param_lists]

    def before_epoch(self):
        sync(self.device)
        self.t0, self.loss_sum, self.seen, self.trained, self.mid_seconds = time.perf_counter(), 0., 0, False, 0.
        self.trainable = sum(p.numel() for p in self.learn.model.parameters() if p.requires_grad)

    def before_train(self):
        n = len(self.learn.dls.train)
        if self.stop is None and self.cfg is not None and self.cfg.stop_at < 1:  # counted over every phase
            steps = self.cfg.epochs * n // self.accumulate
            self.stop = max(1, math.floor(self.cfg.stop_at * steps)) * self.accumulate
        self.marks = {round(n * k / self.per_epoch) - 1 for k in range(1, self.per_epoch)} - {-1, n - 1}

    def after_batch(self):
        if self.training:
            bs = find_bs(self.yb)
            self.loss_sum = self.loss_sum + self.learn.loss.detach().float() * bs  # stays on the device: no sync
            self.seen += bs
            for i, (h, trains) in enumerate(zip(self.learn.opt.hypers, self.trains)):
                if trains:
                    self.lr_max[i] = max(self.lr_max.get(i, 0.), float(h['lr']))
            if self.iter in self.marks:
                self.mid_epoch_point((self.iter + 1) / len(self.learn.dls.train))
            self.steps += 1
            if self.stop is not None and self.steps >= self.stop:
                if self.iter == len(self.learn.dls.train) - 1:
                    self.stopping = True  # the epoch ends here: its own validation, then the stop
                else:
                    self.stop_within_epoch()

    def stop_within_epoch(self):
        """The epoch so far as an epoch of its own, scored at this point on validation; then StopRun."""
        fraction = (self.iter + 1) / len(self.learn.dls.train)
        if not self.curve or self.curve[-1]['epoch'] != len(self.epochs) + fraction:
            self.mid_epoch_point(fraction)
        sync(self.device)
        point = self.curve[-1]
        self.close_epoch(time.perf_counter() - self.t0 - self.mid_seconds, self.mid_seconds,
                         {k: point[k] for k in ('epoch', 'valid_loss', 'valid_acc', 'valid_class_acc')})
        raise StopRun(f'stopped after {self.steps} steps')

    @torch.no_grad()
    def mid_epoch_point(self, fraction):
        """Validation loss and metrics now, every module's train/eval mode kept as it was."""
        t = time.perf_counter()
        model = self.learn.model
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        loss, n_classes = 0., None
        preds, ys = [], []
        for xb, yb in self.learn.dls.valid:
            with autocast(self.cfg) if self.cfg is not None else contextlib.nullcontext():
                out = model(xb)
            out = out.float()
            loss = loss + torch.nn.functional.cross_entropy(out, yb, reduction='sum')
            preds.append(out.argmax(-1))
            ys.append(yb)
            n_classes = out.shape[-1]
        for m, mode in modes:
            m.train(mode)
        pred, y = torch.cat(preds), torch.cat(ys)
        total = torch.bincount(y, minlength=n_classes)
        hits = torch.bincount(y[pred == y], minlength=n_classes)
        present = total > 0
        self.curve.append(dict(epoch=len(self.epochs) + fraction, valid_loss=float(loss) / len(y),
                               valid_acc=float((pred == y).float().mean()),
                               valid_class_acc=float((hits[present] / total[present]).mean())))
        sync(self.device)
        self.mid_seconds += time.perf_counter() - t

    def after_train(self):
        self.trained = True

    def before_validate(self):
        sync(self.device)
        self.t1 = time.perf_counter()
        self.train_s = self.t1 - self.t0 - self.mid_seconds

    def after_epoch(self):
        if not self.trained:  # Learner.validate fires fit and epoch events too
            return
        sync(self.device)
        logged = dict(zip(list(self.recorder.metric_names)[1:], list(self.learn.final_record)))
        point = dict(epoch=len(self.epochs) + 1, valid_loss=float(logged['valid_loss']),
                     valid_acc=float(logged['accuracy']), valid_class_acc=float(logged['class_mean_accuracy']))
        self.close_epoch(self.train_s, time.perf_counter() - self.t1 + self.mid_seconds, point)
        self.curve.append(dict(point))
        if self.stopping:
            self.stopping = False
            raise StopRun(f'stopped after {self.steps} steps')

    def close_epoch(self, train_seconds, valid_seconds, point):
        """Append the epoch's entry (`point`: its epoch number and validation scores)."""
        train_loss = float(self.loss_sum / max(self.seen, 1))
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f'the training loss became {train_loss} in epoch {len(self.epochs) + 1}; '
                                f'lower the LR or use fp32')
        self.train_images += self.seen
        self.trainable_max = max(self.trainable_max, self.trainable)
        self.epochs.append(dict(point, train_loss=train_loss, train_seconds=train_seconds, valid_seconds=valid_seconds,
                                trainable=self.trainable))

    def lrs(self, n_groups):
        """Per parameter group, the highest LR it trained at (None: it never trained)."""
        return [self.lr_max.get(i) for i in range(n_groups)]


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
