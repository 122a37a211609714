"""Evaluation at the cost of the layers that compute: on a CPU, on a copy of the model made for evaluation, each
LoRA adapter merged into the layer it adapts, and each BatchNorm that normalizes a convolution's output alone
folded into that convolution. (On a GPU evaluation is a small share of a run, and the copy would take memory the
run's memory fit did not plan for.)

In eval mode a BatchNorm is an affine map per channel (running mean and variance, weight, bias), so the conv
before it can absorb it: weight * g, bias * g + (beta - mean * g), with g = weight / sqrt(var + eps). What is
left is the conv's own pass, and the BatchNorm's activation where it has one (timm's `BatchNormAct2d`). On a CPU
a BatchNorm pass costs about a third of its conv's (EfficientNet-Lite0, 96 px: 28% of a forward pass). A LoRA
layer computes base(x) + B(A(x)) * scale, which is the base layer with weight W + scale * B·A (peft's own
`get_delta_weight`), three passes made one; merged, its conv's BatchNorm folds too.

What merges and folds is read off the model once (forward hooks on two images): a LoRA layer of vanilla adapters
over torch's own Linear or Conv2d (or timm's 'same'-padded one), its adapter reading the input as the base does;
a BatchNorm whose input is the very tensor a Conv2d returned, not modified in place since (its version counter
unchanged), using running statistics, of a class whose forward is known (`BatchNorm2d`; `BatchNormAct2d`, its
drop and act kept). A model where nothing would merge or fold is evaluated as it is, uncopied. The copy is then
checked against the model on those images, in the run's precision; a model that does not check out is evaluated
as it is. Before each later evaluation the copy is brought up to date from the model: tensors copied where they
stand, the merged and folded weights computed again (EfficientNet-Lite0: 8-19 ms; a deep copy would cost 110 ms).
The scores are the model's up to float rounding.

**While training, a frozen BatchNorm folds too** (`fold_frozen_norms`): where a strategy freezes a conv's
BatchNorm (BitFit, LoRA, the frozen stages of `partial`, LP-FT's probe: fastai's BnFreeze puts it in eval mode, its
weight frozen), it is the same affine map at every step, so the conv computes conv and BatchNorm as one, on the model
itself: weight * g and bias * g + (beta - mean * g), made afresh at each forward from the layer's tensors (a LoRA
layer's weight being its base's plus its adapters' update, its dropout none), so that gradients reach whatever
trains in them (BitFit's beta; LoRA's A and B) and the BatchNorm applies only its activation. Forward and backward
skip a pass over the conv's output each (EfficientNet-Lite0 at 96 px: a BitFit step 0.89x, LoRA 0.81x; at 224 px
0.85x and 0.63x: docs/speed.md). It folds only on a CPU, in fp32, with a gradient wanted, and only while the
BatchNorm is in eval mode with its weight frozen; anywhere else (a BatchNorm that trains or updates its statistics,
evaluation, autocast) each computes as before. Pairs are read off the model as for the copy above, and the norm
skips its normalization only for the very tensor its conv returned folded.
"""
import contextlib
import copy
import functools
import inspect
import weakref

import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d

from backbones import conv_grad
from backbones.anatomy import TORCH_CONVS
from backbones.same_pad import SamePadConv2d
from bench.train.learner import autocast, eval_mode

_twins = weakref.WeakKeyDictionary()  # model -> its Twin (None: evaluated as it is), made once per model


def _set(model, name, module):
    parent, _, child = name.rpartition('.')
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _foldable_norm(m):
    return type(m) in _NORMS and m.track_running_stats and m.running_mean is not None


def find_pairs(model, x, context=contextlib.nullcontext):
    """The (conv, BatchNorm) names whose BatchNorm reads the conv's output alone, from one forward pass on `x`
    in eval mode (every module's mode put back)."""
    convs, pairs, handles = {}, [], []
    names = {m: n for n, m in model.named_modules()}

    def after_conv(m, args, out):
        convs[id(out)] = (names[m], out, out._version)

    def before_norm(m, args):
        seen = convs.get(id(args[0]))
        if seen is not None and seen[1] is args[0] and seen[2] == args[0]._version:
            pairs.append((seen[0], names[m]))

    for m in model.modules():
        if isinstance(m, nn.Conv2d) or mergeable(m):  # a LoRA layer's output, not its base conv's, feeds the norm
            handles.append(m.register_forward_hook(after_conv))
        elif _foldable_norm(m):
            handles.append(m.register_forward_pre_hook(before_norm))
    try:
        with eval_mode(model), torch.no_grad(), context():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return tuple(pairs)


