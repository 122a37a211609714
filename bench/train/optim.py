"""The optimizers the strategies run: torch's fused (or foreach) Adam, AdamW and SGD behind fastai's interface.

fastai 2.8.12's own optimizers step every parameter tensor in a Python loop (~870 aten ops a step for ResNet18,
~5 ms of host time); torch's fused kernels step them all at once. `TorchOpt` keeps what the strategies rely on:
one hyperparameter set per fastai parameter group (stage LRs from `slice(lo, hi)`, fastai's schedulers), freezing
through `freeze_to` (fastai sets `requires_grad`; torch skips parameters without gradients), `clear_state` (the
progressive reset: moments and step counts start afresh), and fastai's rule that BatchNorm and bias parameters
get no weight decay (each fastai group is two torch groups, one of them with weight decay 0).

Semantics, as fastai's optimizers with the same names (tests/test_optim.py checks parameters after a few steps):
- adam:  Adam with L2 weight decay added to the gradient (fastai `Adam(decouple_wd=False)`; torch `Adam`);
- adamw: Adam with decoupled weight decay, p *= 1 - lr * wd (fastai `Adam(decouple_wd=True)`; torch `AdamW`);
- sgd:   momentum 0.9 without dampening and decoupled weight decay (fastai `SGD(mom=0.9)`; torch `SGD` with the
         decay applied by `step` before torch's update, since torch's SGD only knows L2).
"""
from collections import defaultdict
from functools import partial

import torch
from fastai.optimizer import _BaseOptimizer

KINDS = {  # name -> (torch class, the momentum hyperparameter's place, decoupled decay applied here)
    'adam': (torch.optim.Adam, 'betas', False),
    'adamw': (torch.optim.AdamW, 'betas', False),
    'sgd': (torch.optim.SGD, 'momentum', True),
}
DEFAULTS = {  # PyTorch's Adam defaults (betas 0.9/0.999, eps 1e-8), not fastai's (0.9/0.99, 1e-5), as in the seed
    'adam': dict(mom=0.9, sqr_mom=0.999, eps=1e-8),
    'adamw': dict(mom=0.9, sqr_mom=0.999, eps=1e-8),
    'sgd': dict(mom=0.9),
}


def opt_func(kind, no_decay=()):
    """A fastai `opt_func` for `kind`: called by the Learner with its parameter groups and LR."""
    return partial(TorchOpt, kind=kind, no_decay=no_decay, **DEFAULTS[kind])


def _fused_available(params):
    return all(p.device.type in ('cuda', 'cpu') for p in params)


class TorchOpt(_BaseOptimizer):
    """fastai's optimizer interface over one torch optimizer that steps every parameter at once."""
    def __init__(self, params, kind='adamw', lr=1e-3, mom=0.9, sqr_mom=0.999, eps=1e-8, wd=0., no_decay=()):
        if kind not in KINDS:
            raise ValueError(f'unknown optimizer {kind!r}; choose one of {", ".join(KINDS)}')
        groups = [list(g) for g in params] if isinstance(next(iter(params), None), (list, tuple)) else [list(params)]
        skip = {id(p) for p in no_decay}
        self.kind, self.state, self.frozen_idx = kind, defaultdict(dict), 0
        self._lists = groups
        self._hypers = [dict(lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd) for _ in groups]
        torch_groups, self._decays = [], []
        for g in groups:
            for decays in (True, False):
                torch_groups.append({'params': [p for p in g if (id(p) not in skip) == decays]})
                self._decays.append(decays)
        cls, _, _ = KINDS[kind]
        everything = [p for g in groups for p in g]
        kwargs = dict(lr=lr)
        if kind != 'sgd':
            kwargs.update(betas=(mom, sqr_mom), eps=eps)
        try:
            self.opt = cls(torch_groups, fused=_fused_available(everything), **kwargs)
        except (RuntimeError, TypeError, ValueError):  # a device or dtype without fused kernels
            self.opt = cls(torch_groups, foreach=True, **kwargs)
        self._push()

    # fastai's view: one list of parameters and one dict of hyperparameters per group
    @property
    def param_lists(self):
        return self._lists

    @param_lists.setter
    def param_lists(self, v):
        raise AttributeError('the parameter groups of TorchOpt are fixed at creation')

    @property
    def hypers(self):
        return self._hypers

    def _set_hyper(self, k, v):
        for h, value in zip(self._hypers, v):
            h[k] = value
        self._push()

    def _push(self):
        """Copy fastai's hyperparameters into the torch groups (two per fastai group: decayed, not decayed)."""
        _, momentum, decoupled_here = KINDS[self.kind]
        for i, pg in enumerate(self.opt.param_groups):
            h = self._hypers[i // 2]
            pg['lr'] = h['lr']
            if momentum == 'betas':
                pg['betas'] = (h['mom'], h['sqr_mom'])
                pg['eps'] = h['eps']
            else:
                pg['momentum'] = h['mom']
            wd = h['wd'] if self._decays[i] else 0.
            pg['weight_decay'] = 0. if decoupled_here else wd
            pg['decoupled_wd'] = wd if decoupled_here else 0.

    @torch.no_grad()
    def step(self, closure=None):
        for pg in self.opt.param_groups:
            if pg['decoupled_wd']:
                grads = [p for p in pg['params'] if p.grad is not None]
                if grads:
                    torch._foreach_mul_(grads, 1 - pg['lr'] * pg['decoupled_wd'])
        self.opt.step()

    def zero_grad(self):
        self.opt.zero_grad(set_to_none=True)

    def clear_state(self):
        """Moments and step counts start afresh (fastai's freeze_to calls this); freezing flags stay."""
        self.opt.state = defaultdict(dict)

    def state_dict(self):
        return self.opt.state_dict()

    def load_state_dict(self, sd):
        self.opt.load_state_dict(sd)
        self._push()
