"""One run's settings, the seed's presets, the CPU profile, and the flags every script shares.

A run's config is resolved in layers: `Config` defaults <- preset (the seed's experiment) <- profile
(`quick` shrinks data, size and epochs so a 2-core CPU finishes) <- flags given on the command line.
The resolved config is printed at start and stored whole in every record.
"""
import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, fields

import torch


class UsageError(Exception):
    """A mistake in the user's input, found before anything runs; the message is one sentence."""


@dataclass(frozen=True)
class Config:
    experiment: str = 'finetune'     # leaderboard table the run belongs to
    variant: str = ''                # short label telling rows of an experiment apart (e.g. 'augment')
    backbone: str = 'resnet18'       # timm model name, optionally with a pretrained tag (resnet18.tv_in1k)
    weights: str = 'hub'             # hub (FTBENCH_WEIGHTS folder, else timm download) | none | path to a file
    head: str = 'fastai'             # fastai (create_head) | linear (pool -> Linear) | mlp (pool -> hidden -> out)
    head_hidden: int = 256           # units in the mlp head's hidden layer
    head_dropout: float = 0.3        # dropout probability in the mlp head
    strategy: str = 'full'           # name in bench.strategies.STRATEGIES
    epochs: int = 10                 # passes over the training images, all phases together
    lr: float = 1e-4                 # LR of what trains with the body (top of the slice if lr_mult > 1)
    head_lr: float = 1e-3            # LR of the head when it trains alone or ahead of the body
    lr_mult: float = 1.0             # body LRs spread geometrically over lr/lr_mult .. lr; 1 = one LR
    unfreeze: int = 1                # partial: last stages that train with the head
    unfreeze_at: tuple = (3, 6)      # progressive: 0-based epochs at which one more stage unfreezes
    lp_epochs: int = 0               # lp_ft: linear-probe epochs before the full fine-tune; 0 = half
    opt: str = 'adamw'               # adam (L2 weight decay) | adamw (decoupled) | sgd (momentum 0.9)
    wd: float = 0.01                 # weight decay
    sched: str = 'flat'              # flat (Learner.fit) | one_cycle (Learner.fit_one_cycle)
    bs: int = 128                    # images per batch
    train_bn: bool = False           # BatchNorm of frozen stages trains too (fastai's default is True)
    size: int = 224                  # px, square crop fed to the model; 0 = the images' own size
    resize: int = 256                # px, shorter side before the center crop; 0 = size
    normalize: str = 'backbone'      # backbone (its pretrained mean/std) | unit (pixels / 255 only)
    augment: bool = False            # random crop with 4 px padding + horizontal flip
    subset: int = 0                  # training images kept, stratified; 0 = all
    eval_subset: int = 0             # validation and test images kept, each, stratified; 0 = all
    valid_frac: float = 0.2          # share of the train folder held out for validation (50k -> 40k/10k)
    split_seed: int = 0              # seed of the train/valid split and subsets (the same for every run)
    seed: int = 0                    # seed of init, shuffling and dropout
    precision: str = 'auto'          # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: bool = False      # NHWC memory format (set on CUDA by `auto` precision)
    compile: bool = False            # torch.compile the model (only strategies that never change the frozen set)
    cache_features: bool = False     # feature_extract: compute the frozen body's outputs once, train the head on them
    device: str = 'auto'             # auto (cuda if present) | cpu | cuda
    dataset: str = ''                # name:fingerprint of the decoded images, filled in after loading
    profile: str = 'full'            # full | quick: which settings made this run

    def to_dict(self):
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


FIELDS = {f.name for f in fields(Config)}

W1 = dict(experiment='w1', backbone='resnet18.tv_in1k', head='linear', epochs=10, bs=128, opt='adamw', wd=0.01,
          lr=1e-4, head_lr=1e-3, size=224, resize=256, unfreeze=1, unfreeze_at=(3, 6))
W2 = dict(experiment='w2', backbone='vgg16', head='mlp', head_hidden=256, head_dropout=0.3, epochs=30, bs=64,
          opt='adam', wd=0.0, lr=1e-4, head_lr=1e-3, size=0, resize=0, unfreeze=1)
