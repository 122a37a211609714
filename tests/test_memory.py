"""A run that would not fit is refused before it starts, with the figure it needs, or trains in smaller passes with
its gradients accumulated, recorded as such; the estimate is measured from what autograd saves."""
from dataclasses import replace

import torch

import backbones
from bench.images import data
from bench.sweep.executor import Job
from bench.declare.strategies import prepare
from bench.train import fold, learner, memory, runner
from tests.helpers import tiny_config


def net_and_batch(cfg):
    net, _ = backbones.build(cfg.backbone, 4, cfg.head, weights='none')
    return net, torch.rand(2, 3, 16, 16)


def test_the_estimate_grows_with_the_batch_and_what_trains():
    cfg = tiny_config(backbone='cifar_resnet32', head='linear', bs=16)
    net, x = net_and_batch(cfg)
    names = [n for n, _ in net.named_parameters()]
    everything = memory.plan_batches(net, cfg, x, learner.autocast(cfg), set(names))
    head_only = memory.plan_batches(net, cfg, x, learner.autocast(cfg), {n for n in names if n.startswith('1.')})
    bigger = memory.plan_batches(net, replace(cfg, bs=32), x, learner.autocast(cfg), set(names))
    assert everything.accumulate == 1 and everything.micro_bs == 16
    assert head_only.estimate_mb < everything.estimate_mb < bigger.estimate_mb
    assert all(p.requires_grad for p in net.parameters())  # the probe put every flag back


def test_the_estimate_counts_what_grows_with_the_batch_not_autocasts_weight_copies():
    """Under bf16 autocast a pass saves each weight's bf16 copy once, whatever its batch: read off one pass of two
    images, they were counted per image (6x ResNet18's activations at 96 px), and runs were split into passes they
    did not need."""
    cfg = tiny_config(backbone='cifar_resnet32', head='linear', bs=16)
    net, x = net_and_batch(cfg)
    fp32 = memory.saved_bytes_per_image(net, x, learner.autocast(cfg))
    bf16 = memory.saved_bytes_per_image(net, x, torch.autocast('cpu', dtype=torch.bfloat16))
    assert 0.4 * fp32 < bf16 < 0.6 * fp32  # activations half as wide
    assert abs(memory.saved_bytes_per_image(net, torch.cat([x, x]), learner.autocast(cfg)) - fp32) < 0.05 * fp32


def test_the_estimate_leaves_nothing_of_its_forward_pass_alive():
    """Each run measures once: what the probe's forward pass saved must go when it ends. A pack hook that keeps
    the tensor it is given ties an output to its own grad_fn in a cycle the garbage collector cannot see, and every
    run then kept its probe's activations (about 190 MB a run for Lite0 at 224 px, seen as peak RSS creeping from
    run to run of one sweep)."""
    import gc
    import weakref
    cfg = tiny_config(backbone='cifar_resnet32', head='linear', bs=16)
    net, x = net_and_batch(cfg)
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, out: outputs.append(weakref.ref(out))) for m in net.modules()
             if isinstance(m, torch.nn.ReLU)]  # a ReLU saves its own output for the backward pass
    memory.plan_batches(net, cfg, x, learner.autocast(cfg), {n for n, _ in net.named_parameters()})
    for h in hooks:
        h.remove()
    gc.collect()
    assert outputs and all(ref() is None for ref in outputs)


def test_a_tight_limit_accumulates_and_a_tighter_one_refuses():
    cfg = tiny_config(backbone='cifar_resnet32', head='linear', bs=16)
    net, x = net_and_batch(cfg)
    trains = {n for n, _ in net.named_parameters()}
    need = memory.plan_batches(net, cfg, x, learner.autocast(cfg), trains).estimate_mb
    fit = memory.plan_batches(net, replace(cfg, memory_limit_mb=max(1, int(need * 0.75))), x, learner.autocast(cfg),
                              trains)
    assert fit.accumulate >= 2 and fit.micro_bs * fit.accumulate == 16
    try:
        memory.plan_batches(net, replace(cfg, memory_limit_mb=1), x, learner.autocast(cfg), trains)
    except memory.MemoryRefused as e:
        assert 'the run needs about' in str(e) and 'MB are free' in str(e)
    else:
        raise AssertionError('a 1 MB limit was not refused')


def test_a_run_under_a_tight_limit_trains_in_passes_and_says_so(images):
    cfg = tiny_config(backbone='cifar_resnet32', head='linear', bs=16, epochs=1)
    split = data.split(images, valid_frac=0.25, subset=32)
    free = runner.train(cfg, images, split, log=lambda line: None)
    lines = []
    tight = runner.train(replace(cfg, memory_limit_mb=max(1, int(free['memory_estimate_mb'] * 0.75))), images, split,
                         log=lines.append)
    assert free['accumulate'] == 1 and free['micro_bs'] == 16
    assert tight['accumulate'] >= 2 and tight['micro_bs'] * tight['accumulate'] == 16
    assert tight['epochs'][0]['trainable'] == free['epochs'][0]['trainable']
    assert any('passes of' in line for line in lines)


