"""A run, built once: the one object that holds what a configuration trains with.

`build(cfg, images, split)` makes each piece once: the backbone's description, the model (timm body + head) with
its strategy's prepare step, the batches, the one Learner, the strategy's plan (which parameters each phase trains,
at what LR: read off the real Learner by running the strategy's own code under a callback that cancels each fit),
the memory fit (measured on the real model; no second copy) and the batch evaluation runs at (inference needs no
saved activations, so it takes the largest batch that fits). `planned(cfg, n_classes)` builds the same on the
meta device, without data or weights: the dry run's plan, and what `bench/tools/families.py` checks.

On cached features (a body that never trains: `feature_extract`), the body's outputs are computed once, in eval mode
and in evaluation-sized batches, on the training clock, and the one Learner is over the head alone, fed those
outputs; the test split then runs through body and head (the same numbers: the body is frozen in eval mode).
"""
import copy
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from fastai.basics import Callback, CancelFitException, DataLoaders, Learner
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import ParamScheduler
from fastai.callback.training import GradientAccumulation

import backbones
from bench.declare.config import Config, image_size
from bench.declare.strategies import STRATEGIES, prepare
from bench.images import loader
from bench.train import fold, memory
from bench.train.learner import (apply_precision, autocast, group_names, learner, prepare_for, show_progress, sync,
                                 training_modes)
from bench.train.runlog import RunLog, evaluate


class Plan(Callback):
    """Stands in for training: at each fit, notes which groups train, their LRs and the trainable parameters,
    then cancels the fit. Runs the strategy's real code, on the run's own Learner (or a parameter-free one)."""
    order = -100

    def __init__(self):
        self.phases, self.epoch = [], 0

    def before_fit(self):
        groups = self.learn.opt.param_lists
        sched = next((cb for cb in self.learn.cbs if isinstance(cb, ParamScheduler)), None)
        if sched is not None and 'lr' in sched.scheds:
            lrs = np.max([np.broadcast_to(sched.scheds['lr'](p), (len(groups),)) for p in np.linspace(0, 1, 101)], 0)
        else:
            lrs = [h['lr'] for h in self.learn.opt.hypers]
        self.phases.append(dict(start=self.epoch, stop=self.epoch + self.n_epoch, lrs=[float(x) for x in lrs],
                                trains=[any(p.requires_grad for p in g) for g in groups],
                                trainable=sum(p.numel() for p in self.learn.model.parameters() if p.requires_grad),
                                names=[n for n, p in self.learn.model.named_parameters() if p.requires_grad],
                                one_cycle=sched is not None))
        self.epoch += self.n_epoch
        raise CancelFitException


def phases_of(learn, cfg):
    """The phases `cfg`'s strategy runs on `learn`, from its own code, with every fit cancelled before a step: the
    Learner is left with its optimizer made and no state in it."""
    planner = Plan()
    learn.add_cb(planner)
    try:
        STRATEGIES[cfg.strategy](learn, cfg)
    finally:
        learn.remove_cb(planner)
    return planner.phases


# What a CPU warm-up is for: a process's first step of a backbone pays for the kernels' set-up (EfficientNet-Lite0 at
# 96 px, 1 thread: 829 ms against 600 for the steps after); a second model of the same backbone and batch shapes in
# the same process, whether it trains the whole net or a head alone, pays nothing extra (578 ms, then 550). The kinds
# of run (backbone, strategy, sizes, precision, memory format, batch shapes) this process has warmed up:
_warmed = set()