W3 = dict(experiment='w3', backbone='cifar_resnet32', weights='none', strategy='full', head='linear', epochs=30,
          bs=64, opt='adam', wd=0.0, lr=1e-3, size=0, resize=0, normalize='unit')
W4 = dict(experiment='search', backbone='cifar_cnn', weights='none', strategy='full', head='mlp', head_hidden=256,
          head_dropout=0.3, epochs=15, bs=64, opt='adam', wd=0.0, lr=1e-3, size=0, resize=0, normalize='unit')
PRESETS = {'w1': W1, 'w2': W2, 'w3': W3, 'w4': W4}
# Strategies a preset runs when --strategy is not given: the seed's.
PRESET_STRATEGIES = {'w1': 'zero_shot,full,partial,progressive', 'w2': 'feature_extract,partial'}

# The quick profile: what a 2-core CPU can run in minutes. Same code, same strategies; less data, smaller
# images, fewer epochs. Progressive keeps its shape (head, +1 stage, +2 stages).
QUICK = {
    'w1': dict(subset=1000, eval_subset=500, size=64, resize=72, epochs=3, bs=64, unfreeze_at=(1, 2)),
    'w2': dict(subset=2000, eval_subset=1000, epochs=3),
    'w3': dict(subset=2000, eval_subset=1000, epochs=3),
    'w4': dict(subset=2500, eval_subset=1000, epochs=3),
    None: dict(subset=1000, eval_subset=500, size=64, resize=72, epochs=3, bs=64, unfreeze_at=(1, 2)),
}


def resolve_profile(profile):
    return ('full' if torch.cuda.is_available() else 'quick') if profile == 'auto' else profile


def resolve(preset=None, profile='auto', **flags):
    """Config from defaults <- preset <- profile <- flags (None = not given)."""
    unknown = set(flags) - FIELDS
    if unknown:
        raise UsageError(f'unknown setting {sorted(unknown)[0]!r}')
    if preset is not None and preset not in PRESETS:
        raise UsageError(f'unknown preset {preset!r}; choose one of {", ".join(PRESETS)}')
    profile = resolve_profile(profile)
    values = dict(PRESETS.get(preset, {}))
    if profile == 'quick':
        values.update(QUICK[preset])
    values.update({k: v for k, v in flags.items() if v is not None})
    values['profile'] = profile
    return Config(**values)


# ---- flags shared by the scripts -------------------------------------------------------------------------

def _csv_ints(text):
    try:
        return tuple(int(x) for x in text.split(',') if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None


def add_run_flags(p):
    """Flags that set Config fields (default None: not given, so the preset's value stands)."""
    g = p.add_argument_group('run settings (override the preset)')
    g.add_argument('--backbone', help='timm model name(s), comma-separated')
    g.add_argument('--weights', help='hub | none | FILE (.safetensors/.pth with timm key names)')
    g.add_argument('--head', choices=['fastai', 'linear', 'mlp'])
    g.add_argument('--head-hidden', type=int)
    g.add_argument('--head-dropout', type=float)
    g.add_argument('--epochs', type=int)
    g.add_argument('--lr', type=float, help='LR of what trains with the body')
    g.add_argument('--head-lr', type=float, help='LR of the head alone (feature_extract, progressive, lp_ft)')
    g.add_argument('--lr-mult', type=float, help='discriminative LRs: slice(lr / lr_mult, lr); 1 = one LR')
    g.add_argument('--unfreeze', type=int, help='partial: last stages trained with the head')
    g.add_argument('--unfreeze-at', type=_csv_ints, help='progressive: epochs at which a stage unfreezes, e.g. 3,6')
    g.add_argument('--lp-epochs', type=int)
    g.add_argument('--opt', choices=['adam', 'adamw', 'sgd'])
    g.add_argument('--wd', type=float)
    g.add_argument('--sched', choices=['flat', 'one_cycle'])
    g.add_argument('--bs', type=int)
    g.add_argument('--train-bn', action=argparse.BooleanOptionalAction, default=None)
    g.add_argument('--size', type=int, help='px fed to the model (0 = native)')
    g.add_argument('--resize', type=int, help='px, shorter side before the center crop (0 = size)')
    g.add_argument('--normalize', choices=['backbone', 'unit'])
    g.add_argument('--augment', action=argparse.BooleanOptionalAction, default=None)
    g.add_argument('--subset', type=int, help='training images kept (0 = all)')
    g.add_argument('--eval-subset', type=int, help='validation and test images kept (0 = all)')
    g.add_argument('--precision', choices=['auto', 'fp32', 'bf16', 'fp16'])
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None)
    g.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None)
    g.add_argument('--cache-features', action=argparse.BooleanOptionalAction, default=None)
    g.add_argument('--device', choices=['auto', 'cpu', 'cuda'])
    g.add_argument('--experiment', help='leaderboard table name')
    return p


