"""Two convolution gradients that torch's CPU path (oneDNN) computes slowly, computed here instead.

- **A depthwise conv's weight, where its kernel is larger than the map it slides over.** EfficientNet-Lite0's last
  stage at 96 px (1,152 channels, 5x5 kernels on 3x3 maps, batch 32, one thread, AMD EPYC with AVX2) took 29 ms for
  it, 30-70x its forward pass, against 9.5 ms on 5x5 maps; ConvNeXt's 7x7 kernels on 6x6 and 3x3 maps alike. Here it
  is a sum over the kernel's taps of the shifted input times the output's gradient: 4.9 ms for that layer.
- **A bias that trains under a frozen weight** (BitFit). Asked for the bias's gradient, oneDNN computes the weight's
  with it: a 3x3 conv of 96 channels on 24x24 maps, 83 ms for the input's and the bias's gradients against 30 ms for the
  input's alone. Here the bias's is the output gradient's sum.

The input's gradient and the forward pass stay torch's. Everywhere else (CUDA, autocast, the other cases) a conv is
torch's own call. The values are torch's up to float rounding (the sums run in another order).
"""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

_on = True  # off within `torchs_own`


def rerouted(x, weight, bias, groups):
    """Whether a conv of `weight` (and `bias`) over `x` computes its gradients here: on a CPU, outside autocast, with
    a gradient wanted, and either a depthwise weight that trains with a kernel larger than the map in either
    dimension, or a bias that trains under a frozen weight."""
    if not _on or x.device.type != 'cpu' or not torch.is_grad_enabled() or torch.is_autocast_enabled('cpu'):
        return False
    if not weight.requires_grad:
        return bias is not None and bias.requires_grad
    return (groups > 1 and groups == x.shape[1] == weight.shape[0]
            and (x.shape[-2] < weight.shape[-2] or x.shape[-1] < weight.shape[-1]))


@contextlib.contextmanager
def torchs_own():
    """Within it, every conv's gradients are torch's (bench/tools/conv_grad.py compares the two)."""
    global _on
    was, _on = _on, False
    try:
        yield
    finally:
        _on = was


def weight_grad(x, grad, kernel, stride, padding):
    """A depthwise conv's weight gradient, (C, 1, kh, kw): for each tap, the padded input read at that tap's offset
    (every stride-th row and column) times the output's gradient, summed over the batch and the map."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    ho, wo = grad.shape[-2:]
    out = x.new_empty(x.shape[1], kh, kw)
    for u in range(kh):
        for v in range(kw):
            out[:, u, v] = (xp[:, :, u:u + sh * (ho - 1) + 1:sh, v:v + sw * (wo - 1) + 1:sw] * grad).sum((0, 2, 3))
    return out.unsqueeze(1)


class _Rerouted(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.groups = stride, padding, groups
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x:  # the input's alone: asked for the bias's too, oneDNN computes the weight's with it
            gx = torch.ops.aten.convolution_backward(grad, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1],
                                                     False, [0, 0], ctx.groups, [True, False, False])[0]
        if need_w:  # only ever a depthwise weight (`rerouted`)
            gw = weight_grad(x, grad, weight.shape[-2:], ctx.stride, ctx.padding)
        if need_b:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None, None


def conv2d(x, weight, bias, stride, padding, groups):
    """F.conv2d (dilation 1, numeric padding), its gradients computed here where `rerouted` says so."""
    if rerouted(x, weight, bias, groups):
        return _Rerouted.apply(x, weight, bias, tuple(stride), tuple(padding), groups)
    return F.conv2d(x, weight, bias, stride, padding, 1, groups)


class Conv2d(nn.Conv2d):
    """torch's Conv2d (zero padding, dilation 1), through `conv2d`."""

    def forward(self, x):
        return self.conv_with(x, self.weight, self.bias)

    def conv_with(self, x, weight, bias):
        """This layer's conv of `x` with `weight` and `bias` in place of its own."""
        return conv2d(x, weight, bias, self.stride, self.padding, self.groups)


def rerouting(model):
    """`model` with each torch Conv2d that either case can meet (depthwise, or with a bias), of zero padding and
    dilation 1, computing through `conv2d` (in place; returns `model`). Parameters and state_dict are unchanged:
    only the class changes."""
    for m in model.modules():
        if (type(m) is nn.Conv2d and (m.bias is not None or m.groups == m.in_channels == m.out_channels > 1)
                and m.padding_mode == 'zeros' and not isinstance(m.padding, str) and m.dilation == (1, 1)):
            m.__class__ = Conv2d
    return model
