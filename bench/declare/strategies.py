"""Fine-tuning strategies, one short function each over a fastai Learner. No I/O.

The Learner's parameter groups are [stage 0, ..., stage n-1, head] (backbones.param_groups), so `freeze()` trains
the head alone, `freeze_to(-(k + 1))` the last k stages and the head, `unfreeze()` everything; a strategy with
`groups='layers'` gets one group per layer instead (layer-wise LR decay). Strategies differ only in which
parameters train when and at what LR; data, model, optimizer, schedule and timing are shared, so a comparison
between them measures the strategy. Frozen means frozen: unless `train_bn`, BatchNorm weights and running
statistics of frozen stages stay fixed (bench/train/learner.py adds fastai's BnFreeze).

What may train is decided once, before the optimizer is built: a strategy's `prepare(net, cfg)` marks the body
parameters it trains (BitFit's biases) or adds its own (LoRA's adapters), and only parameters that may train are
put in the Learner's groups. fastai's `freeze_to`/`unfreeze` then move within that choice and can never re-enable
a base weight a strategy froze; the optimizer holds state for nothing else.

LRs, one rule for every strategy (`lrs`): the freshly initialised head trains at `cfg.head_lr`, whatever trains
beside it; the body's parameters (its stages, layers, biases, norms or adapters) train at `cfg.lr`, spread over the
stages as fastai's `slice(lr / lr_mult, lr)` where the strategy reads `lr_mult`, or decayed per layer (llrd).
Tuning (bench/sweep/tune.py) picks one LR per strategy on validation: the body's, with the head's a declared multiple of
it, or the head's where nothing else trains (`kind`).
Adding a strategy is one function with `@register`; its name is the leaderboard's key. A strategy carries its
own rules: `reads`, the settings it reads (a setting it does not read is no part of its runs' identity),
`kind` (what it trains: nothing, the head, a few parameters or the body; tuning's grid follows from it),
`check(cfg, spec)` says why a config cannot run it (or None), `prepare` as above, `groups`,
`body_frozen` lets the head train on the body's outputs computed once (--cache-features), `refreezes` (the frozen
set changes mid-run) rules out torch.compile.
"""
import re
from dataclasses import dataclass
from typing import Callable, Optional

# The settings a strategy may read; each declares those it does (`reads`). The rest of Config is shared by all.
HYPERPARAMETERS = ('lr', 'head_lr', 'lr_mult', 'unfreeze', 'unfreeze_at', 'lp_epochs', 'lora_r', 'lora_alpha',
                   'lora_dropout', 'layer_decay')
KINDS = ('none', 'head', 'peft', 'body')  # what trains beside the head: nothing trains, the head alone, few, the body
BODY = ('lr', 'head_lr', 'lr_mult')       # a body that trains in stages beside the head


@dataclass(frozen=True)
class Strategy:
    name: str
    fit: Callable                       # (learn, cfg) -> None: trains `learn` in place
    reads: tuple = ()                   # the HYPERPARAMETERS it reads
    kind: str = 'body'                  # one of KINDS
    check: Optional[Callable] = None    # (cfg, spec) -> why `cfg` cannot run on that backbone, or None
    prepare: Optional[Callable] = None  # (net, cfg) -> None: marks or adds what may train, before the optimizer
    groups: str = 'stages'              # the Learner's parameter groups: stages | layers
    body_frozen: bool = False           # the body never trains
    refreezes: bool = False             # the frozen set changes mid-run

    def __call__(self, learn, cfg):
        return self.fit(learn, cfg)


STRATEGIES = {}


def register(fn=None, *, reads=BODY, kind='body', check=None, prepare=None, groups='stages', body_frozen=False,
             refreezes=False):
    """Add `fn` to STRATEGIES under its name; as `@register` or `@register(reads=..., check=..., ...)`."""
    def add(fn):
        if fn.__name__ in STRATEGIES:
            raise ValueError(f'strategy {fn.__name__!r} is registered twice')
        unknown = set(reads) - set(HYPERPARAMETERS)
        if unknown or kind not in KINDS:
            raise ValueError(f'strategy {fn.__name__!r} reads unknown settings {sorted(unknown)} or has kind {kind!r}')
        STRATEGIES[fn.__name__] = Strategy(fn.__name__, fn, tuple(reads), kind, check, prepare, groups, body_frozen,
                                           refreezes)
        return fn
    return add(fn) if fn is not None else add


def fit(learn, epochs, lr, cfg):
    if cfg.sched == 'one_cycle':
        learn.fit_one_cycle(epochs, lr)
    else:
        learn.fit(epochs, lr)


def geometric(lo, hi, n):
    """`n` LRs from `lo` to `hi`, evenly spaced on a log scale (fastai's even_mults)."""
    if n == 1:
        return [hi]
    step = (hi / lo) ** (1 / (n - 1))
    return [lo * step ** i for i in range(n)]


