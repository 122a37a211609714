"""Speed regressions, tracked with pytest-benchmark (`make bench-regress`). `make test` runs each once, untimed.

Targets are compared against the last saved run, never asserted as seconds: this machine is noisy.
"""
import random

import pytest
import torch

from bench.declare.config import Config
from bench.images import data, loader
from bench.report import leaderboard
from bench.train import run as runs
from bench.train import runner
from bench.train.resolve import resolve_auto
from tests.helpers import rec


@pytest.fixture(scope='module', autouse=True)
def heap_as_a_runs_process_keeps_it():
    """A CPU job's process keeps the memory its steps free for the next (bench/train/runner.py: keep_freed_memory):
    the benchmarks time the run path as it runs (the 224 px pipeline: 81,000 page faults a round otherwise)."""
    runner.keep_freed_memory()


@pytest.fixture(scope='module')
def cifar_like():
    """2,048 random 32 px images in 10 classes: the size of real batches, none of the decoding."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2048, 32, 32, 3), dtype=torch.uint8, generator=g)
    y = torch.arange(2048) % 10
    return data.Images(train_x=x, train_y=y, test_x=x[:512], test_y=y[:512], classes=tuple('abcdefghij'),
                       name='bench', fingerprint='0' * 40)


def built(images, n_train=256, bs=64):
    """The run a sweep would build (bench/train/run.py: model, batches, Learner, memory fit) for cifar_resnet32 on
    `n_train` training and 512 validation images; its Learner without the run's log, so that an epoch is fastai's
    (its training pass, then one validation pass), not a run's validation points."""
    cfg = resolve_auto(Config(backbone='cifar_resnet32', weights='none', head='linear', strategy='full', bs=bs, size=0,
                              resize=0, normalize='unit', device='cpu', subset=n_train, eval_subset=512,
                              valid_frac=0.25))
    run = runs.build(cfg, images, data.split_for(images, cfg), log=lambda line: None)
    run.learn.remove_cb(run.runlog)
    run.learn.logger = lambda row: None
    run.learn.unfreeze()
    return run


def test_learner_training_epoch(calibrated, cifar_like):
    learn = built(cifar_like, n_train=128).learn
    learn.fit(1, 1e-3)  # warm-up
    calibrated(lambda: learn.fit(1, 1e-3))
    assert learn.recorder.values[-1][0] > 0


def test_evaluation(calibrated, cifar_like):
    """The validation split as a run evaluates it: inference mode, in the run's evaluation batches."""
    run = built(cifar_like)
    loss, acc, class_acc = calibrated(run.evaluate, args=(run.valid_dl,))
    assert 0 <= acc <= 1 and run.valid_dl.n == 512


@pytest.mark.parametrize('size', [32, 224])
def test_batch_pipeline(calibrated, cifar_like, size):
    prepare = loader.Prepare(size=size, resize=size * 8 // 7 if size > 32 else 0, mean=(0.5,) * 3, std=(0.25,) * 3)
    n = 1024 if size == 32 else 128
    dl = loader.batches(cifar_like, torch.arange(n), prepare, 64, train=True)
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
