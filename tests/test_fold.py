"""Evaluation computes what the model computes, on fewer passes: TF 'same' padding without a padded copy
(backbones/same_pad.py), LoRA merged and BatchNorms folded on an evaluation copy (bench/train/fold.py)."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d, Conv2dSame

import backbones
from backbones.same_pad import SamePadConv2d
from bench.declare.strategies import add_lora
from bench.train import fold


@pytest.mark.parametrize('kernel,stride,size', [(3, 2, 32), (3, 2, 33), (5, 2, 16), (3, 1, 15), (5, 2, 7), (1, 2, 9)])
def test_same_padding_without_a_padded_copy_computes_timms_conv(kernel, stride, size):
    torch.manual_seed(0)
    timms = Conv2dSame(6, 6, kernel, stride, groups=3, bias=True).double()
    ours = copy.deepcopy(timms)
    ours.__class__ = SamePadConv2d
    x = torch.randn(2, 6, size, size + 1, dtype=torch.double, requires_grad=True)
    a, b = timms(x), ours(x)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.square().sum(), [x, timms.weight, timms.bias])
    gb = torch.autograd.grad(b.square().sum(), [x, ours.weight, ours.bias])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)
    assert ours.weight.shape == timms.weight.shape  # the parameter (and the state_dict) are timm's


def test_tf_models_are_built_without_the_padded_copy_and_load_timms_weights():
    net, _ = backbones.build('tf_efficientnet_lite0', 5, 'linear', weights='none', img_size=32)
    kinds = {type(m) for m in net.modules()}
    assert SamePadConv2d in kinds and Conv2dSame not in kinds
    import timm
    reference = timm.create_model('tf_efficientnet_lite0', num_classes=0).eval()
    net.body.model.load_state_dict(reference.state_dict(), strict=False)  # timm's keys load as they are
    net.eval()
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        torch.testing.assert_close(net.body(x), reference.forward_features(x), rtol=1e-4, atol=1e-5)


def trained(net, x, steps=2):
    """`net` after a few SGD steps in train mode (running statistics and weights away from their init)."""
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05)
    net.train()
    for _ in range(steps):
        net(x).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    return net


@pytest.mark.parametrize('backbone,lora', [('tf_efficientnet_lite0', False), ('tf_efficientnet_lite0', True),
                                           ('cifar_resnet32', False), ('cifar_resnet32', True),
                                           ('convnext_atto', True)])  # LoRA over convs of backbones/conv_grad.py
def test_the_evaluation_copy_computes_the_model_and_follows_its_training(backbone, lora):
    torch.manual_seed(0)
    net, _ = backbones.build(backbone, 5, 'linear', weights='none', img_size=32)
    if lora:
        add_lora(net, SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0))
    x = torch.randn(4, 3, 32, 32)
    trained(net, x)  # LoRA's B starts at zero: train it first, so a wrong merge would show
    twin = fold.folded(net, lambda: x)
    assert twin is not net and not twin.training
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) in (nn.BatchNorm2d, BatchNormAct2d)
                   for m in twin.modules())
    if lora:
        assert not any('lora_' in n for n, _ in twin.named_parameters())  # merged into the layers they adapt
    before = {n: p.detach().clone() for n, p in net.state_dict().items()}
    for _ in range(2):
        trained(net, x, steps=1)
        twin = fold.folded(net, lambda: x)
        net.eval()
        with torch.no_grad():
            torch.testing.assert_close(twin(x), net(x), rtol=1e-4, atol=1e-4)
    assert net.training is False and any(not torch.equal(before[n], t) for n, t in net.state_dict().items())
    assert all(p.requires_grad == ('lora_' in n) for n, p in net.body.model.named_parameters()) if lora else True


class Residual(nn.Module):
    """A conv whose output is read twice: by its BatchNorm and by the sum after it (folding would change the sum)."""
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class InPlace(Residual):
    """A conv whose output is changed in place before its BatchNorm reads it."""
    def forward(self, x):
        y = self.conv(x)
        return self.bn(y.mul_(2))


@pytest.mark.parametrize('model', [Residual, InPlace])
def test_a_model_whose_convs_do_not_feed_their_batchnorms_alone_is_evaluated_as_it_is(model, monkeypatch):
    torch.manual_seed(0)
    net = trained(model(), torch.randn(4, 3, 8, 8))
    with torch.no_grad():
        net.bn.running_mean.add_(0.5)  # away from the identity, so a wrong fold shows
    copies = []
    monkeypatch.setattr(fold, 'copy', SimpleNamespace(deepcopy=lambda m: copies.append(m) or copy.deepcopy(m)))
    assert fold.folded(net, lambda: torch.randn(2, 3, 8, 8)) is net
    # a pair that folds wrongly is found out on a copy; where nothing would fold, no copy is made
    assert len(copies) == (model is Residual)


def test_a_bf16_run_is_evaluated_folded_and_checked_in_bf16():
    """Under bf16 autocast the copy and the model round differently; the copy is still used, and computes the
    model to bf16's precision."""
    torch.manual_seed(0)
    net, _ = backbones.build('cifar_resnet32', 5, 'linear', weights='none')
    x = torch.randn(4, 3, 32, 32)
    trained(net, x)
    cfg = SimpleNamespace(device='cpu', precision='bf16')
    twin = fold.folded(net, lambda: x, cfg)
    assert twin is not net
    net.eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        a, b = net(x).float(), twin(x).float()
    assert (a - b).norm() <= 0.05 * a.norm()
    gpu = SimpleNamespace(device='cuda', precision='bf16')
    assert fold.folded(net, lambda: x, gpu) is net  # a GPU evaluates the model itself: no copy in its memory
