"""CIFAR-sized models, registered with timm so `timm.create_model(name)` builds them like any other.

- `cifar_resnet32`: He et al. 2016, section 4.2 (3x3 conv 16 -> 3 stages of 5 basic blocks of 16/32/64
  channels -> global average pool -> classifier), bias-free convolutions and 1x1 conv + BN projection
  shortcuts where the shape changes: 466,906 parameters with 10 classes.
- `cifar_cnn`: the seed's small search CNN, Conv32-Conv32-MaxPool-Conv64-Conv64-MaxPool-Conv128 (3x3, ReLU)
  -> GAP -> Dense(h) -> ReLU -> Dropout 0.3 -> classifier: 157,226 / 175,018 / 210,602 parameters for
  h = 128 / 256 / 512.

Both are trained from scratch on pixels / 255, so their pretrained config has mean 0 and std 1, and both
carry `feature_info`, so the suite's stage groups work for them as for any timm model.
"""
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ['CifarResNet', 'CifarCNN']


def _cfg(first_conv, classifier):
    return dict(num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0, interpolation='bilinear',
                mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), first_conv=first_conv, classifier=classifier)


default_cfgs = generate_default_cfgs({
    'cifar_resnet32': _cfg(first_conv='stem.0', classifier='fc'),
    'cifar_cnn': _cfg(first_conv='features.0', classifier='head.4'),
})


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth=32, widths=(16, 32, 64), num_classes=10, in_chans=3, **_):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f'a CIFAR ResNet has depth 6n+2, not {depth}')
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, c_in = [], widths[0]
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[BasicBlock(c_in if b == 0 else c_out, c_out, stride if b == 0 else 1)
                                          for b in range(blocks)]))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.num_features = widths[-1]
        self.feature_info = [dict(num_chs=c, reduction=2 ** i, module=f'stages.{i}') for i, c in enumerate(widths)]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes) if num_classes else nn.Identity()

    def forward_features(self, x):
        return self.stages(self.stem(x))

    def forward_head(self, x, pre_logits=False):
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class CifarCNN(nn.Module):
    def __init__(self, h=256, drop_rate=0.3, num_classes=10, in_chans=3, **_):
        super().__init__()

        def conv(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*conv(in_chans, 32), *conv(32, 32), nn.MaxPool2d(2),
                                      *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),
                                      *conv(64, 128))
        self.num_features = 128
        self.feature_info = [dict(num_chs=32, reduction=1, module='features.3'),
                             dict(num_chs=64, reduction=2, module='features.8'),
                             dict(num_chs=128, reduction=4, module='features.11')]
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, h), nn.ReLU(inplace=True),
                                  nn.Dropout(drop_rate), nn.Linear(h, num_classes))

    def forward_features(self, x):
        return self.features(x)

    def forward(self, x):
        return self.head(self.features(x))


@register_model
def cifar_resnet32(pretrained=False, **kwargs):
    return build_model_with_cfg(CifarResNet, 'cifar_resnet32', pretrained, depth=32, **kwargs)


@register_model
def cifar_cnn(pretrained=False, **kwargs):
    return build_model_with_cfg(CifarCNN, 'cifar_cnn', pretrained, **kwargs)
