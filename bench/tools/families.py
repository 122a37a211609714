"""Every timm family, every strategy: does the suite build the family's tiniest model, plan each strategy with the
right trainable count, and run it? On the meta device (no memory, no weights), so all families take a few minutes.

    python bench/tools/families.py                    # every family: a table, then "N of M families build, plan and run"
    python bench/tools/families.py --family vit,swin  # some of them
    python bench/tools/families.py --find-smallest    # rebuild FAMILIES: the tiniest model of each family (~5 min)

For each family: the backbone is described (what its body uses, its stages and layers, its output), built with a
head that fits, and run forward; every strategy that applies is planned on it (bench.plan.plan), and the
parameter-efficient ones are checked against a count made from their definition alone (`expected_trainable`).
A strategy that does not apply is listed with why. Exit code 1 if any family fails. tests/test_families.py trains
one real step of every strategy on the families users bring most.
"""
import argparse
import time
from dataclasses import replace

import bench  # noqa: F401  (silences fastai's import-time notice)
from bench.command.flags import split_list
from bench.declare.config import Config, UsageError

# The tiniest model (fewest parameters) of each timm 1.0.31 family (the module defining it), from --find-smallest.
FAMILIES = {
    'beit': 'beit_base_patch16_224', 'byoanet': 'halonet_h1', 'byobnet': 'test_byobnet', 'cait': 'cait_xxs24_224',
    'coat': 'coat_tiny', 'convit': 'convit_tiny', 'convmixer': 'convmixer_768_32', 'convnext': 'test_convnext',
    'cpubone': 'cpubone_nano', 'crossvit': 'crossvit_tiny_240', 'csatv2': 'csatv2', 'cspnet': 'cs3darknet_focus_s',
    'cspnext': 'cspnext_tiny', 'davit': 'davit_tiny', 'deepseek_vit': 'deepseek_vit_412m',
    'deit': 'deit_tiny_patch16_224', 'densenet': 'densenet121', 'dla': 'dla46x_c', 'dpn': 'dpn48b',
    'edgenext': 'edgenext_xx_small', 'efficientformer': 'efficientformer_l1',
    'efficientformer_v2': 'efficientformerv2_s0', 'efficientnet': 'test_efficientnet',
    'efficientvim': 'efficientvim_m1', 'efficientvit_mit': 'efficientvit_b0', 'efficientvit_msra': 'efficientvit_m0',
    'eva': 'vit_tiny_patch16_dinov3_qkvb', 'fasternet': 'fasternet_t0', 'fastvit': 'fastvit_t8',
    'focalnet': 'focalnet_tiny_srf', 'gcvit': 'gcvit_xxtiny', 'gemma4_vit': 'gemma4_vit_167m',
    'ghostnet': 'ghostnet_050', 'hardcorenas': 'hardcorenas_b', 'hgnet': 'hgnetv2_b0', 'hiera': 'hiera_tiny_224',
    'hieradet_sam2': 'sam2_hiera_tiny', 'hrnet': 'hrnet_w18_small', 'iformer': 'iformer_t',
    'inception_next': 'inception_next_atto', 'inception_resnet_v2': 'inception_resnet_v2',
    'inception_v3': 'inception_v3', 'inception_v4': 'inception_v4', 'lcnetv2': 'lcnetv2_small',
    'levit': 'levit_128s', 'lowformer': 'lowformer_b0', 'mambaout': 'test_mambaout', 'maxxvit': 'test_coatnet',
    'metaformer': 'poolformerv2_s12', 'mlp_mixer': 'gmlp_ti16_224', 'mobilenetv3': 'mobilenetv3_small_050',
    'mobilenetv5': 'mobilenetv5_base', 'mobilevit': 'mobilevit_xxs', 'mvitv2': 'mvitv2_tiny',
    'naflexvit': 'naflexvit_base_patch16_parfac_gap', 'nasnet': 'nasnetalarge', 'nest': 'jx_nest_tiny',
    'nextvit': 'nextvit_small', 'nfnet': 'test_nfnet', 'pit': 'pit_ti_224', 'pnasnet': 'pnasnet5large',
    'pvt_v2': 'pvt_v2_b0', 'qwen3_vit': 'qwen3_vit_88m', 'rdnet': 'rdnet_tiny', 'regnet': 'regnetx_002',
    'repghost': 'repghostnet_050', 'repvit': 'repvit_m1', 'res2net': 'res2next50', 'resnest': 'resnest14d',
    'resnet': 'test_resnet', 'resnetv2': 'resnetv2_18', 'rexnet': 'rexnet_100', 'selecsls': 'selecsls42',
    'senet': 'legacy_seresnet18', 'sequencer': 'sequencer2d_s', 'shvit': 'shvit_s1', 'sknet': 'skresnet18',
    'starnet': 'starnet_s050', 'swiftformer': 'swiftformer_xs', 'swin_transformer': 'swin_tiny_patch4_window7_224',
    'swin_transformer_v2': 'swinv2_tiny_window16_256', 'swin_transformer_v2_cr': 'swinv2_cr_tiny_224',
    'tiny_vit': 'tiny_vit_5m_224', 'tnt': 'tnt_s_legacy_patch16_224', 'tresnet': 'tresnet_m',
    'twins': 'twins_svt_small', 'vgg': 'vgg11', 'visformer': 'visformer_tiny', 'vision_transformer': 'test_vit',
    'vision_transformer_hybrid': 'vit_tiny_r_s16_p8_224', 'vision_transformer_relpos': 'test_vit_relpos',
    'vision_transformer_sam': 'samvit_base_patch16_224', 'vitamin': 'vitamin_small_224', 'volo': 'volo_d1_224',
    'vovnet': 'ese_vovnet19b_slim_dw', 'xception': 'legacy_xception', 'xception_aligned': 'xception41p',
    'xcit': 'xcit_nano_12_p8_224',
}
PEFT = ('bitfit', 'norm_only', 'lora')