@dataclass
class Run:
    cfg: Config
    spec: backbones.Spec
    net: backbones.Net
    weights: str                    # the weights loaded, as the record says them
    train_dl: loader.Batches        # the body's input batches (on cached features, what extraction reads)
    valid_dl: loader.Batches
    test_dl: loader.Batches
    learn: Optional[Learner]        # None on cached features until the features are extracted (`train`)
    phases: list                    # the strategy's plan (empty on cached features: only the head trains)
    fit: memory.Fit
    runlog: RunLog
    extract_seconds: float = 0.     # cached features: computing the body's outputs, on the training clock

    @property
    def cached(self):
        return self.cfg.cache_features == 'on'

    def trained_names(self):
        """The net's parameters that train in some phase (its state_dict names)."""
        if self.cached:
            return {f'1.{n}' for n, _ in self.net.head.named_parameters()}
        return {n for ph in self.phases for n in ph['names']}

    def warm_up(self):
        """The run's warm-up (`warm_up`): every training batch shape, forward and backward; on cached features the
        body's forward at each extraction shape instead. Returns its seconds. On a CPU only a process's first run of
        its kind pays a first step (`_warmed`): a later one skips it (0 s)."""
        loaders = [self.train_dl, self.valid_dl] if self.cached else [self.train_dl]
        cfg = self.cfg
        kind = (cfg.backbone, cfg.strategy, cfg.size, cfg.resize, cfg.precision, cfg.channels_last, self.cached,
                tuple((tuple(dl.x.shape[1:]), dl.bs, 0 if dl.drop_last else dl.n % dl.bs) for dl in loaders))
        if torch.device(cfg.device).type == 'cpu' and not cfg.compile and kind in _warmed:
            return 0.
        _warmed.add(kind)
        if self.cached:
            return warm_up(self.net.body, cfg, loaders, backward=False)
        return warm_up(self.net, cfg, loaders)

    def train(self, bar=False, log=print):
        """The strategy's fit on the Learner (on cached features: the body's outputs first, on the training clock)."""
        if self.cached:
            t = time.perf_counter()
            features = cached_features(self.net.body, self.cfg, self.train_dl, self.valid_dl)
            self.extract_seconds = time.perf_counter() - t
            self.learn = learner(self.cfg, DataLoaders(*features, device=self.cfg.device), self.net,
                                 [self.runlog], head_only=True)
            apply_precision(self.learn, self.cfg)
        show_progress(self.learn, bar, log)
        STRATEGIES[self.cfg.strategy](self.learn, self.cfg)

    def evaluate(self, dl):
        """(loss, accuracy, mean per-class accuracy) of the whole net on `dl`, in inference mode."""
        with torch.inference_mode():
            return evaluate(self.net, dl, self.cfg)

    def save(self, path):
        """What training changed (the parameters that trained, every buffer, and a random init, which no file can
        give back), to score the test split later."""
        names = self.trained_names()
        params = dict(self.net.named_parameters())
        state = {k: v for k, v in self.net.state_dict().items()
                 if k in names or k not in params or self.cfg.weights == 'none'}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + '.tmp')
        torch.save(state, tmp)
        tmp.replace(path)

    def load(self, path):
        state = torch.load(path, map_location=self.cfg.device, weights_only=True)
        missing = set(state) - set(self.net.state_dict())
        if missing:
            raise ValueError(f'the checkpoint {path} does not fit this run (it has {sorted(missing)[0]})')
        self.net.load_state_dict(state, strict=False)


def warm_up(model, cfg, loaders, backward=True):
    """Forward and backward (`backward`; else forward in eval mode) at each batch shape of `loaders`, then every
    weight, buffer, gradient and random state (an augmentation's draws included) back as it was: what a first step
    costs (cuDNN autotuning, lazy CUDA initialisation, compilation, allocator growth) is paid here, off the clock.
    Evaluation is off the training clock and pays its own first batches. Returns its seconds."""
    t = time.perf_counter()
    weights = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if cfg.device == 'cuda' else None)
    if backward:
        training_modes(model, cfg.train_bn)
    else:
        model.eval()
    for x, y in [batch for dl in loaders for batch in dl.shapes()]:
        with torch.set_grad_enabled(backward), autocast(cfg):
            out = model(x)
        if backward:
            torch.nn.functional.cross_entropy(out.float(), y).backward()
    model.zero_grad(set_to_none=True)
    model.load_state_dict(weights)
    torch.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state_all(rng[1])
    sync(cfg.device)
    return time.perf_counter() - t


