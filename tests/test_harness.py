"""The harness is honest about what ran: warm-up leaves no trace, precision and memory format are what the record
says, and the flags mean what they say on every device."""
import pytest
import torch

import backbones
from bench.declare import record
from bench.declare.config import Config, UsageError
from bench.images import data
from bench.train import learner, run, runner
from bench.train.resolve import resolve_auto
from tests.helpers import tiny_config

CUDA = record.Hardware('cuda', 'NVIDIA H100 80GB HBM3')
CPU = record.Hardware('cpu', 'cpu: test (2 cores)')
CPU_BF16 = record.Hardware('cpu', 'cpu: test (2 cores, AVX-512)', cpu_bf16=True)


@pytest.mark.parametrize('given,device,expected', [
    (dict(), CPU, ('fp32', 'on')),
    (dict(), CPU_BF16, ('bf16', 'on')),  # auto: bf16 only where the CPU computes it natively
    # ... and not for depthwise convs, which run slower in bf16 than in fp32 on a CPU even with AMX
    (dict(backbone='tf_efficientnet_lite0'), CPU_BF16, ('fp32', 'on')),
    (dict(backbone='convnext_atto'), CPU_BF16, ('fp32', 'on')),
    (dict(backbone='vit_tiny_patch16_224'), CPU_BF16, ('bf16', 'on')),
    (dict(backbone='tf_efficientnet_lite0'), CUDA, ('bf16', 'on')),
    (dict(), CUDA, ('bf16', 'on')),
    (dict(channels_last='off'), CUDA, ('bf16', 'off')),
    (dict(precision='bf16', channels_last='off'), CUDA, ('bf16', 'off')),
    (dict(precision='bf16'), CUDA, ('bf16', 'on')),
    (dict(precision='bf16'), CPU, ('bf16', 'on')),
    (dict(precision='fp32', channels_last='off'), CPU, ('fp32', 'off')),
])
def test_precision_and_memory_format_flags_mean_what_they_say(given, device, expected):
    cfg = resolve_auto(Config(**given), device)
    assert (cfg.precision, cfg.channels_last, cfg.device) == (*expected, device.device)


def test_a_strided_conv_on_a_map_narrower_than_its_stride_gets_exact_gradients_in_bf16():
    # torch 2.14.1's CPU bf16 kernel leaves garbage (NaN, inf, 1e-37) in this weight gradient's padding-only taps
    # in 20-40% of calls on a Xeon with AMX; with the guard they are the exact zeros fp32 gives, every time
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
    assert learner.fp32_for_narrow_convs(conv) == 1 and learner.fp32_for_narrow_convs(conv) == 1
    outer = torch.ones(3, 3, dtype=torch.bool)
    outer[1, 1] = False
    for _ in range(30):
        x = torch.randn(8, 16, 1, 1)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            narrow = conv(x)
            assert torch.is_autocast_enabled('cpu')  # back on after the conv
            wide = conv(torch.randn(8, 16, 6, 6))
        grad, = torch.autograd.grad(narrow.float().sum(), conv.weight)
        assert (grad[:, :, outer] == 0).all() and torch.isfinite(grad).all()
        assert torch.allclose(grad[:, :, 1, 1], x.sum(0)[:, 0, 0].expand(32, 16), atol=1e-5)
        assert narrow.dtype == torch.float32 and wide.dtype == torch.bfloat16  # bf16 wherever it is safe


def test_cpu_bf16_is_read_from_the_cpu_flags(monkeypatch):
    record.cpu_flags.cache_clear()
    monkeypatch.setattr(record, 'cpu_flags', lambda: {'avx2', 'avx512f', 'avx512_bf16'})
    assert record.cpu_has_bf16()
    monkeypatch.setattr(record, 'cpu_flags', lambda: {'avx2', 'avx512f'})
    assert not record.cpu_has_bf16()


def test_fp16_on_a_cpu_is_refused():
    with pytest.raises(UsageError, match='fp16 needs a CUDA device'):
        resolve_auto(Config(precision='fp16'), CPU)


