"""What a timm model is, read off a parameter-free (meta) copy: what its body uses, its stages and layers, what
it outputs, and which of its parameters each strategy may train. Cheap enough for validation and dry runs.

- **Usage.** The body is the timm model up to its features. Which parameters that uses is found by autograd on
  the meta copy (a parameter the output does not depend on gets no gradient), and which modules it calls by
  pre-forward hooks on every module, at any depth. A module neither called nor used (a classifier, VGG's fc6/fc7)
  is replaced by `Identity`; a module that is called but whose parameters never reach the output keeps running,
  its parameters `dead` (they never train and are not counted). A module that is iterated rather than called (a
  `ModuleList` of blocks) is kept because its children are called.
- **Output.** A CNN's feature map (B, C, H, W) goes to the head as it is (`map`). Anything else (a transformer's
  tokens, an NHWC map) goes through the model's own `forward_head(x, pre_logits=True)`: its class token or
  pooling, and its final norm, as the model's authors pool it (`pooled`, (B, C)).
- **Stages** (what `freeze_to` counts) are timm's `feature_info` where the model has it: a stage ends at each
  feature module, i.e. at each change of resolution (ResNet18: stem, layer1..layer4; VGG16: the five conv blocks).
  Elsewhere they are the model's own coarse `group_matcher`, which every timm model has. `feature_info` comes first
  because `group_matcher` is sometimes finer than a resolution stage (VGG's puts every conv in its own group, so
  the seed's "last conv block" would become its last conv).
- **Layers** (what layer-wise LR decay counts) are the model's fine `group_matcher`, as timm's own layer decay
  uses it (ViT: the embeddings, each block, the final norm); a model without one has its stages as layers.
"""
import re
from dataclasses import dataclass
from functools import lru_cache

import timm
import torch
import torch.nn as nn
from timm.layers import Conv2dSame
from timm.models import split_model_name_tag
from timm.models._manipulate import group_with_matcher

from backbones import conv_grad
from backbones.activations import copy_free
from backbones.same_pad import SamePadConv2d, unpadded
from backbones.weights import local_file

TRACE_SIZE = 64   # px: the input a model without a fixed input size is traced at
# convs that compute torch's Conv2d of their weight: torch's own, behind timm's 'same' padding (either form), or with
# gradients computed by backbones/conv_grad.py; a LoRA adapter over one is B·A added to that weight
TORCH_CONVS = (nn.Conv2d, Conv2dSame, SamePadConv2d, conv_grad.Conv2d)
# where torch and timm define their normalization layers: BatchNorm, LayerNorm, GroupNorm, RmsNorm, their Act forms
NORM_MODULES = ('torch.nn.modules.batchnorm', 'torch.nn.modules.normalization', 'timm.layers.norm',
                'timm.layers.norm_act', 'timm.layers.fast_norm')


@dataclass(frozen=True)
class Spec:
    name: str                 # as given, possibly with a pretrained tag (resnet18.tv_in1k)
    arch: str                 # timm architecture (resnet18)
    tag: str                  # pretrained tag (tv_in1k); one timm does not know is fine if a local file has it
    hub_id: str               # where timm downloads the weights from ('' = nowhere)
    img_size: int             # the input size the model is built for (px); fixed-size models are built at the run's
    fixed_size: bool          # the model only takes img_size inputs (ViTs with fixed position embeddings)
    pruned: tuple             # modules of the timm model the body never calls nor uses: replaced by Identity
    dead: tuple               # parameters the body keeps running but its output never depends on: never trained
    features: str             # map: (B, C, H, W) feature map | pooled: (B, C) from the model's forward_head
    n_features: int           # C
    stage_names: tuple        # name of each stage (the module that ends it, or its group's prefix)
    stage_of: dict            # body parameter name -> stage index
    layer_names: tuple        # name of each layer (its group's common prefix)
    layer_of: dict            # body parameter name -> layer index
    norm_params: tuple        # body parameters of normalization layers (norm_only)
    bias_params: tuple        # body bias parameters, BEiT's separate q_bias and v_bias included (bitfit)
    lora_targets: tuple       # modules LoRA adapts: every Linear and every ungrouped Conv2d of the body
    lora_skipped: tuple       # grouped, depthwise and weight-standardized layers LoRA leaves out
    depthwise: int            # depthwise convs the body uses (EfficientNet, MobileNet, ConvNeXt): slow in bf16 on a CPU
    model_shapes: dict        # state_dict key -> shape, for the whole timm model
    body_keys: tuple          # state_dict keys the body keeps
    mean: tuple               # normalisation the pretrained weights expect
    std: tuple


