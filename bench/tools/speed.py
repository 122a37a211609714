"""What the harness costs: the fastai Learner loop against a plain PyTorch loop, and the batch pipeline against
the model, measured side by side in one process so the ratios hold on a noisy machine.

    python bench/tools/speed.py                                  # ResNet18, 32 px, batch 128, on this machine's device
    python bench/tools/speed.py --size 224 --bs 256 --json       # one JSON object, for scripts

Prints: the cache load time (60k CIFAR images, warm); the pipeline's images/s (index cached uint8 -> resized,
normalized batch); the model's images/s (forward + backward + optimizer step on a ready batch); the plain loop's
and the Learner's images/s over the same batches, model, optimizer and precision; their ratios; and one optimizer
step, fastai's own against the fused one the runs use (aten operators dispatched by the host, and time). The two
loops alternate for --repeats rounds and the median of each is reported. Targets: Learner >= 0.95x plain on
CPU (>= 0.9x on GPU); pipeline >= 10x model.
"""
import argparse
import copy
import json
import statistics
import sys
from functools import partial

import bench  # noqa: F401  isort: skip  (first: bench/__init__ silences fastai's import-time notice)
import numpy as np
import torch
import torch.nn.functional as F
from fastai.optimizer import SGD, Adam
from fastai.torch_core import norm_bias_params
from torch.utils._python_dispatch import TorchDispatchMode

import backbones
from bench.command import cli
from bench.declare import record
from bench.declare.config import Config, UsageError
from bench.images import data
from bench.train import learner, optim
from bench.train import run as runs
from bench.train import runner
from bench.train.resolve import resolve_auto


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--backbone', default='resnet18', help='timm model name')
    p.add_argument('--size', type=int, default=32, help='px fed to the model (resized from the cached images)')
    p.add_argument('--bs', type=int, default=128, help='images per batch')
    p.add_argument('--steps', type=int, default=10, help='training steps per measurement')
    p.add_argument('--repeats', type=int, default=7, help='alternating rounds of plain and Learner loops (median)')
    p.add_argument('--data', help='folder or .tgz (default $FTBENCH_DATA, else untar_data)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'],
                   help='auto (cuda if present) | cpu | cuda (default: auto)')
    p.add_argument('--json', action='store_true', help='print one JSON object instead of text')
    return p


def parse(argv=None):
    return parser().parse_args(argv)


def plain_loop(model, opt, dl, cfg):
    """The reference: what a hand-written timm-style training loop does per batch, with the Learner's optimizer."""
    model.train()
    for x, y in dl:
        with learner.autocast(cfg):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()


