"""W8 (bench/analysis/regimes.py): regime agreement on a case known by hand, its section and figure; the regimes as runs
(finetune --regime) and the dry run's time estimate (bench/analysis/estimate.py)."""
import json
import math

import pytest

from bench import finetune
from bench.analysis import estimate, regimes, stats
from bench.declare import record
from bench.declare.config import Config
from bench.report import leaderboard
from bench.sweep import tune
from tests.helpers import rec, run_script

# Caltech-101-like scores (mean per-class accuracy, %) by regime: the cheap one reverses the native order (W8's native
# regime: 224px-flat), the middle one keeps it with b and c tied
MEANS = {'96px': dict(a=60, b=70, c=80), '160px': dict(a=79, b=70.2, c=70), '224px-flat': dict(a=80, b=70, c=60)}
NOISE = (0.0, 0.8, -0.8)  # per seed: the same for every strategy, so pairs within a regime are paired exactly
JITTER = {'a': (0, 0.3, -0.3), 'b': (0, -0.4, 0.4), 'c': (0, 0.6, -0.6)}


def regime_records(means_by=MEANS):
    out = []
    for regime, means in means_by.items():
        size = int(regime[:3].rstrip('p'))
        for strategy, mean in means.items():
            for seed in range(3):
                score = (mean + NOISE[seed] + JITTER[strategy][seed]) / 100
                r = rec(strategy, seed, score, experiment='w8', backbone='tf_efficientnet_lite0',
                        dataset='caltech101:abc', class_acc=score)
                r['variant'] = r['config']['variant'] = regime
                r['config'].update(size=size, bs=32, epochs=2, head_lr=1e-3,
                                   sched='one_cycle' if regime == '224px' else 'flat')
                r.update(key=record.run_key(r['config'], tune.IDENTITY, r['device']), image_size=size,
                         train_images=800, valid_class_acc=score,
                         tune=dict(kind='body', field='lr', head_mult=10, grid=[1e-4], role='grid' if seed == 0 else 'seed'))
                out.append(r)
    return out


def test_agreement_on_a_case_known_by_hand():
    comp, = regimes.comparisons(stats.tables(regime_records()))
    assert [r.name for r in comp.regimes] == ['96px', '160px', '224px-flat'] and comp.native.name == '224px-flat'
    cheap, middle = (regimes.agreement(comp, r) for r in comp.regimes[:2])
    assert cheap.tau == pytest.approx(-1) and not cheap.agrees and not cheap.best_holds
    assert sorted(cheap.flips) == [('b', 'a'), ('c', 'a'), ('c', 'b')]  # each reversed, significant in both
    assert middle.tau == pytest.approx(1) and middle.flips == [] and middle.agrees and middle.best_holds
    assert regimes.verdict([comp]) == ('160px', {'96px': ['caltech101'], '160px': []})
    assert comp.regimes[1].words() == '160 px, 50 steps, flat LR'


def test_a_sign_change_significant_in_one_regime_only_is_no_flip():
    records = regime_records()
    for r in records:  # 160 px: c a little ahead of b instead of behind, within the seeds' noise
        if r['variant'] == '160px' and r['strategy'] == 'c':
            r['test_class_acc'] = r['test_acc'] = r['test_acc'] + 0.004
    comp, = regimes.comparisons(stats.tables(records))
    middle = regimes.agreement(comp, comp.regimes[1])
    assert middle.flips == [] and middle.one_sided == [('c', 'b')] and middle.tau == pytest.approx(1 / 3)
    assert not middle.agrees  # tau 0.33 < 0.6


def test_the_section_and_figure_render_from_the_records(tmp_path):
    records = regime_records()
    text = leaderboard.render(records)
    section = text.split('### Across regimes')[1]
    assert '**96px** against 224px-flat: tau = -1.00' in section and 'Does not agree' in section
    assert 'Verdict: the cheapest regime that agrees with the native one on every dataset is 160px (160 px, 50 ' \
           'steps, flat LR)' in section
    assert 'regime 96px' in text.split('### Across regimes')[0]  # a table per regime
    results = tmp_path / 'r.jsonl'
    for r in records:
        record.append(results, r)
    out = leaderboard.render_file(results)
    assert list((out.parent / 'figures').glob('w8-regimes-caltech101-*.png'))


