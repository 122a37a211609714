"""Declarations only: one run's settings and the profiles (the experiments are in bench/declare/experiments.py; the
flags made from these settings in bench/command/flags.py). Imports no torch, so the leaderboard renders in a second.

A run's config is resolved in layers (bench/train/resolve.py): `Config` defaults <- experiment (the seed's setup) <-
profile (`cpu` changes what a 2-core CPU cannot afford) <- flags given on the command line <- what `auto` means on
the hardware the run lands on. The resolved config is printed at start and stored whole in every record.

Each setting's meaning and unit is written once, beside its field; the scripts' flags are made from them.
"""
import math
from dataclasses import dataclass, field, fields


class UsageError(Exception):
    """A mistake in the user's input, found before anything runs; the message is one sentence."""
    user_mistake = True   # a script ends it in that sentence and exit code 2 (bench/command/exits.py)


def setting(default, help, choices=None, flag=True, identity=True, added=False):
    """A Config field with its help text (meaning and unit) and, if `flag`, a command-line flag of its own.
    `identity=False`: a setting that never changes what a run computes (the record holds what it did); `added`: a
    setting added after runs were recorded, which at its default is no part of identity, so those runs stay the runs
    they were. A strategy's hyperparameters (strategies.HYPERPARAMETERS) are part of a run's identity only where its
    strategy reads them (record.identity)."""
    return field(default=default, metadata=dict(help=help, choices=choices, flag=flag, identity=identity,
                                                added=added))


AUTO_ON_OFF = ('auto', 'on', 'off')


