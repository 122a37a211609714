"""Speed regressions, tracked with pytest-benchmark (`make bench-regress`). `make test` runs each once, untimed.

Targets are compared against the last saved run, never asserted as seconds: this machine is noisy.
"""
import random

import pytest
import torch
from fastai.basics import DataLoaders
from fastai.callback.progress import ProgressCallback

import backbones
from bench.declare.config import Config
from bench.images import data
from bench.report import leaderboard
from bench.train import learner as learners
from bench.train.resolve import resolve_auto
from tests.helpers import rec


@pytest.fixture(scope='module')
def cifar_like():
    """2,048 random 32 px images in 10 classes: the size of real batches, none of the decoding."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2048, 32, 32, 3), dtype=torch.uint8, generator=g)
    y = torch.arange(2048) % 10
    return data.Images(train_x=x, train_y=y, test_x=x[:512], test_y=y[:512], classes=tuple('abcdefghij'),
                       name='bench', fingerprint='0' * 40)


def learner(images, n_train=256, bs=64):
    cfg = resolve_auto(Config(backbone='cifar_resnet32', weights='none', head='linear', strategy='full',
                                        bs=bs, size=0, resize=0, normalize='unit', device='cpu'))
    spec = backbones.describe(cfg.backbone)
    torch.manual_seed(0)
    net, _ = backbones.build(cfg.backbone, 10, cfg.head, weights='none')
    train = data.batches(images, torch.arange(n_train), learners.prepare_for(cfg, spec, True), bs, train=True)
    valid = data.batches(images, torch.arange(n_train, n_train + 512), learners.prepare_for(cfg, spec, False), bs)
    learn = learners.learner(cfg, DataLoaders(train, valid), net)
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda row: None
    learn.unfreeze()
    return learn


def test_learner_training_epoch(calibrated, cifar_like):
    learn = learner(cifar_like, n_train=128)
    learn.fit(1, 1e-3)  # warm-up
    calibrated(lambda: learn.fit(1, 1e-3))
    assert learn.recorder.values[-1][0] > 0


def test_evaluation(calibrated, cifar_like):
    learn = learner(cifar_like)
    loss, acc, class_acc = calibrated(learn.validate)
    assert 0 <= acc <= 1


@pytest.mark.parametrize('size', [32, 224])
def test_batch_pipeline(calibrated, cifar_like, size):
    prepare = data.Prepare(size=size, resize=size * 8 // 7 if size > 32 else 0, mean=(0.5,) * 3, std=(0.25,) * 3)
    n = 1024 if size == 32 else 128
    dl = data.batches(cifar_like, torch.arange(n), prepare, 64, train=True)
    shapes = calibrated(lambda: [x.shape for x, _ in dl], rounds=20)
    assert shapes[0] == (64, 3, size, size)


def test_leaderboard_from_10k_records(calibrated):
    random.seed(0)
    strategies = ['full', 'partial', 'progressive', 'feature_extract', 'lp_ft']
    records = [rec(random.choice(strategies), seed, random.random(), lr=random.choice([1e-3, 1e-4, 3e-4]),
                   backbone=random.choice(['resnet18', 'vgg16', 'convnext_nano']))
               for seed in range(2000) for _ in range(5)]
    text = calibrated(leaderboard.render, args=(records,))
    assert text.count('| ') > 40