def lrs(learn, cfg, body=None):
    """The LR rule, per parameter group [body groups..., head]: the head at `head_lr`; the body's groups at `body`
    (one LR per group), or spread over slice(lr / lr_mult, lr) (fastai's discriminative LRs; one LR where
    lr_mult is 1)."""
    n_body = len(learn.opt.param_lists) - 1
    body = geometric(cfg.lr / cfg.lr_mult, cfg.lr, n_body) if body is None else list(body)
    return [*body, cfg.head_lr]


def check_pretrained(cfg, spec):
    if cfg.weights == 'none':
        return f'{cfg.strategy} with --weights none evaluates a random network; it measures nothing'


@register(reads=(), kind='none', check=check_pretrained)
def zero_shot(learn, cfg):
    """Pretrained body, fresh head, no training: the chance-level floor."""


@register(reads=('head_lr',), kind='head', body_frozen=True)
def feature_extract(learn, cfg):
    """The body is a fixed feature extractor; only the head trains."""
    learn.freeze()
    fit(learn, cfg.epochs, cfg.head_lr, cfg)


def check_unfreeze(cfg, spec):
    n_stages = len(spec.stage_names)
    if not 1 <= cfg.unfreeze <= n_stages:
        return f'--unfreeze must be between 1 and {n_stages} (the stages of {cfg.backbone}), got {cfg.unfreeze}'


@register(reads=(*BODY, 'unfreeze'), check=check_unfreeze)
def partial(learn, cfg):
    """The last `unfreeze` stages train with the head; earlier stages stay frozen."""
    learn.freeze_to(-(cfg.unfreeze + 1))
    fit(learn, cfg.epochs, lrs(learn, cfg), cfg)


def check_unfreeze_at(cfg, spec):
    n_stages = len(spec.stage_names)
    at = list(cfg.unfreeze_at)
    if not at or at != sorted(set(at)) or at[0] < 1 or at[-1] >= cfg.epochs:
        return (f'--unfreeze-at must be increasing epochs between 1 and {cfg.epochs - 1} '
                f'(--epochs {cfg.epochs}), got {",".join(map(str, at)) or "nothing"}')
    if len(at) > n_stages:
        return f'--unfreeze-at unfreezes {len(at)} stages but {cfg.backbone} has {n_stages}'


@register(reads=(*BODY, 'unfreeze_at'), check=check_unfreeze_at, refreezes=True)
def progressive(learn, cfg):
    """Head alone, then one more stage from each epoch in `unfreeze_at`; the optimizer state resets at each
    unfreeze (freeze_to clears it)."""
    bounds = [0, *cfg.unfreeze_at, cfg.epochs]
    for stages, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        learn.freeze_to(-(stages + 1))
        fit(learn, stop - start, lrs(learn, cfg), cfg)


@register
def full(learn, cfg):
    """Everything trains from the first step; `lr_mult` > 1 gives discriminative LRs."""
    learn.unfreeze()
    fit(learn, cfg.epochs, lrs(learn, cfg), cfg)


def check_two_phases(cfg, spec):
    if cfg.epochs < 2:
        return f'{cfg.strategy} needs --epochs of at least 2 (a frozen phase, then the rest), got {cfg.epochs}'


FINE_TUNE_LR_MULT = 100  # fastai's fine_tune spreads the body over slice(lr / 100, lr)


@register(reads=('lr', 'head_lr'), check=check_two_phases, refreezes=True)
def fine_tune(learn, cfg):
    """fastai's recipe (Learner.fine_tune), under the suite's LR rule: one frozen one-cycle epoch of the head at
    head_lr, then everything, one-cycle, the body spread over slice(lr / 100, lr) and the head at head_lr (fastai
    halves its one base LR for the second phase and spreads it over the head too)."""
    learn.freeze()
    learn.fit_one_cycle(1, cfg.head_lr)
    learn.unfreeze()
    n_body = len(learn.opt.param_lists) - 1
    learn.fit_one_cycle(cfg.epochs - 1, lrs(learn, cfg, geometric(cfg.lr / FINE_TUNE_LR_MULT, cfg.lr, n_body)))


def lp_epochs(cfg):
    return cfg.lp_epochs or cfg.epochs // 2


def check_lp_ft(cfg, spec):
    if not 1 <= lp_epochs(cfg) < cfg.epochs:
        return check_two_phases(cfg, spec) or f'--lp-epochs must be between 1 and {cfg.epochs - 1}, got {cfg.lp_epochs}'


@register(reads=(*BODY, 'lp_epochs'), check=check_lp_ft, refreezes=True)
def lp_ft(learn, cfg):
    """Linear probe, then full fine-tune (Kumar et al. 2022): the head is trained before the body moves, so
    early gradients do not distort pretrained features."""
    probe = lp_epochs(cfg)
    learn.freeze()
    fit(learn, probe, cfg.head_lr, cfg)
    learn.unfreeze()
    fit(learn, cfg.epochs - probe, lrs(learn, cfg), cfg)


