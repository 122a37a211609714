"""Hand-made run records, for the tests of everything that reads records (leaderboard, figures, benchmarks)."""
from bench import record


def rec(strategy, seed, test_acc, *, experiment='w1', backbone='resnet18', error=None, lr=1e-4, secs=10.0,
        device='cpu: test (2 cores)', profile='cpu'):
    config = dict(experiment=experiment, backbone=backbone, strategy=strategy, seed=seed, lr=lr, epochs=3, size=64,
                  profile=profile)
    return dict(key=record.run_key(config, device=device), experiment=experiment, variant='', backbone=backbone,
                strategy=strategy, weights='file:w.safetensors sha256:abc', profile=profile, seed=seed, config=config,
                device=device, versions={'torch': '2'}, git_sha='deadbeef', started_at='2026-01-01T00:00:00+00:00',
                error=error,
                epochs=[] if error else [dict(epoch=1, train_loss=1.0, valid_loss=1.0, valid_acc=test_acc,
                                               train_seconds=secs, valid_seconds=1.0, trainable=5)],
                valid_acc=None if error else test_acc, test_acc=None if error else test_acc,
                test_loss=None if error else 1.234, train_seconds=None if error else secs,
                eval_seconds=None if error else 1.0, images_per_second=None if error else 100.0,
                peak_memory_mb=None if error else 512.0, params_total=None if error else 100,
                params_trainable=None if error else 5, image_size=64)
