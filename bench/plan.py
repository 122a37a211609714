"""The dry run: the phases a strategy would run, from its own code on a parameter-free (meta) model: which groups
train, the LR of each, and the exact trainable parameters, without data, weights or training."""
import numpy as np
import torch
from fastai.basics import CancelFitException, Callback, DataLoaders
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import ParamScheduler

import backbones
from bench import data
from bench.learner import group_names, learner
from bench.strategies import STRATEGIES


class Plan(Callback):
    """Stands in for training: at each fit, notes which groups train, their LRs and the trainable parameters,
    then cancels the fit. Runs the strategy's real code on a parameter-free (meta) model."""
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


def plan(cfg, n_classes):
    """The phases `cfg`'s strategy would run, with the group names and sizes, without training anything."""
    size = cfg.size or cfg.resize or None
    net, _ = backbones.build(cfg.backbone, n_classes, cfg.head, cfg.head_hidden, cfg.head_dropout, 'none', meta=True,
                             img_size=size)
    empty = data.Batches(torch.zeros(0, 1, 1, 3, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                         data.Prepare(), 1)
    planner = Plan()
    learn = learner(cfg, DataLoaders(empty, empty), net, [planner])
    learn.remove_cb(ProgressCallback)
    STRATEGIES[cfg.strategy](learn, cfg)
    groups = learn.opt.param_lists if learn.opt else learn.splitter(net)
    return dict(names=group_names(net, cfg), sizes=[sum(p.numel() for p in g) for g in groups],
                total=sum(p.numel() for p in backbones.counted(net)), phases=planner.phases)


def format_plan(cfg, p):
    lines = [f'{cfg.experiment} | {cfg.backbone} | {cfg.strategy} | weights {cfg.weights} | seed {cfg.seed}',
             '  groups: ' + ' | '.join(f'{n} {s:,}' for n, s in zip(p['names'], p['sizes']))
             + f'  (total {p["total"]:,})']
    if not p['phases']:
        lines.append(f'  no training; evaluate only (trainable 0 of {p["total"]:,})')
    for ph in p['phases']:
        trained = [n for n, t in zip(p['names'], ph['trains']) if t]
        lrs = ' '.join(f'{x:.0e}' for x in ph['lrs'])
        kind = 'one-cycle peak' if ph['one_cycle'] else 'flat'
        lines.append(f'  epochs {ph["start"] + 1}-{ph["stop"]}: train {", ".join(trained)}; lr per group ({kind}) '
                     f'[{lrs}]; trainable {ph["trainable"]:,} of {p["total"]:,}')
    return '\n'.join(lines)