def unknown_backbone_message(name):
    import difflib
    arch = split_model_name_tag(name)[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f'; did you mean {", ".join(close)}?' if close else '; see timm.list_models()'
    return f'unknown backbone {name!r}{hint}'


def pretrained_cfg(name):
    """timm's pretrained config for `name`; None for a pretrained tag timm does not know."""
    try:
        return timm.get_pretrained_cfg(name)
    except RuntimeError:  # "Invalid pretrained tag"
        return None


def size_to_build(name, img_size):
    """`img_size` if the model takes a fixed input size other than it (it must be built for it), else None."""
    cfg = pretrained_cfg(name)
    fixed = img_size and cfg is not None and cfg.fixed_input_size and img_size != cfg.input_size[-1]
    return img_size if fixed else None


def create(name, img_size=None, **kwargs):
    """timm.create_model(name), at `img_size` if the model has a fixed input size, its 'same' padding computed
    without a padded copy (backbones/same_pad.py), its in-place activations without autograd's copy of their
    input (backbones/activations.py) and two conv gradients oneDNN is slow at computed without it
    (backbones/conv_grad.py); a pretrained tag timm does not know is accepted when the weights
    folder holds `<arch>.<tag>.safetensors` (the offline copies do)."""
    arch, tag = split_model_name_tag(name)
    if tag and pretrained_cfg(name) is None:
        if local_file(arch, tag) is None:
            raise ValueError(f'timm knows no pretrained tag {tag!r} for {arch}, and $FTBENCH_WEIGHTS holds no '
                             f'{arch}.{tag}.safetensors')
        name = arch
    if size_to_build(name, img_size):
        kwargs['img_size'] = img_size
    return conv_grad.rerouting(copy_free(unpadded(timm.create_model(name, **kwargs))))


@lru_cache(maxsize=None)
def describe(name, img_size=None):
    """Build `name` on the meta device and read off what the suite needs (the module docstring). ValueError for a
    name timm does not know or a model the suite cannot use, with why."""
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise ValueError(unknown_backbone_message(name))
    try:
        with torch.device('meta'):
            model = create(name, img_size)
    except ValueError:
        raise
    except (RuntimeError, TypeError, AssertionError) as e:
        raise ValueError(f'cannot build backbone {name!r}' + (f' at {img_size} px' if img_size else '')
                         + f': {_first_line(e)}') from None
    cfg = model.pretrained_cfg
    data_cfg = timm.data.resolve_model_data_config(model)  # input size, mean and std, as timm's own scripts read them
    size = img_size if img_size and cfg.get('fixed_input_size') else data_cfg['input_size'][-1]
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:  # what a model uses does not depend on its input size; a small one traces faster (an LSTM: 13 s -> 1 s)
        features, n_features, called, used = _trace(name, model, size if cfg.get('fixed_input_size') else
                                                    min(size, TRACE_SIZE))
    except ValueError:
        features, n_features, called, used = _trace(name, model, size)
    pruned = _prune_plan(model, called, used)
    prune(model, pruned)
    alive = [(n, p) for n, p in model.named_parameters() if n in used]
    dead = tuple(n for n, _ in model.named_parameters() if n not in used)
    stage_names, stage_of = _stages(model, alive)
    layer_names, layer_of = _grouped(model, alive, coarse=False) or (stage_names, stage_of)
    targets, skipped = _lora_targets(model, used)
    return Spec(name=name, arch=arch, tag=tag or cfg.get('tag') or '',
                hub_id=cfg.get('hf_hub_id') or cfg.get('url') or '', img_size=int(size),
                fixed_size=bool(cfg.get('fixed_input_size')), pruned=pruned, dead=dead, features=features,
                n_features=n_features, stage_names=stage_names, stage_of=stage_of, layer_names=layer_names,
                layer_of=layer_of, norm_params=_norm_params(model, used),
                bias_params=tuple(n for n, _ in alive if n.endswith('bias')), lora_targets=targets,
                lora_skipped=skipped, depthwise=_depthwise(model, used), model_shapes=model_shapes, body_keys=tuple(model.state_dict()),
                mean=tuple(data_cfg['mean']), std=tuple(data_cfg['std']))


def _trace(name, model, size):
    """(features, n_features, names of the modules called, names of the parameters the output depends on)."""
    called = set()
    hooks = [m.register_forward_pre_hook(lambda *_, n=n: called.add(n)) for n, m in model.named_modules()]
    try:
        x = model.eval().forward_features(torch.zeros(2, 3, size, size, device='meta'))
        features = 'map' if torch.is_tensor(x) and x.ndim == 4 and getattr(model, 'output_fmt', 'NCHW') == 'NCHW' \
            else 'pooled'  # tokens, NHWC, or several branches (CrossViT)
        if features == 'pooled':
            x = model.forward_head(x, pre_logits=True)
    except Exception as e:
        raise ValueError(f'cannot run backbone {name!r} at {size} px: {_first_line(e)}') from None
    finally:
        for h in hooks:
            h.remove()
    if not torch.is_tensor(x) or x.ndim != (4 if features == 'map' else 2):
        raise ValueError(f'{name} gives features of shape {tuple(getattr(x, "shape", ()))}, neither a (B, C, H, W) '
                         f'map nor pooled (B, C) features; the suite cannot put a head on it')
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(x.float().sum(), list(params.values()), allow_unused=True) if x.requires_grad else \
        [None] * len(params)
    used = {n for n, g in zip(params, grads) if g is not None}
    if not used:
        raise ValueError(f'{name}\'s features depend on none of its parameters')
    return features, int(x.shape[1]), called, used


def _prune_plan(model, called, used):
    """The outermost modules with parameters that the body neither calls nor uses."""
    out = []
    for n, m in model.named_modules():
        if not n or n in called or any(n.startswith(p + '.') for p in out):
            continue
        names = [f'{n}.{k}' for k, _ in m.named_parameters()]
        if names and not any(k in used for k in names):
            out.append(n)
    return tuple(out)


def prune(model, names):
    for n in names:
        parent, _, child = n.rpartition('.')
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())