# ---- parameter-efficient strategies: what trains is marked or added before the optimizer exists -------------

def train_only(net, names):
    """The body parameters in `names` may train, no other body parameter; the head always may."""
    keep = set(names)
    for name, p in net.body.model.named_parameters():
        p.requires_grad_(name in keep)


def train_what_may(learn, cfg):
    """Everything the strategy let train, from the first step: the body's parameters at lr, the head at head_lr."""
    learn.unfreeze()
    n_body = len(learn.opt.param_lists) - 1
    fit(learn, cfg.epochs, lrs(learn, cfg, [cfg.lr] * n_body), cfg)


def check_biases(cfg, spec):
    if not spec.bias_params:
        return f'{cfg.backbone} has no bias parameters for bitfit to train'


PEFT = ('lr', 'head_lr')


@register(reads=PEFT, kind='peft', check=check_biases, prepare=lambda net, cfg: train_only(net, net.spec.bias_params))
def bitfit(learn, cfg):
    """Biases and the head train, nothing else (Zaken et al. 2021; TinyTL's bias-only, Cai et al. 2020)."""
    train_what_may(learn, cfg)


def check_norms(cfg, spec):
    if not spec.norm_params:
        return f'{cfg.backbone} has no normalization layers for norm_only to train'


@register(reads=PEFT, kind='peft', check=check_norms, prepare=lambda net, cfg: train_only(net, net.spec.norm_params))
def norm_only(learn, cfg):
    """The affine weights of every normalization layer (BatchNorm, LayerNorm, GroupNorm, RmsNorm) and the head
    (BN-only tuning, Frankle et al. 2021; LN-tuning for transformers). BatchNorm layers that train keep updating
    their running statistics (the record says so)."""
    train_what_may(learn, cfg)


def check_lora(cfg, spec):
    if not spec.lora_targets:
        return f'{cfg.backbone} has no Linear or ungrouped Conv2d layer for LoRA to adapt'


def add_lora(net, cfg):
    """Low-rank adapters (peft) on every Linear and ungrouped Conv2d of the body; the base weights are frozen.
    A timm ViT's fused `qkv` Linear gets one adapter on the whole [q; k; v] projection: one rank-r update shared
    by the three (the LoRA paper adapted q and v with one adapter each). Depthwise and grouped convolutions are
    left out: peft refuses a rank that does not divide their groups, and their adapter would outweigh them."""
    from peft import LoraConfig, inject_adapter_in_model
    targets = '|'.join(re.escape(name) for name in net.spec.lora_targets)
    inject_adapter_in_model(LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                       target_modules=f'^(?:{targets})$'), net.body.model)
    for name, p in net.body.model.named_parameters():
        p.requires_grad_('.lora_' in name)


@register(reads=(*PEFT, 'lora_r', 'lora_alpha', 'lora_dropout'), kind='peft', check=check_lora, prepare=add_lora)
def lora(learn, cfg):
    """LoRA (Hu et al. 2021): the body frozen, a trained low-rank update B·A (scaled by alpha / r) beside each
    adapted layer, and the head."""
    train_what_may(learn, cfg)


@register(reads=('lr', 'head_lr', 'layer_decay'), groups='layers')
def llrd(learn, cfg):
    """Everything trains, the body's top layer at lr and each layer below at lr * layer_decay ** (its depth below
    that), the head at head_lr: layer-wise LR decay as in BEiT and MAE (timm's param_groups_layer_decay, over the
    model's fine group_matcher)."""
    learn.unfreeze()
    n_layers = len(learn.opt.param_lists) - 1
    fit(learn, cfg.epochs, lrs(learn, cfg, [cfg.lr * cfg.layer_decay ** (n_layers - 1 - i) for i in range(n_layers)]),
        cfg)


# ---- the rules every strategy shares ----------------------------------------------------------------------

def unknown_strategy_message(name):
    return f'unknown strategy {name!r}; choose from {", ".join(STRATEGIES)} or all'


def can_cache_features(cfg):
    """The body's outputs can be computed once: it never trains, never sees augmentation, keeps its statistics."""
    strategy = STRATEGIES.get(cfg.strategy)
    return bool(strategy and strategy.body_frozen and not cfg.augment and not cfg.train_bn)


def prepare(net, cfg):
    """The strategy's prepare step, once per net (planning and training share it)."""
    strategy = STRATEGIES[cfg.strategy]
    if net.prepared is None and strategy.prepare is not None:
        strategy.prepare(net, cfg)
    net.prepared = cfg.strategy


def problem(cfg, spec):
    """Why `cfg` cannot run on the backbone `spec` describes, or None."""
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
    return strategy.check(cfg, spec) if strategy.check else None
