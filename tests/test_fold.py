"""Evaluation computes what the model computes, on fewer passes: TF 'same' padding without a padded copy
(backbones/same_pad.py), LoRA merged and BatchNorms folded on an evaluation copy (bench/train/fold.py); and training
too: a BatchNorm its strategy freezes folded into its conv, with the model's gradients."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from fastai.callback.training import set_bn_eval
from timm.layers import BatchNormAct2d, Conv2dSame

import backbones
from backbones.same_pad import SamePadConv2d
from bench.declare.strategies import add_lora, prepare
from bench.train import fold
from tests.helpers import Ops, tiny_config


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


def frozen_the_strategys_way(backbone, strategy, x):
    """A model as `strategy` trains it: prepared (BitFit's marks, LoRA's adapters), a few steps taken so that running
    statistics and LoRA's B are away from their init, in float64, its BatchNorms as fastai's BnFreeze leaves them."""
    torch.manual_seed(0)
    net, _ = backbones.build(backbone, 5, 'linear', weights='none', img_size=32)
    prepare(net, tiny_config(backbone=backbone, strategy=strategy))
    trained(net.double(), x)
    net.train()
    set_bn_eval(net)
    return net


def step(net, x):
    """Output, and the gradients of the input and of every parameter that trains, of one forward and backward."""
    x = x.clone().requires_grad_(True)
    out = net(x)
    out.square().sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in net.named_parameters() if p.requires_grad}


@pytest.mark.parametrize('backbone,strategy', [('tf_efficientnet_lite0', 'bitfit'), ('tf_efficientnet_lite0', 'lora'),
                                               ('cifar_resnet32', 'bitfit'), ('cifar_resnet32', 'lora')])
def test_a_frozen_batchnorm_trains_folded_into_its_conv_with_the_models_gradients(backbone, strategy):
    x = torch.randn(4, 3, 32, 32, dtype=torch.double)
    net = frozen_the_strategys_way(backbone, strategy, x)
    unfolded = copy.deepcopy(net)
    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert fold.fold_frozen_norms(net, x[:2]) == norms  # every BatchNorm of these reads its conv alone
    with Ops() as ops:
        out, x_grad, grads = step(net, x)
    assert ops.batch_norms() == 0  # no pass of its own, forward or backward
    want_out, want_x_grad, want_grads = step(unfolded, x)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(x_grad, want_x_grad)
    assert grads.keys() == want_grads.keys() and any('.bn' in n or 'lora_B' in n for n in grads)
    for name, grad in grads.items():  # BitFit's BatchNorm biases, LoRA's A and B, the head
        torch.testing.assert_close(grad, want_grads[name], atol=1e-12 * want_grads[name].abs().max(), rtol=1e-7)
    assert net.state_dict().keys() == unfolded.state_dict().keys()
    twin = fold.folded(net, lambda: x)  # evaluation's copy folds for good, from the layers' own classes
    assert not any(isinstance(m, fold._FoldsItsNorm) for m in twin.modules())
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(x), net(x))


@pytest.mark.parametrize('strategy', ['norm_only', 'full'])
def test_a_batchnorm_that_trains_or_updates_its_statistics_computes_as_it_did(strategy):
    x = torch.randn(4, 3, 32, 32, dtype=torch.double)
    net = frozen_the_strategys_way('tf_efficientnet_lite0', strategy, x)
    unfolded = copy.deepcopy(net)
    assert fold.fold_frozen_norms(net, x[:2]) > 0
    with Ops() as ops:
        out, x_grad, grads = step(net, x)
    assert ops.batch_norms() >= 2 * sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    want_out, want_x_grad, want_grads = step(unfolded, x)
    assert torch.equal(out, want_out) and torch.equal(x_grad, want_x_grad)
    assert all(torch.equal(g, want_grads[n]) for n, g in grads.items())
    frozen = frozen_the_strategys_way('tf_efficientnet_lite0', 'bitfit', x)
    fold.fold_frozen_norms(frozen, x[:2])
    with Ops() as ops, torch.no_grad():  # evaluating (no gradient): each as it is; the copy folds, above
        frozen(x)
    assert ops.batch_norms() > 0