def build(cfg, images, split, log=print, plan=True):
    """The run `cfg` (resolved) trains on `split` of `images`: every piece built once. `plan` False: a run that will
    only be evaluated (a checkpoint's test split), whose strategy is neither planned nor fitted to memory for
    training."""
    size = image_size(cfg, images.stored)
    spec = backbones.describe(cfg.backbone, size)
    net, weights = backbones.build(cfg.backbone, len(images.classes), cfg.head, cfg.head_hidden, cfg.head_dropout,
                                   cfg.weights, img_size=size)
    prepare(net, cfg)
    net.to(cfg.device)
    if cfg.channels_last == 'on':
        net.to(memory_format=torch.channels_last)
    train_dl = loader.batches(images, split.train, prepare_for(cfg, spec, True), cfg.bs, train=True, seed=cfg.seed,
                              device=cfg.device)
    runlog = RunLog(cfg.device, cfg)
    cached = cfg.cache_features == 'on'
    learn, phases = None, []
    if plan and not cached:
        learn = learner(cfg, DataLoaders(train_dl, train_dl, device=cfg.device), net, [runlog])
        apply_precision(learn, cfg)
        learn.remove_cb(ProgressCallback)
        phases = phases_of(learn, cfg)
    # memory for the phase that trains the most; on cached features the body never sees a gradient
    trains = max((set(ph['names']) for ph in phases), key=len, default=set())
    two = train_dl.head(2)
    if plan and not cached and torch.device(cfg.device).type == 'cpu' and cfg.precision == 'fp32' and not cfg.compile:
        fold.fold_frozen_norms(net, two)  # a BatchNorm the strategy freezes computes with its conv (fold.py)
    fit = memory.plan_batches(net, cfg, two, autocast(cfg), trains, eval_cap=EVAL_BS_MAX[torch.device(cfg.device).type])
    # evaluation reads the same images in every run of a process: prepared once and kept (bench/images/loader.py)
    evaluation = dict(prepare=prepare_for(cfg, spec, False), bs=fit.eval_bs, device=cfg.device, keep=True)
    if cached:  # what extraction reads: every training image once, in evaluation-sized batches, prepared on the
        # training clock as every other strategy's training images are (never kept: its time stays comparable)
        train_dl = loader.batches(images, split.train, **dict(evaluation, keep=False))
    if plan and fit.accumulate > 1:  # the same optimizer steps on the same batches of cfg.bs, in smaller passes
        train_dl = loader.batches(images, split.train, prepare_for(cfg, spec, True), fit.micro_bs, train=True,
                                  seed=cfg.seed, device=cfg.device)
        learn.add_cb(GradientAccumulation(cfg.bs))
        log(f'    batches of {cfg.bs} as {fit.accumulate} passes of {fit.micro_bs}: about {fit.estimate_mb:,.0f} '
            f'MB, of {fit.free_mb:,.0f} MB free')
    runlog.accumulate = fit.accumulate
    valid_dl = loader.batches(images, split.valid, **evaluation)
    test_dl = loader.batches(images, split.test, test=True, **evaluation)
    if learn is not None:
        learn.dls = DataLoaders(train_dl, valid_dl, device=cfg.device)
    return Run(cfg, spec, net, weights, train_dl, valid_dl, test_dl, learn, phases, fit, runlog)


EVAL_BS_MAX = {'cpu': 32, 'cuda': 512}  # images per evaluation batch at most: past these, throughput stops growing


def planned(cfg, n_classes):
    """The phases `cfg`'s strategy would run, with the group names and sizes, on a parameter-free (meta) copy of the
    model (`net`, prepared as the run's would be): no data, no weights, no training."""
    size = image_size(cfg)
    net, _ = backbones.build(cfg.backbone, n_classes, cfg.head, cfg.head_hidden, cfg.head_dropout, 'none', meta=True,
                             img_size=size)
    prepare(net, cfg)
    empty = loader.Batches(torch.zeros(0, 1, 1, 3, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                           loader.Prepare(), 1)
    learn = learner(cfg, DataLoaders(empty, empty), net)
    learn.remove_cb(ProgressCallback)
    phases = phases_of(learn, cfg)
    groups = learn.opt.param_lists if learn.opt else learn.splitter(net)
    return dict(names=group_names(net, cfg), sizes=[sum(p.numel() for p in g) for g in groups],
                total=sum(p.numel() for p in backbones.counted(net)), phases=phases, net=net)


@torch.no_grad()
def cached_features(body, cfg, train_dl, valid_dl):
    """The frozen body's outputs for every training and validation image, computed once in eval mode, in the
    loaders' own (evaluation-sized) batches; returned as loaders: the training one of the run's batch size, shuffled
    with the run's seed and dropping a lone last image, as the run's own training batches would."""
    body.eval()
    out = []
    for dl in (train_dl, valid_dl):
        with autocast(cfg):
            out.append(torch.cat([body(dl.prepare(dl.gather(np.arange(i, min(i + dl.bs, dl.n))))).float()
                                  for i in range(0, dl.n, dl.bs)]))
    sync(cfg.device)
    return (loader.Batches(out[0], train_dl.y, loader.Unchanged(), cfg.bs, shuffle=True,
                           drop_last=train_dl.n % cfg.bs == 1, seed=cfg.seed, device=cfg.device),
            loader.Batches(out[1], valid_dl.y, loader.Unchanged(), valid_dl.bs, device=cfg.device))
