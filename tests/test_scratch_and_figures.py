"""W3's models, the scratch script's rows, and the figures drawn from records."""
import struct

import matplotlib.pyplot as plt
import pytest
import timm
import torch

import backbones
from bench import scratch
from bench.analysis import stats
from bench.declare import record
from bench.report import figures, leaderboard
from tests.helpers import FIXTURE, rec, rendered


def test_cifar_resnet32_is_registered_with_timm_and_has_the_seeds_parameter_count():
    assert 'cifar_resnet32' in timm.list_models('cifar_*')
    model = timm.create_model('cifar_resnet32')
    assert sum(p.numel() for p in model.parameters()) == 466906
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_cifar_resnet32_stages_and_the_suites_build_agree():
    net, _ = backbones.build('cifar_resnet32', 10, head='linear', weights='none')
    assert net.stage_names == ('stages.0', 'stages.1', 'stages.2')
    assert sum(p.numel() for p in net.parameters()) == 466906


def test_vgg16_from_scratch_with_the_seeds_head():
    net, desc = backbones.build('vgg16', 10, head='mlp', hidden=256, dropout=0.5, weights='none')
    assert sum(p.numel() for p in net.parameters()) == 14848586 and desc == 'none'


def test_scratch_rows_are_the_seeds_and_the_repairs():
    cfgs = scratch.configs(scratch.parse(['--profile', 'full']), record.hardware('cpu'))
    rows = {(c.backbone, c.variant): c for c in cfgs}
    assert set(rows) == {('cifar_resnet32', 'seed'), ('cifar_resnet32', 'augment'), ('vgg16', 'seed'),
                         ('vgg16_bn', 'bn'), ('vgg16', 'lr1e-4')}
    seed = rows[('vgg16', 'seed')]
    assert (seed.lr, seed.bs, seed.epochs, seed.opt, seed.weights, seed.head_dropout, seed.normalize) == \
        (1e-3, 64, 30, 'adam', 'none', 0.5, 'unit')
    assert rows[('cifar_resnet32', 'augment')].augment and not rows[('cifar_resnet32', 'seed')].augment
    assert rows[('vgg16', 'lr1e-4')].lr == 1e-4


def test_scratch_flags_select_and_override():
    cfgs = scratch.configs(scratch.parse(['--profile', 'cpu', '--variants', 'seed', '--epochs', '2']),
                           record.hardware('cpu'))
    assert {(c.backbone, c.variant) for c in cfgs} == {('cifar_resnet32', 'seed'), ('vgg16', 'seed')}
    assert all(c.epochs == 2 and c.subset == scratch.W3.cpu['subset'] for c in cfgs)


def test_pareto_front_on_hand_made_points():
    points = [(10, 0.50), (20, 0.70), (15, 0.40), (40, 0.70), (5, 0.30), (30, 0.90), (30, 0.85)]
    assert figures.pareto_front(points) == [4, 0, 1, 5]


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b'\x89PNG\r\n\x1a\n'
    return struct.unpack('>II', head[16:24])


def test_figures_from_fixture_records(tmp_path):
    records = FIXTURE + [rec('full', 2, 0.91, secs=11.0)]
    table = next(t for t in stats.tables(stats.latest_per_run(records)[0]) if t.experiment == 'w1')
    made = figures.draw(table, tmp_path / 'figures', 'w1-test', 'W1')
    assert [p.name for _, p in made] == ['w1-test-curves.png', 'w1-test-pareto.png']
    for _, path in made:
        width, height = png_size(path)
        assert 400 < width < 3000 and 300 < height < 2000


def test_a_table_whose_rows_train_different_counts_gets_the_trainable_figure(tmp_path):
    records = [dict(rec(strategy, seed, acc + seed / 100), params_trainable=trainable)
               for strategy, acc, trainable in (('full', 0.9, 11_000_000), ('lora', 0.85, 200_000),
                                                ('feature_extract', 0.6, 5_130)) for seed in range(3)]
    table, = stats.tables(records)
    made = dict((p.name, caption) for caption, p in figures.draw(table, tmp_path, 'w5', 'W5'))
    assert made['w5-trainable.png'].startswith('Accuracy against trainable parameters')
    fig = figures.pareto_figure(table.rows, 'W5', against='trainable')
    assert fig.axes[0].get_xscale() == 'log' and 'trainable parameters' in fig.axes[0].get_xlabel()


def test_leaderboard_links_its_figures(tmp_path):
    results = tmp_path / 'results.jsonl'
    for r in FIXTURE:
        record.append(results, r)
    text = rendered(results)
    assert '![Learning curves](figures/w1-test-2-cores-cpu-curves.png)' in text
    assert (tmp_path / 'figures' / 'w1-test-2-cores-cpu-pareto.png').exists()


def test_no_figures_without_successful_records(tmp_path):
    assert stats.tables(stats.latest_per_run([rec('full', 0, None, error='boom')])[0]) == []
    results = tmp_path / 'empty.jsonl'
    results.write_text('')
    assert leaderboard.render_file(results).exists()
    assert not (tmp_path / 'figures').exists()


def test_shaded_band_needs_several_seeds(tmp_path):
    row = stats.Row('full', [rec('full', 0, 0.9), rec('full', 1, 0.8)])
    path = figures.curves([row], tmp_path / 'c.png', 't')
    assert path.exists() and png_size(path)[0] > 400


@pytest.mark.parametrize('lo,hi', [(11.0, 14.0), (3.2, 9.5), (0.8, 700.0), (1e-4, 1e-3)])
def test_a_log_axis_has_tick_labels_whatever_its_span(lo, hi):
    fig, ax = plt.subplots()
    ax.plot([lo, hi], [0, 1])
    figures.log_x_axis(ax, lo, hi)
    fig.canvas.draw()
    left, right = ax.get_xlim()
    labels = [t.get_text() for t in ax.get_xticklabels() if left <= t.get_position()[0] <= right and t.get_text()]
    plt.close(fig)
    assert len(labels) >= 2, labels


def test_pareto_points_carry_std_bars_over_seeds():
    rows = [stats.Row('full', [rec('full', s, a, secs=t) for s, (a, t) in enumerate([(0.9, 10), (0.8, 12)])]),
            stats.Row('zero', [rec('zero', 0, 0.85, secs=5.0)])]
    fig = figures.pareto_figure(rows, 't')
    bars = fig.axes[0].containers
    plt.close(fig)
    assert [(b.has_xerr, b.has_yerr) for b in bars] == [(True, True), (False, False)]
    x_bar = bars[0].lines[2][0].get_segments()[0]  # from mean - std to mean + std of the training seconds
    assert x_bar[0][0] == pytest.approx(11 - 2 ** 0.5) and x_bar[1][0] == pytest.approx(11 + 2 ** 0.5)
