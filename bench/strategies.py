"""Fine-tuning strategies, one short function each over a fastai Learner. No I/O.

The Learner's parameter groups are [stage 0, ..., stage n-1, head] (backbones.splitter), so `freeze()` trains
the head alone, `freeze_to(-(k + 1))` the last k stages and the head, `unfreeze()` everything. Strategies differ
only in which groups train when and at what LR; data, model, optimizer and timing are shared, so a comparison
between them measures the strategy. Frozen means frozen: unless `train_bn`, BatchNorm weights and running
statistics of frozen stages stay fixed (the runner adds fastai's BnFreeze).

LRs: `cfg.lr` is the LR of what trains with the body, spread over the body's stages as fastai's
`slice(lr / lr_mult, lr)`; `cfg.head_lr` is the head's when it trains alone or ahead of the body.
Adding a strategy is one function with `@register`; its name is the leaderboard's key. A strategy carries its
own rules: `check(cfg, n_stages)` says why a config cannot run it (or None), `body_frozen` lets the head train on
the body's outputs computed once (--cache-features), `refreezes` (the frozen set changes mid-run) rules out
torch.compile.
"""
from dataclasses import dataclass
from typing import Callable, Optional

from fastai.basics import even_mults


@dataclass(frozen=True)
class Strategy:
    name: str
    fit: Callable                       # (learn, cfg) -> None: trains `learn` in place
    check: Optional[Callable] = None    # (cfg, n_stages) -> why `cfg` cannot run, or None
    body_frozen: bool = False           # the body never trains
    refreezes: bool = False             # the frozen set changes mid-run

    def __call__(self, learn, cfg):
        return self.fit(learn, cfg)


STRATEGIES = {}


def register(fn=None, *, check=None, body_frozen=False, refreezes=False):
    """Add `fn` to STRATEGIES under its name; as `@register` or `@register(check=..., ...)`."""
    def add(fn):
        if fn.__name__ in STRATEGIES:
            raise ValueError(f'strategy {fn.__name__!r} is registered twice')
        STRATEGIES[fn.__name__] = Strategy(fn.__name__, fn, check, body_frozen, refreezes)
        return fn
    return add(fn) if fn is not None else add


def fit(learn, epochs, lr, cfg):
    if cfg.sched == 'one_cycle':
        learn.fit_one_cycle(epochs, lr)
    else:
        learn.fit(epochs, lr)


def body_slice(cfg):
    return slice(cfg.lr / cfg.lr_mult, cfg.lr)


def body_and_head(learn, cfg):
    """Per-group LRs: the body's stages spread like `body_slice`, the head at `head_lr`."""
    n_body = len(learn.opt.param_lists) - 1
    return [*even_mults(cfg.lr / cfg.lr_mult, cfg.lr, n_body), cfg.head_lr]


@register
def zero_shot(learn, cfg):
    """Pretrained body, fresh head, no training: the chance-level floor."""


@register(body_frozen=True)
def feature_extract(learn, cfg):
    """The body is a fixed feature extractor; only the head trains."""
    learn.freeze()
    fit(learn, cfg.epochs, cfg.head_lr, cfg)


def check_unfreeze(cfg, n_stages):
    if not 1 <= cfg.unfreeze <= n_stages:
        return f'--unfreeze must be between 1 and {n_stages} (the stages of {cfg.backbone}), got {cfg.unfreeze}'


@register(check=check_unfreeze)
def partial(learn, cfg):
    """The last `unfreeze` stages train with the head; earlier stages stay frozen."""
    learn.freeze_to(-(cfg.unfreeze + 1))
    fit(learn, cfg.epochs, body_slice(cfg), cfg)


def check_unfreeze_at(cfg, n_stages):
    at = list(cfg.unfreeze_at)
    if not at or at != sorted(set(at)) or at[0] < 1 or at[-1] >= cfg.epochs:
        return (f'--unfreeze-at must be increasing epochs between 1 and {cfg.epochs - 1} '
                f'(--epochs {cfg.epochs}), got {",".join(map(str, at)) or "nothing"}')
    if len(at) > n_stages:
        return f'--unfreeze-at unfreezes {len(at)} stages but {cfg.backbone} has {n_stages}'


@register(check=check_unfreeze_at, refreezes=True)
def progressive(learn, cfg):
    """Head alone, then one more stage from each epoch in `unfreeze_at`; the optimizer state resets at each
    unfreeze (freeze_to clears it)."""
    bounds = [0, *cfg.unfreeze_at, cfg.epochs]
    for stages, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        learn.freeze_to(-(stages + 1))
        fit(learn, stop - start, body_and_head(learn, cfg), cfg)


@register
def full(learn, cfg):
    """Everything trains from the first step; `lr_mult` > 1 gives discriminative LRs."""
    learn.unfreeze()
    fit(learn, cfg.epochs, body_slice(cfg), cfg)


def check_two_phases(cfg, n_stages):
    if cfg.epochs < 2:
        return f'{cfg.strategy} needs --epochs of at least 2 (a frozen phase, then the rest), got {cfg.epochs}'


@register(check=check_two_phases, refreezes=True)
def fine_tune(learn, cfg):
    """fastai's own recipe: one frozen one-cycle epoch at head_lr, then everything, one-cycle, at head_lr / 2
    spread over fastai's default lr_mult of 100."""
    learn.fine_tune(cfg.epochs - 1, base_lr=cfg.head_lr, freeze_epochs=1)


def lp_epochs(cfg):
    return cfg.lp_epochs or cfg.epochs // 2


def check_lp_ft(cfg, n_stages):
    if not 1 <= lp_epochs(cfg) < cfg.epochs:
        return check_two_phases(cfg, n_stages) or f'--lp-epochs must be between 1 and {cfg.epochs - 1}, got {cfg.lp_epochs}'


@register(check=check_lp_ft, refreezes=True)
def lp_ft(learn, cfg):
    """Linear probe, then full fine-tune (Kumar et al. 2022): the head is trained before the body moves, so
    early gradients do not distort pretrained features."""
    probe = lp_epochs(cfg)
    learn.freeze()
    fit(learn, probe, cfg.head_lr, cfg)
    learn.unfreeze()
    fit(learn, cfg.epochs - probe, body_slice(cfg), cfg)


# ---- the rules every strategy shares ----------------------------------------------------------------------

def unknown_strategy_message(name):
    return f'unknown strategy {name!r}; choose from {", ".join(STRATEGIES)} or all'


def can_cache_features(cfg):
    """The body's outputs can be computed once: it never trains, never sees augmentation, keeps its statistics."""
    strategy = STRATEGIES.get(cfg.strategy)
    return bool(strategy and strategy.body_frozen and not cfg.augment and not cfg.train_bn)


def problem(cfg, n_stages):
    """Why `cfg` cannot run with a body of `n_stages` stages, or None."""
    strategy = STRATEGIES.get(cfg.strategy)
    if strategy is None:
        return unknown_strategy_message(cfg.strategy)
    if cfg.compile and strategy.refreezes:
        return (f'--compile breaks a frozen set that changes mid-run (fastai issue #3899); it cannot be used with '
                f'{cfg.strategy}')
    if cfg.cache_features == 'on' and not strategy.body_frozen:
        return f'--cache-features needs a strategy whose body never trains, not {cfg.strategy}'
    if cfg.cache_features == 'on' and (cfg.augment or cfg.train_bn):
        return '--cache-features needs a body that never changes: drop --augment and --train-bn'
    return strategy.check(cfg, n_stages) if strategy.check else None
