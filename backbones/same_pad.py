"""TensorFlow's 'same' padding without a padded copy of the input.

timm's `Conv2dSame` (every `tf_*` model: EfficientNet-Lite, MobileNetV3 ...) pads a stride-2 conv's input
asymmetrically, one more row and column at the end than at the start, which torch's convolution cannot do; so it
copies the input into a padded tensor first. On a CPU that copy costs several times the convolution it feeds
(EfficientNet-Lite0 at 96 px, batch 32, one thread: 17% of a forward pass, a depthwise conv's pad 3.6 ms against its
1.5 ms). The same numbers come from a kernel one tap longer whose first tap is zero, under symmetric padding: with
pads (a, a + 1), output j reads input rows s*j - a .. s*j - a + k - 1; with pads (a + 1, a + 1) and a zero tap in
front, the window s*j - a - 1 .. s*j - a + k - 1 reads the same rows plus one weighted by zero. The padded weight
is made at each call from the layer's own (a few hundred bytes), so the parameter, its gradient and the
state_dict are timm's. Its gradients go through backbones/conv_grad.py where that is faster.
"""
import torch.nn.functional as F
from timm.layers import Conv2dSame

from backbones.conv_grad import conv2d


def same_pad(size, kernel, stride, dilation):
    """Total padding TensorFlow's 'same' gives one dimension (timm's `get_same_padding`)."""
    return max((-(size // -stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class SamePadConv2d(Conv2dSame):
    """timm's Conv2dSame (dilation 1), padding symmetrically around a kernel made one tap longer where the
    'same' padding is odd."""

    def forward(self, x):
        return self.conv_with(x, self.weight, self.bias)

    def conv_with(self, x, weight, bias):
        """This layer's conv of `x` with `weight` and `bias` in place of its own (bench/train/fold.py folds a
        frozen BatchNorm into them)."""
        (kh, kw), (sh, sw) = weight.shape[-2:], self.stride
        ph, pw = same_pad(x.shape[-2], kh, sh, 1), same_pad(x.shape[-1], kw, sw, 1)
        weight = F.pad(weight, (pw % 2, 0, ph % 2, 0)) if ph % 2 or pw % 2 else weight
        return conv2d(x, weight, bias, self.stride, (ph - ph // 2, pw - pw // 2), self.groups)


def unpadded(model):
    """`model` with each Conv2dSame of dilation 1 computing without the padded copy (in place; returns `model`)."""
    for m in model.modules():
        if type(m) is Conv2dSame and m.dilation == (1, 1):
            m.__class__ = SamePadConv2d
    return model