@dataclass(frozen=True)
class Config:
    experiment: str = setting('finetune', 'leaderboard table the run belongs to')
    data: str = setting('cifar10', 'dataset: a name (cifar10, caltech101; offline copies are found in $FTBENCH_DATA) '
                                   'or a folder or .tgz of images (train/<class>/*, test/<class>/*, or <class>/*)',
                        identity=False)  # the run's identity holds the decoded images' fingerprint (`dataset`)
    variant: str = setting('', 'short label telling rows of an experiment apart (e.g. augment)', flag=False)
    backbone: str = setting('resnet18', 'timm model name, optionally with a pretrained tag (resnet18.tv_in1k)',
                            flag=False)
    weights: str = setting('hub', 'hub (a file in $FTBENCH_WEIGHTS, else timm\'s download) | none (random init) '
                                  '| FILE (.safetensors/.pth with timm key names)')
    head: str = setting('auto', 'auto (fastai on a feature map, linear on pooled features) | fastai (create_head; '
                                'feature maps only) | linear (pool -> Linear) | mlp (pool -> hidden -> out)')
    head_hidden: int = setting(256, 'units in the mlp head\'s hidden layer')
    head_dropout: float = setting(0.3, 'dropout probability in the mlp head, in [0, 1)')
    strategy: str = setting('full', 'name in bench.strategies.STRATEGIES', flag=False)
    epochs: int = setting(10, 'passes over the training images, all phases together')
    lr: float = setting(1e-4, 'learning rate of the body\'s parameters (stages, layers, biases, norms, adapters; the '
                              'top of the slice if --lr-mult > 1); with --tune lr, chosen on validation')
    head_lr: float = setting(1e-3, 'learning rate of the new head, in every strategy; with --tune lr, a declared '
                                   'multiple of the chosen --lr, or itself chosen where only the head trains')
    lr_mult: float = setting(1.0, 'discriminative LRs: the body\'s stages get slice(lr / lr_mult, lr); 1 = one LR')
    unfreeze: int = setting(1, 'partial: how many of the last stages train with the head')
    unfreeze_at: tuple = setting((3, 6), 'progressive: 0-based epochs at which one more stage unfreezes, '
                                         'comma-separated (e.g. 3,6)')
    lp_epochs: int = setting(0, 'lp_ft: linear-probe epochs before the full fine-tune; 0 = half of --epochs')
    lora_r: int = setting(8, 'lora: rank of each adapter (parameters per adapted layer: r * (inputs + outputs))')
    lora_alpha: float = setting(16.0, 'lora: scale of the adapters\' update, applied as alpha / r')
    lora_dropout: float = setting(0.0, 'lora: dropout probability on the adapters\' input, in [0, 1)')
    layer_decay: float = setting(0.75, 'llrd: LR factor per layer below the head, in (0, 1]; a layer d layers down '
                                       'trains at lr * layer_decay ** d')
    opt: str = setting('adamw', 'adam (L2 weight decay) | adamw (decoupled weight decay) | sgd (momentum 0.9)',
                       choices=('adam', 'adamw', 'sgd'))
    wd: float = setting(0.01, 'weight decay (not applied to BatchNorm and bias parameters)')
    sched: str = setting('flat', 'flat (Learner.fit) | one_cycle (Learner.fit_one_cycle)', choices=('flat', 'one_cycle'))
    bs: int = setting(128, 'images per batch')
    train_bn: bool = setting(False, 'BatchNorm of frozen stages trains too (fastai\'s default); default: frozen '
                                    'stages keep their BatchNorm weights and statistics')
    size: int = setting(0, 'px, square crop fed to the model; 0 = the backbone\'s pretrained input size, at most '
                           'the size the dataset is stored at (CIFAR-10: 32, Caltech-101: 224, a folder: 256)')
    resize: int = setting(0, 'px, shorter side before the center crop, at least --size (a --size above a preset\'s '
                             'resize raises it); 0 = as stored (or --size, if larger)')
    normalize: str = setting('backbone', 'backbone (its pretrained mean/std) | unit (pixels / 255 only)',
                             choices=('backbone', 'unit'))
    augment: bool = setting(False, 'random crop with 4 px padding + horizontal flip, per batch on the device')
    subset: float = setting(0, 'training images kept, stratified: at most this many (>= 1), or this fraction '
                               '(< 1); 0 = all')
    eval_subset: float = setting(0, 'validation and test images kept, each, stratified: at most this many (>= 1), '
                                    'or this fraction (< 1); 0 = all')
    per_class: int = setting(0, 'training images kept per class, at most (Kornblith et al.\'s Caltech-101 '
                                'protocol: 30); 0 = all', added=True)
    pool: float = setting(0, 'images of the train folder kept before the train/valid split, stratified: at most this '
                             'many (>= 1), or this fraction (< 1); 0 = all (VTAB-1k: 1,000, split 800 / 200)',
                       added=True)
    stop_at: float = setting(1.0, 'share of the run\'s training steps after which it stops and is scored on '
                                  'validation (successive halving\'s early rungs: bench/advise.py); the steps before '
                                  'it are the whole run\'s, the same batches at the same LRs; 1 = the whole run',
                             flag=False, added=True)
    valid_frac: float = setting(0.2, 'share of the train folder held out for validation (50k -> 40k/10k)',
                                flag=False)
    split_seed: int = setting(0, 'seed of the train/valid split and subsets: the same for every run, so runs '
                                 'with the same seed are paired', flag=False)
    seed: int = setting(0, 'seed of init, data order, augmentation and dropout', flag=False)
    precision: str = setting('auto', 'auto (bf16 on CUDA, and on CPUs with native bf16 (AVX512-BF16, AMX) for '
                                     'backbones without depthwise convs; else fp32, the faster there) | fp32 | bf16 '
                                     '(autocast on the run\'s device) | fp16 (CUDA only)',
                             choices=('auto', 'fp32', 'bf16', 'fp16'))
    channels_last: str = setting('auto', 'NHWC memory format: auto (on: never slower here, up to 4.6x faster on '
                                         'CPU) | on | off', choices=AUTO_ON_OFF)
    compile: bool = setting(False, 'torch.compile the model (only strategies that never change the frozen set)')
    cache_features: str = setting('auto', 'train the head on the frozen body\'s outputs, computed once: auto (on '
                                          'where the strategy allows it) | on | off', choices=AUTO_ON_OFF)
    memory_limit_mb: int = setting(0, 'MB a run may use for training on top of the model and images; 0 = what the '
                                      'device has free. A run that would not fit accumulates gradients over smaller '
                                      'batches, or is refused', identity=False)
    device: str = setting('auto', 'auto (cuda if the run\'s machine has it) | cpu | cuda', choices=('auto', 'cpu', 'cuda'))
    dataset: str = setting('', 'name:fingerprint of the decoded images, filled in after loading', flag=False)
    profile: str = setting('full', 'full (the seed\'s settings) | cpu (a budget a 2-core CPU finishes)', flag=False)

    def to_dict(self):
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


