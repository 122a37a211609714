"""The conv gradients computed outside oneDNN (backbones/conv_grad.py) are torch's, and are computed there only where
oneDNN is slow: a depthwise weight whose kernel is larger than its map, a bias under a frozen weight."""
import copy

import pytest
import torch
import torch.nn as nn
from timm.layers import Conv2dSame

import backbones
from backbones import conv_grad
from backbones.same_pad import SamePadConv2d


def grads(conv, x):
    """The output's route (its grad_fn's name) and the gradients of x and of the conv's parameters that train."""
    out = conv(x)
    wanted = [x] + [p for p in (conv.weight, conv.bias) if p is not None and p.requires_grad]
    return type(out.grad_fn).__name__, out, torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view(
        out.shape)).sum(), wanted)


def route_with_the_same_results(ours, theirs, x):
    """`ours`'s route, after checking that its output and gradients are `theirs`'s."""
    name, out, got = grads(ours, x)
    _, expected_out, expected = grads(theirs, x)
    torch.testing.assert_close(out, expected_out)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    return name


@pytest.mark.parametrize('channels,kernel,stride,padding,map_hw,bias,train_weight,route', [
    (12, 5, 1, 2, (3, 4), False, True, True),      # Lite0's last stage at 96 px: 5x5 on 3x3
    (12, 7, 1, 3, (6, 6), True, True, True),       # ConvNeXt's stage 3 at 96 px: 7x7 on 6x6, with a bias
    (12, 5, 2, 2, (4, 3), True, True, True),       # strided
    (12, 3, 1, 1, (8, 8), True, True, False),      # a map as large as the kernel: torch's
    (12, 3, 1, 1, (8, 8), True, False, True),      # BitFit: the bias under a frozen weight
])
def test_rerouted_gradients_are_torchs(channels, kernel, stride, padding, map_hw, bias, train_weight, route):
    torch.manual_seed(0)
    groups = channels if kernel > 3 or train_weight else 1  # the BitFit case: an ordinary conv
    torchs = nn.Conv2d(channels, channels, kernel, stride, padding, groups=groups, bias=bias)
    torchs.weight.requires_grad_(train_weight)
    ours = conv_grad.rerouting(copy.deepcopy(torchs))
    assert type(ours) is conv_grad.Conv2d
    x = torch.randn(4, channels, *map_hw).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert (route_with_the_same_results(ours, torchs, x) == '_ReroutedBackward') == route


def test_torchs_own_call_under_autocast_without_grad_and_for_frozen_convs():
    conv = conv_grad.rerouting(nn.Conv2d(8, 8, 5, 1, 2, groups=8, bias=True))
    x = torch.randn(2, 8, 3, 3)
    assert type(conv(x).grad_fn).__name__ == '_ReroutedBackward'
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert type(conv(x).grad_fn).__name__ != '_ReroutedBackward'
    with torch.no_grad():
        assert conv(x).grad_fn is None
    with conv_grad.torchs_own():
        assert type(conv(x).grad_fn).__name__ != '_ReroutedBackward'
    assert type(conv(x).grad_fn).__name__ == '_ReroutedBackward'  # back on after it
    conv.requires_grad_(False)
    assert conv(x.requires_grad_()).grad_fn is not None and type(conv(x).grad_fn).__name__ != '_ReroutedBackward'


def test_same_padded_depthwise_convs_take_the_route_with_timms_gradients():
    """EfficientNet-Lite's stride-1 5x5 depthwise convs are timm's Conv2dSame (bench: SamePadConv2d)."""
    torch.manual_seed(0)
    timms = Conv2dSame(16, 16, 5, 1, groups=16, bias=False)
    ours = copy.deepcopy(timms)
    ours.__class__ = SamePadConv2d
    x = torch.randn(4, 16, 3, 3, requires_grad=True)
    assert route_with_the_same_results(ours, timms, x) == '_ReroutedBackward'


def test_built_models_reroute_their_depthwise_and_biased_convs_only():
    net, _ = backbones.build('convnext_atto', 5, 'linear', weights='none')
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is conv_grad.Conv2d for m in convs)  # every ConvNeXt conv has a bias
    lite, _ = backbones.build('tf_efficientnet_lite0', 5, 'linear', weights='none')
    kinds = {(type(m), m.groups > 1) for m in lite.modules() if isinstance(m, nn.Conv2d)}
    assert (nn.Conv2d, False) in kinds and not any(t is conv_grad.Conv2d and not dw for t, dw in kinds)
