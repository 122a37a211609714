"""Classifier heads on a body's feature map. Each starts from (B, C, H, W) features, or (B, N, C) tokens."""
import torch.nn as nn
from fastai.vision.learner import create_head

HEADS = ('fastai', 'linear', 'mlp')


class GlobalPool(nn.Module):
    """Average over space (B, C, H, W) or over tokens (B, N, C), giving (B, C)."""
    def forward(self, x):
        return x.mean((2, 3)) if x.ndim == 4 else x.mean(1)


def check_head(kind, feature_ndim):
    """ValueError if a `kind` head cannot sit on features of `feature_ndim` dimensions."""
    if kind not in HEADS:
        raise ValueError(f'unknown head {kind!r}; choose one of {", ".join(HEADS)}')
    if kind == 'fastai' and feature_ndim != 4:
        raise ValueError("the fastai head needs a CNN's (B, C, H, W) features; it gives tokens: use the linear or "
                         "mlp head")


def make_head(kind, n_features, n_classes, hidden=256, dropout=0.3, feature_ndim=4):
    """`fastai`: fastai's create_head (concat pool, BatchNorm, dropout; CNN features only).
    `linear`: pool -> Linear (the seed's W1). `mlp`: pool -> Linear(hidden) -> ReLU -> Dropout -> Linear (W2, W3)."""
    check_head(kind, feature_ndim)
    if kind == 'fastai':
        return create_head(n_features, n_classes)
    if kind == 'linear':
        return nn.Sequential(GlobalPool(), nn.Linear(n_features, n_classes))
    if kind == 'mlp':
        return nn.Sequential(GlobalPool(), nn.Linear(n_features, hidden), nn.ReLU(inplace=True),
                             nn.Dropout(dropout), nn.Linear(hidden, n_classes))