def expected_trainable(net, cfg):
    """What a parameter-efficient strategy trains, counted from its definition rather than from the plan: the head
    plus every body bias (bitfit), every normalization layer's parameters (norm_only), or r * (inputs + outputs)
    per adapted layer (lora; a conv's inputs are in_channels * kernel area). None for other strategies."""
    import torch.nn as nn

    import backbones
    model, head = net.body.model, sum(p.numel() for p in net.head.parameters())
    if cfg.strategy == 'bitfit':
        return head + sum(p.numel() for n, p in model.named_parameters() if n.endswith('bias') and n not in net.dead)
    if cfg.strategy == 'norm_only':
        return head + sum(p.numel() for m in model.modules() if backbones.is_norm(m)
                          for p in m.parameters(recurse=False))
    if cfg.strategy == 'lora':
        total = head
        for name in net.spec.lora_targets:
            m = model.get_submodule(name)
            m = getattr(m, 'base_layer', m)  # peft wraps the layer it adapts
            if isinstance(m, nn.Linear):
                total += cfg.lora_r * (m.in_features + m.out_features)
            else:
                total += cfg.lora_r * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
        return total
    return None


def check(name):
    """(ok, what was found): describe, build, forward, and plan every strategy that applies, on the meta device
    (bench/train/run.py's `planned`: the run's own Learner and strategy code on a parameter-free model)."""
    import torch

    import backbones
    from bench.declare.strategies import STRATEGIES, problem
    from bench.train.run import planned
    spec = backbones.describe(name)
    ran, left_out = [], []
    for strategy in STRATEGIES:
        cfg = Config(backbone=name, weights='hub' if strategy == 'zero_shot' else 'none', strategy=strategy,
                     epochs=10, size=0, resize=0, device='cpu', precision='fp32',
                     channels_last='off', cache_features='off')
        why = problem(cfg, spec)
        if why:
            left_out.append(f'{strategy} ({why.split(";")[0]})')
            continue
        p = planned(replace(cfg, head=backbones.resolve_head('auto', spec.features)), 10)
        if not ran:
            out = p['net'](torch.zeros(2, 3, spec.img_size, spec.img_size, device='meta'))
            if tuple(out.shape) != (2, 10):
                return False, f'the net gives {tuple(out.shape)}, not (2, 10)'
        expected = expected_trainable(p['net'], cfg) if strategy in PEFT else None
        if expected is not None and p['phases'][-1]['trainable'] != expected:
            return False, f'{strategy} plans {p["phases"][-1]["trainable"]:,} trainable, its definition {expected:,}'
        ran.append(strategy)
    summary = (f'{spec.features} {spec.n_features}, {len(spec.stage_names)} stages, {len(spec.layer_names)} layers; '
               f'planned {len(ran)}')
    return True, summary + (f'; left out {", ".join(left_out)}' if left_out else '')


def find_smallest():
    """{family: its model with the fewest parameters}, building every timm model on the meta device."""
    import timm
    import torch
    from timm.models._registry import _module_to_models
    out = {}
    for family in sorted(_module_to_models):
        sizes = []
        for name in sorted(set(_module_to_models[family]) - _deprecated_names()):
            try:
                with torch.device('meta'):
                    sizes.append((sum(p.numel() for p in timm.create_model(name).parameters()), name))
            except Exception:  # a model timm cannot build without extra packages or arguments
                continue
        if sizes:
            out[family] = min(sizes)[1]
            print(f'    {family!r}: {out[family]!r},', flush=True)
    return out


def _deprecated_names():
    """Old names timm maps to a current model with a warning."""
    from timm.models._registry import _deprecated_models
    return set(_deprecated_models)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--family', help=f'comma list of families (default: all {len(FAMILIES)})')
    p.add_argument('--find-smallest', action='store_true', help='print the tiniest model of every timm family')
    args = p.parse_args(argv)
    if args.find_smallest:
        find_smallest()
        return 0
    chosen = split_list(args.family) or list(FAMILIES)
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        raise UsageError(f'unknown family {unknown[0]!r}; see FAMILIES in bench/tools/families.py')
    failed, t0 = [], time.perf_counter()
    for family in chosen:
        name = FAMILIES[family]
        try:
            ok, said = check(name)
        except Exception as e:
            ok, said = False, f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
        print(f'{"ok  " if ok else "FAIL"} {family:28s} {name:40s} {said}', flush=True)
        if not ok:
            failed.append(family)
    print(f'{len(chosen) - len(failed)} of {len(chosen)} families build, plan and run '
          f'({time.perf_counter() - t0:.0f} s){"; failed: " + ", ".join(failed) if failed else ""}')
    return 1 if failed else 0


if __name__ == '__main__':
    from bench.command import cli
    cli.main(main)
