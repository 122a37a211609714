"""Tiny synthetic data in fastai's layout, and an isolated cache, so tests never touch the network or ~/.cache."""
import tarfile

import numpy as np
import pytest
from PIL import Image

CLASSES = ('ant', 'bee', 'cat', 'dog')
N_TRAIN, N_TEST = 20, 6  # per class


def make_dataset(root, size=16, seed=0):
    """Each class has its own colour plus noise, so a small model can learn it."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', N_TRAIN), ('test', N_TEST)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.zeros((size, size, 3), np.float32)
                base[..., c % 3] = 160 + 60 * (c // 3)
                img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f'{i:04d}.png')
    return root


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv('FTBENCH_CACHE', str(tmp_path / 'cache'))
    monkeypatch.delenv('FTBENCH_DATA', raising=False)
    monkeypatch.delenv('FTBENCH_WEIGHTS', raising=False)


@pytest.fixture(scope='session')
def dataset_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('data') / 'tiny')


@pytest.fixture(scope='session')
def dataset_tgz(dataset_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp('archive') / 'tiny.tgz'
    with tarfile.open(path, 'w:gz') as tar:
        tar.add(dataset_dir, arcname='tiny')
    return path


@pytest.fixture
def images(dataset_dir, tmp_path):
    from bench.images import data
    return data.load(dataset_dir, tmp_path / 'cache', log=lambda m: None)


def pytest_collection_modifyitems(items):
    """Longest first: with `make test`'s two processes (`--dist load --maxschedchunk 1`, each handed the next test
    as it finishes one), a long test started last would leave one process idle while the other finishes it."""
    items.sort(key=lambda item: item.get_closest_marker('slow') is None)
