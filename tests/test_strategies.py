"""Every registered strategy, driven by the registry (as timm's tests loop over list_models): its plan on a
parameter-free model, and a real fit on a tiny CIFAR ResNet (BatchNorm included) that trains exactly what the plan
says, epoch by epoch, and leaves the rest untouched, running statistics included."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from fastai.basics import Callback, even_mults

import backbones
from bench import finetune
from bench.declare import record, strategies
from bench.declare.config import Config
from bench.declare.strategies import STRATEGIES, problem, register
from bench.images import data
from bench.train import run, runlog, runner
from bench.train.resolve import resolve_auto
from tests.helpers import TINY, run_script

MODEL = 'cifar_resnet32'  # groups: stages.0 (with the stem), stages.1, stages.2, head


def tiny(strategy, **kw):
    base = dict(experiment='t', backbone=MODEL, weights='none', head='linear', strategy=strategy, epochs=3, bs=16,
                size=0, resize=0, normalize='unit', unfreeze_at=(1, 2), lr=1e-3, head_lr=1e-2, device='cpu',
                cache_features='off')
    return resolve_auto(Config(**{**base, **kw}))


def fit(cfg, images):
    """Build `cfg`'s run (bench/train/run.py) over the tiny data and run its strategy: (the run, state before)."""
    torch.manual_seed(0)
    built = run.build(cfg, images, data.split(images, valid_frac=0.25, subset=32), log=lambda line: None)
    before = {k: v.clone() for k, v in built.net.state_dict().items()}
    built.train(log=lambda line: None)
    return built, before


def expected_to_move(learn, planned, train_bn):
    """{state_dict key: whether training should change it}: a parameter iff some phase of the plan trains it;
    BatchNorm statistics iff their layer's weight trains (fastai's BnFreeze keeps a layer with a frozen weight in
    eval mode), or, with train_bn, once anything trains."""
    trained = {n for ph in planned['phases'] for n in ph['names']}
    out = {}
    for name, m in learn.model.named_modules():
        for k, _ in m.named_parameters(recurse=False):
            out[f'{name}.{k}'] = f'{name}.{k}' in trained
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            updates = f'{name}.weight' in trained or (train_bn and bool(planned['phases']))
            out.update({f'{name}.running_mean': updates, f'{name}.running_var': updates})
    return out


CASES = [(name, {}) for name in STRATEGIES if name not in ('zero_shot',)] + [
    ('zero_shot', dict(weights='hub')), ('partial', dict(unfreeze=2)), ('full', dict(lr_mult=100)),
    ('feature_extract', dict(train_bn=True))]


@pytest.mark.parametrize('name,settings', CASES, ids=[f'{n}-{"-".join(map(str, s.values())) or "default"}'
                                                      for n, s in CASES])
def test_a_strategy_trains_what_its_plan_says(name, settings, images):
    cfg = tiny(name, **settings)
    planned = run.planned(cfg, len(images.classes))
    built, before = fit(replace(cfg, weights='none'), images)
    learn, log = built.learn, built.runlog
    assert [{k: v for k, v in ph.items()} for ph in built.phases] == planned['phases']  # the real plan is the meta one
    per_epoch = [ph for ph in planned['phases'] for _ in range(ph['start'], ph['stop'])]
    assert [e['trainable'] for e in log.epochs] == [ph['trainable'] for ph in per_epoch]
    assert len(log.epochs) == sum(ph['stop'] - ph['start'] for ph in planned['phases'])
    expected = expected_to_move(learn, planned, cfg.train_bn)
    for key, value in learn.model.state_dict().items():
        if key.endswith('num_batches_tracked'):
            continue
        assert (not torch.equal(value, before[key])) == expected[key], (key, expected[key])
    if planned['phases'] and not planned['phases'][-1]['one_cycle']:
        assert np.allclose([h['lr'] for h in learn.opt.hypers], planned['phases'][-1]['lrs'])


