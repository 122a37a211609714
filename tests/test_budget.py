"""What a budget buys the advisor (bench/sweep/budget.py): image sizes as levels of the plan, costs read off probes
at two sizes, and the richest level that fits; `advise.py --plan-only` showing them on the tiny data."""
import math

import pytest

from bench import advise
from bench.sweep import budget
from tests.helpers import run_script


def probes(step_s=0.1, error=None, setup_s=1.0, valid_s=0.5):
    return [budget.Probe(s, setup_s, step_s, valid_s, 2 * valid_s, 900, error if s == 'full' else None)
            for s in ('feature_extract', 'bitfit', 'full')]


def test_the_plan_is_the_richest_level_that_fits_and_a_small_budget_is_told_the_smallest():
    at96 = {96: probes()}
    cheap, costly = (budget.estimate(budget.Level(96, n, 2), probes(), 25) for n in (1, 3))
    assert cheap < costly < budget.estimate(budget.Level(96, 3, 4), probes(), 25)
    assert budget.plan(at96, 25, 2, budget_s=costly + 10, spent_s=10).level == budget.Level(96, 3, 2)
    assert budget.plan(at96, 25, 2, budget_s=1e6, spent_s=10).level == budget.Level(96, 3, 2 * budget.MAX_LONGER)
    assert budget.plan(at96, 25, 2, budget_s=1e6, spent_s=10, longer=False).level == budget.Level(96, 3, 2)
    refused = budget.plan(at96, 25, 2, budget_s=cheap, spent_s=10)
    assert refused.level is None and refused.smallest_s == pytest.approx(cheap + 10)
    # a strategy that did not fit the memory costs nothing: it is not raced
    assert budget.estimate(budget.Level(96, 3, 2), probes(error='too big'), 25) < costly


def test_image_sizes_run_from_the_profiles_to_the_pretrained_one_with_w8s_middle_between():
    assert budget.image_sizes(96, 224) == [96, 160, 224]
    assert budget.image_sizes(128, 224) == [128, 160, 224]
    assert budget.image_sizes(96, 384) == [96, 288, 384]     # 384 x 160/224 = 274 -> 288, a multiple of 32
    assert budget.image_sizes(160, 192) == [160, 192]         # the middle (128) is not between
    assert budget.image_sizes(224, 224) == [224]


def test_pixels_come_before_longer_runs_and_each_size_is_costed_by_its_own_probes():
    assert budget.levels(2, [96, 160, 224]) == [
        budget.Level(96, 1, 2), budget.Level(96, 3, 2), budget.Level(160, 3, 2), budget.Level(224, 3, 2)] + [
        budget.Level(224, 3, 2 * m) for m in range(2, budget.MAX_LONGER + 1)]
    by_size = {96: probes(0.1), 160: probes(0.4), 224: probes(1.0)}
    at = {s: budget.estimate(budget.Level(s, 3, 2), by_size[s], 25) for s in by_size}
    assert at[96] < at[160] < at[224]
    assert budget.plan(by_size, 25, 2, budget_s=(at[160] + at[224]) / 2, spent_s=0).level == budget.Level(160, 3, 2)
    assert budget.plan(by_size, 25, 2, budget_s=at[224] + 1, spent_s=0).level == budget.Level(224, 3, 2)
    # 224 px past the budget: longer runs at 160 px, as long as they fit, listed after it and before 224 px
    longer160 = budget.estimate(budget.Level(160, 3, 4), by_size[160], 25)
    assert at[160] < longer160 < at[224]
    middle = budget.plan(by_size, 25, 2, budget_s=longer160 + 0.1, spent_s=0)
    assert middle.level == budget.Level(160, 3, 4)
    assert [lv for lv, _ in middle.options][2:6] == [budget.Level(160, 3, 2), budget.Level(160, 3, 4),
                                                     budget.Level(160, 3, 6), budget.Level(224, 3, 2)]
    assert budget.plan(by_size, 25, 2, budget_s=longer160 + 0.1, spent_s=0, longer=False).level == \
        budget.Level(160, 3, 2)
    chosen = budget.plan(by_size, 25, 2, budget_s=at[224] + 1, spent_s=0)
    assert [lv for lv, _ in chosen.options][:4] == budget.levels(2, [96, 160, 224])[:4]
    assert dict(chosen.options)[budget.Level(160, 3, 2)] == pytest.approx(at[160])


