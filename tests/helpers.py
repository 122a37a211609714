"""What several test modules share: a tiny run (its flags and its config), running a script as the shell would,
hand-made records, the aten ops a computation runs."""
import signal
from pathlib import Path

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from bench.command import cli
from bench.declare import record
from bench.declare.config import Config
from bench.train.resolve import resolve_auto

# A run on the tiny synthetic data: a small CNN from scratch, one epoch, no bars, no rendering.
TINY = ['--backbone', 'cifar_cnn', '--weights', 'none', '--head', 'mlp', '--size', '0', '--resize', '0',
        '--epochs', '1', '--bs', '16', '--normalize', 'unit', '--profile', 'full', '--no-bar', '--no-render',
        '--tune', 'off', '--cluster', 'local']  # tuning and executors have tests of their own


def as_at_a_terminal():
    """Ctrl-C's default action in the child, as a shell at a terminal gives it: a test run from a background job
    (`make test &`) inherits SIGINT ignored, and a script that ignores it is never interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def resident_mb():
    """This process's resident set now, in MB (Linux)."""
    status = Path('/proc/self/status').read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith('VmRSS:'))) / 1024


def tiny_config(target=None, **settings):
    """TINY's run as a resolved Config (on the CPU), with `settings` changed; `target` as for resolve_auto."""
    base = dict(backbone='cifar_cnn', weights='none', head='mlp', strategy='full', epochs=1, bs=16, size=0,
                resize=0, normalize='unit', device='cpu')
    return resolve_auto(Config(**{**base, **settings}), target)


def run_script(module, argv):
    """`module.main(argv)` through bench.sweep.cli.main, which turns user mistakes into exit code 2: the exit code."""
    with pytest.raises(SystemExit) as e:
        cli.main(lambda: module.main(argv))
    return e.value.code


def rendered(results):
    """Every page the leaderboard renders from `results` (bench/report/leaderboard.py), the front page first."""
    from bench.report import leaderboard
    out = leaderboard.render_file(results)
    return '\n'.join(p.read_text() for p in [out, *sorted(set(out.parent.glob('*.md')) - {out})])


def rec(strategy, seed, test_acc, *, experiment='w1', backbone='resnet18', error=None, lr=1e-4, secs=10.0,
        device='cpu: test (2 cores)', profile='cpu', dataset='', class_acc=None):
    """A record as a run of `strategy` with `seed` would leave it (an error row if `error`)."""
    config = dict(experiment=experiment, backbone=backbone, strategy=strategy, seed=seed, lr=lr, epochs=3, size=64,
                  profile=profile, dataset=dataset)
    return dict(key=record.run_key(config, device=device), experiment=experiment, variant='', backbone=backbone,
                strategy=strategy, weights='file:w.safetensors sha256:abc', profile=profile, seed=seed, config=config,
                device=device, versions={'torch': '2'}, git_sha='deadbeef', started_at='2026-01-01T00:00:00+00:00',
                error=error,
                epochs=[] if error else [dict(epoch=1, train_loss=1.0, valid_loss=1.0, valid_acc=test_acc,
                                               train_seconds=secs, valid_seconds=1.0, trainable=5)],
                valid_acc=None if error else test_acc, test_acc=None if error else test_acc,
                test_class_acc=None if error else class_acc,
                test_loss=None if error else 1.234, train_seconds=None if error else secs,
                eval_seconds=None if error else 1.0, images_per_second=None if error else 100.0,
                peak_memory_mb=None if error else 512.0, params_total=None if error else 100,
                params_trainable=None if error else 5, image_size=64)


# Two experiments, seeds to pool, a zero-shot floor and two error rows.
FIXTURE = [rec('full', 0, 0.90), rec('full', 1, 0.92, secs=12.0), rec('partial', 0, 0.95),
           rec('zero_shot', 0, 0.10), rec('full', 0, None, backbone='resnet50', error='no weights offline'),
           rec('partial', 0, None, backbone='resnet50', error='no weights offline'),
           rec('full', 0, 0.50, experiment='w2', backbone='vgg16')]


class Ops(TorchDispatchMode):
    """The names of the aten ops run inside it."""
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))

    def batch_norms(self):
        return sum('batch_norm' in name for name in self.names)
