"""Decoding, caching, splitting and batching of image folders and archives."""
import tarfile

import numpy as np
import pytest
import torch

from bench.images import data, loader
from tests.conftest import CLASSES, N_TEST, N_TRAIN


def test_folder_and_archive_give_the_same_images(dataset_dir, dataset_tgz, tmp_path):
    a = data.load(dataset_dir, tmp_path / 'c1', log=lambda m: None)
    b = data.load(dataset_tgz, tmp_path / 'c2', log=lambda m: None)
    assert a.classes == b.classes == CLASSES
    assert a.train_x.shape == (len(CLASSES) * N_TRAIN, 16, 16, 3) and a.train_x.dtype == np.uint8
    assert a.test_x.shape[0] == len(CLASSES) * N_TEST
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    assert a.fingerprint == b.fingerprint  # identity follows content, not path


def test_cache_is_decoded_once_and_rebuilt_when_the_source_changes(dataset_dir, tmp_path):
    import shutil
    src = tmp_path / 'copy'
    shutil.copytree(dataset_dir, src)
    said = []
    first = data.load(src, tmp_path / 'cache', log=said.append)
    data.load(src, tmp_path / 'cache', log=said.append)
    assert sum('decoding' in m for m in said) == 1
    extra = src / 'train' / 'ant' / 'extra.png'
    shutil.copy(src / 'train' / 'bee' / '0000.png', extra)
    again = data.load(src, tmp_path / 'cache', log=said.append)
    assert sum('decoding' in m for m in said) == 2
    assert len(again.train_y) == len(first.train_y) + 1


def test_missing_path_is_a_data_error(tmp_path):
    with pytest.raises(data.DataError, match='does not exist'):
        data.resolve_source(str(tmp_path / 'nope'))


def test_a_failed_download_is_a_data_error_and_draws_no_bar_into_a_file(tmp_path, monkeypatch, capsys):
    from fastai.data.external import URLs
    monkeypatch.setenv('FASTAI_HOME', str(tmp_path / 'fastai'))
    monkeypatch.setattr(URLs, 'CIFAR', 'http://127.0.0.1:1/cifar10.tgz')  # a server that is not there
    with pytest.raises(data.DataError, match='could not download cifar10'):
        data.resolve_source()
    assert capsys.readouterr().out == ''


def test_folder_without_layout_is_a_data_error(tmp_path):
    (tmp_path / 'flat').mkdir()
    (tmp_path / 'flat' / 'x.txt').write_text('hi')
    with pytest.raises(data.DataError, match='no images under train'):
        data.load(tmp_path / 'flat', tmp_path / 'cache')


def test_corrupt_archive_is_a_data_error(dataset_tgz, tmp_path):
    bad = tmp_path / 'bad.tgz'
    bad.write_bytes(dataset_tgz.read_bytes()[:2000])
    with pytest.raises(data.DataError, match='corrupt'):
        data.load(bad, tmp_path / 'cache')


def test_corrupt_image_is_named(dataset_dir, tmp_path):
    import shutil
    src = tmp_path / 'copy'
    shutil.copytree(dataset_dir, src)
    (src / 'train' / 'cat' / '0003.png').write_bytes(b'not a png')
    with pytest.raises(data.DataError, match='0003.png'):
        data.load(src, tmp_path / 'cache')


def test_nothing_half_written_after_a_failed_decode(dataset_dir, tmp_path):
    import shutil
    src = tmp_path / 'copy'
    shutil.copytree(dataset_dir, src)
    (src / 'test' / 'dog' / '0001.png').write_bytes(b'broken')
    with pytest.raises(data.DataError):
        data.load(src, tmp_path / 'cache')
    assert not list((tmp_path / 'cache').glob('*/meta.json'))


def test_archive_one_folder_deep(tmp_path, dataset_dir):
    path = tmp_path / 'flat.tar.gz'
    with tarfile.open(path, 'w:gz') as tar:
        for sub in ('train', 'test'):
            tar.add(dataset_dir / sub, arcname=sub)
    images = data.load(path, tmp_path / 'cache', log=lambda m: None)
    assert len(images.train_y) == len(CLASSES) * N_TRAIN


def test_split_is_stratified_disjoint_and_seeded(images):
    s = data.split(images, valid_frac=0.25, seed=0)
    y = np.asarray(images.train_y)
    assert len(s.train) == 60 and len(s.valid) == 20
    assert not set(s.train) & set(s.valid)
    assert np.bincount(y[s.valid]).tolist() == [5, 5, 5, 5]
    again = data.split(images, valid_frac=0.25, seed=0)
    other = data.split(images, valid_frac=0.25, seed=1)
    assert np.array_equal(s.valid, again.valid) and not np.array_equal(s.valid, other.valid)


def test_subsets_keep_class_balance(images):
    s = data.split(images, valid_frac=0.25, subset=20, eval_subset=8)
    assert np.bincount(np.asarray(images.train_y)[s.train]).tolist() == [5, 5, 5, 5]
    assert len(s.valid) == len(s.test) == 8


def test_a_subset_is_a_cap_or_a_fraction_and_never_more_than_exists(images):
    assert len(data.split(images, subset=1000).train) == 64  # a budget of 1000 on 64 images: all 64
    assert len(data.split(images, subset=0.5).train) == 32
    assert len(data.split(images, eval_subset=0.5).test) == 12
    with pytest.raises(data.DataError, match='cannot hold all 4 classes'):
        data.split(images, subset=3)