def test_bf16_on_a_cpu_runs_in_bf16(images):
    seen = set()
    cfg = tiny_config(CPU, bs=8, precision='bf16')
    real_build = backbones.build

    def build(*args, **kwargs):
        net, desc = real_build(*args, **kwargs)
        net.body.model.features[0].register_forward_hook(lambda m, i, o: seen.add(o.dtype))
        return net, desc
    with pytest.MonkeyPatch.context() as m:
        m.setattr(backbones, 'build', build)
        out = runner.train(cfg, images, data.split(images, valid_frac=0.25), log=lambda line: None)
    assert seen == {torch.bfloat16} and out['epochs'][0]['train_loss'] > 0


def test_channels_last_reaches_the_model_and_the_batches(images):
    for setting, expected in (('on', True), ('off', False)):
        built = run.build(tiny_config(CPU, bs=8, channels_last=setting), images, data.split(images, valid_frac=0.25),
                          log=lambda line: None)
        weight = built.learn.model.body.model.features[0].weight
        x, _ = built.train_dl.shapes()[0]
        assert weight.is_contiguous(memory_format=torch.channels_last) == expected
        assert x.is_contiguous(memory_format=torch.channels_last) == expected


@pytest.mark.parametrize('strategy', ['full', 'feature_extract'])
def test_warm_up_sees_every_training_batch_shape_and_leaves_no_trace(images, strategy, monkeypatch):
    """Training's shapes, forward and backward; on cached features (feature_extract) the body's forward at each shape
    extraction reads. Evaluation is off the training clock: it pays for its own first batch."""
    monkeypatch.setattr(run, '_warmed', set())  # a process's first run of its kind
    torch.manual_seed(0)
    built = run.build(tiny_config(CPU, augment=strategy == 'full', strategy=strategy, head_lr=1e-2), images,
                      data.split(images, valid_frac=0.25), log=lambda line: None)  # 60 train, 20 valid, 24 test
    net = built.net
    before = {k: v.clone() for k, v in net.state_dict().items()}
    shapes = []
    watched = net if strategy == 'full' else net.body
    watched.register_forward_hook(lambda m, i, o: shapes.append((m.training, i[0].shape[0])))
    rng = torch.get_rng_state()
    seconds = built.warm_up()
    assert seconds > 0
    if strategy == 'full':  # batches of 16: 3 of 16 and one of 12
        assert sorted(set(shapes)) == [(True, 12), (True, 16)]
    else:  # extraction in evaluation-sized batches (32 on a CPU): the 60 training images, then the 20 validation ones
        assert built.cached and sorted(set(shapes)) == [(False, 20), (False, 28), (False, 32)]  # batches of 32
        # the training images extraction reads are prepared on its clock, as every strategy's are: never kept
        assert built.train_dl.x is images.train_x and built.valid_dl.x is not images.train_x
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in net.parameters())
    assert built.train_dl.passes == 0 and torch.equal(built.train_dl.generator.get_state(),
                                                      torch.Generator().manual_seed(0).get_state())


def test_warm_up_is_recorded_apart_from_training(images, monkeypatch):
    monkeypatch.setattr(run, '_warmed', set())
    out = runner.train(tiny_config(CPU, bs=8), images, data.split(images, valid_frac=0.25), log=lambda line: None)
    assert out['warmup_seconds'] > 0 and out['train_seconds'] > 0
    assert out['train_seconds'] == pytest.approx(sum(e['train_seconds'] for e in out['epochs']))


def test_on_a_cpu_only_a_processs_first_run_of_a_kind_warms_up(images, monkeypatch):
    """A run like one this process warmed up already (backbone, strategy, sizes, batch shapes) skips the warm-up;
    another strategy or batch size warms up again."""
    monkeypatch.setattr(run, '_warmed', set())
    split = data.split(images, valid_frac=0.25)
    seconds = [run.build(tiny_config(CPU, **kw), images, split, log=lambda line: None).warm_up()
               for kw in ({}, {}, {'strategy': 'feature_extract', 'head_lr': 1e-2}, {'bs': 8}, {'bs': 8})]
    assert seconds[0] > 0 and seconds[1] == 0 and seconds[2] > 0 and seconds[3] > 0 and seconds[4] == 0
