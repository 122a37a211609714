"""The conv gradients backbones/conv_grad.py computes without oneDNN, against torch's own, on this machine: one training
step's time per backbone and strategy, side by side. Run it on a CPU of another kind to see whether the rerouting
pays there too.

    python bench/tools/conv_grad.py                        # the cases docs/speed.md reports
    python bench/tools/conv_grad.py --backbone convnext_atto,mobilenetv3_large_100 --size 96 --strategy bitfit

A step is forward, cross-entropy, backward and an Adam step on random images, channels_last, fp32, one thread per
step as the runs on a CPU have it, random init; `full` trains everything, `bitfit` the biases and the head. The two
routes alternate for --repeats rounds of --steps steps, after a warm-up step of each, and the median of each is
reported. Exits 1 if the rerouted step is slower than torch's by more than --tolerance for any case.
"""
import argparse
import contextlib
import statistics
import time

import bench  # noqa: F401  isort: skip  (first: bench/__init__ silences fastai's import-time notice)
import torch
import torch.nn.functional as F

import backbones
from backbones import conv_grad
from bench.command import cli
from bench.command.flags import add_side_by_side_flags, check_side_by_side_flags, split_list
from bench.declare import record
from bench.declare.config import UsageError

# (backbone, px, strategy): W7's and W1's Lite0, ConvNeXt and MobileNetV3 at W7's size, and VGG16's biased convs
MEASURED = (('tf_efficientnet_lite0', 96, 'full'), ('tf_efficientnet_lite0', 32, 'full'),
            ('convnext_atto', 96, 'full'), ('convnext_atto', 96, 'bitfit'), ('mobilenetv3_large_100', 96, 'full'),
            ('vgg16', 32, 'bitfit'))
STRATEGIES = ('full', 'bitfit')


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--backbone', help='comma list of timm names (default: the six cases of docs/speed.md)')
    p.add_argument('--strategy', default='full', choices=STRATEGIES,
                   help='what trains, with --backbone (default: %(default)s)')
    add_side_by_side_flags(p, size=96, bs=32, steps=3, repeats=4, tolerance=0.05, rounds='each route',
                           slower='the rerouted step')
    return p


def measure(name, size, strategy, bs, steps, repeats):
    """{'torch': seconds, 'rerouted': seconds} per step, medians over `repeats` alternating rounds."""
    torch.manual_seed(0)
    net, _ = backbones.build(name, 10, 'linear', weights='none', img_size=size)
    net = net.to(memory_format=torch.channels_last)
    if strategy == 'bitfit':
        for n, p in net.named_parameters():
            p.requires_grad_(n.endswith('bias') or n.startswith('1.'))  # 1.: the head
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(bs, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    routes = {'torch': conv_grad.torchs_own, 'rerouted': contextlib.nullcontext}
    for route in routes.values():
        with route():
            step()
    seconds = {k: [] for k in routes}
    for _ in range(repeats):
        for k, route in routes.items():
            with route():
                t = time.perf_counter()
                for _ in range(steps):
                    step()
                seconds[k].append((time.perf_counter() - t) / steps)
    return {k: statistics.median(v) for k, v in seconds.items()}


def main(argv=None):
    args = parser().parse_args(argv)
    check_side_by_side_flags(args)
    cases = [(n, args.size, args.strategy) for n in split_list(args.backbone)] if args.backbone else list(MEASURED)
    try:
        for name, size, _ in cases:
            backbones.describe(name, size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    torch.set_num_threads(1)
    print(f'{record.hardware("cpu").name}, one thread, batch {args.bs}, fp32, channels_last')
    slower = []
    for name, size, strategy in cases:
        t = measure(name, size, strategy, args.bs, args.steps, args.repeats)
        ratio = t['rerouted'] / t['torch']
        print(f'{name} at {size} px, {strategy}: torch {t["torch"] * 1e3:.0f} ms a step, rerouted '
              f'{t["rerouted"] * 1e3:.0f} ms, {ratio:.2f}x', flush=True)
        if ratio > 1 + args.tolerance:
            slower.append(f'{name} ({size} px, {strategy})')
    if slower:
        print(f'the rerouted gradients ran slower here for {", ".join(slower)}: report it with this output')
        return 1
    print('the rerouted gradients ran as fast or faster (within the tolerance) in every case measured')
    return 0


if __name__ == '__main__':
    cli.main(main)