def test_discriminative_lrs_follow_fastais_slice(images):
    learn = fit(tiny('full', epochs=1, lr_mult=100), images)[0].learn
    assert np.allclose([h['lr'] for h in learn.opt.hypers], [*even_mults(1e-5, 1e-3, 3), 1e-2])
    learn = fit(tiny('progressive', lr_mult=10), images)[0].learn
    assert np.allclose([h['lr'] for h in learn.opt.hypers][:-1], even_mults(1e-4, 1e-3, 3))
    assert learn.opt.hypers[-1]['lr'] == pytest.approx(1e-2)


class OptimizerLRs(Callback):
    """Every training batch: the LR each parameter group of the real optimizer holds, for the groups that train."""
    def __init__(self):
        self.seen = []  # per batch: [(group index, lr) for the groups with a trainable parameter]

    def before_step(self):
        self.seen.append([(i, h['lr']) for i, (h, ps) in enumerate(zip(self.learn.opt.hypers,
                                                                         self.learn.opt.param_lists))
                          if any(p.requires_grad for p in ps)])


BODY_LR, HEAD_LR = 3e-4, 7e-3  # apart from every default, so a rate taken from the wrong setting shows


@pytest.mark.parametrize('name', [n for n in STRATEGIES if n != 'zero_shot'])
def test_the_head_trains_at_the_heads_lr_and_the_body_at_the_bodys_in_every_strategy(name, images):
    """The rule of bench/declare/strategies.py, read from the optimizer while the strategy trains: the new head at head_lr
    in every batch (at its one-cycle peak, for fine_tune's fixed one-cycle recipe), every body group at lr or below
    it (spread by lr_mult or layer decay), the top one at lr."""
    cfg = tiny(name, lr=BODY_LR, head_lr=HEAD_LR, lr_mult=10, sched='flat')
    watch = OptimizerLRs()
    torch.manual_seed(0)
    built = run.build(cfg, images, data.split(images, valid_frac=0.25, subset=32), log=lambda line: None)
    learn = built.learn
    learn.add_cb(watch)
    built.train(log=lambda line: None)
    assert watch.seen, 'the strategy trained no batch'
    head = len(learn.opt.param_lists) - 1
    one_cycle = name == 'fine_tune'
    assert max(dict(groups)[head] for groups in watch.seen) == pytest.approx(HEAD_LR), name
    for groups in watch.seen:
        lrs = dict(groups)
        assert lrs[head] <= HEAD_LR * (1 + 1e-9) if one_cycle else lrs[head] == pytest.approx(HEAD_LR), (name, lrs)
        body = [lr for i, lr in groups if i != head]
        assert all(lr <= BODY_LR * (1 + 1e-9) for lr in body), (name, lrs)
    trained_body = [lr for groups in watch.seen for i, lr in groups if i != head]
    if name != 'feature_extract':
        assert trained_body and max(trained_body) == pytest.approx(BODY_LR), (name, max(trained_body or [0]))
    else:
        assert not trained_body


def test_the_lrs_a_run_records_are_the_optimizers(images):
    cfg = tiny('partial', lr=BODY_LR, head_lr=HEAD_LR, epochs=2)
    split = data.split(images, valid_frac=0.25, subset=32)
    out = runner.train(cfg, images, split, test=False, log=lambda m: None)
    assert out['lrs'][-1] == pytest.approx(HEAD_LR) and out['lrs'][-2] == pytest.approx(BODY_LR)
    assert all(x is None for x in out['lrs'][:-2])  # partial: the earlier stages never trained
    assert len(out['valid_curve']) >= runlog.MIN_POINTS  # two epochs: two points in each
    assert [p['epoch'] for p in out['valid_curve']] == [0.5, 1, 1.5, 2]


def test_progressive_resets_the_optimizer_at_each_unfreeze(images):
    learn = fit(tiny('progressive'), images)[0].learn
    head_weight = learn.model.head[-1].weight
    steps_per_epoch = 2  # 32 training images, batches of 16
    assert int(learn.opt.opt.state[head_weight]['step']) == steps_per_epoch  # the last phase's steps only