FIELDS = {f.name: f for f in fields(Config)}


PROFILES = ('full', 'cpu')   # the experiments' budgets (bench/declare/experiments.py): the seed's, and a 2-core CPU's
COUNTS = ('subset', 'eval_subset', 'pool')  # a count (an int, as the profiles write it) or a fraction
RESULTS = 'reports/results.jsonl'   # where records are appended unless --results says otherwise


def steps_per_epoch(n_train, bs):
    """Optimizer steps in an epoch of `n_train` images in batches of `bs`: every image once, the last batch partial,
    except a lone last image, which BatchNorm cannot normalise (the training batches drop it)."""
    return n_train // bs if n_train % bs == 1 else math.ceil(n_train / bs)


def steps_at(share, epochs, per_epoch):
    """The steps a run of `epochs` of `per_epoch` steps has taken at `share` of them: at least one."""
    return max(1, math.floor(share * epochs * per_epoch))


def image_size(cfg, stored=None):
    """The px a run's model sees: its --size, else its --resize, else the size the images are stored at (`stored`;
    None where unknown: a model built for a fixed size then takes its own)."""
    return cfg.size or cfg.resize or stored


def resize_for(size, resize):
    """The resize a --size gets where only the size was given (a flag, a searched value): `resize` (a preset's),
    raised to `size` where smaller, since the center crop is cut from the resized image."""
    return size if 0 < resize < size else resize


def validate_numbers(cfg):
    """The numeric sanity every run needs; strategy- and model-specific checks live with those."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f'{_flag(f.name)} must be a finite number, got {value}')
    for name in ('epochs', 'bs', 'lr', 'head_lr', 'lr_mult', 'head_hidden', 'lora_r', 'lora_alpha'):
        if getattr(cfg, name) <= 0:
            raise UsageError(f'{_flag(name)} must be positive, got {getattr(cfg, name)}')
    for name in ('subset', 'eval_subset', 'pool', 'per_class', 'size', 'resize', 'wd', 'unfreeze', 'lp_epochs',
                 'memory_limit_mb'):
        if getattr(cfg, name) < 0:
            raise UsageError(f'{_flag(name)} must not be negative, got {getattr(cfg, name)}')
    for name in COUNTS:
        value = getattr(cfg, name)
        if value > 1 and not float(value).is_integer():
            raise UsageError(f'{_flag(name)} is a count (a whole number) or a fraction below 1, got {value}')
    for name in ('head_dropout', 'lora_dropout'):
        if not 0 <= getattr(cfg, name) < 1:
            raise UsageError(f'{_flag(name)} must be in [0, 1), got {getattr(cfg, name)}')
    if not 0 < cfg.layer_decay <= 1:
        raise UsageError(f'--layer-decay must be in (0, 1], got {cfg.layer_decay}')
    if not 0 < cfg.stop_at <= 1:
        raise UsageError(f'a run\'s share of its steps must be in (0, 1], got {cfg.stop_at}')
    if not 0 < cfg.valid_frac < 1:
        raise UsageError(f'the validation share must be in (0, 1), got {cfg.valid_frac}')
    if 0 < cfg.resize < cfg.size:
        raise UsageError(f'--size {cfg.size} is larger than --resize {cfg.resize}: the center crop is cut from the '
                         f'resized image, so give --resize {cfg.size} or more (or leave --resize out)')


def _flag(name):
    return '--' + name.replace('_', '-')