def test_a_pool_is_drawn_before_the_split_and_leaves_the_test_set_whole(images):
    # VTAB-1k's protocol at this scale: 40 of the 80 training images, stratified (10 a class), split 30 / 10
    s = data.split(images, valid_frac=0.25, pool=40)
    y = np.asarray(images.train_y)
    assert (len(s.train), len(s.valid)) == (30, 10) and not set(s.train) & set(s.valid)
    assert np.bincount(y[np.concatenate([s.train, s.valid])]).tolist() == [10, 10, 10, 10]
    assert len(s.test) == len(images.test_y)  # the test set stays whole
    with pytest.raises(data.DataError, match='1 training image\\(s\\) among the 4 that --pool keeps'):
        data.split(images, pool=4)  # one image of each class cannot be split into train and validation


def test_per_class_keeps_at_most_k_training_images_of_each_class(images):
    s = data.split(images, per_class=3, seed=1)
    assert np.bincount(np.asarray(images.train_y)[s.train]).tolist() == [3, 3, 3, 3]
    assert len(s.valid) == 16  # validation is untouched


def test_folds_cover_train_and_valid(images):
    s = data.split(images, valid_frac=0.25)
    fs = data.folds(s, images, 3)
    assert len(fs) == 3
    everything = np.sort(np.concatenate([s.train, s.valid]))
    assert np.array_equal(np.sort(np.concatenate([f.valid for f in fs])), everything)


def test_prepare_resizes_crops_and_normalizes():
    xb = torch.full((2, 32, 32, 3), 255, dtype=torch.uint8)
    out = loader.Prepare(size=224, resize=256, mean=(0.5,) * 3, std=(0.5,) * 3)(xb)
    assert out.shape == (2, 3, 224, 224) and torch.allclose(out, torch.ones_like(out))


def test_augmentation_keeps_shape_and_shifts_content():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).view(2, 3, 8, 8)
    out = loader.random_crop_flip(x, pad=4)
    assert out.shape == x.shape
    assert not torch.equal(out, x)


def test_batches_cover_every_image_once(images):
    s = data.split(images)
    dl = loader.batches(images, s.train, loader.Prepare(), bs=10, train=True)
    seen = torch.cat([y for _, y in dl])
    assert len(dl) == 7 and len(seen) == len(s.train) == 64
    assert sorted(seen.tolist()) == sorted(np.asarray(images.train_y)[s.train].tolist())


def test_a_lone_last_training_image_is_dropped(images):
    s = data.split(images)
    assert len(loader.batches(images, s.train, loader.Prepare(), bs=7, train=True)) == 9  # 64 = 9 * 7 + 1
    assert len(loader.batches(images, s.valid, loader.Prepare(), bs=15)) == 2  # evaluation keeps every image


@pytest.mark.parametrize('channels_last', [False, True])
def test_an_evaluation_split_is_prepared_once_per_process_with_the_numbers_batch_by_batch(images, channels_last,
                                                                                        monkeypatch):
    monkeypatch.setattr(loader, '_kept', type(loader._kept)())
    s = data.split(images)
    prepare = loader.Prepare(size=24, resize=28, mean=(0.4,) * 3, std=(0.2,) * 3, channels_last=channels_last)
    plain = loader.batches(images, s.test, prepare, bs=5, test=True)
    kept = loader.batches(images, s.test, prepare, bs=5, test=True, keep=True)
    pairs = list(zip(plain, kept))
    assert len(pairs) == len(plain) == len(kept) and len(loader._kept) == 1
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xb.is_contiguous(memory_format=torch.channels_last) == channels_last
    again = loader.batches(images, s.test, prepare, bs=5, test=True, keep=True)
    assert again.x is kept.x  # the next run reads what the first prepared
    other = loader.Prepare(size=20, resize=28, mean=(0.4,) * 3, std=(0.2,) * 3, channels_last=channels_last)
    assert loader.batches(images, s.test, other, bs=5, test=True, keep=True).x is not kept.x
    assert loader.batches(images, s.valid, prepare, bs=5, keep=True).x is not kept.x  # another split, its own


def test_only_what_fits_is_kept_and_the_least_recently_used_goes_first(images, monkeypatch):
    monkeypatch.setattr(loader, '_kept', type(loader._kept)())
    s = data.split(images)
    prepare = loader.Prepare(size=16)
    one_mb = len(s.test) * 3 * 16 * 16 * 4 / 2**20
    monkeypatch.setattr(loader, 'KEEP_MB', one_mb * 1.5)  # room for one split's images, not two
    first = loader.batches(images, s.test, prepare, bs=4, test=True, keep=True)
    second = loader.batches(images, s.test[:len(s.test)], loader.Prepare(size=16, resize=16), bs=4, test=True,
                            keep=True)
    assert list(loader._kept.values()) == [second.x] and first.x is not second.x
    monkeypatch.setattr(loader, 'KEEP_MB', one_mb / 2)  # too large to keep: prepared batch by batch, as always
    third = loader.batches(images, s.test, prepare, bs=4, test=True, keep=True)
    assert third.x is images.test_x and isinstance(third.prepare, loader.Prepare)
    training = loader.batches(images, s.train, prepare, bs=4, train=True, keep=True)
    assert training.x is images.train_x  # a training split is drawn anew each epoch: never kept


def test_the_aerial_and_medical_sets_are_declared_with_their_metric_size_and_attribution():
    from bench.declare.datasets import DATASETS
    uc, pbc = DATASETS['uc_merced'], DATASETS['pbc_blood_cells']
    assert (uc.metric, uc.stored, pbc.metric, pbc.stored) == ('top1', 128, 'class_mean', 128)
    assert (uc.domain, pbc.domain, DATASETS['cifar10'].domain, DATASETS['caltech101'].domain) == (
        'specialized', 'specialized', 'natural', 'natural')
    assert 'public domain' in uc.about and 'CC BY 4.0' in pbc.about and 'Acevedo' in pbc.about
