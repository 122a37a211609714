"""Classifier heads on a body's features: a (B, C, H, W) feature map, or (B, C) features the model pooled itself."""
import torch.nn as nn

HEADS = ('auto', 'fastai', 'linear', 'mlp')


class GlobalPool(nn.Module):
    """Average over space: (B, C, H, W) -> (B, C); features already pooled pass through."""
    def forward(self, x):
        return x.mean((2, 3)) if x.ndim == 4 else x


def resolve_head(kind, features):
    """The head `kind` means on `features` ('map' or 'pooled'): auto is fastai's head on a feature map and a linear
    layer on pooled features. ValueError if `kind` cannot sit on them."""
    if kind not in HEADS:
        raise ValueError(f'unknown head {kind!r}; choose one of {", ".join(HEADS)}')
    if kind == 'auto':
        return 'fastai' if features == 'map' else 'linear'
    if kind == 'fastai' and features != 'map':
        raise ValueError('the fastai head needs a (B, C, H, W) feature map; this backbone gives pooled features '
                         '(tokens or NHWC): use --head auto, linear or mlp')
    return kind


def make_head(kind, n_features, n_classes, hidden=256, dropout=0.3, features='map'):
    """`fastai`: fastai's create_head (concat pool, BatchNorm, dropout; feature maps only).
    `linear`: pool -> Linear (the seed's W1). `mlp`: pool -> Linear(hidden) -> ReLU -> Dropout -> Linear (W2, W3)."""
    kind = resolve_head(kind, features)
    if kind == 'fastai':
        from fastai.vision.learner import create_head  # here: a command that builds no model need not import fastai
        return create_head(n_features, n_classes)
    if kind == 'linear':
        return nn.Sequential(GlobalPool(), nn.Linear(n_features, n_classes))
    return nn.Sequential(GlobalPool(), nn.Linear(n_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, n_classes))