def mergeable(m):
    """A peft LoRA layer whose adapters merge into its base: vanilla LoRA over torch's own Linear or a conv of
    backbones.anatomy.TORCH_CONVS, each adapter's first conv of the base's class, reading the input as the base does."""
    base = getattr(m, 'base_layer', None)
    if base is None or not hasattr(m, 'get_delta_weight') or m.merged or m.disable_adapters or m.lora_variant:
        return False
    if type(base) is nn.Linear:
        return not getattr(m, 'fan_in_fan_out', False)
    return type(base) in TORCH_CONVS and all(
        type(a) is type(base) and (a.kernel_size, a.stride, a.padding, a.dilation) == (
            base.kernel_size, base.stride, base.padding, base.dilation) for a in m.lora_A.values())


def effective(model, name):
    """(weight, bias) layer `name` of `model` computes with: a LoRA layer's adapters added to its base's."""
    return effective_of(model.get_submodule(name))


def effective_of(m):
    """(weight, bias) layer `m` computes with: a LoRA layer's adapters added to its base's."""
    if not mergeable(m):
        return m.weight, m.bias
    return m.base_layer.weight + sum(m.get_delta_weight(a) for a in m.active_adapters if a in m.lora_A), \
        m.base_layer.bias


def folded_weights(weight, bias, norm):
    """(weight, bias) of a conv computing conv(weight, bias) then `norm` in eval mode."""
    g = 1 / torch.sqrt(norm.running_var + norm.eps)
    g = norm.weight * g if norm.affine else g
    shift = (norm.bias if norm.affine else 0) - norm.running_mean * g
    return weight * g.reshape(-1, *([1] * (weight.dim() - 1))), shift if bias is None else bias * g + shift


class Twin:
    """The model's evaluation copy (eval mode, no gradients), its LoRA layers merged and its conv-BatchNorm pairs
    folded, and how to bring it up to date from the model."""

    @torch.no_grad()
    def __init__(self, model, x, context=contextlib.nullcontext):
        self.merged = [n for n, m in model.named_modules() if mergeable(m)]
        # conv -> its BatchNorm; where LoRA wraps a conv, only once it is merged (on the copy)
        self.pairs = None if self.merged else dict(find_pairs(model, x, context))
        self.net = None
        if not self.merged and not self.pairs:
            self.computed = set()
            return  # nothing computes less: no copy (transformers, models without BatchNorm)
        self.net = copy.deepcopy(model).eval().requires_grad_(False)
        for m in self.net.modules():
            unfolding(m)  # the copy folds for good, below
        for name in self.merged:
            weight, bias = effective(self.net, name)
            base = self.net.get_submodule(name).base_layer
            base.weight = nn.Parameter(weight, requires_grad=False)
            _set(self.net, name, base)
        if self.pairs is None:
            self.pairs = dict(find_pairs(self.net, x, context))
        for conv, norm in self.pairs.items():
            m = self.net.get_submodule(conv)
            weight, bias = folded_weights(m.weight, m.bias, self.net.get_submodule(norm))
            m.weight, m.bias = nn.Parameter(weight, requires_grad=False), nn.Parameter(bias, requires_grad=False)
            norm_module = self.net.get_submodule(norm)
            _set(self.net, norm, nn.Sequential(norm_module.drop, norm_module.act)
                 if isinstance(norm_module, BatchNormAct2d) else nn.Identity())
        self.computed = {*self.merged, *self.pairs}

    def __bool__(self):
        return bool(self.computed)

    @torch.no_grad()
    def update(self, model):
        mine = dict(self.net.named_parameters()) | dict(self.net.named_buffers())
        theirs = dict(model.named_parameters()) | dict(model.named_buffers())
        for name, t in mine.items():
            if name.rpartition('.')[0] not in self.computed:
                t.copy_(theirs[name])
        for name in self.computed:
            weight, bias = effective(model, name)
            if name in self.pairs:
                weight, bias = folded_weights(weight, bias, model.get_submodule(self.pairs[name]))
            target = self.net.get_submodule(name)
            target.weight.copy_(weight)
            if bias is not None:
                target.bias.copy_(bias)
        return self.net


def folded(model, sample, cfg=None):
    """The evaluation copy of `model` (its LoRA merged, its BatchNorms folded), up to date with it, or `model`
    itself: on a GPU, where nothing merges or folds, or where a hook on it is an object's method (which a copy would
    drag along). `cfg`: the run's (device, precision); None: fp32 on a CPU. `sample()`: a batch of its input, asked
    for the first time a model is seen (what merges and folds is found and checked on two images of it)."""
    if cfg is not None and torch.device(cfg.device).type != 'cpu':
        return model  # a GPU evaluates fast, and the copy would take memory the run's memory fit did not plan for
    hooks = [h for m in model.modules() for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks)
             for h in d.values()]
    if not all(inspect.isfunction(h) for h in hooks):
        return model
    if model not in _twins:
        twin = None
        try:
            with torch.inference_mode(False):  # version counters, which inference tensors lack
                x = sample()[:2].clone()
                context = (lambda: autocast(cfg)) if cfg is not None else contextlib.nullcontext
                twin = Twin(model, x, context)
                exact = cfg is None or cfg.precision == 'fp32'
                twin = twin if twin and _checks_out(model, twin.net, x, context, exact) else None
        except RuntimeError:  # a model this cannot read (its own dtype, a device it does not run on): as it is
            twin = None
        _twins[model] = twin
        return model if twin is None else twin.net
    twin = _twins[model]
    return model if twin is None else twin.update(model)


