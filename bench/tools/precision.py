"""bf16 autocast against fp32 on this machine: one training step's images/s per backbone, side by side, and whether
`--precision auto` (bench/train/resolve.py) picks the faster of the two. How auto's CPU rule was measured (README, "The cpu
profile"); run it on a CPU of another kind to see whether the rule holds there.

    python bench/tools/precision.py                                       # the five backbones the rule was measured on
    python bench/tools/precision.py --backbone resnet50,convnext_nano --size 224 --bs 32

A step is forward, cross-entropy, backward and an SGD step on random images, channels_last, random init (speed
does not depend on the weights). The two precisions alternate for --repeats rounds of --steps steps each, after one
warm-up step of each, and the median of each is reported. Exits 1 if auto picks a precision measured slower by
more than --tolerance.
"""
import argparse
import statistics

import bench  # noqa: F401  isort: skip  (first: bench/__init__ silences fastai's import-time notice)
import torch
import torch.nn.functional as F

import backbones
from backbones.anatomy import create
from bench.command import cli
from bench.command.flags import add_side_by_side_flags, check_side_by_side_flags, split_list
from bench.declare import record
from bench.declare.config import UsageError
from bench.train import learner
from bench.train.resolve import auto_precision

# (backbone, px, batch): a ResNet, VGG and ViT, and two models with depthwise convs (EfficientNet, ConvNeXt)
MEASURED = (('tf_efficientnet_lite0', 160, 16), ('resnet18', 160, 16), ('vgg16', 32, 64), ('convnext_atto', 160, 16),
            ('vit_tiny_patch16_224', 224, 16))


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--backbone', help='comma list of timm names (default: the five of the README\'s measurement, '
                                      'each at its own size and batch)')
    add_side_by_side_flags(p, size=160, bs=16, steps=4, repeats=3, tolerance=0.1, rounds='fp32 and bf16',
                           slower='auto\'s pick')
    return p


def measure(name, size, bs, device, steps, repeats):
    """{'fp32': img/s, 'bf16': img/s}, medians over `repeats` alternating rounds."""
    torch.manual_seed(0)
    model = create(name, num_classes=10, img_size=size).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(bs, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,), device=device)

    def step(bf16):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    speeds = {'fp32': [], 'bf16': []}
    for bf16 in (False, True):
        step(bf16)
    for _ in range(repeats):
        for precision in speeds:
            seconds = learner.timed(lambda: [step(precision == 'bf16') for _ in range(steps)], device)
            speeds[precision].append(bs * steps / seconds)
    return {k: statistics.median(v) for k, v in speeds.items()}


def slower(speed, pick, tolerance):
    """How many times faster the other precision ran than `pick`, where that is beyond `tolerance`; else None."""
    other = speed['fp32' if pick == 'bf16' else 'bf16']
    return other / speed[pick] if speed[pick] < (1 - tolerance) * other else None


def main(argv=None):
    args = parser().parse_args(argv)
    check_side_by_side_flags(args)
    cases = [(n, args.size, args.bs) for n in split_list(args.backbone)] if args.backbone else list(MEASURED)
    try:
        specs = {name: backbones.describe(name, size) for name, size, _ in cases}
    except ValueError as e:
        raise UsageError(str(e)) from None
    target = record.hardware()
    print(f'{target.name}: bf16 in hardware: {"yes" if target.cpu_bf16 or target.device == "cuda" else "no"}')
    wrong = []
    for name, size, bs in cases:
        speed = measure(name, size, bs, target.device, args.steps, args.repeats)
        pick = auto_precision(name, target.device, target)
        behind = slower(speed, pick, args.tolerance)
        print(f'{name} at {size} px, batch {bs}: fp32 {speed["fp32"]:.1f} img/s, bf16 {speed["bf16"]:.1f} img/s, '
              f'bf16/fp32 {speed["bf16"] / speed["fp32"]:.2f}x; {specs[name].depthwise} depthwise '
              f'convs; auto picks {pick}{f", which ran {behind:.2f}x slower" if behind else ""}', flush=True)
        if behind:
            wrong.append(name)
    if wrong:
        print(f'auto picks the slower precision here for {", ".join(wrong)}: pass --precision to those runs, and '
              f'report it with this output')
        return 1
    print('auto picks the faster precision (within the tolerance) for every backbone measured')
    return 0


if __name__ == '__main__':
    cli.main(main)
