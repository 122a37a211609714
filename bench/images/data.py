"""Images in, batches out. Knows files and tensors; knows nothing about models.

source (a dataset name, a folder or a .tgz)  ->  `load`: decoded once (bench/images/decode.py) into a cache keyed by the
source and its stored size, memory-mapped: the images are held once, by the page cache, never copied whole
  ->  `split`: train / valid / test indices, stratified and seeded, subsets as caps or fractions
  ->  batches (bench/images/loader.py): each step gathers its images from the map and transforms the whole batch
      at once, on the model's device; a dataset larger than memory trains, a page at a time.

The cache lives in $FTBENCH_CACHE (default ~/.cache/ftbench), one folder per source and stored size.
"""
import contextlib
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from bench.declare import datasets
from bench.images.decode import CACHE_VERSION, DataError, decode

CACHE_ENV = datasets.CACHE_ENV
DATA_ENV = datasets.DATA_ENV


@dataclass(frozen=True)
class Images:
    train_x: np.ndarray     # (N, S, S, 3) uint8, the train folder, memory-mapped
    train_y: np.ndarray     # (N,) int64
    test_x: np.ndarray      # (M, S, S, 3) uint8, the test folder
    test_y: np.ndarray
    classes: tuple          # folder names, sorted; label i is classes[i]
    name: str               # the dataset's name, e.g. cifar10
    fingerprint: str        # sha1 of the decoded content: the same images give the same runs
    decode: dict = None     # how the cache was made: seconds, workers, peak RSS (MB)
    folder: str = ''        # the cache folder it was read from ('' for images held in memory)

    @property
    def key(self):
        return f'{self.name}:{self.fingerprint[:12]}'

    @property
    def stored(self):
        return self.train_x.shape[1]


# ---- source -> cache ------------------------------------------------------------------------------------

def resolve_source(spec=None):
    """(path, declaration) of `spec`: a declared name (found in $FTBENCH_DATA, else downloaded with fastai where the
    declaration has a URL), or a folder or .tgz. No spec: CIFAR-10."""
    spec = str(spec or datasets.CIFAR10.name)
    if datasets.is_name(spec):
        if spec not in datasets.DATASETS:
            raise DataError(f'unknown dataset {spec!r}; give one of {", ".join(datasets.DATASETS)}, or a folder or '
                            f'.tgz of images (train/<class>/*, test/<class>/*, or <class>/*)')
        found = datasets.offline_copy(spec)
        return (found or _download(datasets.DATASETS[spec])), datasets.DATASETS[spec]
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f'data path {spec} does not exist; pass a dataset name ({", ".join(datasets.DATASETS)}) or '
                        f'a folder or .tgz of images (train/<class>/*, test/<class>/*, or <class>/*)')
    named = datasets.DATASETS.get(datasets.stem(path))
    return path, named or datasets.declared(path)


def _download(ds):
    where = f'no {ds.name}.tgz in ${DATA_ENV}' + (f' ({datasets.data_folder()})' if datasets.data_folder() else '')
    if not ds.url:
        raise DataError(f'{ds.name} has no download; {where}: put an offline copy there or pass its path')
    from fastai.data.external import URLs, untar_data

    # fastai draws its download bar on stdout; where stdout is a file or a pipe it would be stray characters
    quiet = contextlib.nullcontext() if sys.stdout.isatty() else contextlib.redirect_stdout(io.StringIO())
    try:
        with quiet:
            return Path(untar_data(getattr(URLs, ds.url)))
    except Exception as e:
        raise DataError(f'could not download {ds.name} ({type(e).__name__}); {where}: put an offline copy there, '
                        f'or pass the path of a local folder or .tgz') from None


def local_source(spec=None):
    """The path `resolve_source` would read, if it needs no download; else None. Downloads nothing."""
    spec = str(spec or datasets.CIFAR10.name)
    if not datasets.is_name(spec):
        return resolve_source(spec)
    found = datasets.offline_copy(spec)
    if found:
        return found, datasets.DATASETS.get(spec, datasets.declared(spec))
    ds = datasets.DATASETS.get(spec)
    if ds is None or not ds.url or \
            not (Path(os.environ.get('FASTAI_HOME', '~/.fastai')).expanduser() / 'config.ini').is_file():
        return None  # fastai has never downloaded anything for this user (and asking it would write its config)
    from fastai.data.external import URLs
    path = URLs.path(getattr(URLs, ds.url), c_key='data').with_suffix('')  # where untar_data extracts it
    return (path, ds) if path.is_dir() else None


def load(spec=None, cache_dir=None, log=print, workers=None):
    """Images of `spec` (see resolve_source, or a (path, declaration) pair), decoded once and cached; later calls
    map the cache."""
    source, ds = spec if isinstance(spec, tuple) else resolve_source(spec)
    source = Path(source)
    folder = Path(cache_dir or datasets.cache_root()) / f'{ds.name}-{_source_key(source, ds)}'
    if not (folder / 'meta.json').is_file():
        log(f'decoding {source} into {folder} (once), at {f"{ds.stored} px" if ds.stored else "its own size"}')
        meta = decode(source, folder, ds.stored, ds.drop, ds.name, workers=workers, log=log)
        d = meta['decode']
        log(f'decoded {sum(meta["counts"].values()):,} images at {meta["stored"]} px in {d["seconds"]:.1f} s on {d["workers"]} '
            f'process{"es" * (d["workers"] > 1)}, peak RSS {d["peak_rss_mb"]:,.0f} MB')
    return read_cache(folder)


