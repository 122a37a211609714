"""Models for the suite: any timm model as the body, a head that fits its output, and parameter groups by stage
or by layer.

`build(name, n_classes, ...)` returns a `Net` (body, head) and a description of its weights; `param_groups(net)`
gives fastai the groups [stage 0, ..., stage n-1, head] (or one per layer, for layer-wise LR decay), so
`freeze_to(-k)` trains the last k-1 stages and the head. fastai's default splitter gives a timm model only two
groups (body, head), which makes `freeze_to` useless. What a model's stages, layers and used parameters are is
read off a meta copy (backbones/anatomy.py), the same for every timm family.
"""
import copy
from functools import lru_cache

import torch
import torch.nn as nn

from backbones import cifar  # noqa: F401  (registers cifar_resnet32 and cifar_cnn with timm)
from backbones.anatomy import Spec, create
from backbones.anatomy import describe as _describe
from backbones.anatomy import is_norm, prune, size_to_build
from backbones.heads import HEADS, make_head, resolve_head
from backbones.weights import (WEIGHTS_ENV, WeightsError, check_fit, file_shapes, host_of, load_state_dict, local_file,
                               no_hub_message, nothing_to_download, reachable, sha256)

__all__ = ['HEADS', 'Net', 'Spec', 'WeightsError', 'build', 'check_weights', 'counted', 'describe', 'is_norm',
           'param_groups', 'resolve_head', 'splitter', 'unavailable']


def describe(name, img_size=None):
    """The backbone's Spec (backbones/anatomy.py). `img_size` matters only for a model with a fixed input size,
    which is built for it. ValueError for an unknown name or a model the suite cannot use."""
    return _describe(name, size_to_build(name, img_size))


class Body(nn.Module):
    """A timm model used up to its features: the feature map, or (`pooled`) the model's own pooling of them."""
    def __init__(self, model, pooled):
        super().__init__()
        self.model, self.pooled = model, pooled

    def forward(self, x):
        x = self.model.forward_features(x)
        return self.model.forward_head(x, pre_logits=True) if self.pooled else x


class Net(nn.Sequential):
    """body -> head, knowing the stage and layer of each body parameter, also of those a strategy adds later."""
    def __init__(self, body, head, spec):
        super().__init__(body, head)
        self.spec = spec
        self.stage_names, self.layer_names, self.stage_of = spec.stage_names, spec.layer_names, spec.stage_of
        self.dead = frozenset(spec.dead)
        self._module_group = {}  # module name -> (stage, layer) of its first parameter, for parameters added later
        for name in spec.stage_of:
            parts = name.split('.')[:-1]
            for i in range(len(parts), 0, -1):
                self._module_group.setdefault('.'.join(parts[:i]), (spec.stage_of[name], spec.layer_of[name]))
        params = dict(body.model.named_parameters())
        for n in spec.dead:  # never trains, never counted
            params[n].requires_grad_(False)
        self.prepared = None  # the strategy whose prepare step ran on this net

    @property
    def body(self):
        return self[0]

    @property
    def head(self):
        return self[1]

    def group_of(self, name, by):
        """Index of the stage (by='stages') or layer of a body parameter; a parameter added after the net was
        built (a LoRA matrix, or a weight peft moved under `base_layer`) belongs to the nearest module that was
        there before."""
        at = 0 if by == 'stages' else 1
        if name in self.stage_of:
            return self.stage_of[name] if at == 0 else self.spec.layer_of[name]
        parts = name.split('.')[:-1]
        for i in range(len(parts), 0, -1):
            group = self._module_group.get('.'.join(parts[:i]))
            if group is not None:
                return group[at]
        raise ValueError(f'parameter {name} belongs to no stage')


def param_groups(net, by='stages'):
    """fastai parameter groups: one per body stage (or layer), then the head. Dead parameters are in none."""
    names = net.stage_names if by == 'stages' else net.layer_names
    groups = [[] for _ in names]
    for name, p in net.body.model.named_parameters():
        if name not in net.dead:
            groups[net.group_of(name, by)].append(p)
    return groups + [list(net.head.parameters())]


def splitter(net):
    return param_groups(net, 'stages')


def counted(net):
    """The parameters the net really uses (dead ones aside): what `total` means everywhere."""
    return [p for g in param_groups(net) for p in g]


@lru_cache(maxsize=8)
def _meta_model(name, img_size):
    """A parameter-free copy, made once: on the meta device timm's weight init costs more than a deep copy."""
    with torch.device('meta'):
        return create(name, img_size)


_hub_failures = {}  # name -> message: the hub is asked once per process, not once per run


def _pretrained_model(spec, weights):
    """The whole timm model with the weights asked for, and a description of those weights for the record."""
    if weights == 'none':
        return create(spec.name, spec.img_size), 'none'
    path = weights if weights != 'hub' else local_file(spec.arch, spec.tag)
    if path is not None:
        model = create(spec.name, spec.img_size)
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
        return create(spec.name, spec.img_size, pretrained=True), f'hub:{spec.hub_id}'
    except Exception as e:
        _hub_failures[full] = no_hub_message(full, type(e).__name__)
        raise WeightsError(_hub_failures[full]) from None


def build(name, n_classes, head='auto', hidden=256, dropout=0.3, weights='hub', meta=False, img_size=None):
    """(Net, weights description). `weights`: 'hub', 'none' or a file path. `meta=True` builds without memory
    or weights, for planning. `img_size`: the run's input size, for models built for a fixed one."""
    spec = describe(name, img_size)
    if meta:
        model, desc = copy.deepcopy(_meta_model(name, spec.img_size)), weights
    else:
        model, desc = _pretrained_model(spec, weights if weights in ('hub', 'none') else _path(weights))
    prune(model, spec.pruned)
    with torch.device('meta' if meta else 'cpu'):
        head_module = make_head(head, spec.n_features, n_classes, hidden, dropout, spec.features)
    return Net(Body(model, spec.features == 'pooled'), head_module, spec), desc


def check_weights(name, weights, img_size=None):
    """Raise WeightsError now, before any run, if `weights` (a file, or the local file `hub` would use) does not
    fit `name`, or if `hub` has nothing to download."""
    spec = describe(name, img_size)
    if weights == 'none':
        return
    path = _path(weights) if weights != 'hub' else local_file(spec.arch, spec.tag)
    if path is not None:
        check_fit(path, name, spec.model_shapes, spec.body_keys, file_shapes(path))
    elif not spec.hub_id:
        raise WeightsError(nothing_to_download(name))


def unavailable(name):
    """Why `name`'s pretrained weights cannot be had here (no local file, and no hub to download from), or None."""
    try:
        spec = describe(name)
    except ValueError as e:
        return str(e)
    if local_file(spec.arch, spec.tag) is not None:
        return None
    if not spec.hub_id:
        return nothing_to_download(name)
    host = host_of(spec.hub_id)
    return None if reachable(host) else f'no local file in ${WEIGHTS_ENV} and {host} cannot be reached'


def _path(weights):
    from pathlib import Path
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f'weights file {weights} does not exist; pass a .safetensors/.pth file, hub or none')
    return path
