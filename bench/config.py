"""Declarations only: one run's settings, the experiments, the profiles, and the flags every script shares. Imports
no torch, so the leaderboard renders in a second.

A run's config is resolved in layers (bench/resolve.py): `Config` defaults <- experiment (the seed's setup) <-
profile (`cpu` changes what a 2-core CPU cannot afford) <- flags given on the command line <- what `auto` means on
the hardware the run lands on. The resolved config is printed at start and stored whole in every record.

Each setting's meaning and unit is written once, beside its field; the scripts' flags are made from them.
"""
import argparse
import json
import math
from dataclasses import dataclass, field, fields


class UsageError(Exception):
    """A mistake in the user's input, found before anything runs; the message is one sentence."""


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
    resize: int = setting(0, 'px, shorter side before the center crop; 0 = as stored (or --size, if larger)')
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


# ---- experiments ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Experiment:
    """One experiment: what differs from Config's defaults, what changes on a CPU, and what it runs."""
    name: str             # the records' `experiment` and the scripts' --preset
    script: str           # bench/<script>.py runs it
    title: str
    question: str
    settings: dict        # the seed's setup, as differences from Config's defaults
    cpu: dict             # the cpu profile: what a 2-core CPU changes, with rankings that still hold
    strategies: tuple = ('full',)      # run when --strategy is not given
    backbones: tuple = ()              # run when --backbone is not given (default: settings['backbone'])
    full_backbones: tuple = ()         # added in the full profile, where their pretrained weights can be had
    datasets: tuple = ()               # run on each of these (bench/datasets.py names) when --data is not given
    compare: tuple = ()                # experiments asking the same question of another dataset (cross-dataset verdicts)
    variants: dict = field(default_factory=dict)   # rows by (backbone, variant): settings on top of the rest
    bench: tuple = ((),)               # `make bench`: the script's arguments, one tuple per invocation
    in_make_bench: bool = True         # False: run by name only (suite.py --only, the script's --preset)


W1 = Experiment(
    name='w1', script='finetune',
    title='W1: fine-tuning an ImageNet backbone on CIFAR-10 (the seed: ResNet18 at 224 px)',
    question='Which strategy should I use on a pretrained backbone, and what does it cost?',
    settings=dict(
        backbone='resnet18.tv_in1k',    # the seed's torchvision ImageNet weights
        head='linear',                  # the seed's head: global pool -> Linear
        size=224, resize=256,           # the seed's: CIFAR's 32 px upsampled to 256, centre 224
    ),                                  # the rest are Config's defaults: AdamW, 10 epochs; LRs tuned per strategy
                                        # (bench/tune.py; --tune off: body 1e-4, head 1e-3)
    cpu=dict(                           # ranking checked against twice the training images (README)
        subset=5000, eval_subset=1000,  # 1/8 of the training images; 1,000 validation and test images
        size=32, resize=32,             # native CIFAR size: 49x fewer pixels than 224 px
        epochs=4, bs=64,                # 312 steps
        unfreeze_at=(1, 2),             # progressive keeps its shape: head, +1 stage, +2 stages
    ),                                  # fp32: EfficientNet's depthwise convs run 2.6x slower in bf16 on a CPU
    strategies=('zero_shot', 'full', 'partial', 'progressive'),
    # No ResNet18 ImageNet weights exist offline; EfficientNet-Lite0 (weights in $FTBENCH_WEIGHTS) runs beside it.
    backbones=('resnet18.tv_in1k', 'tf_efficientnet_lite0'),
    # `make bench`: W1's own strategies; W5 runs the PEFT strategies, feature_extract and lp_ft on the same backbone
    # (`--strategy all` runs every one here too)
)

