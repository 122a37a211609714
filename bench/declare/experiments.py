"""The experiments: each a question, the seed's settings as differences from Config's defaults (bench/declare/config.py),
what a 2-core CPU changes (the `cpu` profile), its strategies, backbones and datasets, and what `make bench` runs of
it. Declarations only; imports no torch.
"""
from dataclasses import dataclass, field


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
    datasets: tuple = ()               # run on each of these (bench/declare/datasets.py names) when --data is not given
    compare: tuple = ()                # experiments asking the same question of another dataset (cross-dataset verdicts)
    variants: dict = field(default_factory=dict)   # rows by (backbone, variant): settings on top of the rest
    regimes: dict = field(default_factory=dict)    # every row in each regime (px, steps, schedule), cheapest first:
                                                   # its name (the runs' variant): settings
    native: str = ''      # the regime the others are compared with (default: the last declared); those declared after
                          # it are contrasts: its budget with one thing changed, compared, never a cheaper candidate
    bench: tuple = ((),)               # `make bench`: the script's arguments, one tuple per invocation
    in_make_bench: bool = True         # False: run by name only (suite.py --only, the script's --preset)

    @property
    def native_regime(self):
        """The name of the regime the others are compared with ('' where none is declared)."""
        return self.native or (list(self.regimes)[-1] if self.regimes else '')


W1 = Experiment(
    name='w1', script='finetune',
    title='W1: fine-tuning an ImageNet backbone on CIFAR-10 (the seed: ResNet18 at 224 px)',
    question='Which strategy should I use on a pretrained backbone, and what does it cost?',
    settings=dict(
        backbone='resnet18.tv_in1k',    # the seed's torchvision ImageNet weights
        head='linear',                  # the seed's head: global pool -> Linear
        size=224, resize=256,           # the seed's: CIFAR's 32 px upsampled to 256, centre 224
    ),                                  # the rest are Config's defaults: AdamW, 10 epochs; LRs tuned per strategy
                                        # (bench/sweep/tune.py; --tune off: body 1e-4, head 1e-3)
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
        data='caltech101',                  # stored at 224 px, aspect kept; Faces_easy dropped (bench/declare/datasets.py)
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

W8 = Experiment(
    name='w8', script='finetune',
    title='W8: does a cheap regime predict the native one? (W7\'s 96 px and 50 steps against Lite0\'s own 224 px)',
    question='Every CPU answer of the suite is measured small (96 px, 50 steps) to fit two cores; users train at the '
             'backbone\'s resolution and longer. The strategies ranked in three regimes, each tuned on validation and '
             'confirmed over 3 seeds: does the cheap ranking predict the native one (Kendall\'s tau, the pairs that '
             'flip with significance), and which is the cheapest regime that does?',
    settings=dict(
        backbone='tf_efficientnet_lite0', head='linear',
        pool=1000,                          # W7's protocol, VTAB-1k: 800 train, 200 choose the LR; test scores
        bs=32,
    ),
    cpu=dict(
        eval_subset=2000,                   # as W7 (the test splits used here are whole: 1,649 and 2,000)
        memory_limit_mb=3072,               # 224 px: Lite0's full fine-tuning at batch 32 fits in one pass
    ),
    regimes={
        '96px': dict(size=96, resize=96, epochs=2),       # W7's cpu profile: 50 steps
        '160px': dict(size=160, resize=160, epochs=2),    # 2.8x the pixels, the same 50 steps
        '224px-flat': dict(size=224, resize=224, epochs=3, sched='flat'),      # native: Lite0's pretrained size, 75
                                                                              # steps, the presets' flat LR
        '224px': dict(size=224, resize=224, epochs=3, sched='one_cycle'),      # the anchors' schedule (warm-up, a
    },                                                                        # decay to 0): scored no higher here
    native='224px-flat',                    # the schedule that scored as well or better on Caltech-101 (docs/w8.md)
    # W7's strategies but norm_only, last (or tied last) on every one of W7's four datasets, and llrd, which costs
    # what full does and trails it on three of W7's four: 2 h 40 min on two cores with six (the dry run's estimate)
    strategies=('feature_extract', 'bitfit', 'lora', 'partial', 'full', 'lp_ft'),
    # one natural and one specialized dataset of W7's: Caltech-101, and PBC, whose W7 ranking is the most spread out
    # (full best, BitFit 6 pp behind), so that agreement can be told from a tie; UC Merced's ties every strategy
    datasets=('caltech101', 'pbc_blood_cells'),
    in_make_bench=False,                    # about 3 hours on 2 cores: run by name, its records committed
)

ADVISE = Experiment(
    name='advise', script='advise',
    title='Advice: which strategy for this data, within a time budget (bench/advise.py)',
    question='W5\'s strategies raced on the user\'s data: each at each LR of its grid, scored on validation, the '
             'worse half dropped at each rung (successive halving); the finalists confirmed over 3 seeds on test, and '
             'the cheapest strategy not practically worse than the best recommended.',
    settings=dict(head='linear', pool=1000),  # W7's protocol (VTAB-1k: 800 train / 200 choose), so that the answer
                                              # sits beside W7's four datasets; size: the backbone's pretrained one
    cpu=W7.cpu,                               # W7's 2-core budget: 96 px, 2 epochs of 32 (a budget buys larger
                                              # images up to the pretrained size, then longer runs: sweep/budget.py)
    strategies=W5.strategies,
    bench=(),                                 # runs on the user's data and backbone, never in the suite
    in_make_bench=False,
)

EXPERIMENTS = {e.name: e for e in (W1, W2, W3, W4, W5, W6, W7, W8, ADVISE)}
# finetune.py without --preset: Config's defaults (the backbone's pretrained size, at most the data's), and a CPU
# budget that fits any dataset: at most 1,000 training images and 500 validation and test images each, 2 epochs,
# 1 GB for training (Caltech-101 at 224 px: ~3.5 min per fine-tuning run on a 2-core AVX2 CPU, under 2.5 GB).
CUSTOM = Experiment(name='finetune', script='finetune', title='Fine-tuning runs outside the presets', question='',
                    settings={}, cpu=dict(subset=1000, eval_subset=500, epochs=2, bs=32, memory_limit_mb=1024))
