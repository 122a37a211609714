"""Every strategy on one tiny model of each family our users bring (random init, small inputs): the plan made on a
parameter-free copy is what a real run trains, one optimizer step per phase changes exactly what the strategy
says and nothing else, the optimizer holds state for nothing else, the parameter-efficient strategies train the
count their definition gives, and merged LoRA adapters give the model they were trained as.

Every timm family is checked by `python bench/tools/families.py` (build, plan and run on the meta device); a test here
runs it on two families, so the checker itself is checked."""
import copy
from dataclasses import replace

import pytest
import timm
import torch
from timm.models import register_model

import backbones
from bench.declare.config import Config
from bench.declare.strategies import STRATEGIES, prepare, problem
from bench.images import data
from bench.tools.families import expected_trainable
from bench.train import run
from bench.train.resolve import resolve_auto


def small_cfg(of):
    """`of`'s pretrained cfg (its input size, whether that is fixed, mean and std), without its weights."""
    return dict(timm.get_pretrained_cfg(of).to_dict(), url='', hf_hub_id=None, tag='')


default_cfgs = {  # read by timm's register_model, below: timm's models of the family built small
    'ftbench_tiny_swin': small_cfg('swin_tiny_patch4_window7_224'),
    'ftbench_tiny_deit': small_cfg('deit_tiny_distilled_patch16_224'), 'ftbench_tiny_levit': small_cfg('levit_128s'),
    'ftbench_tiny_lite': small_cfg('tf_efficientnet_lite0'), 'ftbench_tiny_mobilenetv2': small_cfg('mobilenetv2_035'),
    'ftbench_tiny_mobilenetv3': small_cfg('mobilenetv3_small_050')}


@register_model
def ftbench_tiny_swin(pretrained=False, **kwargs):
    """Swin-T's classes and layout (window attention, relative position bias, patch merging) at 1.0M parameters,
    not 28M: timm has no test_ model of the family."""
    return timm.create_model('swin_tiny_patch4_window7_224', pretrained=pretrained, embed_dim=24, depths=(1, 1, 2, 1),
                             num_heads=(1, 1, 2, 2), **kwargs)


@register_model
def ftbench_tiny_deit(pretrained=False, **kwargs):
    """DeiT-Ti distilled (a class and a distillation token, two heads) at 0.1M parameters, not 5.9M."""
    return timm.create_model('deit_tiny_distilled_patch16_224', pretrained=pretrained, embed_dim=32, depth=2,
                             num_heads=2, **kwargs)


@register_model
def ftbench_tiny_levit(pretrained=False, **kwargs):
    """LeViT-128S's classes (conv stem, attention with BatchNorm'd linears, subsampling attention) at 0.26M
    parameters, not 7.8M."""
    return timm.create_model('levit_128s', pretrained=pretrained, embed_dim=(32, 48, 64), depth=(1, 1, 1),
                             num_heads=(2, 2, 2), **kwargs)


@register_model
def ftbench_tiny_lite(pretrained=False, **kwargs):
    """EfficientNet-Lite0 (W5's and W7's backbone: TensorFlow 'same' padding, ReLU6, no squeeze-excite) at a quarter
    of its width and a third of its depth: 1.5M parameters, not 4.7M, and 8 blocks, not 16."""
    from timm.models.efficientnet import _gen_efficientnet_lite  # tf_efficientnet_lite0's own builder, narrower
    return _gen_efficientnet_lite('tf_efficientnet_lite0', channel_multiplier=0.25, depth_multiplier=0.3,
                                  pretrained=pretrained, bn_eps=1e-3, pad_type='same', **kwargs)


@register_model
def ftbench_tiny_mobilenetv2(pretrained=False, **kwargs):
    """MobileNetV2-0.35 at a third of its depth: 8 inverted-residual blocks, not 17."""
    return timm.create_model('mobilenetv2_035', pretrained=pretrained, depth_multiplier=0.3, **kwargs)


@register_model
def ftbench_tiny_mobilenetv3(pretrained=False, **kwargs):
    """MobileNetV3-Small-0.5 (squeeze-excite, hard-swish) at a third of its depth: 8 blocks, not 12."""
    return timm.create_model('mobilenetv3_small_050', pretrained=pretrained, depth_multiplier=0.3, **kwargs)


FAMILIES = {  # family: its tiniest model (in timm 1.0.31, or one of its models built small, above), and an input size
    'resnet': ('test_resnet', 32), 'efficientnet': ('test_efficientnet', 32),  # (px) small enough to be quick
    'efficientnet-tf': ('ftbench_tiny_lite', 32),  # W5's backbone: TensorFlow 'same' padding (Conv2dSame)
    'mobilenetv2': ('ftbench_tiny_mobilenetv2', 32),
    'mobilenetv3': ('ftbench_tiny_mobilenetv3', 32), 'regnet': ('regnetx_002', 32), 'convnext': ('test_convnext', 32),
    'vgg': ('vgg11', 32), 'vit': ('test_vit', 32), 'deit': ('ftbench_tiny_deit', 32), 'swin': ('ftbench_tiny_swin', 32),
    'levit': ('ftbench_tiny_levit', 64)}  # at 32 px its last attention has one key: softmax gives q no gradient


