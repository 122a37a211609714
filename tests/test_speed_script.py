"""bench/tools/speed.py's JSON, and feature_extract on cached features matching the ordinary run."""
import json

import pytest

from bench.command import cli
from bench.declare.config import Config
from bench.images import data
from bench.tools import speed
from bench.train import runner
from bench.train.resolve import resolve_auto


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


def test_precision_measures_both_and_checks_autos_pick(capsys):
    """bench/tools/precision.py on a real (tiny) model: both precisions timed, auto's pick named, exit 0 when it is within
    the tolerance (here any: a tiny CNN's speeds say nothing about the rule)."""
    from bench.tools import precision
    assert precision.main(['--backbone', 'cifar_cnn,resnet18', '--size', '16', '--bs', '4', '--steps', '1',
                           '--repeats', '1', '--tolerance', '2']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('cpu: ') and 'bf16 in hardware' in lines[0]
    for name, line in zip(('cifar_cnn', 'resnet18'), lines[1:3]):
        assert line.startswith(f'{name} at 16 px, batch 4: fp32 ') and ' bf16 ' in line and '0 depthwise convs' in line
        assert line.endswith('auto picks bf16') or line.endswith('auto picks fp32')
    assert lines[-1].startswith('auto picks the faster precision')


def test_precision_says_when_auto_picks_the_slower_one():
    from bench.tools import precision
    assert precision.slower({'fp32': 100.0, 'bf16': 220.0}, 'fp32', 0.1) == pytest.approx(2.2)
    assert precision.slower({'fp32': 100.0, 'bf16': 220.0}, 'bf16', 0.1) is None
    assert precision.slower({'fp32': 100.0, 'bf16': 95.0}, 'bf16', 0.1) is None  # within the tolerance
    assert precision.slower({'fp32': 100.0, 'bf16': 77.0}, 'bf16', 0.1) == pytest.approx(100 / 77)


def test_precision_refuses_an_unknown_backbone(capsys):
    from bench.tools import precision
    with pytest.raises(SystemExit) as e:
        cli.main(lambda: precision.main(['--backbone', 'resnet_nonesuch']))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith('error: ') and 'resnet_nonesuch' in err and err.count('\n') == 1


def test_conv_grad_times_both_routes_and_says_when_rerouting_is_slower(capsys):
    """bench/tools/conv_grad.py on a real (small) model with both cases: ConvNeXt's biased convs under BitFit, its 7x7
    depthwise kernels on maps smaller than them at 32 px. Exit 0 within the tolerance (here any), 1 past it."""
    from bench.tools import conv_grad
    argv = ['--backbone', 'convnext_atto', '--size', '32', '--bs', '2', '--steps', '1', '--repeats', '1']
    assert conv_grad.main([*argv, '--strategy', 'bitfit', '--tolerance', '100']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('cpu: ') and 'one thread, batch 2' in lines[0]
    assert lines[1].startswith('convnext_atto at 32 px, bitfit: torch ') and ' ms, ' in lines[1]
    assert float(lines[1].rsplit(', ', 1)[1].rstrip('x')) > 0
    code = conv_grad.main([*argv, '--tolerance', '0'])  # a timing at no tolerance: either verdict, said as exited
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith('the rerouted gradients ran slower here for convnext_atto (32 px, full)' if code == 1 else
                           'the rerouted gradients ran as fast or faster')


def test_conv_grad_refuses_an_unknown_backbone(capsys):
    from bench.tools import conv_grad
    with pytest.raises(SystemExit) as e:
        cli.main(lambda: conv_grad.main(['--backbone', 'resnet_nonesuch']))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith('error: ') and 'resnet_nonesuch' in err and err.count('\n') == 1
