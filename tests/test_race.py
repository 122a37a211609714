"""The race's rungs are prefixes of the whole run, and successive halving keeps what it should."""
import pytest

from bench import data, record, runner
from tests.helpers import tiny_config

CPU = record.Hardware('cpu', 'cpu: test (2 cores)')


@pytest.mark.parametrize('strategy,stop_at', [('full', 0.25), ('lp_ft', 0.5)])
def test_a_run_stopped_early_is_the_whole_runs_prefix(images, strategy, stop_at):
    # tiny data: 60 training images in batches of 8 -> 8 batches an epoch, 2 epochs = 16 steps; lp_ft's linear probe is
    # the first epoch, so a stop at 0.25 ends inside it and one at 0.75 inside the fine-tune
    split = data.split(images, valid_frac=0.25)
    settings = dict(strategy=strategy, epochs=2, bs=8, backbone='resnet18', weights='none', head='linear',
                    cache_features='off')
    whole = runner.train(tiny_config(CPU, **settings), images, split, test=False, log=lambda line: None)
    part = runner.train(tiny_config(CPU, stop_at=stop_at, **settings), images, split, log=lambda line: None)
    steps = int(stop_at * 16)
    assert part['epochs'][-1]['epoch'] == pytest.approx(steps / 8)
    assert part['valid_curve'][-1]['epoch'] == pytest.approx(steps / 8)
    here = [p for p in whole['valid_curve'] if p['epoch'] == pytest.approx(steps / 8)]
    assert here, 'the whole run has a validation point where the part stopped'
    assert part['valid_loss'] == pytest.approx(here[0]['valid_loss'], rel=1e-5)
    assert part['valid_acc'] == here[0]['valid_acc']
    assert part['test_acc'] is not None  # a stopped run is still tested where asked
    assert sum(e['train_seconds'] for e in part['epochs']) == pytest.approx(part['train_seconds'])
    assert part['train_seconds'] < whole['train_seconds']