W2 = Experiment(
    name='w2', script='finetune',
    title='W2: VGG16 at native 32 px (ImageNet conv weights -> CIFAR-10)',
    question='Feature extraction or partial fine-tuning of the last conv block?',
    settings=dict(
        backbone='vgg16',               # torchvision's ImageNet conv layers (fc6/fc7 are not used)
        head='mlp',                     # GAP -> 256 -> ReLU -> Dropout 0.3 -> 10
        epochs=30, bs=64, opt='adam', wd=0.0,
        size=0, resize=0,               # native 32 px
    ),
    cpu=dict(subset=2500, eval_subset=1000, epochs=4),  # ranking checked against twice the images (README)
    strategies=('feature_extract', 'partial'),
)

W3 = Experiment(
    name='w3', script='scratch',
    title='W3: training from scratch',
    question='CIFAR ResNet32 vs VGG16 from random init, and what makes VGG16 learn.',
    settings=dict(
        backbone='cifar_resnet32', weights='none', head='linear',
        epochs=30, bs=64, opt='adam', wd=0.0, lr=1e-3,
        size=0, resize=0, normalize='unit',     # native 32 px, pixels / 255
    ),
    cpu=dict(subset=2000, eval_subset=1000, epochs=4),  # 125 steps: an early snapshot of training (README)
    variants={
        ('cifar_resnet32', 'seed'): {},
        ('cifar_resnet32', 'augment'): dict(augment=True),                      # random crop + flip
        ('vgg16', 'seed'): dict(head='mlp', head_hidden=256, head_dropout=0.5),  # the seed's VGG16: never learns
        ('vgg16_bn', 'bn'): dict(head='mlp', head_hidden=256, head_dropout=0.5),  # BatchNorm makes it learn
        # so does a lower LR; from scratch the head trains at the body's LR: one LR for the whole network
        ('vgg16', 'lr1e-4'): dict(head='mlp', head_hidden=256, head_dropout=0.5, lr=1e-4, head_lr=1e-4),
    },
)

W4 = Experiment(
    name='w4', script='search',
    title='W4: hyperparameter search',
    question='Grid vs random search on a small CNN: trials scored on validation only; the best retrained with '
             'every seed and tested once each.',
    settings=dict(
        backbone='cifar_cnn', weights='none', head='mlp',  # GAP -> h -> ReLU -> Dropout 0.3 -> 10
        epochs=15, bs=64, opt='adam', wd=0.0, lr=1e-3,
        size=0, resize=0, normalize='unit',
    ),
    cpu=dict(subset=10000, eval_subset=1000, epochs=6,  # 940 steps at bs 64: ~40% validation, where lr and bs
             size=16, resize=16),       # matter; 16 px (antialiased) costs a quarter of 32 px
    bench=(('--grid',), ('--random', '12')),
)

W5 = Experiment(
    name='w5', script='finetune',
    title='W5: parameter-efficient fine-tuning vs freezing (ImageNet backbones -> CIFAR-10)',
    question='LoRA, BitFit, norm-only tuning and layer-wise LR decay beside freezing: accuracy, trainable '
             'parameters, optimizer state, time and memory.',
    settings=dict(
        backbone='tf_efficientnet_lite0',   # real ImageNet weights offline ($FTBENCH_WEIGHTS)
        head='linear',                      # pool -> Linear, as W1
        size=224, resize=256,               # as W1
    ),                                      # the rest are Config's defaults, as W1: AdamW, 224 px, 10 epochs,
                                            # LRs tuned per strategy (--tune off: body 1e-4, head 1e-3)
    cpu=dict(W1.cpu, subset=4000, epochs=3),  # W1's at 4,000 images and 3 epochs (188 steps at bs 64): under
                                            # 15 min on a 2-core CPU without AVX-512; ranking checked at 2B
    strategies=('feature_extract', 'bitfit', 'norm_only', 'lora', 'partial', 'full', 'lp_ft', 'llrd'),
    full_backbones=('tf_efficientnet_lite1', 'mobilenetv2_100.deepsort_in1k_features',
                    'vit_small_patch16_224.augreg_in21k_ft_in1k', 'convnext_tiny.in12k_ft_in1k'),
    in_make_bench=False,                    # W7 asks its question on CIFAR-10 at VTAB-1k size, with its backbones
)

