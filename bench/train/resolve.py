"""From the declarations to a run's config: defaults <- experiment <- profile <- flags <- what `auto` means on the
hardware the run lands on. The resolved config is printed at start and stored whole in every record."""
from dataclasses import replace

from bench.declare import record
from bench.declare.config import FIELDS, Config, UsageError, resize_for
from bench.declare.experiments import CUSTOM, EXPERIMENTS
from bench.declare.strategies import can_cache_features


def resolve_profile(profile, device):
    """`auto` is full where the run's device is CUDA, cpu elsewhere."""
    return ('full' if device == 'cuda' else 'cpu') if profile == 'auto' else profile


def resolve(preset=None, profile='auto', target=None, **flags):
    """Config from defaults <- experiment <- profile <- flags (None = not given) <- `auto` on `target`
    (a record.Hardware; default: this process's)."""
    unknown = set(flags) - set(FIELDS)
    if unknown:
        raise UsageError(f'unknown setting {sorted(unknown)[0]!r}')
    target = target or record.hardware()
    exp = EXPERIMENTS[preset] if preset else CUSTOM
    values = dict(exp.settings, experiment=exp.name)
    given = {k: v for k, v in flags.items() if v is not None}
    device = resolve_device(given.get('device', 'auto'), target)
    profile = resolve_profile(profile, device)
    if profile == 'cpu':
        values.update(exp.cpu)
    if 'size' in given and 'resize' not in given:
        values['resize'] = resize_for(given['size'], values.get('resize', 0))
    values.update(given)
    return resolve_auto(Config(**values, profile=profile), target)


def fit_size(cfg, stored):
    """`size` 0: the backbone's pretrained input size, at most `stored`, the size the dataset is stored at (a model
    that only takes one size gets it); `resize` 0 stays: as stored, or --size if larger."""
    if cfg.size:
        return cfg
    import backbones
    spec = backbones.describe(cfg.backbone)
    return replace(cfg, size=spec.img_size if spec.fixed_size else min(spec.img_size, stored))


def resolve_device(device, target):
    if device == 'auto':
        return target.device
    if device == 'cuda' and target.device != 'cuda':
        raise UsageError(f'--device cuda was asked for, but the run\'s machine ({target.name}) has no CUDA device')
    return device


def auto_precision(backbone, device, target):
    """bf16 on CUDA. On a CPU, bf16 only where the CPU has it in hardware and the backbone has no depthwise convs;
    fp32 elsewhere. Training img/s, bf16 over fp32, side by side: emulated bf16 (AVX2 EPYC) 0.07-0.1x for every
    model; with AMX (Xeon, 2 cores) ResNet18 2.2x, VGG16 1.9x, ViT-Tiny 1.6x, but EfficientNet-Lite0 0.77x and
    ConvNeXt-Atto 0.94x, whose depthwise convs have no fast bf16 kernel on a CPU (bench/tools/precision.py measures it)."""
    if device == 'cuda':
        return 'bf16'
    if not target.cpu_bf16:
        return 'fp32'
    import backbones
    try:
        depthwise = backbones.describe(backbone).depthwise
    except ValueError:  # an unknown backbone: validation says so
        return 'fp32'
    return 'fp32' if depthwise else 'bf16'


def resolve_auto(cfg, target=None):
    """What `auto` means on `target` (a record.Hardware; default: this process's), so the record says what ran."""
    target = target or record.hardware(cfg.device)
    device = resolve_device(cfg.device, target)
    precision = auto_precision(cfg.backbone, device, target) if cfg.precision == 'auto' else cfg.precision
    if precision == 'fp16' and device != 'cuda':
        raise UsageError('--precision fp16 needs a CUDA device; use bf16 or fp32 on a CPU')
    channels_last = 'on' if cfg.channels_last == 'auto' else cfg.channels_last
    cache = cfg.cache_features
    if cache == 'auto':
        cache = 'on' if can_cache_features(cfg) else 'off'
    return replace(cfg, device=device, precision=precision, channels_last=channels_last, cache_features=cache)
