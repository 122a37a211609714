"""In-place activations that autograd does not copy.

timm builds most of its CNNs' activations in place (`nn.ReLU6(inplace=True)` in EfficientNet-Lite and MobileNetV2,
`nn.SiLU(inplace=True)` in EfficientNet, `nn.Hardswish` / `nn.Hardsigmoid` in MobileNetV3). Under autograd, the
in-place forms of these four need their input for the backward pass, so autograd saves a full copy of it before
overwriting it: one extra read and write of every activation map, every training step (`relu_`, whose backward
reads its output, is not copied). Out of place they compute the same values and save what the copy would have
held, without the copy: EfficientNet-Lite0's training step at 96 px, batch 32, one thread, measured side by side,
0.95x the time (EfficientNet-B0 and MobileNetV2 alike; docs/speed.md). Where nothing needs a gradient (evaluation,
a frozen body's early layers) they still work in place.
"""
import torch.nn.functional as F
from torch import nn


class ReLU6(nn.ReLU6):
    def forward(self, x):
        return F.hardtanh(x, 0., 6., self.inplace and not x.requires_grad)


class SiLU(nn.SiLU):
    def forward(self, x):
        return F.silu(x, self.inplace and not x.requires_grad)


class Hardswish(nn.Hardswish):
    def forward(self, x):
        return F.hardswish(x, self.inplace and not x.requires_grad)


class Hardsigmoid(nn.Hardsigmoid):
    def forward(self, x):
        return F.hardsigmoid(x, self.inplace and not x.requires_grad)


COPY_FREE = {cls.__base__: cls for cls in (ReLU6, SiLU, Hardswish, Hardsigmoid)}


def copy_free(model):
    """`model` with each in-place activation autograd would copy computing out of place when its input needs a
    gradient (in place; returns `model`). Parameters and state_dict are unchanged: these modules have none."""
    for m in model.modules():
        if type(m) in COPY_FREE and m.inplace:
            m.__class__ = COPY_FREE[type(m)]
    return model