def read_cache(folder):
    try:
        meta = json.loads((folder / 'meta.json').read_text())
        s = meta['stored']
        arrays = {}
        for split in ('train', 'test'):
            n = meta['counts'][split]
            arrays[f'{split}_x'] = np.memmap(folder / f'{split}.u8', np.uint8, 'r', shape=(n, s, s, 3))
            arrays[f'{split}_y'] = np.load(folder / f'{split}_y.npy')
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f'the data cache {folder} is unreadable ({e}); delete it and rerun') from None
    return Images(**arrays, classes=tuple(meta['classes']), name=meta['name'], fingerprint=meta['fingerprint'],
                  decode=meta.get('decode'), folder=str(folder))


def _source_key(source, ds):
    """Changes when the source or how it is stored does: path, size and mtime of the archive, or of every file in
    the folder; stored size and curation."""
    h = hashlib.sha1(f'{CACHE_VERSION}:{source.resolve()}:{ds.stored}:{sorted(ds.drop)}'.encode())
    if source.is_file():
        st = source.stat()
        h.update(f'{st.st_size}:{st.st_mtime_ns}'.encode())
    else:
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for f in sorted(files):
                st = os.stat(os.path.join(root, f))
                h.update(f'{os.path.relpath(os.path.join(root, f), source)}:{st.st_size}:{st.st_mtime_ns}'.encode())
    return h.hexdigest()[:16]


# ---- split ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    train: np.ndarray   # indices into Images.train_*
    valid: np.ndarray   # indices into Images.train_*
    test: np.ndarray    # indices into Images.test_*


def stratified_subset(idx, labels, n, seed):
    """`n` of `idx`, keeping class proportions (a seeded random draw where a class is too small to stratify);
    all of them when n is 0 or covers them."""
    if not n or n >= len(idx):
        return np.sort(idx)
    try:
        kept, _ = train_test_split(idx, train_size=n, stratify=labels[idx], random_state=seed)
    except ValueError:
        kept = np.random.default_rng(seed).choice(idx, n, replace=False)
    return np.sort(kept)


def count(n, available):
    """A subset setting as a count: a fraction (0 < n < 1) of what is available, or a cap (n >= 1); 0 = all."""
    if not n:
        return available
    return max(1, round(n * available)) if n < 1 else min(int(n), available)


def per_class_subset(idx, labels, k, seed):
    """At most `k` images of each class from `idx`, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    kept = [rng.permutation(idx[labels[idx] == c])[:k] for c in np.unique(labels[idx])]
    return np.sort(np.concatenate(kept))


def split(images, valid_frac=0.2, seed=0, subset=0, eval_subset=0, per_class=0, pool=0):
    """Stratified train/valid split of the train folder; the test folder is the test set. `pool` first keeps that
    many of the train folder's images, stratified (VTAB-1k: 1,000, which `valid_frac` 0.2 splits 800 / 200).
    `subset` and `eval_subset` are caps or fractions (`count`), so a budget never asks for more than exists;
    `per_class` keeps at most that many training images of each class (Kornblith et al.'s Caltech-101 protocol: 30)."""
    y, ty = np.asarray(images.train_y), np.asarray(images.test_y)
    n_classes = len(images.classes)
    kept = stratified_subset(np.arange(len(y)), y, count(pool, len(y)), seed)
    smallest = np.bincount(y[kept], minlength=n_classes)
    if smallest.min() < 2:
        name = images.classes[int(smallest.argmin())]
        where = f' among the {len(kept):,} that --pool keeps' if len(kept) < len(y) else ''
        raise DataError(f'class {name!r} has {smallest.min()} training image(s){where}; every class needs at least 2 '
                        f'(one to train on, one to validate on)')
    n_valid = min(max(round(len(kept) * valid_frac), n_classes), len(kept) - n_classes)
    train, valid = train_test_split(kept, test_size=n_valid, stratify=y[kept], random_state=seed)
    if per_class:
        train = per_class_subset(train, y, per_class, seed)
    n_train = count(subset, len(train))
    check_subset(n_train, n_classes, 'training')
    return Split(train=stratified_subset(train, y, n_train, seed),
                 valid=stratified_subset(valid, y, count(eval_subset, len(valid)), seed),
                 test=stratified_subset(np.arange(len(ty)), ty, count(eval_subset, len(ty)), seed))


SPLIT_SETTINGS = ('valid_frac', 'split_seed', 'subset', 'eval_subset', 'per_class', 'pool')  # split's, in order


def split_for(images, cfg):
    """The split a run's config asks for."""
    return split(images, *(getattr(cfg, name) for name in SPLIT_SETTINGS))


def check_subset(n, n_classes, what):
    if n < n_classes:
        raise DataError(f'a {what} subset of {n} cannot hold all {n_classes} classes; ask for at least {n_classes}')


def folds(split_, images, k, seed=0):
    """K stratified folds over train + valid (the whole train part), each a Split with the same test set."""
    idx = np.concatenate([split_.train, split_.valid])
    y = np.asarray(images.train_y)[idx]
    if k < 2 or np.bincount(y).min() < k:
        raise DataError(f'{k}-fold cross-validation needs k >= 2 and at least k images of every class')
    kf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [Split(train=np.sort(idx[a]), valid=np.sort(idx[b]), test=split_.test) for a, b in kf.split(idx, y)]