def _checks_out(model, twin, x, context, exact):
    """Whether `twin` computes `model` on `x`: to float rounding in fp32; in bf16, where each rounds its own way,
    to 5% of the output's norm (a BatchNorm left out or applied twice moves it by far more)."""
    with eval_mode(model), torch.no_grad(), context():
        a, b = model(x).float(), twin(x).float()
    if a.shape != b.shape:
        return False
    if exact:
        return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * max(1., float(a.abs().max()))))
    return bool((a - b).norm() <= 0.05 * a.norm())


# ---- a frozen BatchNorm folded while the model trains -----------------------------------------------------

class _FoldedBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x):
        return x if _normalized(self, x) else super().forward(x)


class _FoldedBatchNormAct2d(BatchNormAct2d):
    def forward(self, x):
        return self.act(self.drop(x)) if _normalized(self, x) else super().forward(x)


_FOLDED_NORM = {nn.BatchNorm2d: _FoldedBatchNorm2d, BatchNormAct2d: _FoldedBatchNormAct2d}
_NORMS = (*_FOLDED_NORM, *_FOLDED_NORM.values())


def _normalized(norm, x):
    """Whether `x` is the tensor `norm`'s conv returned with `norm` folded in (each such tensor is read once)."""
    ref = norm.__dict__.pop('_folded_out', None)
    return ref is not None and ref() is x


def frozen(norm, x):
    """Whether `norm` folds into its conv for this forward pass on `x`: a training pass (a gradient wanted) on a CPU
    in fp32 (or fp64), the norm in eval mode (running statistics) with its weight frozen."""
    return (x.device.type == 'cpu' and torch.is_grad_enabled() and not torch.is_autocast_enabled('cpu')
            and x.dtype in (torch.float32, torch.float64) and not norm.training
            and not (norm.weight is not None and norm.weight.requires_grad))


class _FoldsItsNorm:
    """A conv (or a LoRA layer over one) that computes its BatchNorm with it while that norm is frozen."""

    def forward(self, x, *args, **kwargs):
        norm = self.__dict__['_folds']
        if args or kwargs or not frozen(norm, x):
            return super().forward(x, *args, **kwargs)
        weight, bias = folded_weights(*effective_of(self), norm)
        conv = getattr(self, 'base_layer', self)
        out = conv.conv_with(x, weight, bias) if isinstance(conv, SamePadConv2d) else \
            conv_grad.conv2d(x, weight, bias, conv.stride, conv.padding, conv.groups)
        norm.__dict__['_folded_out'] = weakref.ref(out)
        return out


@functools.cache
def _folding_class(cls):
    """`cls` computing its BatchNorm with it (one class per conv class); its last base is `cls`."""
    return type(f'Folding{cls.__name__}', (_FoldsItsNorm, cls), {'__module__': __name__})


def _computes_plainly(conv):
    """A conv whose computation `_FoldsItsNorm` repeats: torch's own (zero padding, dilation 1) or 'same'-padded."""
    return (type(conv) in (nn.Conv2d, conv_grad.Conv2d, SamePadConv2d) and conv.dilation == (1, 1)
            and conv.padding_mode == 'zeros' and not isinstance(conv.padding, str))


def _foldable_conv(m):
    if isinstance(m, nn.Conv2d):
        return _computes_plainly(m)
    return (mergeable(m) and isinstance(m.base_layer, nn.Conv2d) and _computes_plainly(m.base_layer)
            and all(type(m.lora_dropout[a]) is nn.Identity for a in m.active_adapters if a in m.lora_A))


def fold_frozen_norms(model, x):
    """Let each conv-BatchNorm pair of `model` (read off a forward pass on `x`, two images) compute as one conv
    whenever its BatchNorm is frozen (`frozen`); in place. Returns how many pairs can."""
    n = 0
    for conv_name, norm_name in find_pairs(model, x):
        conv, norm = model.get_submodule(conv_name), model.get_submodule(norm_name)
        if _foldable_conv(conv) and type(norm) in _FOLDED_NORM:
            conv.__class__ = _folding_class(type(conv))
            conv.__dict__['_folds'] = norm  # not a submodule: the state_dict and the module tree stay the model's
            norm.__class__ = _FOLDED_NORM[type(norm)]
            n += 1
    return n


def unfolding(m):
    """`m` back to its own class (each class fold_frozen_norms gives has it as its last base)."""
    if isinstance(m, _FoldsItsNorm) or type(m) in _FOLDED_NORM.values():
        m.__class__ = type(m).__bases__[-1]
        m.__dict__.pop('_folds', None)
