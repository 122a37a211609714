"""The one Learner builder, and what every Learner of the suite has: batches on the device, the strategy's
parameter groups, the run's optimizer, loss and metric, BatchNorm rule, precision and progress display.

Strategies differ only in which parameters train when and at what LR (bench/declare/strategies.py); everything here is
shared, so a comparison between strategies measures the strategy. Nothing reads a value back from the device
during an epoch: the smoothed loss stays where it is computed.
"""
import contextlib
import time

import torch
from fastai.basics import Callback, CrossEntropyLossFlat, Learner, accuracy
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.progress import ProgressCallback
from fastai.callback.training import BnFreeze, set_bn_eval
from fastai.learner import AvgSmoothLoss, Metric
from fastai.torch_core import norm_bias_params

import backbones
from bench.declare.strategies import STRATEGIES
from bench.images import loader
from bench.train import optim


def sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def timed(fn, device):
    """Seconds `fn()` takes, with the device's queued work finished on both sides."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def prepare_for(cfg, spec, train):
    mean, std = (spec.mean, spec.std) if cfg.normalize == 'backbone' else ((0., 0., 0.), (1., 1., 1.))
    return loader.Prepare(size=cfg.size, resize=cfg.resize, mean=mean, std=std, augment=train and cfg.augment,
                          channels_last=cfg.channels_last == 'on')


def learner(cfg, dls, net, cbs=(), head_only=False):
    """The one Learner builder: parameter groups holding only what may train (by stage or by layer, as the strategy
    says; the head last; the strategy's prepare step has marked what may: bench/train/run.py), the run's optimizer
    (bench/train/optim.py), loss, metric and BatchNorm rule. `head_only`: a Learner over the head alone (training on
    cached features)."""
    if head_only:
        model, groups = net.head, [list(net.head.parameters())]
    else:
        model = net
        groups = [[p for p in g if p.requires_grad]
                  for g in backbones.param_groups(net, STRATEGIES[cfg.strategy].groups)]
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=[accuracy, ClassMeanAccuracy()], splitter=lambda _: groups,
                    wd=cfg.wd, opt_func=optim.opt_func(cfg.opt, no_decay=norm_bias_params(model)),
                    train_bn=cfg.train_bn, cbs=list(cbs))
    learn.recorder.smooth_loss = DeviceSmoothLoss()
    if not cfg.train_bn:
        learn.add_cb(BnFreeze())
    return learn


def group_names(net, cfg):
    """The names of the Learner's groups for `cfg`'s strategy, the head last."""
    return [*(net.stage_names if STRATEGIES[cfg.strategy].groups == 'stages' else net.layer_names), 'head']


class ClassMeanAccuracy(Metric):
    """Mean per-class accuracy (balanced accuracy): each class's recall, averaged over the classes present in the
    evaluated images. Counts stay on the device and are read once, at the end of the evaluation."""
    name = 'class_mean_accuracy'

    def reset(self):
        self.correct = self.total = None

    def accumulate(self, learn):
        pred, y = learn.pred.argmax(dim=-1), learn.y
        n = learn.pred.shape[-1]
        if self.total is None:
            self.correct = torch.zeros(n, device=y.device)
            self.total = torch.zeros(n, device=y.device)
        self.total += torch.bincount(y, minlength=n)[:n]
        self.correct += torch.bincount(y[pred == y], minlength=n)[:n]

    @property
    def value(self):
        if self.total is None:
            return None
        present = self.total > 0
        return float((self.correct[present] / self.total[present]).mean())


class DeviceSmoothLoss(AvgSmoothLoss):
    """fastai's smoothed training loss, kept on the device: fastai's copies each batch's loss to the host."""
    def accumulate(self, learn):
        self.count += 1
        loss = learn.loss.detach().float().mean()
        self.val = torch.lerp(loss, self.val.to(loss.device), self.beta)


class Bar(ProgressCallback):
    """fastai's progress bar without the per-batch loss in its comment (reading it would stop the host)."""
    def after_batch(self):
        self.pbar.update(self.iter + 1)


@contextlib.contextmanager
def modes_kept(model):
    """Inside, `model`'s modes may change; every module's train/eval mode is put back as it was afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, mode in modes:
            m.train(mode)


@contextlib.contextmanager
def eval_mode(model):
    """`model` in eval mode inside, every module's train/eval mode put back as it was afterwards."""
    with modes_kept(model):
        yield model.eval()


def training_modes(model, train_bn):
    """`model` in training mode as a fit puts it: a BatchNorm whose weight is frozen stays in eval mode (fastai's
    BnFreeze, which `learner` adds unless `train_bn`), and so, on a CPU, folded into its conv (fold.py)."""
    model.train()
    if not train_bn:
        set_bn_eval(model)


def autocast(cfg):
    """bf16 autocast on the run's device where its precision is bf16 (CPU included), else a no-op context."""
    return torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.precision == 'bf16')