def test_the_regimes_are_runs_of_their_own_and_a_regime_can_be_chosen(capsys):
    assert run_script(finetune, ['--preset', 'w8', '--data', 'caltech101', '--strategy', 'lora', '--regime',
                                 '96px,224px', '--seeds', '1', '--dry-run', '--cluster', 'local']) == 0
    configs = [json.loads(line[len('config: '):]) for line in capsys.readouterr().out.splitlines()
               if line.startswith('config: ')]
    assert [(c['variant'], c['size'], c['epochs'], c['sched']) for c in configs] == [('96px', 96, 2, 'flat'),
                                                                                   ('224px', 224, 3, 'one_cycle')]
    assert run_script(finetune, ['--preset', 'w8', '--regime', '128px', '--dry-run']) == 2
    assert "unknown regime '128px'; w8 declares 96px, 160px, 224px-flat, 224px" in capsys.readouterr().err


def test_the_estimate_scales_recorded_rates_by_pixels():
    r = rec('full', 0, .5, backbone='tf_efficientnet_lite0')
    r.update(wall_seconds=20., setup_seconds=1., warmup_seconds=1., train_seconds=10., images_per_second=100.,
             eval_seconds=4., valid_images=200, test_images=400, threads=1, image_size=96,
             valid_curve=[{}] * 4)
    cfg = Config(backbone='tf_efficientnet_lite0', strategy='full', epochs=2, bs=32, size=192)
    rate = estimate.nearest(estimate.rates([r], r['device']), cfg, threads=1)
    assert rate.train == pytest.approx(25.) and rate.evaluate == pytest.approx(75.)  # (200 x 4 + 400) / 4 s, / 4
    one = estimate.run_seconds(rate, cfg, n_train=800, n_valid=200, n_test=400)
    assert one == pytest.approx(2 + 1600 / 25 + 1200 / 75)
    seconds, runs, unknown = estimate.sweep_seconds([cfg], [r], r['device'], 1, 800, 200, 400, tuned=False,
                                                    side_by_side=2)
    assert (seconds, runs, unknown) == (pytest.approx(one / 2), 1, 0)
    assert estimate.nearest(estimate.rates([r], r['device']), cfg, threads=2) is None  # other threads: no estimate


def test_the_estimate_reads_how_fast_a_rate_falls_with_the_size_off_two_sizes_records():
    """Records at 96 px and at 224 px, ten times slower: 160 px is estimated by that power of the size (2.72), not
    by area; 224 px is what its own records say; above them, from 224 px by the same power."""
    def at(size, train):
        r = rec('full', 0, .5, backbone='tf_efficientnet_lite0')
        r.update(wall_seconds=20., setup_seconds=1., warmup_seconds=1., train_seconds=10., images_per_second=train,
                 eval_seconds=4., valid_images=200, test_images=400, threads=1, image_size=size, valid_curve=[{}] * 4)
        return r
    records = [at(96, 100.), at(96, 120.), at(96, 80.), at(224, 10.)]
    known = estimate.rates(records, records[0]['device'])
    k = math.log(10) / math.log(224 / 96)

    def near(size):
        return estimate.nearest(known, Config(backbone='tf_efficientnet_lite0', strategy='full', size=size), threads=1)
    assert near(224).train == pytest.approx(10.) and near(96).train == pytest.approx(100.)  # the median at 96 px
    assert near(160).train == pytest.approx(10. * (224 / 160) ** k)                       # 160 px is nearer 224 px
    assert near(128).train == pytest.approx(100. * (96 / 128) ** k)
    assert near(288).train == pytest.approx(10. * (224 / 288) ** k)
    # evaluation as fast at both sizes (the records say so): read as the slowest fall allowed, linear in the size
    assert near(160).evaluate == pytest.approx(near(224).evaluate * (224 / 160) ** estimate.MIN_POWER)


