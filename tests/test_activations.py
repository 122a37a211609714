"""In-place activations without autograd's copy of their input (backbones/activations.py): timm's values and
gradients, no copy when training, in place when nothing needs a gradient, applied wherever a model is built."""
import copy

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import backbones
from backbones import activations


def copies(fn):
    """How many full copies autograd and the op made while running `fn`."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name == 'aten::clone' for e in prof.events())


@pytest.mark.parametrize('timms', [nn.ReLU6(inplace=True), nn.SiLU(inplace=True), nn.Hardswish(inplace=True),
                                   nn.Hardsigmoid(inplace=True)], ids=lambda m: type(m).__name__)
def test_each_activation_computes_timms_without_copying_its_input(timms):
    ours = activations.copy_free(nn.Sequential(copy.deepcopy(timms)))[0]
    assert type(ours) is not type(timms) and isinstance(ours, type(timms)) and ours.inplace
    w = torch.linspace(-8, 8, 5, dtype=torch.double, requires_grad=True)
    x = torch.linspace(-1, 1, 40, dtype=torch.double).view(8, 5)

    def grads(module):
        return torch.autograd.grad(module(x * w).square().sum(), w)[0]
    assert copies(lambda: grads(timms)) == 1 and copies(lambda: grads(ours)) == 0
    torch.testing.assert_close(grads(ours), grads(timms))
    torch.testing.assert_close(ours(x * w), timms(x * w))
    with torch.no_grad():  # nothing needs a gradient: in place, as timm's
        y = x.clone()
        assert ours(y).data_ptr() == y.data_ptr()


def test_models_are_built_with_them_and_compute_what_timms_in_place_modules_compute():
    torch.manual_seed(0)
    for name in ('tf_efficientnet_lite0', 'mobilenetv3_small_050'):
        net = backbones.create(name)
        ours = [m for m in net.modules() if type(m) in activations.COPY_FREE.values()]
        assert ours and not [m for m in net.modules() if type(m) in activations.COPY_FREE and m.inplace], name
        timms = copy.deepcopy(net)  # the same model with timm's in-place modules back
        for m in timms.modules():
            if type(m) in activations.COPY_FREE.values():
                m.__class__ = m.__class__.__base__
        x = torch.randn(4, 3, 64, 64)
        a, b = net.train()(x), timms.train()(x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        ga = torch.autograd.grad(a.square().sum(), list(net.parameters()))
        gb = torch.autograd.grad(b.square().sum(), list(timms.parameters()))
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v, rtol=0, atol=0)
        saved = copies(lambda: timms(x).sum().backward()) - copies(lambda: net(x).sum().backward())
        assert saved >= len(ours)  # one copy fewer per activation at least
