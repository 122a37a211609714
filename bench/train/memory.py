"""Will a run fit in memory? Estimated before it starts, so that a run too large is refused with the figure it
needs, or fits by accumulating gradients over smaller batches, and is never killed by the OS mid-sweep.

The estimate is measured, not guessed from the architecture: one forward pass of two images in training mode (a
BatchNorm whose weight stays frozen in eval mode, as the run's BnFreeze will set it, unless --train-bn) records every
tensor autograd saves for the backward pass (saved_tensors_hooks, counting each storage once), which is what grows
with the batch. On top of it: a gradient for every parameter that may train, the optimizer's state for them (Adam
and AdamW: two moments; SGD: one momentum), the batch itself, and a margin for the backward pass's transient
buffers. What is free: `--memory-limit-mb` if given, else what the device has free (CUDA's free
memory; on a CPU the memory the OS reports available, shared with the runs beside it), less a safety share.

Evaluation needs no saved activations, so it runs in larger batches than training: the largest (up to a cap) whose
activations all fit at once, measured as those of the same two images with a gradient asked for their input (every
activation then is saved: more than inference ever holds at once, so the batch is a safe one).
"""
from dataclasses import dataclass

import torch

from bench.train.learner import modes_kept, training_modes

BACKWARD_MARGIN = 1.5   # activations' gradients and kernel workspaces during the backward pass, over the saved tensors
USABLE_SHARE = 0.85     # of the free memory a run plans to use: the allocator's slack and other processes
STATE_TENSORS = {'adam': 2, 'adamw': 2, 'sgd': 1}   # optimizer state per trainable parameter
# A BatchNorm layer that trains normalizes each pass by that pass's own statistics: passes smaller than this make
# them noise. Lite0 fine-tuned in full on Caltech-101 at 224 px (Xeon, seed 0): 50.4% top-1 in passes of 8,
# 34.0% in passes of 4, 3.8% in passes of 2. Gradient accumulation cannot repair it, so such a run is refused, not run.
BATCHNORM_MIN_PASS = 8


class MemoryRefused(RuntimeError):
    """The run cannot fit even in passes of two, or of BATCHNORM_MIN_PASS where BatchNorm layers train; the message
    has the figures."""


@dataclass(frozen=True)
class Fit:
    micro_bs: int            # images per forward/backward pass
    accumulate: int          # passes per optimizer step (1 = none); micro_bs * accumulate == the run's bs
    estimate_mb: float       # memory the run needs at micro_bs, beyond what the process held before it
    free_mb: float           # what it may use
    eval_bs: int = 0         # images per evaluation batch (inference: no saved activations, no gradients)


def mb(n_bytes):
    return n_bytes / 2 ** 20


@torch.no_grad()
def _restore(model, buffers):
    for name, b in model.named_buffers():
        b.copy_(buffers[name])


def saved_bytes_per_image(model, x, autocast, train=True, train_bn=True):
    """Bytes autograd saves for the backward pass, per image: what a pass over `x` twice over (a batch of four,
    where `x` is two) saves beyond a pass over `x`, so that only what grows with the batch counts, not the weights
    nor what a pass saves once whatever its batch (under autocast, the low-precision copy of each weight it casts:
    ResNet18 at 96 px in bf16, 12.8 MB per image read off one pass of two, 2.1 MB its activations). In training
    mode (`train_bn` False: a BatchNorm whose weight does not train in eval mode, as fastai's BnFreeze sets it, and
    so folded into its conv on a CPU: bench/train/fold.py); every module's mode, the buffers (BatchNorm statistics)
    and random states are put back afterwards. `train` False: in eval mode, with a gradient asked for the input, so
    that every activation is saved (a bound on what inference holds)."""
    one = _saved_bytes(model, x, autocast, train, train_bn)
    return max(0., _saved_bytes(model, torch.cat([x, x]), autocast, train, train_bn) - one) / x.shape[0]