def test_evaluation_runs_in_the_largest_batches_that_fit(images):
    """Inference saves no activations: under a limit that splits training batches into passes, validation and test
    still run in batches larger than a training pass, as large as the limit allows (and never past the cap), and the
    record says how large."""
    cfg = tiny_config(backbone='cifar_resnet32', head='linear', bs=16, epochs=1)
    split = data.split(images, valid_frac=0.25, subset=32)
    free = runner.train(cfg, images, split, log=lambda line: None)
    seen = {True: set(), False: set()}  # training mode -> batch sizes the model was called with

    def spy(module, args):
        if module.__class__.__name__ == 'Net' and args and isinstance(args[0], torch.Tensor):
            seen[module.training].add(args[0].shape[0])
    hook = torch.nn.modules.module.register_module_forward_pre_hook(spy)
    try:
        tight = runner.train(replace(cfg, memory_limit_mb=max(1, int(free['memory_estimate_mb'] * 0.75))), images,
                             split, log=lambda line: None)
    finally:
        hook.remove()
    assert tight['accumulate'] >= 2 and max(seen[True]) <= tight['micro_bs'] < 16
    assert tight['eval_bs'] > tight['micro_bs'] and max(seen[False]) == min(tight['eval_bs'], 24)  # test: 24 images
    assert free['eval_bs'] >= tight['eval_bs']
    net, x = net_and_batch(cfg)
    names = {n for n, _ in net.named_parameters()}
    capped = memory.plan_batches(net, replace(cfg, memory_limit_mb=10 ** 6), x, learner.autocast(cfg), names, eval_cap=64)
    assert capped.eval_bs == 64
    inference = memory.saved_bytes_per_image(net, x, learner.autocast(cfg), train=False)
    assert 0 < inference and tight['eval_bs'] * inference / 2 ** 20 <= tight['memory_free_mb']


def test_a_refused_run_is_an_error_row_with_the_figure(images):
    cfg = tiny_config(backbone='cifar_resnet32', head='linear', bs=16, memory_limit_mb=1)
    out = runner.work(Job(cfg), images)
    assert 'the run needs about' in out['error'] and 'lower --size' in out['error']


def test_passes_too_small_for_training_batchnorm_are_refused_and_allowed_without_it():
    """Accumulating gradients keeps the step, not BatchNorm's statistics: a pass of 4 normalizes over 4 images.
    Where BatchNorm layers train, a limit that fits only such passes refuses the run; where none train, the same
    limit trains in passes of 4."""
    cfg = tiny_config(backbone='cifar_resnet32', head='linear', bs=16)
    net, x = net_and_batch(cfg)
    names = {n for n, _ in net.named_parameters()}
    norms = {f'{m}.{p}' for m, mod in net.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)
             for p, _ in mod.named_parameters(recurse=False)}
    assert norms and memory.training_batchnorms(net, names) == len(norms) // 2
    need = {bs: memory.plan_batches(net, replace(cfg, bs=bs), x, learner.autocast(cfg), names).estimate_mb
            for bs in (4, 8)}
    tight = replace(cfg, memory_limit_mb=int((need[4] + need[8]) / 2))
    try:
        memory.plan_batches(net, tight, x, learner.autocast(cfg), names)
    except memory.MemoryRefused as e:
        assert 'passes of 4' in str(e) and 'BatchNorm' in str(e) and 'at least 8' in str(e)
    else:
        raise AssertionError('passes of 4 with training BatchNorm layers were not refused')
    fit = memory.plan_batches(net, tight, x, learner.autocast(cfg), names - norms)
    assert memory.training_batchnorms(net, names - norms) == 0
    assert (fit.micro_bs, fit.accumulate) == (4, 4)
    small = memory.plan_batches(net, replace(cfg, bs=4), x, learner.autocast(cfg), names)
    assert (small.micro_bs, small.accumulate) == (4, 1)  # a run's own batch below the floor is the user's choice


def test_the_estimate_measures_batchnorms_in_the_modes_training_gives_them():
    """BnFreeze keeps a BatchNorm whose weight is frozen in eval mode, folded into its conv on a CPU (BitFit): the
    probe measures that pass, not one where every BatchNorm trains (Lite0 at 224 px, batch 32, 3,072 MB: one pass
    instead of two of 16); with --train-bn every one trains, and the probe puts every module's mode back."""
    cfg = tiny_config(backbone='cifar_resnet32', head='linear', strategy='bitfit', bs=16)
    net, x = net_and_batch(cfg)
    prepare(net, cfg)
    fold.fold_frozen_norms(net, x)
    trains = {n for n, p in net.named_parameters() if p.requires_grad}
    net.train()
    net.body.eval()
    modes = [m.training for m in net.modules()]
    frozen = memory.plan_batches(net, cfg, x, learner.autocast(cfg), trains)
    training = memory.plan_batches(net, replace(cfg, train_bn=True), x, learner.autocast(cfg), trains)
    assert frozen.estimate_mb < training.estimate_mb
    assert [m.training for m in net.modules()] == modes