def add_io_flags(p, presets):
    p.add_argument('--preset', choices=presets, help='the seed\'s settings; flags override them')
    p.add_argument('--profile', default='auto', choices=['auto', 'full', 'quick'],
                   help='auto: full on CUDA, quick on CPU')
    p.add_argument('--data', help='folder or .tgz in fastai layout (train/<class>/*, test/<class>/*); '
                                  'default $FTBENCH_DATA, else untar_data(URLs.CIFAR)')
    p.add_argument('--seeds', type=int, default=1, help='seeds per configuration (0..N-1, from --seed)')
    p.add_argument('--seed', type=int, default=0, help='first seed')
    p.add_argument('--results', default='reports/results.jsonl', help='JSON-lines file the records are appended to')
    p.add_argument('--out', default=None, help='leaderboard file (default: leaderboard.md beside --results)')
    p.add_argument('--dry-run', action='store_true', help='print the plan, train nothing, write nothing')
    p.add_argument('--force', action='store_true', help='rerun configurations already recorded')
    p.add_argument('--no-render', action='store_true', help='do not render the leaderboard at the end')
    p.add_argument('--no-bar', action='store_true', help='no fastai progress bars')
    return p


RUN_FLAGS = ('weights', 'head', 'head_hidden', 'head_dropout', 'epochs', 'lr', 'head_lr', 'lr_mult', 'unfreeze',
             'unfreeze_at', 'lp_epochs', 'opt', 'wd', 'sched', 'bs', 'train_bn', 'size', 'resize', 'normalize',
             'augment', 'subset', 'eval_subset', 'precision', 'channels_last', 'compile', 'cache_features',
             'device', 'experiment')


def flag_overrides(args):
    return {k: getattr(args, k) for k in RUN_FLAGS if getattr(args, k, None) is not None}


def split_list(text):
    return [x.strip() for x in text.split(',') if x.strip()] if text else []


def validate_numbers(cfg):
    """The numeric sanity every run needs; strategy- and model-specific checks live with those."""
    positive = ('epochs', 'bs', 'lr', 'head_lr', 'lr_mult', 'head_hidden')
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise UsageError(f'--{name.replace("_", "-")} must be positive, got {getattr(cfg, name)}')
    for name in ('subset', 'eval_subset', 'size', 'resize', 'wd', 'unfreeze', 'lp_epochs'):
        if getattr(cfg, name) < 0:
            raise UsageError(f'--{name.replace("_", "-")} must not be negative, got {getattr(cfg, name)}')
    if not 0 <= cfg.head_dropout < 1:
        raise UsageError(f'--head-dropout must be in [0, 1), got {cfg.head_dropout}')
    if not 0 < cfg.valid_frac < 1:
        raise UsageError(f'the validation share must be in (0, 1), got {cfg.valid_frac}')
    if cfg.device == 'cuda' and not torch.cuda.is_available():
        raise UsageError('--device cuda was asked for, but torch sees no CUDA device')


def print_config(cfg, out=sys.stdout):
    print('config: ' + json.dumps(cfg.to_dict(), sort_keys=True), file=out)


def replace(cfg, **changes):
    return dataclasses.replace(cfg, **changes)