def _stages(model, alive):
    """Stages from feature_info (each parameter in the first stage whose feature module ends at or after it, in
    module order; parameters past the last one join the last stage), else from the coarse group_matcher."""
    order = [n for n, _ in model.named_modules()]
    position = {n: i for i, n in enumerate(order)}
    ends = []
    for info in getattr(model, 'feature_info', None) or []:
        module = info.get('module') if isinstance(info, dict) else None
        if module in position:
            ends.append((max(i for i, n in enumerate(order) if n == module or n.startswith(module + '.')), module))
    if ends:
        ends.sort()
        owner = {}
        for pname, _ in alive:
            idx = position[pname.rpartition('.')[0]] if '.' in pname else 0
            owner[pname] = next((s for s, (end, _) in enumerate(ends) if idx <= end), len(ends) - 1)
        kept = sorted(set(owner.values()))  # a feature module without parameters (VGG's last max-pool) is no stage
        renumber = {s: i for i, s in enumerate(kept)}
        return tuple(ends[s][1] for s in kept), {p: renumber[s] for p, s in owner.items()}
    grouped = _grouped(model, alive, coarse=True)
    if grouped is None:
        raise ValueError(f'{type(model).__name__} has neither feature_info nor group_matcher to derive stages from')
    return grouped


def _grouped(model, alive, coarse):
    """(names, {param: index}) from the model's group_matcher, groups numbered in order; None without one."""
    if not hasattr(model, 'group_matcher'):
        return None
    try:
        matcher = model.group_matcher(coarse=coarse)
    except NotImplementedError:
        return None
    layer_of = group_with_matcher(alive, matcher, reverse=True)
    ids = sorted(set(layer_of.values()))
    renumber = {g: i for i, g in enumerate(ids)}
    members = [[] for _ in ids]
    for n, g in layer_of.items():
        members[renumber[g]].append(n)
    return tuple(_group_name(m) for m in members), {n: renumber[g] for n, g in layer_of.items()}


def _group_name(names):
    """The dotted prefix the group's parameters share under each top-level module, joined: blocks.3, or
    blocks.11+norm (timm puts a final norm with the last block), or cls_token+pos_embed+patch_embed."""
    by_top = {}
    for n in names:
        by_top.setdefault(n.split('.')[0], []).append(n.split('.')[:-1] or [n])
    out = []
    for top, parts in by_top.items():
        common = []
        for level in zip(*parts):
            if len(set(level)) > 1:
                break
            common.append(level[0])
        out.append('.'.join(common) or top)
    return '+'.join(out[:3]) + ('+…' if len(out) > 3 else '')


def is_norm(module):
    return any(c.__module__ in NORM_MODULES for c in type(module).__mro__[:-2])


def _norm_params(model, used):
    return tuple(f'{n}.{k}' if n else k for n, m in model.named_modules() if is_norm(m)
                 for k, _ in m.named_parameters(recurse=False) if (f'{n}.{k}' if n else k) in used)


def _lora_targets(model, used):
    """Every Linear and ungrouped Conv2d whose weight the body uses and whose forward is torch's own, or torch's
    behind 'same' padding (timm's Conv2dSame) or with gradients computed by backbones/conv_grad.py. Left out: grouped
    (and depthwise) convs, since peft refuses a rank that does not divide the groups and their adapter would outweigh
    them; and layers that transform their weight (weight-standardized convs), since peft builds the adapters from the
    layer's class, so the update would be standardized too and no longer B·A."""
    targets, skipped = [], []
    for n, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and f'{n}.weight' in used:
            plain = type(m).forward in (nn.Linear.forward, nn.Conv2d.forward) or type(m) in TORCH_CONVS
            (targets if plain and not (isinstance(m, nn.Conv2d) and m.groups > 1) else skipped).append(n)
    return tuple(targets), tuple(skipped)


def _depthwise(model, used):
    return sum(1 for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1
               and m.groups == m.in_channels and f'{n}.weight' in used)


def _first_line(e):
    text = str(e).strip().splitlines()
    return re.sub(r'\s+', ' ', text[0]) if text else type(e).__name__