def test_a_size_between_two_probed_ones_is_read_off_them_by_the_power_they_show():
    """Steps 10x slower at 224 px than at 96 px: a power of ln 10 / ln(224/96) = 2.72 of the size, not area's 2."""
    measured = {96: probes(0.1, setup_s=1.0), 224: probes(1.0, setup_s=1.0, valid_s=0.5 * (224 / 96) ** 2)}
    mid = budget.between(measured, 160)
    k = math.log(10) / math.log(224 / 96)
    assert mid[0].step_s == pytest.approx(0.1 * (160 / 96) ** k)
    assert mid[0].valid_s == pytest.approx(0.5 * (160 / 96) ** 2) and mid[0].setup_s == pytest.approx(1.0)
    assert budget.between(measured, 224) == measured[224]
    measured[224] = measured[224][::-1]  # the probes come back in the order they finished: paired by strategy
    assert budget.between(measured, 160) == mid
    # a strategy that does not fit at the larger size is taken not to fit between
    measured[224] = probes(1.0, error='does not fit 1024 MB')
    assert [p.error for p in budget.between(measured, 160)] == [None, None, 'does not fit 1024 MB']
    # by area, a bound from below: 160 px at (160/96)^2 the 96 px step
    assert budget.area_bound(probes(0.1), 96, 160)[0].step_s == pytest.approx(0.1 * (160 / 96) ** 2)


TINY = ['--backbone', 'test_resnet', '--weights', 'none', '--bs', '16', '--epochs', '2',
        '--strategy', 'feature_extract,bitfit', '--profile', 'cpu', '--no-render', '--cluster', 'local', '--plan-only']


def test_plan_only_weighs_image_sizes_up_to_the_pretrained_one(dataset_dir, tmp_path, capsys):
    """test_resnet's pretrained size is 160 px: the plan weighs 96 (the cpu profile's), 128 and 160 px, probes at 96
    and 160, reads 128 off them, and a budget this tiny model cannot exhaust buys the pretrained size (at the
    --epochs given: no longer runs)."""
    results = tmp_path / 'r.jsonl'
    assert run_script(advise, ['--data', str(dataset_dir), '--budget', '30m', '--results', str(results), *TINY]) == 0
    out = capsys.readouterr().out
    assert 'image sizes the plan weighs: 96 px, 128 px, 160 px' in out
    assert '  128 px (read off the sizes around it): ' in out and '  160 px: feature_extract' in out
    assert '160 px, every LR of its grid (3); whole runs of 2 epochs: about' in out
    assert 'plan: 2 strategies, 160 px, every LR of its grid (3); whole runs of 2 epochs' in out  # --epochs: no longer
    assert not results.exists()  # a plan writes nothing


def test_size_fixes_the_plans_image_size_and_a_model_of_one_size_has_that_alone():
    from bench.declare.config import Config
    assert advise.plan_sizes(Config(backbone='tf_efficientnet_lite0', size=96), fixed=False) == [96, 160, 224]
    assert advise.plan_sizes(Config(backbone='tf_efficientnet_lite0', size=128), fixed=True) == [128]
    assert advise.plan_sizes(Config(backbone='vit_tiny_patch16_224', size=224), fixed=False) == [224]


def test_the_race_runs_at_the_planned_size_without_the_strategies_that_do_not_fit_there():
    from bench.declare.config import Config
    cfgs = [Config(backbone='tf_efficientnet_lite0', strategy=s, size=96, resize=96, epochs=2)
            for s in ('feature_extract', 'bitfit', 'full')]
    base = advise.race_configs(cfgs, budget.Level(224, 3, 4), probes(error='does not fit 1024 MB'))
    assert sorted(base) == ['bitfit', 'feature_extract']
    assert {(c.size, c.resize, c.epochs) for c in base.values()} == {(224, 224, 4)}


def test_the_plan_names_the_sizes_it_could_not_afford_with_their_cost_bound_by_area():
    from bench.declare.config import Config
    at96 = {96: probes(0.1)}
    grid96 = budget.estimate(budget.Level(96, 3, 2), probes(0.1), 25)
    plan = budget.plan(at96, 25, 2, budget_s=grid96 + 5, spent_s=0)
    lines = advise.plan_lines(plan, at96, [96, 160, 224], Config(bs=32, epochs=2), grid96 + 5, 0, 25)
    assert '  96 px, every LR of its grid (3); whole runs of 2 epochs: about ' in '\n'.join(lines)
    bound = budget.estimate(budget.Level(160, 3, 2), budget.area_bound(probes(0.1), 96, 160), 25)
    assert (f'  160 px, every LR of its grid (3); whole runs of 2 epochs: at least {advise.clock(bound)} (not probed: '
            f'96 px\'s costs scaled by area, a bound from below, are over the budget)') in lines
    assert lines[-1].startswith('plan: 3 strategies, 96 px, every LR of its grid (3); whole runs of 2 epochs')
