"""Stage groups from timm metadata, the seed's parameter counts, heads, and weights files."""
import pytest
import timm
import torch
from safetensors.torch import save_file

import backbones
from bench.train.resolve import resolve
from bench.train.run import planned as plan


def group_sizes(name, head='linear', **kw):
    net, _ = backbones.build(name, 10, head=head, weights='none', meta=True, **kw)
    return [sum(p.numel() for p in g) for g in backbones.splitter(net)], net.stage_names


def test_resnet18_stages_are_stem_layers_head():
    sizes, names = group_sizes('resnet18')
    assert names == ('act1', 'layer1', 'layer2', 'layer3', 'layer4')
    assert sizes == [9536, 147968, 525568, 2099712, 8393728, 5130]


def test_vgg16_stages_split_at_max_pools():
    sizes, names = group_sizes('vgg16', head='mlp')
    assert names == ('features.3', 'features.8', 'features.15', 'features.22', 'features.29')
    # conv blocks of 2, 2, 3, 3, 3 convolutions; fc6/fc7 (pre_logits) are not used by forward_features, so dropped
    assert sizes[:5] == [38720, 221440, 1475328, 5899776, 7079424]
    assert sum(sizes) == 14848586


def test_efficientnet_stages_cover_every_parameter():
    sizes, names = group_sizes('tf_efficientnet_lite0')
    assert names == ('blocks.0', 'blocks.1', 'blocks.2', 'blocks.4', 'blocks.6')
    full = timm.create_model('tf_efficientnet_lite0', num_classes=0)
    assert sum(sizes[:-1]) == sum(p.numel() for p in full.parameters())  # conv_head and bn2 join the last stage


def test_every_parameter_is_in_exactly_one_group():
    net, _ = backbones.build('resnet18', 10, head='fastai', weights='none')
    groups = backbones.splitter(net)
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))


@pytest.mark.parametrize('strategy,trainable', [
    ('partial', [8398858]), ('progressive', [5130, 8398858, 10498570]), ('full', [11181642]),
    ('feature_extract', [5130])])
def test_w1_parameter_counts_match_the_seed(strategy, trainable):
    cfg = resolve('w1', 'full', strategy=strategy)
    p = plan(cfg, 10)
    assert p['total'] == 11181642
    assert [ph['trainable'] for ph in p['phases']] == trainable


@pytest.mark.parametrize('strategy,trainable', [('feature_extract', 133898), ('partial', 7213322)])
def test_w2_parameter_counts_match_the_seed(strategy, trainable):
    p = plan(resolve('w2', 'full', strategy=strategy), 10)
    assert p['total'] == 14848586
    assert [ph['trainable'] for ph in p['phases']] == [trainable]


def test_heads():
    linear, _ = backbones.build('resnet18', 10, head='linear', weights='none', meta=True)
    mlp, _ = backbones.build('resnet18', 10, head='mlp', hidden=64, dropout=0.5, weights='none', meta=True)
    fastai, _ = backbones.build('resnet18', 10, head='fastai', weights='none', meta=True)
    assert sum(p.numel() for p in linear.head.parameters()) == 512 * 10 + 10
    assert sum(p.numel() for p in mlp.head.parameters()) == 512 * 64 + 64 + 64 * 10 + 10
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in fastai.head.modules())
    net, _ = backbones.build('resnet18', 7, head='mlp', weights='none')
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet81'.*resnet18"):
        backbones.describe('resnet81')


def test_weights_file_round_trip(tmp_path):
    source = timm.create_model('resnet18')
    path = tmp_path / 'resnet18.mine.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbones.check_weights('resnet18', str(path))
    net, desc = backbones.build('resnet18', 10, head='linear', weights=str(path))
    loaded = net.body.model.state_dict()
    for k, v in source.state_dict().items():
        if k in loaded:
            assert torch.equal(loaded[k], v), k
    assert desc.startswith('file:resnet18.mine.safetensors sha256:')


def test_pth_with_state_dict_key(tmp_path):
    source = timm.create_model('cifar_resnet32')
    path = tmp_path / 'r32.pth'
    torch.save({'state_dict': source.state_dict()}, path)
    net, _ = backbones.build('cifar_resnet32', 10, head='linear', weights=str(path))
    assert torch.equal(net.body.model.stem[0].weight, source.stem[0].weight)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / 'cifar_cnn.safetensors'
    save_file({k: v.contiguous() for k, v in timm.create_model('cifar_cnn').state_dict().items()}, str(path))
    with pytest.raises(backbones.WeightsError, match='does not fit resnet18.*another architecture'):
        backbones.check_weights('resnet18', str(path))


def test_weights_missing_body_tensors_are_refused(tmp_path):
    state = timm.create_model('resnet18').state_dict()
    state.pop('layer4.1.conv2.weight')
    path = tmp_path / 'partial.safetensors'
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(backbones.WeightsError, match='lacks 1 .*layer4.1.conv2.weight'):
        backbones.check_weights('resnet18', str(path))


def test_classifier_keys_may_be_missing(tmp_path):
    state = {k: v.contiguous() for k, v in timm.create_model('resnet18').state_dict().items() if not k.startswith('fc.')}
    path = tmp_path / 'body-only.safetensors'
    save_file(state, str(path))
    backbones.check_weights('resnet18', str(path))


def test_weights_folder_is_searched_by_name_and_tag(tmp_path, monkeypatch):
    state = {k: v.contiguous() for k, v in timm.create_model('resnet18').state_dict().items()}
    save_file(state, str(tmp_path / 'resnet18.tv_in1k.safetensors'))
    monkeypatch.setenv('FTBENCH_WEIGHTS', str(tmp_path))
    net, desc = backbones.build('resnet18.tv_in1k', 10, head='linear', weights='hub')
    assert desc.startswith('file:resnet18.tv_in1k.safetensors')
    assert torch.equal(net.body.model.conv1.weight, state['conv1.weight'])


def test_no_pretrained_weights_for_a_scratch_model():
    with pytest.raises(backbones.WeightsError, match='no pretrained weights'):
        backbones.check_weights('cifar_resnet32', 'hub')


def test_an_unreachable_hub_fails_at_once_with_what_to_do(monkeypatch):
    monkeypatch.setenv('HF_ENDPOINT', 'https://127.0.0.1:1')   # nothing answers there
    for key in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy'):
        monkeypatch.delenv(key, raising=False)
    backbones._hub_failures.clear()
    with pytest.raises(backbones.WeightsError, match=r'resnet18.tv_in1k \(127.0.0.1 cannot be reached\); use weights '
                                                     r'FILE .* FTBENCH_WEIGHTS .* weights none'):
        backbones.build('resnet18.tv_in1k', 10, head='linear', weights='hub')
    backbones._hub_failures.clear()
