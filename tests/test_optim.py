"""bench/train/optim.py's fused optimizers against fastai's own, and the harness's promise of no host syncs per step."""
import copy
from functools import partial

import pytest
import torch
from fastai.basics import SGD, Adam
from fastai.torch_core import norm_bias_params

import backbones
from bench.images import data
from bench.train import learner, optim, runner
from tests.helpers import tiny_config

FASTAI = {  # fastai's optimizers with the names the suite uses (PyTorch's Adam defaults, as in bench/train/optim.py)
    'adam': partial(Adam, mom=0.9, sqr_mom=0.999, eps=1e-8, decouple_wd=False),
    'adamw': partial(Adam, mom=0.9, sqr_mom=0.999, eps=1e-8, decouple_wd=True),
    'sgd': partial(SGD, mom=0.9),
}


def steps(opt, params, seed, n=3):
    """`n` steps of `opt` on gradients drawn from `seed` for the parameters that train (requires_grad)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            grad = torch.randn(p.shape, generator=g)
            p.grad = grad if p.requires_grad else None
        opt.step()
        opt.zero_grad()


def drive(make_opt, net, kind):
    """A strategy's life, on fixed gradients: the last stage and the head at one LR, then freeze_to's reset and
    everything at discriminative LRs (slice), weight decay kept off BatchNorm and biases as the Learner asks.
    `make_opt(net)` is the Learner's opt_func for `net`."""
    net = copy.deepcopy(net)
    params = list(net.parameters())
    opt = make_opt(net)(backbones.splitter(net), lr=1e-3)
    for p in norm_bias_params(net):
        opt.state[p]['do_wd'] = False  # what Learner.create_opt sets (wd_bn_bias=False); TorchOpt has no_decay
    lr = 1e-2 if kind == 'sgd' else 1e-3
    opt.set_hypers(wd=0.05, lr=lr)
    opt.freeze_to(-2)
    steps(opt, params, seed=1)
    opt.freeze_to(0)
    opt.clear_state()
    opt.set_hypers(lr=slice(lr / 10, lr))
    steps(opt, params, seed=2)
    return net.state_dict()


@pytest.mark.parametrize('kind', ['adam', 'adamw', 'sgd'])
def test_fused_optimizer_steps_as_fastais(kind):
    """The same parameters as fastai's optimizer after 3 steps of the last stage and the head, a reset, and 3 steps
    of everything at per-group LRs, with weight decay on all but BatchNorm and biases: within 1e-6 relative and
    1e-7 absolute (float32 rounding of fused kernels against fastai's per-tensor Python loop)."""
    torch.manual_seed(0)
    net, _ = backbones.build('cifar_resnet32', 10, 'linear', weights='none')
    ours = drive(lambda m: optim.opt_func(kind, no_decay=norm_bias_params(m)), net, kind)
    theirs = drive(lambda m: FASTAI[kind], net, kind)
    before = net.state_dict()
    for k, v in theirs.items():
        assert torch.allclose(ours[k], v, rtol=1e-6, atol=1e-7), k
    moved = {k.split('.')[2] for k, v in theirs.items() if k.startswith('0.') and not torch.equal(v, before[k])}
    assert moved == {'stem', 'stages'}


def test_the_learner_trains_with_it(images):
    """Adam on a real Learner: the loss falls."""
    cfg = tiny_config(epochs=3, lr=3e-3)
    out = runner.train(cfg, images, data.split(images, valid_frac=0.25), test=False, log=lambda line: None)
    assert out['epochs'][-1]['train_loss'] < out['epochs'][0]['train_loss']


def test_bn_and_bias_get_no_weight_decay():
    w = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    opt = optim.opt_func('adamw', no_decay=[b])([[w, b]], lr=0.1)
    opt.set_hypers(wd=0.5)
    w.grad, b.grad = torch.zeros(3), torch.zeros(3)
    opt.step()
    assert torch.allclose(w, torch.full((3,), 0.95)) and torch.equal(b.detach(), torch.ones(3))


def test_clear_state_resets_moments_but_keeps_groups():
    p = torch.nn.Parameter(torch.ones(2))
    opt = optim.opt_func('adam')([[p], []], lr=0.1)
    p.grad = torch.ones(2)
    opt.step()
    assert opt.opt.state[p]
    opt.clear_state()
    assert not opt.opt.state and len(opt.hypers) == 2


class HostReads:
    """Counts calls that copy a tensor's value to the host (each one a sync on a GPU)."""
    NAMES = ('item', 'cpu', 'tolist', 'numpy', '__float__', '__int__', '__bool__')

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self.counting(original))

    def counting(self, original):
        def wrapper(t, *args, **kwargs):
            self.count += 1
            return original(t, *args, **kwargs)
        return wrapper


def host_reads_in_a_fit(images, monkeypatch, n_train, epochs=2):
    cfg = tiny_config(epochs=epochs, bs=8)
    split = data.split(images, valid_frac=0.25, subset=n_train)
    with monkeypatch.context() as m:
        reads = HostReads(m)
        runner.train(cfg, images, split, test=False, log=lambda line: None)
    return reads.count


def test_no_host_reads_per_batch(images, monkeypatch):
    """Twice the batches, the same reads: none of them happens per batch (the per-epoch ones remain)."""
    few = host_reads_in_a_fit(images, monkeypatch, n_train=16)    # 2 batches an epoch
    many = host_reads_in_a_fit(images, monkeypatch, n_train=56)   # 7 batches an epoch
    assert few == many


def test_fastais_defaults_would_read_every_batch(images, monkeypatch):
    """The counter sees what the harness removed: fastai's own smoothed loss copies every batch's loss."""
    from fastai.learner import AvgSmoothLoss
    monkeypatch.setattr(learner, 'DeviceSmoothLoss', AvgSmoothLoss)
    few = host_reads_in_a_fit(images, monkeypatch, n_train=16)
    many = host_reads_in_a_fit(images, monkeypatch, n_train=56)
    assert many - few >= 2 * (7 - 2)  # at least one read for each of the 5 extra batches of each of 2 epochs