W6 = Experiment(
    name='w6', script='finetune',
    title='W6: the W5 strategies on Caltech-101 (photos, 100 classes of 31-800 images)',
    question='Does W5\'s ranking hold on photos? Mean per-class accuracy, as the literature reports Caltech-101.',
    settings=dict(
        data='caltech101',                  # stored at 224 px, aspect kept; Faces_easy dropped (bench/datasets.py)
        backbone='tf_efficientnet_lite0', head='linear',
    ),                                      # the rest are Config's defaults: AdamW, 10 epochs, size 224 (Lite0's
                                            # pretrained size, as stored); LRs tuned per strategy
    cpu=dict(
        size=160, resize=160,               # Lite0 trains 2.8x faster at 160 px than at 224 on a 2-core AVX2 CPU
        subset=800, eval_subset=400,        # ~8 training images per class; 400 validation and 400 test images
        epochs=2, bs=32,                    # 50 steps: the 24 runs take ~14 min on a 2-core CPU (Xeon or EPYC)
        memory_limit_mb=1024,               # batches accumulate in smaller passes: peak RSS stays under 2.5 GB
    ),
    strategies=W5.strategies,
    compare=('w5',),
    in_make_bench=False,                    # W7 asks its question on Caltech-101 and three more datasets
)

W7 = Experiment(
    name='w7', script='finetune',
    title='W7: the W5 strategies across four domains, VTAB-1k style (1,000 training images each)',
    question='Does a ranking of strategies hold from everyday photos (CIFAR-10, Caltech-101) to aerial (UC Merced) '
             'and medical images (PBC blood cells)? Each strategy tuned on 200 validation images, scored on test.',
    settings=dict(
        backbone='tf_efficientnet_lite0', head='linear',
        pool=1000,                          # VTAB-1k: 1,000 images of each train folder, stratified: 800 train,
                                            # 200 choose the LR; the test folder scores
        size=224, resize=224,               # every dataset at Lite0's pretrained size (CIFAR-10 upsampled)
    ),                                      # the rest are Config's defaults: AdamW, 10 epochs; LRs tuned per strategy
    cpu=dict(
        size=96, resize=96,                 # 96 px: 18% of 224's pixels; Lite0 trains ~85 img/s here (2-core AVX2)
        eval_subset=2000,                   # caps CIFAR-10's test split at a stratified 2,000 (the others are
                                            # whole: Caltech-101 1,649, UC Merced 420, PBC 2,000)
        epochs=2, bs=32,                    # 50 steps, as W6
        memory_limit_mb=1024,
    ),
    strategies=W5.strategies,
    full_backbones=W5.full_backbones,
    datasets=('cifar10', 'caltech101', 'uc_merced', 'pbc_blood_cells'),
)

EXPERIMENTS = {e.name: e for e in (W1, W2, W3, W4, W5, W6, W7)}
# finetune.py without --preset: Config's defaults (the backbone's pretrained size, at most the data's), and a CPU
# budget that fits any dataset: at most 1,000 training images and 500 validation and test images each, 2 epochs,
# 1 GB for training (Caltech-101 at 224 px: ~3.5 min per fine-tuning run on a 2-core AVX2 CPU, under 2.5 GB).
CUSTOM = Experiment(name='finetune', script='finetune', title='Fine-tuning runs outside the presets', question='',
                    settings={}, cpu=dict(subset=1000, eval_subset=500, epochs=2, bs=32, memory_limit_mb=1024))
PROFILES = ('full', 'cpu')


def experiment(name):
    if name not in EXPERIMENTS:
        raise UsageError(f'unknown preset {name!r}; choose one of {", ".join(EXPERIMENTS)}')
    return EXPERIMENTS[name]


# ---- flags ------------------------------------------------------------------------------------------------

COUNTS = ('subset', 'eval_subset', 'pool')  # a count (an int, as the profiles write it) or a fraction


