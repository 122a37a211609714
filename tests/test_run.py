"""A run is built once (bench/train/run.py): one model, one Learner and one prepare step per run, whatever the strategy;
its test, scored later from the weights it kept, is the test scored at its end."""
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fastai.learner import Learner

import backbones
from bench.declare import record, strategies
from bench.images import data
from bench.sweep.executor import Job
from bench.train import run, runner
from tests.helpers import Ops, resident_mb, tiny_config

CPU = record.Hardware('cpu', 'cpu: test (2 cores)')


def counting(monkeypatch, owner, name):
    """Count the calls of `owner.name` (the real one runs): a list that grows by one per call."""
    calls, real = [], getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.mark.parametrize('strategy', list(strategies.STRATEGIES))
def test_a_run_builds_its_model_its_learner_and_its_strategys_additions_once(strategy, images, monkeypatch):
    """The memory planner measures the real model and the plan is read off the real Learner: no second model, no
    second Learner (cached features included), the strategy's prepare step (LoRA's adapters, BitFit's marks) once."""
    cfg = tiny_config(CPU, backbone='cifar_resnet32', head='linear', strategy=strategy, epochs=2, unfreeze_at=(1,),
                      lr=1e-3, head_lr=1e-2)
    nets = counting(monkeypatch, backbones.Net, '__init__')
    learners = counting(monkeypatch, Learner, '__init__')
    prepare = strategies.STRATEGIES[strategy].prepare
    prepared = []
    if prepare is not None:
        monkeypatch.setitem(strategies.STRATEGIES, strategy, replace(
            strategies.STRATEGIES[strategy], prepare=lambda net, cfg: (prepared.append(1), prepare(net, cfg))))
    out = runner.work(Job(cfg), images)
    assert 'results' in out, out.get('error')
    assert (len(nets), len(learners), len(prepared)) == (1, 1, 1 if prepare else 0), strategy
    assert out['results']['tested'] == runner.TESTED_AT_END


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """A weights file for cifar_resnet32 (timm key names), as a pretrained file is loaded."""
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp('weights') / 'cifar_resnet32.safetensors'
    save_file(timm.create_model('cifar_resnet32').state_dict(), str(path))
    return path


@pytest.mark.parametrize('strategy', ['full', 'feature_extract', 'lora', 'norm_only'])
def test_the_test_scored_from_kept_weights_is_the_test_at_the_end(strategy, images, tmp_path, pretrained):
    """What a grid point keeps (what trained, every buffer: norm_only's running statistics, LoRA's adapters, the head
    over cached features) gives back the test the run would have scored at its end."""
    cfg = tiny_config(CPU, backbone='cifar_resnet32', head='linear', strategy=strategy, epochs=2, lr=1e-3,
                      head_lr=1e-2, weights=str(pretrained))
    split = data.split(images, valid_frac=0.25)
    kept = tmp_path / 'kept.pt'
    whole = runner.train(cfg, images, split, log=lambda line: None, keep=kept)
    later = runner.test_checkpoint(cfg, images, split, kept, log=lambda line: None)
    assert later['tested'] == runner.TESTED_FROM_CHECKPOINT and whole['tested'] == runner.TESTED_AT_END
    assert later['test_acc'] == whole['test_acc'] and later['test_class_acc'] == whole['test_class_acc']
    assert later['test_loss'] == pytest.approx(whole['test_loss'], rel=1e-5)
    state = torch.load(kept, weights_only=True)
    params = {n for n, _ in run.build(cfg, images, split, log=lambda line: None, plan=False).net.named_parameters()}
    if strategy in ('feature_extract', 'lora'):  # what trained and the buffers: not the whole pretrained body
        assert len(set(state) & params) < len(params) / 2


def test_a_test_only_job_without_kept_weights_trains_the_run_whole(images, tmp_path, monkeypatch):
    """Where the weights are gone (another machine, a cleaned cache), the run is trained again, tested."""
    monkeypatch.setenv('FTBENCH_CACHE', str(tmp_path / 'cache'))
    job = Job(tiny_config(CPU), test=False, test_only=True)
    out = runner.work(job, images)
    assert out['results']['tested'] == runner.TESTED_AT_END and out['results']['test_acc'] is not None
    assert not Path(record.checkpoint_path(job.key(out['env']['device_name']))).exists()