def config(backbone, strategy, size):
    return resolve_auto(Config(experiment='t', backbone=backbone, weights='none', head='auto', strategy=strategy,
                               epochs=2, bs=4, size=size, resize=size, unfreeze_at=(1,), lr=1e-3, head_lr=1e-2,
                               lora_dropout=0.0, device='cpu', precision='fp32', channels_last='off',
                               cache_features='off'))


@pytest.fixture(scope='module', autouse=True)
def one_build_per_family():
    """timm builds each family's model once; every strategy's run starts from a copy of it, as from a build of its
    own (initializing VGG11's 7x7 classifier convolutions, which the body never uses, was most of this module's
    time; they are pruned before the copies, as `backbones.build` prunes each build)."""
    real, built = backbones._pretrained_model, {}

    def copied(spec, weights):
        key = (spec.name, spec.img_size, str(weights))
        if key not in built:
            built[key] = real(spec, weights)
            backbones.prune(built[key][0], spec.pruned)
        model, description = built[key]
        return copy.deepcopy(model), description
    patch = pytest.MonkeyPatch()
    patch.setattr(backbones, '_pretrained_model', copied)
    yield
    patch.undo()


@pytest.fixture(scope='module')
def batches(dataset_dir, tmp_path_factory):
    images = data.load(dataset_dir, tmp_path_factory.mktemp('cache'), log=lambda m: None)
    return images, data.split(images, valid_frac=0.25, subset=4, eval_subset=4)


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_every_strategy_trains_exactly_what_it_plans(family, batches):
    images, split = batches
    name, size = FAMILIES[family]
    spec = backbones.describe(name, size)
    ran = []
    for strategy in STRATEGIES:
        cfg = config(name, strategy, size)
        if problem(cfg, spec):
            continue
        cfg = replace(cfg, head=backbones.resolve_head(cfg.head, spec.features))
        planned = run.planned(cfg, len(images.classes))
        built = run.build(cfg, images, split, log=lambda line: None)
        net, learn, log = built.net, built.learn, built.runlog
        with torch.no_grad():  # no exact zeros (timm zero-inits the last norm of a residual block, which would stop
            for p in net.parameters():  # every gradient before it in the first step)
                p.add_(torch.randn_like(p) * 1e-2)
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        may_train = preparable(cfg, len(images.classes))
        built.train(log=lambda line: None)

        per_epoch = [ph for ph in planned['phases'] for _ in range(ph['start'], ph['stop'])]
        assert built.phases == planned['phases'], strategy  # the run's own plan is the parameter-free one
        assert [e['trainable'] for e in log.epochs] == [ph['trainable'] for ph in per_epoch], strategy
        assert planned['total'] == sum(p.numel() for p in backbones.counted(net)), strategy
        trained = {n for ph in planned['phases'] for n in ph['names']}
        moved = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
        assert moved == trained, (strategy, sorted(moved ^ trained)[:5])
        if learn.opt is not None:
            in_optimizer = {id(p) for g in learn.opt.param_lists for p in g}
            assert in_optimizer == {id(p) for n, p in net.named_parameters() if n in may_train}, strategy
            with_state = {id(p) for p in learn.opt.opt.state}
            assert with_state <= {id(p) for n, p in net.named_parameters() if n in trained}, strategy
        expected = expected_trainable(net, cfg)
        if expected is not None:
            assert planned['phases'][-1]['trainable'] == expected, strategy
        if strategy == 'lora':
            check_merge(net, size)
        ran.append(strategy)
    assert {'feature_extract', 'bitfit', 'lora', 'partial', 'full', 'llrd', 'lp_ft'} <= set(ran)


def preparable(cfg, n_classes):
    """What the strategy's prepare step lets train (what its optimizer may hold), on a fresh parameter-free copy."""
    net, _ = backbones.build(cfg.backbone, n_classes, cfg.head, weights='none', meta=True, img_size=cfg.size)
    prepare(net, cfg)
    return {n for n, p in net.named_parameters() if p.requires_grad}


def check_merge(net, size):
    """Merging every adapter into its base weight gives the outputs of the model with the adapters beside it."""
    from peft.tuners.lora import LoraLayer
    net.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        unmerged = net(x)
        layers = [m for m in net.modules() if isinstance(m, LoraLayer)]
        assert layers and all(m.lora_B['default'].weight.abs().sum() > 0 for m in layers)  # trained: not the identity
        for m in layers:
            m.merge()
        merged = net(x)
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)


def test_the_family_checker_plans_every_strategy_on_a_cnn_and_a_transformer(capsys):
    from bench.tools import families
    assert families.main(['--family', 'resnet,vision_transformer']) == 0
    out = capsys.readouterr().out
    assert 'ok   resnet' in out and 'ok   vision_transformer' in out and '2 of 2 families build, plan and run' in out
    assert 'map 96, 5 stages, 5 layers; planned 11' in out and 'pooled 64, 6 stages, 7 layers; planned 11' in out
