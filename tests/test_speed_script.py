"""bench/speed.py's JSON, and feature_extract on cached features matching the ordinary run."""
import json

import pytest

from bench import cli, data, runner, speed
from bench.config import Config
from bench.resolve import resolve_auto


def test_speed_json_has_the_ratios(dataset_dir, capsys):
    assert speed.main(['--data', str(dataset_dir), '--backbone', 'cifar_cnn', '--size', '16', '--bs', '8',
                       '--steps', '2', '--repeats', '1', '--json']) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ('learner_ips', 'plain_ips', 'ratio', 'pipeline_ips', 'model_ips', 'cache_load_s'):
        assert out[key] > 0, key
    assert out['ratio'] == pytest.approx(out['learner_ips'] / out['plain_ips'])
    # one fused step over every tensor against fastai's per-tensor loop: a few host operators instead of dozens
    assert out['opt_tensors'] >= 8 and out['opt_ops'] <= 4 < 2 * out['opt_tensors'] <= out['fastai_opt_ops']
    assert out['opt_ms'] > 0 and out['fastai_opt_ms'] > 0


def test_speed_refuses_more_steps_than_images(dataset_dir, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(lambda: speed.main(['--data', str(dataset_dir), '--backbone', 'cifar_cnn', '--steps', '50']))
    assert e.value.code == 2 and 'needs more than the 80 images' in capsys.readouterr().err


def test_cached_features_give_the_same_run(images):
    """With a frozen body and no augmentation, training the head on cached features is the same computation."""
    base = dict(backbone='resnet18', weights='none', head='linear', strategy='feature_extract', epochs=2, bs=16,
                size=0, resize=0, head_lr=1e-2, device='cpu')
    split = data.split(images, valid_frac=0.25)
    plain = runner.train(resolve_auto(Config(**base)), images, split, bar=False)
    cached = runner.train(resolve_auto(Config(**base, cache_features=True)), images, split, bar=False)
    assert cached['params_trainable'] == plain['params_trainable'] == 4 * 512 + 4
    assert cached['params_total'] == plain['params_total']
    for a, b in zip(plain['epochs'], cached['epochs']):
        assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-3)
        assert a['valid_acc'] == pytest.approx(b['valid_acc'], abs=1e-6)
    assert cached['test_acc'] == pytest.approx(plain['test_acc'], abs=1e-6)