def _saved_bytes(model, x, autocast, train, train_bn=True):
    """Bytes of the storages autograd saves in one forward pass over `x`, the parameters' own left out."""
    seen, total = {p.untyped_storage().data_ptr() for p in model.parameters()}, 0

    def pack(t):
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        # detached: the storage stays alive (and its address unique) until the pass ends, but an output saved by
        # its own grad_fn does not hold that grad_fn in a cycle through C++ that no garbage collection breaks
        return t.detach()

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    rng = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if x.is_cuda else None)
    try:
        with modes_kept(model):
            if train:
                training_modes(model, train_bn)
            else:
                model.eval()
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
                model(x if train else x.detach().requires_grad_())
    finally:
        _restore(model, buffers)
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state_all(rng[1])
    return total


SIDE_BY_SIDE = 1  # runs this machine holds at once (bench/sweep/pool.py sets it in each of its worker processes)


def free_mb(device, limit_mb=0):
    if limit_mb:
        return float(limit_mb)
    if torch.device(device).type == 'cuda':
        return mb(torch.cuda.mem_get_info()[0]) * USABLE_SHARE
    import psutil
    return mb(psutil.virtual_memory().available) * USABLE_SHARE / SIDE_BY_SIDE


def plan_batches(model, cfg, x, autocast, trains, eval_cap=128):
    """How the run's batches of cfg.bs fit: a Fit, or MemoryRefused. `x`: two images as the model sees them;
    `trains`: the names of the parameters that train in the phase that trains the most; `eval_cap`: the largest
    evaluation batch wanted."""
    params = dict(model.named_parameters())
    trainable = sum(params[n].numel() * params[n].element_size() for n in trains)
    fixed = trainable * (1 + STATE_TENSORS[cfg.opt])   # gradients and optimizer state
    flags = {n: p.requires_grad for n, p in params.items()}
    for n, p in params.items():
        p.requires_grad_(n in trains)
    try:
        saved = saved_bytes_per_image(model, x, autocast, train_bn=cfg.train_bn)
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    per_image = saved * BACKWARD_MARGIN + x[0].numel() * 4 * 3
    need = lambda bs: mb(fixed + per_image * bs)  # noqa: E731
    free = free_mb(cfg.device, cfg.memory_limit_mb)
    norms = training_batchnorms(model, trains)
    smallest = min(cfg.bs, BATCHNORM_MIN_PASS) if norms else 2
    for accumulate in range(1, cfg.bs + 1):
        micro = cfg.bs // accumulate
        if cfg.bs % accumulate or micro < 2:
            continue
        if need(micro) <= free:
            if micro < smallest:
                raise MemoryRefused(
                    f'the run fits only in passes of {micro} (about {need(micro):,.0f} MB of {free:,.0f} MB free), '
                    f'where its {norms} training BatchNorm layers would normalize over {micro} images each; '
                    f'passes need at least {smallest}, about {need(smallest):,.0f} MB: lower --size, raise '
                    f'--memory-limit-mb, or choose a strategy or backbone without training BatchNorm layers')
            inference = saved_bytes_per_image(model, x, autocast, train=False) + x[0].numel() * 4 * 2
            eval_bs = max(micro, min(eval_cap, int(free * 2 ** 20 // max(inference, 1))))
            return Fit(micro, accumulate, need(micro), free, eval_bs)
    raise MemoryRefused(f'the run needs about {need(cfg.bs):,.0f} MB at batch {cfg.bs} ({mb(per_image):.1f} MB per '
                        f'image, {mb(fixed):,.0f} MB of gradients and optimizer state) and {need(2):,.0f} MB even '
                        f'in batches of 2, but {free:,.0f} MB are free; lower --size or use a smaller backbone')


def training_batchnorms(model, trains):
    """How many BatchNorm layers train (their weight or bias is among `trains`) and so normalize each pass by
    its own statistics."""
    return sum(1 for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               and any(n in trains for n, _ in m.named_parameters(prefix=name, recurse=False)))


def optimizer_state_mb(opt):
    """Megabytes the optimizer holds in its state (moments, momentum, step counts)."""
    return mb(sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                  if torch.is_tensor(v)))