def test_a_run_frees_the_runs_before_it_without_walking_the_libraries_each_time(images, monkeypatch):
    """The first run freezes what the process held before it (the libraries, the images) out of the collector's
    walk, and a later one freezes again only where the process imported more since (a library a run imported); the
    runs in between freeze nothing, so their own models and Learners stay collectable."""
    import gc
    import types
    import weakref
    cfg = tiny_config(CPU, backbone='cifar_resnet32', head='linear', strategy='full', epochs=1)
    for seed in (0, 1):  # the second freezes whatever the first imported as it ran
        assert 'results' in runner.work(Job(replace(cfg, seed=seed)), images)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    built, real = [], run.build
    monkeypatch.setattr(run, 'build', lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    counted, count = [], gc.get_freeze_count
    monkeypatch.setattr(gc, 'get_freeze_count', lambda: counted.append(1) or count())
    assert 'results' in runner.work(Job(replace(cfg, seed=2)), images)
    assert not counted  # a walk of the frozen objects (50 ms in a real run's process): it counts modules instead
    learner = weakref.ref(built.pop().learn)
    assert gc.get_freeze_count() <= frozen  # nothing imported since: nothing frozen (a frozen object freed leaves it)
    runner.collect_garbage()  # what the next run does first
    assert learner() is None
    monkeypatch.setitem(sys.modules, 'ftbench_imported_since', types.ModuleType('ftbench_imported_since'))
    runner.collect_garbage()
    assert gc.get_freeze_count() > frozen  # imported since: what the process holds now is frozen too


def test_a_runs_peak_memory_counts_what_it_allocates_and_leaves_out_the_files_it_maps(tmp_path):
    """Library code and memory-mapped files are shared pages the OS can drop: a process that touched more of them (one
    that imported the libraries itself, rather than a worker forked after the imports) must not report more."""
    import numpy as np
    mb = 2 ** 20
    (tmp_path / 'file').write_bytes(b'\1' * (256 * mb))
    runner.reset_peak_memory('cpu')
    before = runner.peak_memory_mb('cpu')
    mapped = np.memmap(tmp_path / 'file', mode='r')
    assert int(mapped[::4096].sum()) == 256 * mb // 4096  # every page of it read: resident, file-backed
    assert runner.peak_memory_mb('cpu') - before < 64
    held = np.ones(256 * mb // 8)  # allocated and written: the process's own
    assert runner.peak_memory_mb('cpu') - before > 200 and held[-1] == 1


@pytest.mark.skipif(runner._glibc() is None, reason='the C library is not glibc: its allocator is its own')
def test_a_cpu_run_reuses_the_memory_its_steps_free_and_a_job_hands_it_back_as_it_ends(images, monkeypatch):
    """glibc hands a freed block over its mmap threshold (32 MB at most) back to the OS, and the next block that size
    is fresh pages, each faulted in (Lite0 training at 224 px: 444,000 faults, a third of its step): from a CPU job on,
    the process keeps what it frees for its next step; a job hands it back as it ends, so that a run beside it plans
    its batches on what is free."""
    import resource

    def faults_of_a_64mb_tensor():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 * 2 ** 20)  # 64 MB written, then freed
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    cfg = tiny_config(CPU, backbone='cifar_cnn', head='linear', strategy='full', epochs=1)
    assert 'results' in runner.work(Job(cfg), images)
    # the same pages come back (16,384 faulted in afresh each time otherwise; glibc's aligned allocations may need a
    # second block before they settle)
    assert min(faults_of_a_64mb_tensor() for _ in range(4)) < 1024
    runner.trim_heap()  # what this process (and the tests before, in it) freed: handed back, for a baseline
    held, real = resident_mb(), runner.train

    def train_then_free(*args, **kwargs):  # a run whose last step freed 256 MB
        out = real(*args, **kwargs)
        torch.ones(64 * 2 ** 20)
        assert resident_mb() - held > 150  # kept, resident, for a next step
        return out
    monkeypatch.setattr(runner, 'train', train_then_free)
    assert 'results' in runner.work(Job(replace(cfg, seed=1)), images)
    assert resident_mb() - held < 32  # handed back as the job ended


@pytest.mark.skipif(runner._glibc() is None, reason='the C library is not glibc: its allocator is its own')
def test_a_run_plans_its_batches_after_what_the_process_kept_went_back(images, monkeypatch):
    """What the process freed and its heap kept (a fold before it in the same job, at 224 px: gigabytes) goes back to
    the OS before a run plans its batches on the memory the OS reports free."""
    runner.keep_freed_memory()
    runner.trim_heap()
    held = resident_mb()
    torch.ones(64 * 2 ** 20)  # 256 MB, freed: kept
    assert resident_mb() - held > 150
    at_build, real = [], run.build
    monkeypatch.setattr(run, 'build', lambda *a, **k: at_build.append(resident_mb()) or real(*a, **k))
    runner.train(tiny_config(CPU, backbone='cifar_cnn', head='linear', strategy='full', epochs=1), images,
                 data.split(images, valid_frac=0.25), test=False, log=lambda line: None)
    assert at_build[0] - held < 32


@pytest.mark.parametrize('strategy,folds', [('bitfit', True), ('full', False)])
def test_a_cpu_run_trains_the_batchnorms_its_strategy_freezes_folded_into_their_convs(strategy, folds, images):
    """BitFit's BatchNorms are frozen (fastai's BnFreeze, in its warm-up too): no pass of their own, forward or
    backward, in the warm-up, the training or the evaluation; full fine-tuning's train and update their statistics."""
    cfg = tiny_config(CPU, backbone='cifar_resnet32', head='linear', strategy=strategy, epochs=1)
    built = run.build(cfg, images, data.split(images, valid_frac=0.25), log=lambda line: None)
    built.evaluate(built.valid_dl)  # the evaluation copy is made (and checked against the model) once, here
    with Ops() as ops:
        built.warm_up()
        built.train()
    assert (ops.batch_norms() == 0) is folds and built.runlog.epochs