class OpCount(TorchDispatchMode):
    """Counts the aten operators dispatched: the host's work per optimizer step, whatever the device."""
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def optimizer_steps(model, cfg, steps, repeats):
    """One optimizer step over every parameter, on fixed gradients: fastai's own optimizer of the same kind against
    the one the runs use, as {name: (aten ops per step, seconds per step)}."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    hypers = dict(lr=1e-4, wd=cfg.wd, **optim.DEFAULTS[cfg.opt])
    theirs = {'adam': partial(Adam, decouple_wd=False), 'adamw': partial(Adam, decouple_wd=True),
              'sgd': SGD}[cfg.opt](params, **hypers)
    ours = optim.opt_func(cfg.opt)(params, **hypers)
    out = {}
    for name, opt in (('fastai', theirs), ('ours', ours)):
        opt.step()  # state is allocated at the first step
        with OpCount() as count:
            opt.step()
        seconds = min(learner.timed(lambda: [opt.step() for _ in range(steps)], cfg.device) for _ in range(repeats))
        out[name] = (count.n, seconds / steps)
    return out


def measure(args):
    if args.steps < 1 or args.bs < 1 or args.repeats < 1 or args.size < 1:
        raise UsageError('--steps, --bs, --repeats and --size must be positive')
    cfg = resolve_auto(Config(backbone=args.backbone, weights='none', head='linear', strategy='full', bs=args.bs,
                              size=args.size, resize=args.size, device=args.device), record.hardware(args.device))
    cli.validate([cfg])
    source = data.resolve_source(args.data)
    images = data.load(source, log=lambda m: print(m, file=sys.stderr))
    cache_load_s = min(learner.timed(lambda: data.load(source), 'cpu') for _ in range(3))

    n = args.steps * args.bs
    if n > len(images.train_y):
        raise UsageError(f'--steps x --bs = {n} needs more than the {len(images.train_y)} images in the data')
    torch.backends.cudnn.benchmark = cfg.device == 'cuda'  # as the runs have it
    if cfg.device == 'cpu':
        runner.keep_freed_memory()  # as a run's worker has it
    torch.manual_seed(0)
    # the run every script builds (bench/train/run.py), over the first n images; fit validates each epoch, outside the
    # training clock, on one batch
    run = runs.build(cfg, images, data.Split(np.arange(n), np.arange(cfg.bs), np.arange(cfg.bs)),
                     log=lambda line: None)
    dl, learn = run.train_dl, run.learn
    pipeline_ips = n / min(learner.timed(lambda: [None for _ in dl], cfg.device) for _ in range(3))
    plain_net = copy.deepcopy(run.net)
    opt = optim.opt_func(cfg.opt, no_decay=norm_bias_params(plain_net))(backbones.splitter(plain_net), lr=1e-4,
                                                                         wd=cfg.wd)
    x, y = next(iter(dl))
    ready = [(x, y)] * args.steps
    learn.logger = lambda row: None
    learn.unfreeze()
    log = run.runlog
    runs.warm_up(plain_net, cfg, [dl])  # every batch shape once: cuDNN autotuning, lazy init, allocator
    run.warm_up()
    plain_loop(plain_net, opt, ready[:2], cfg)  # and the optimizers' first steps (their state is allocated lazily)
    learn.fit(1, lr=1e-4)
    runner.reset_peak_memory(cfg.device)
    model_s, plain_s, learner_s = [], [], []
    for _ in range(args.repeats):
        model_s.append(learner.timed(lambda: plain_loop(plain_net, opt, ready, cfg), cfg.device))
        plain_s.append(learner.timed(lambda: plain_loop(plain_net, opt, dl, cfg), cfg.device))
        learn.fit(1, lr=1e-4)
        learner_s.append(log.epochs[-1]['train_seconds'])
    out = dict(backbone=cfg.backbone, size=args.size, bs=args.bs, steps=args.steps, device=cfg.device,
               precision=cfg.precision, channels_last=cfg.channels_last,
               device_name=record.device_name(cfg.device), cache_images=len(images.train_y) +
               len(images.test_y), cache_load_s=cache_load_s, pipeline_ips=pipeline_ips,
               model_ips=n / statistics.median(model_s), plain_ips=n / statistics.median(plain_s),
               learner_ips=n / statistics.median(learner_s))
    out['ratio'] = out['learner_ips'] / out['plain_ips']
    out['pipeline_ratio'] = out['pipeline_ips'] / out['model_ips']
    out['peak_memory_mb'] = runner.peak_memory_mb(cfg.device)  # of the measured loops, after warm-up
    steps = optimizer_steps(plain_net, cfg, args.steps, args.repeats)
    out.update(opt=cfg.opt, opt_tensors=sum(p.requires_grad for p in plain_net.parameters()),
               fastai_opt_ops=steps['fastai'][0], fastai_opt_ms=steps['fastai'][1] * 1e3,
               opt_ops=steps['ours'][0], opt_ms=steps['ours'][1] * 1e3)
    return out


def main(argv=None):
    args = parse(argv)
    out = measure(args)
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    print(f'{out["backbone"]} at {out["size"]} px, batch {out["bs"]}, {out["steps"]} steps, {out["device_name"]} '
          f'({out["precision"]}{", channels_last" if out["channels_last"] == "on" else ""})')
    print(f'cache load ({out["cache_images"]:,} images, warm): {out["cache_load_s"]:.3f} s')
    print(f'pipeline: {out["pipeline_ips"]:,.0f} img/s   model: {out["model_ips"]:,.0f} img/s   '
          f'ratio {out["pipeline_ratio"]:.1f}x (target >= 10x)')
    print(f'plain loop: {out["plain_ips"]:,.1f} img/s   Learner: {out["learner_ips"]:,.1f} img/s   '
          f'ratio {out["ratio"]:.3f} (target >= {0.9 if out["device"] == "cuda" else 0.95})')
    print(f'peak {"GPU memory allocated" if out["device"] == "cuda" else "resident memory"} while measuring: '
          f'{out["peak_memory_mb"]:,.0f} MB')
    print(f'{out["opt"]} step over {out["opt_tensors"]} tensors: fastai\'s {out["fastai_opt_ops"]:,} aten ops '
          f'{out["fastai_opt_ms"]:.2f} ms, ours {out["opt_ops"]:,} ops {out["opt_ms"]:.2f} ms '
          f'({out["fastai_opt_ms"] / out["opt_ms"]:.1f}x)')
    return 0


if __name__ == '__main__':
    cli.main(main)