class Autocast(Callback):
    """The run's autocast around each batch's forward and loss (fastai's MixedPrecision is CUDA-only): bf16
    where safe, parameters, gradients and the optimizer in fp32. bf16 needs no loss scaling."""
    order = MixedPrecision.order

    def __init__(self, cfg):
        self.cfg = cfg

    def before_batch(self):
        self.context = autocast(self.cfg)
        self.context.__enter__()

    def after_pred(self):
        self.learn.pred = self.pred.float()

    def after_loss(self):
        self.context.__exit__(None, None, None)


# A CPU bug (torch 2.14.1, oneDNN, seen on a Xeon with AMX): the bf16 weight gradient of a strided conv whose
# input is narrower than its stride (3x3, stride 2, on a 1 px wide map) has garbage in the taps that only ever see
# padding, where fp32 gives exact zeros: 20-40% of calls give a NaN, inf or ~1e-37 there. It shows where an image
# is small for the model (test_resnet at 16 px: its layer4 runs on 1x1 maps), and the run stops with a NaN loss.
# Such a conv runs in fp32 instead: it is the cheapest conv of the model, and bf16 stays everywhere else.

def _narrow_input_to_fp32(conv, args):
    x = args[0]
    if x.is_cpu and torch.is_autocast_enabled('cpu') and (x.shape[-2] < conv.stride[0] or x.shape[-1] < conv.stride[1]):
        conv._fp32 = torch.autocast('cpu', enabled=False)
        conv._fp32.__enter__()
        return (x.float(), *args[1:])


def _back_to_autocast(conv, args, out):
    fp32 = conv.__dict__.pop('_fp32', None)
    if fp32 is not None:
        fp32.__exit__(None, None, None)


def fp32_for_narrow_convs(model):
    """Every strided conv of `model` runs in fp32 on an input narrower than its stride, under CPU autocast (the bug
    above); idempotent. Returns how many convs are watched."""
    watched = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and max(m.stride) > 1 and max(m.kernel_size) > 1:
            if _narrow_input_to_fp32 not in m._forward_pre_hooks.values():
                m.register_forward_pre_hook(_narrow_input_to_fp32)
                m.register_forward_hook(_back_to_autocast, always_call=True)
            watched += 1
    return watched


def apply_precision(learn, cfg):
    """The run's precision, memory format and compilation, exactly as its resolved config says."""
    if cfg.precision == 'bf16':
        learn.add_cb(Autocast(cfg))
        if torch.device(cfg.device).type == 'cpu':
            fp32_for_narrow_convs(learn.model)
    elif cfg.precision == 'fp16':
        learn.to_fp16()  # CUDA only (refused elsewhere when the config is resolved); loss scaling syncs each step
    if cfg.channels_last == 'on':
        learn.model.to(memory_format=torch.channels_last)
    if cfg.compile:
        learn.model.compile()


def show_progress(learn, bar, log):
    """A progress bar (on a terminal), or one plain line per epoch."""
    learn.remove_cb(ProgressCallback)
    if bar:
        learn.add_cb(Bar())
    else:
        learn.logger = lambda row: log('    ' + '  '.join(
            f'{name} {value:.4f}' if isinstance(value, float) else f'{name} {value}'
            for name, value in zip(learn.recorder.metric_names, row)))
