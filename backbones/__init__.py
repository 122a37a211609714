"""Models for the suite: any timm model as the body, a configurable head, and one parameter group per stage.

`build(name, n_classes, ...)` returns a `Net` (body, head) and a description of its weights; `splitter(net)` gives
fastai the groups [stage 0, ..., stage n-1, head]. Stages come from timm's own `feature_info`, not from a list per
model: a stage ends at each feature module (ResNet18: stem, layer1..layer4; VGG16: the five conv blocks split at
the max-pools; EfficientNet: its block groups), so `freeze_to(-k)` trains the last k-1 stages and the head.
fastai's default splitter gives a timm model only two groups (body, head), which makes `freeze_to` useless.

The body runs `forward_features`; children of the timm model that it never calls (a classifier, VGG's fc6/fc7)
are dropped, so parameter counts are those of what actually trains.
"""
import difflib
from dataclasses import dataclass
from functools import lru_cache

import timm
import torch
import torch.nn as nn
from timm.models import split_model_name_tag

from backbones import cifar  # noqa: F401  (registers cifar_resnet32 and cifar_cnn with timm)
from backbones.heads import HEADS, check_head, make_head
from backbones.weights import (WeightsError, check_fit, file_shapes, host_of, load_state_dict, local_file,
                               no_hub_message, nothing_to_download, reachable, sha256)

__all__ = ['HEADS', 'Net', 'check_head', 'Spec', 'WeightsError', 'build', 'check_weights', 'describe', 'splitter']


class Body(nn.Module):
    """A timm model used up to its feature map."""
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


class Net(nn.Sequential):
    """body -> head, with `stage_of`: the body's parameter names mapped to their stage index."""
    def __init__(self, body, head, stage_of, stage_names):
        super().__init__(body, head)
        self.stage_of, self.stage_names = stage_of, stage_names

    @property
    def body(self):
        return self[0]

    @property
    def head(self):
        return self[1]


def splitter(net):
    """fastai parameter groups: one per body stage, then the head."""
    groups = [[] for _ in net.stage_names]
    for name, p in net.body.model.named_parameters():
        groups[net.stage_of[name]].append(p)
    return groups + [list(net.head.parameters())]


@dataclass(frozen=True)
class Spec:
    """What a backbone is, learned from a parameter-free (meta) copy: cheap enough for validation and dry runs."""
    name: str                 # as given, possibly with a pretrained tag (resnet18.tv_in1k)
    arch: str                 # timm architecture (resnet18)
    tag: str                  # pretrained tag timm would load (tv_in1k)
    hub_id: str               # where timm downloads the weights from ('' = nowhere)
    unused: tuple             # children of the timm model that forward_features never calls
    n_features: int           # channels of the feature map
    feature_ndim: int         # 4 for (B, C, H, W), 3 for tokens
    stage_names: tuple        # feature module that ends each stage
    stage_of: dict            # body parameter name -> stage index
    model_shapes: dict        # state_dict key -> shape, for the whole timm model
    body_keys: tuple          # state_dict keys the body keeps
    mean: tuple               # normalisation the pretrained weights expect
    std: tuple