def _count_or_fraction(text):
    value = float(text)
    return int(value) if value.is_integer() else value


def _csv_ints(text):
    try:
        return tuple(int(x) for x in text.split(',') if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None


def add_run_flags(p):
    """One flag per Config field that has one, with the field's help; default None (not given: the experiment's
    value stands)."""
    g = p.add_argument_group('run settings (override the preset)')
    for f in fields(Config):
        if not f.metadata.get('flag'):
            continue
        name = '--' + f.name.replace('_', '-')
        help_text = f'{f.metadata["help"]} (default: {_shown(f.default)})'
        if f.type is bool or f.type == 'bool':
            g.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.type is tuple or f.type == 'tuple':
            g.add_argument(name, type=_csv_ints, metavar='N,N', help=help_text)
        else:
            kind = {'int': int, 'float': float, 'str': str}.get(f.type, f.type)
            kind = _count_or_fraction if f.name in COUNTS else kind
            g.add_argument(name, type=kind, choices=f.metadata.get('choices'), help=help_text)
    return p


def _shown(value):
    return ','.join(map(str, value)) if isinstance(value, tuple) else value


def add_io_flags(p, presets):
    p.add_argument('--preset', choices=presets, help='the experiment\'s settings (bench/config.py); flags override them')
    p.add_argument('--profile', default='auto', choices=['auto', *PROFILES],
                   help='full: the seed\'s settings; cpu: a budget a 2-core CPU finishes (see bench/config.py); '
                        'auto: full where the runs have CUDA, else cpu (default: auto)')
    p.add_argument('--seeds', type=int, default=1, help='seeds per configuration, counting up from --seed (default: 1)')
    p.add_argument('--seed', type=int, default=0, help='first seed (default: 0)')
    p.add_argument('--results', default='reports/results.jsonl',
                   help='JSON-lines file the records are appended to (default: reports/results.jsonl)')
    p.add_argument('--out', default=None, help='leaderboard file (default: leaderboard.md beside --results)')
    p.add_argument('--dry-run', action='store_true', help='print the plan; train, download and write nothing')
    p.add_argument('--force', action='store_true', help='rerun configurations already recorded')
    p.add_argument('--tune', default='auto', choices=('auto', 'lr', 'off'),
                   help='lr: each strategy\'s LR chosen on validation from its grid (bench/tune.py), then the seeds '
                        'at it; off: --lr and --head-lr as given; auto: lr where the runs compare strategies '
                        '(default: auto)')
    p.add_argument('--no-render', action='store_true', help='do not render the leaderboard at the end')
    p.add_argument('--bar', action=argparse.BooleanOptionalAction, default=None,
                   help='progress bars (default: only when the output is a terminal)')
    add_cluster_flags(p)
    return p


def add_cluster_flags(p):
    g = p.add_argument_group('where runs happen')
    g.add_argument('--cluster', default='local',
                   help='local: one after another in this process (default) | ray: a private Ray on this machine\'s '
                        'GPUs or cores | ray:auto: the running Ray cluster ($RAY_ADDRESS) | ray:HOST:PORT')
    g.add_argument('--gpus-per-run', type=float,
                   help='GPUs each run gets on a Ray cluster (default: 1 where the cluster has GPUs, else 0)')
    g.add_argument('--cpus-per-run', type=float,
                   help='CPU cores each run gets on a Ray cluster, and its torch threads (default: 1)')
    return p


def flag_overrides(args):
    return {name: getattr(args, name) for name, f in FIELDS.items()
            if f.metadata.get('flag') and getattr(args, name, None) is not None}


def split_list(text):
    return [x.strip() for x in text.split(',') if x.strip()] if text else []


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
    if not 0 < cfg.valid_frac < 1:
        raise UsageError(f'the validation share must be in (0, 1), got {cfg.valid_frac}')


def _flag(name):
    return '--' + name.replace('_', '-')


def print_config(cfg):
    print('config: ' + json.dumps(cfg.to_dict(), sort_keys=True))