def test_a_regime_still_running_is_set_aside_and_named():
    """A regime that has not scored every strategy the native one ranks (its sweep still going) is neither compared nor
    allowed to shrink the others' comparison: it is named, with what it lacks."""
    records = regime_records() + regime_records({'224px': dict(b=70)})  # the one-cycle contrast, with b alone
    comp, = regimes.comparisons(stats.tables(records))
    assert [r.name for r in comp.regimes] == ['96px', '160px', '224px-flat'] and comp.partial == {'224px': ['a', 'c']}
    assert comp.strategies == ['a', 'b', 'c']
    section = '\n'.join(regimes.section([comp]))
    assert '**224px** is not compared yet: it has no test scores of a, c' in section
    for r in records[-3:]:  # b's one-cycle runs scored on validation only (its grid, still choosing its LR)
        r['test_acc'] = r['test_class_acc'] = None
    comp, = regimes.comparisons(stats.tables(records))
    assert comp.partial == {'224px': ['a', 'b', 'c']}
    assert 'Verdict: the cheapest regime that agrees with the native one on every dataset is 160px' in section


def test_a_contrast_is_compared_with_the_native_regime_but_never_a_candidate():
    """W8's one-cycle runs at the native budget: ranked the same as the native flat ones (tau 1), 2 pp lower for a and
    b, 1 pp higher for c, every seed; compared strategy by strategy, yet never the verdict's 'cheapest regime'."""
    records = regime_records() + regime_records({'224px': dict(a=78, b=68, c=61)})
    comp, = regimes.comparisons(stats.tables(records))
    assert [r.name for r in comp.cheaper] == ['96px', '160px'] and [r.name for r in comp.contrasts] == ['224px']
    assert regimes.verdict([comp]) == ('160px', {'96px': ['caltech101'], '160px': []})
    line = regimes.contrast_line(comp, comp.contrasts[0])
    assert line.startswith('- **224px** (224 px, 50 steps, one-cycle (warm-up, then a cosine decay to 0)), a contrast '
                           'with 224px-flat: tau = +1.00')
    assert 'a +2.0 pp (+2.0 to +2.0); b +2.0 pp (+2.0 to +2.0); c -1.0 pp (-1.0 to -1.0)' in line
    assert '224px-flat scores higher with significance on 2 of 3 strategies and lower on 1' in line
    assert line in regimes.section([comp])
    text = leaderboard.render(records)
    assert 'cheapest regime agreeing with the native one: 160px' in text


def test_the_advisors_answer_says_what_w8_found_at_its_image_size():
    from bench.report import advice
    comps = advice.w8_comparisons(regime_records())

    def said(size, backbone='tf_efficientnet_lite0'):
        adv = advice.Advice('caltech101', backbone, 'cpu', 'cpu', 2, size, {}, [],
                            stats.Table('advise', 'cpu', 'cpu', [], 'caltech101', 'test_class_acc', True), 0, 0, 200)
        line, = advice.regime_lines(adv, comps)
        return line
    assert said(96) == ('- Regime: 96 px. W8: on caltech101 its 96px regime (96 px, 50 steps, flat LR) does not agree '
                        'with the native ranking (224 px, 50 steps, flat LR): tau -1.00, 3 significant flips.')
    assert 'its 160px regime (160 px, 50 steps, flat LR) agrees with the native ranking' in said(160)
    assert said(224).startswith('- Regime: 224 px. W8\'s native regime trains at this size (224 px, 50 steps')
    assert 'W8 measured no regime at 128 px: whether this ranking holds at 224 px is not known.' in said(128)
    assert said(96, 'test_resnet').endswith('W8 measured tf_efficientnet_lite0, not test_resnet: how far its finding '
                                            'carries is not known.')
    assert 'W8 has no records here' in advice.regime_lines(
        advice.Advice('x', 'y', 'cpu', 'cpu', 2, 96, {}, [], stats.Table('advise', 'cpu', 'cpu', [], 'x'), 0, 0, 9),
        [])[0]
