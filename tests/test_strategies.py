"""Strategies on a real fastai Learner: which parameters train in each epoch, and at what LR."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from fastai.basics import even_mults

from bench import data, runner
from bench.config import Config, resolve_auto
from bench.strategies import STRATEGIES, problem, register


def tiny(strategy, **kw):
    base = dict(experiment='t', backbone='resnet18', weights='none', head='linear', strategy=strategy, epochs=3,
                bs=16, size=0, resize=0, unfreeze_at=(1, 2), lr=1e-3, head_lr=1e-2)
    base.update(kw)
    return resolve_auto(Config(**base))


def snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def run_learner(cfg, images):
    """Train `cfg` on the tiny data and return the Learner and the per-epoch log."""
    import backbones
    spec = backbones.describe(cfg.backbone)
    net, _ = backbones.build(cfg.backbone, len(images.classes), cfg.head, weights='none')
    s = data.split(images, valid_frac=0.25, subset=32)
    train_dl, valid_dl, _ = runner.loaders(cfg, images, s, spec)
    log = runner.RunLog('cpu')
    from fastai.basics import DataLoaders
    from fastai.callback.progress import ProgressCallback
    learn = runner.learner(cfg, DataLoaders(train_dl, valid_dl), net, [log])
    learn.remove_cb(ProgressCallback)
    before = snapshot(net)
    STRATEGIES[cfg.strategy](learn, cfg)
    return learn, log, before


def changed(net, before, prefix):
    return any(not torch.equal(v, before[k]) for k, v in net.state_dict().items()
               if k.startswith(prefix) and not k.endswith('num_batches_tracked'))


def test_feature_extract_trains_the_head_only_and_freezes_bn_statistics(images):
    learn, log, before = run_learner(tiny('feature_extract', epochs=1), images)
    net = learn.model
    assert changed(net, before, '1.')
    for stage in ('conv1', 'bn1', 'layer1', 'layer4'):
        assert not changed(net, before, f'0.model.{stage}'), stage  # weights and running statistics
    assert log.epochs[0]['trainable'] == 4 * 512 + 4


def test_train_bn_gives_fastais_default(images):
    learn, log, before = run_learner(tiny('feature_extract', epochs=1, train_bn=True), images)
    assert changed(learn.model, before, '0.model.layer1.0.bn1')
    assert not changed(learn.model, before, '0.model.layer1.0.conv1')


def test_partial_trains_the_last_k_stages(images):
    learn, _, before = run_learner(tiny('partial', epochs=1, unfreeze=2), images)
    net = learn.model
    assert changed(net, before, '0.model.layer4') and changed(net, before, '0.model.layer3')
    assert not changed(net, before, '0.model.layer2') and not changed(net, before, '0.model.conv1')


def test_progressive_unfreezes_one_stage_per_phase(images):
    _, log, _ = run_learner(tiny('progressive'), images)
    head = 4 * 512 + 4
    layer4, layer3 = 8393728, 2099712
    assert [e['trainable'] for e in log.epochs] == [head, head + layer4, head + layer4 + layer3]


def test_progressive_lrs_and_reset_optimizer_state(images):
    learn, _, _ = run_learner(tiny('progressive', lr_mult=10), images)
    lrs = [h['lr'] for h in learn.opt.hypers]
    assert np.allclose(lrs[:-1], even_mults(1e-4, 1e-3, 5)) and lrs[-1] == pytest.approx(1e-2)


def test_full_with_slice_gives_discriminative_lrs(images):
    learn, _, before = run_learner(tiny('full', epochs=1, lr_mult=100), images)
    lrs = [h['lr'] for h in learn.opt.hypers]
    assert np.allclose(lrs, even_mults(1e-5, 1e-3, 6))
    assert changed(learn.model, before, '0.model.conv1')


def test_one_lr_by_default(images):
    learn, _, _ = run_learner(tiny('full', epochs=1), images)
    assert {h['lr'] for h in learn.opt.hypers} == {1e-3}


def test_lp_ft_probes_then_unfreezes(images):
    learn, log, _ = run_learner(tiny('lp_ft', epochs=2), images)
    everything = sum(p.numel() for p in learn.model.parameters())
    assert [e['trainable'] for e in log.epochs] == [4 * 512 + 4, everything]


def test_fine_tune_is_fastais(images):
    _, log, _ = run_learner(tiny('fine_tune', epochs=2), images)
    assert len(log.epochs) == 2 and log.epochs[0]['trainable'] < log.epochs[1]['trainable']


def test_zero_shot_trains_nothing(images):
    learn, log, before = run_learner(tiny('zero_shot'), images)
    learn.validate()  # fastai fires fit and epoch events here too; they are not training
    assert log.epochs == [] and log.trainable_max == 0 and not changed(learn.model, before, '')


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match='registered twice'):
        register(STRATEGIES['full'].fit)


@pytest.mark.parametrize('change,message', [
    (dict(strategy='partial', unfreeze=9), '--unfreeze must be between 1 and 5'),
    (dict(strategy='progressive', unfreeze_at=(2, 1)), '--unfreeze-at must be increasing'),
    (dict(strategy='progressive', unfreeze_at=(1, 3)), 'between 1 and 2'),
    (dict(strategy='fine_tune', epochs=1), 'at least 2'),
    (dict(strategy='lp_ft', epochs=3, lp_epochs=3), '--lp-epochs must be between 1 and 2'),
    (dict(strategy='progressive', compile=True), 'compile'),
    (dict(strategy='nope'), 'unknown strategy'),
])
def test_strategy_problems(change, message):
    assert message in problem(replace(tiny('full'), **change), 5)