def unknown_backbone_message(name):
    arch = split_model_name_tag(name)[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f'; did you mean {", ".join(close)}?' if close else '; see timm.list_models()'
    return f'unknown backbone {name!r}{hint}'


@lru_cache(maxsize=None)
def describe(name):
    """Build `name` on the meta device and read off its stages and keys. ValueError for an unknown name."""
    arch, _ = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise ValueError(unknown_backbone_message(name))
    try:
        with torch.device('meta'):
            model = timm.create_model(name)
    except RuntimeError as e:
        raise ValueError(f'cannot build backbone {name!r}: {e}') from None
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    cfg = model.pretrained_cfg
    called = set()
    hooks = [child.register_forward_hook(lambda *_, n=n: called.add(n)) for n, child in model.named_children()]
    with torch.no_grad():
        out = model.eval().forward_features(torch.zeros(1, *cfg.get('input_size', (3, 224, 224)), device='meta'))
    for h in hooks:
        h.remove()
    unused = tuple(n for n, _ in model.named_children() if n not in called)
    _prune(model, unused)
    stage_names, stage_of = _stages(model)
    return Spec(name=name, arch=arch, tag=cfg.get('tag') or '', hub_id=cfg.get('hf_hub_id') or cfg.get('url') or '',
                unused=unused, n_features=out.shape[-1] if out.ndim == 3 else out.shape[1],
                feature_ndim=out.ndim, stage_names=stage_names, stage_of=stage_of, model_shapes=model_shapes,
                body_keys=tuple(model.state_dict()), mean=tuple(cfg.get('mean', (0.485, 0.456, 0.406))),
                std=tuple(cfg.get('std', (0.229, 0.224, 0.225))))


def _prune(model, unused):
    for n in unused:
        setattr(model, n, nn.Identity())


def _stages(model):
    """Each parameter goes to the first stage whose feature module ends at or after it, in module order;
    parameters past the last feature module (e.g. EfficientNet's conv_head) join the last stage."""
    order = [n for n, _ in model.named_modules()]
    position = {n: i for i, n in enumerate(order)}
    ends = []
    for info in model.feature_info:
        module = info['module']
        if module in position:
            ends.append((max(i for i, n in enumerate(order) if n == module or n.startswith(module + '.')), module))
    if not ends:
        raise ValueError(f'{type(model).__name__} has no feature_info to derive stages from')
    owner = {}
    for pname, _ in model.named_parameters():
        module_idx = position[pname.rpartition('.')[0]]
        owner[pname] = next((s for s, (end, _) in enumerate(ends) if module_idx <= end), len(ends) - 1)
    kept = sorted(set(owner.values()))  # a feature module without parameters (VGG's last max-pool) is no stage
    renumber = {s: i for i, s in enumerate(kept)}
    return tuple(ends[s][1] for s in kept), {p: renumber[s] for p, s in owner.items()}


_hub_failures = {}  # name -> message: the hub is asked once per process, not once per run


def _pretrained_model(spec, weights):
    """The whole timm model with the weights asked for, and a description of those weights for the record."""
    if weights == 'none':
        return timm.create_model(spec.name), 'none'
    path = weights if weights != 'hub' else local_file(spec.arch, spec.tag)
    if path is not None:
        model = timm.create_model(spec.name)
        state = load_state_dict(path)
        check_fit(path, spec.name, spec.model_shapes, spec.body_keys, {k: tuple(v.shape) for k, v in state.items()})
        model.load_state_dict(state, strict=False)
        return model, f'file:{path.name if hasattr(path, "name") else path} sha256:{sha256(str(path))[:12]}'
    full = f'{spec.arch}.{spec.tag}' if spec.tag else spec.arch
    if not spec.hub_id:
        raise WeightsError(nothing_to_download(spec.name))
    if full in _hub_failures:
        raise WeightsError(_hub_failures[full])
    host = host_of(spec.hub_id)
    if not reachable(host):  # else the download retries for most of a minute before it gives up
        _hub_failures[full] = no_hub_message(full, f'{host} cannot be reached')
        raise WeightsError(_hub_failures[full])
    try:
        return timm.create_model(spec.name, pretrained=True), f'hub:{spec.hub_id}'
    except Exception as e:
        _hub_failures[full] = no_hub_message(full, type(e).__name__)
        raise WeightsError(_hub_failures[full]) from None


def build(name, n_classes, head='fastai', hidden=256, dropout=0.3, weights='hub', meta=False):
    """(Net, weights description). `weights`: 'hub', 'none' or a file path. `meta=True` builds without memory
    or weights, for planning."""
    spec = describe(name)
    if meta:
        with torch.device('meta'):
            model, desc = timm.create_model(name), weights
    else:
        model, desc = _pretrained_model(spec, weights if weights in ('hub', 'none') else _path(weights))
    _prune(model, spec.unused)
    with torch.device('meta' if meta else 'cpu'):
        head_module = make_head(head, spec.n_features, n_classes, hidden, dropout, spec.feature_ndim)
    return Net(Body(model), head_module, spec.stage_of, spec.stage_names), desc


def check_weights(name, weights):
    """Raise WeightsError now, before any run, if `weights` (a file, or the local file `hub` would use) does not
    fit `name`, or if `hub` has nothing to download."""
    spec = describe(name)
    if weights == 'none':
        return
    path = _path(weights) if weights != 'hub' else local_file(spec.arch, spec.tag)
    if path is not None:
        check_fit(path, name, spec.model_shapes, spec.body_keys, file_shapes(path))
    elif not spec.hub_id:
        raise WeightsError(nothing_to_download(name))


def _path(weights):
    from pathlib import Path
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f'weights file {weights} does not exist; pass a .safetensors/.pth file, hub or none')
    return path