def test_zero_shot_trains_nothing_even_when_validated(images):
    built, before = fit(tiny('zero_shot'), images)
    learn, log = built.learn, built.runlog
    learn.validate()  # fastai fires fit and epoch events here too; they are not training
    assert log.epochs == [] and log.trainable_max == 0
    assert all(torch.equal(v, before[k]) for k, v in learn.model.state_dict().items())


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match='registered twice'):
        register(STRATEGIES['full'].fit)


@pytest.fixture
def registry():
    """The registry as it was, after the test."""
    names = set(STRATEGIES)
    yield STRATEGIES
    for name in set(STRATEGIES) - names:
        del STRATEGIES[name]


def test_adding_a_strategy_is_one_decorated_function(registry, dataset_dir, tmp_path):
    def check_two_epochs(cfg, spec):
        return None if cfg.epochs >= 2 else 'head_then_last needs --epochs of at least 2'

    @register(check=check_two_epochs, refreezes=True)
    def head_then_last(learn, cfg):
        """The head for one epoch, then the last stage with it."""
        learn.freeze()
        learn.fit(1, cfg.head_lr)
        learn.freeze_to(-2)
        learn.fit(cfg.epochs - 1, cfg.lr)

    results = tmp_path / 'r.jsonl'
    assert run_script(finetune, ['--data', str(dataset_dir), '--results', str(results), *TINY, '--epochs', '2',
                                 '--strategy', 'head_then_last']) == 0
    rec, = record.read(results)
    assert rec['strategy'] == 'head_then_last' and [e['trainable'] for e in rec['epochs']][0] < rec['params_trainable']
    spec = backbones.describe(MODEL)
    assert 'head_then_last needs --epochs of at least 2' in problem(replace(tiny('head_then_last'), epochs=1), spec)
    assert problem(replace(tiny('head_then_last'), compile=True), spec).startswith('--compile breaks a frozen set')


@pytest.mark.parametrize('change,message', [
    (dict(strategy='partial', unfreeze=9), '--unfreeze must be between 1 and 3 (the stages of cifar_resnet32)'),
    (dict(strategy='progressive', unfreeze_at=(2, 1)), '--unfreeze-at must be increasing'),
    (dict(strategy='progressive', unfreeze_at=(1, 3)), 'between 1 and 2'),
    (dict(strategy='fine_tune', epochs=1), 'at least 2'),
    (dict(strategy='lp_ft', epochs=3, lp_epochs=3), '--lp-epochs must be between 1 and 2'),
    (dict(strategy='progressive', compile=True), 'compile'),
    (dict(strategy='full', cache_features='on'), '--cache-features needs a strategy whose body never trains'),
    (dict(strategy='feature_extract', cache_features='on', augment=True), 'drop --augment'),
    (dict(strategy='nope'), 'unknown strategy'),
    (dict(strategy='zero_shot'), 'zero_shot with --weights none evaluates a random network'),
    (dict(strategy='norm_only', backbone='vgg16'), 'vgg16 has no normalization layers for norm_only to train'),
])
def test_strategy_problems(change, message):
    cfg = replace(tiny('full'), **change)
    assert message in problem(cfg, backbones.describe(cfg.backbone))


def test_cache_features_auto_is_on_only_where_the_strategy_allows_it():
    assert [resolve_auto(replace(tiny(name), cache_features='auto')).cache_features for name in STRATEGIES] == \
        ['on' if strategies.STRATEGIES[name].body_frozen else 'off' for name in STRATEGIES]
    assert resolve_auto(replace(tiny('feature_extract'), cache_features='auto', augment=True)).cache_features == 'off'


def test_the_record_says_how_many_batchnorm_layers_updated_their_statistics(images):
    counts = {}
    for name in ('feature_extract', 'bitfit', 'norm_only', 'lp_ft', 'full'):
        counts[name] = fit(tiny(name), images)[0].runlog.batchnorm
    n = counts['full'][1]
    assert n > 0 and counts['full'] == (n, n) and counts['norm_only'] == (n, n)  # weights train: statistics too
    assert counts['feature_extract'] == (0, n) and counts['bitfit'] == (0, n)  # frozen weights: BnFreeze keeps them
    assert counts['lp_ft'] == (n, n)  # the probe phase kept them, the fine-tune phase updated them
