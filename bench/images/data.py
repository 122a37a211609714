"""Images in, batches out. Knows files and tensors; knows nothing about models.

source (a dataset name, a folder or a .tgz)  ->  `load`: decoded once (bench/images/decode.py) into a cache keyed by the
source and its stored size, memory-mapped: the images are held once, by the page cache, never copied whole
  ->  `split`: train / valid / test indices, stratified and seeded, subsets as caps or fractions
  ->  `Batches`: each step gathers its images from the map and transforms the whole batch at once, on the model's
      device; a dataset larger than memory trains, a page at a time.

The cache lives in $FTBENCH_CACHE (default ~/.cache/ftbench), one folder per source and stored size.
"""
import contextlib
import hashlib
import io
import json
import mmap
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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


# ---- batches --------------------------------------------------------------------------------------------

class Prepare:
    """uint8 (B, H, W, 3) -> float (B, 3, size, size): [augment], resize shorter side, center crop, normalize."""
    def __init__(self, size=0, resize=0, mean=(0., 0., 0.), std=(1., 1., 1.), augment=False, channels_last=False):
        self.size, self.resize, self.augment, self.channels_last = size, resize, augment, channels_last
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def to(self, device):
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def __call__(self, xb):
        x = xb.permute(0, 3, 1, 2).float().div_(255)
        if self.augment:
            x = random_crop_flip(x, pad=4)
        h, w = x.shape[-2:]
        target = self.resize or (self.size if min(h, w) < self.size else 0)  # resize 0: as stored, unless smaller
        if target and min(h, w) != target:
            scale = target / min(h, w)
            x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode='bilinear', antialias=True,
                              align_corners=False)
        if self.size:
            h, w = x.shape[-2:]
            top, left = (h - self.size) // 2, (w - self.size) // 2
            x = x[..., top:top + self.size, left:left + self.size]
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()


class Unchanged:
    """For batches that are ready as stored (cached features)."""
    def to(self, device):
        return self

    def __call__(self, x):
        return x


def random_crop_flip(x, pad=4):
    """Per image: a random crop of the zero-padded image at the original size, and a coin-flip mirror."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))
    flip = torch.rand(b, device=x.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


class Batches:
    """A loader fastai's Learner accepts: (x, y) batches of the images at `index` in `x` (a memory-mapped cache, or
    a tensor such as cached features), each gathered when its step comes and moved to the model's device.
    `passes` counts the times it was iterated (how often a test set was touched, say).

    Indexing a batch out of one array and transforming it whole replaces per-image decoding and collation, the
    bottleneck of the seed's W1 (its CPU workers resized one PIL image at a time). Nothing is copied whole: a
    subset or a split is an index. After each gather the map's pages are handed back to the page cache, so the
    process holds one batch of images, not the dataset."""
    n_inp = 1

    def __init__(self, x, y, prepare, bs, index=None, shuffle=False, drop_last=False, seed=0, device='cpu'):
        self.x, self.prepare, self.bs = x, prepare, bs
        self.index = np.arange(len(y)) if index is None else np.asarray(index)
        self.y = torch.as_tensor(np.asarray(y)[self.index] if isinstance(y, np.ndarray) else y[self.index])
        self.shuffle, self.drop_last = shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.n, self.passes = len(self.index), 0
        self.device = None
        self.to(device)

    def __len__(self):
        return self.n // self.bs if self.drop_last else -(-self.n // self.bs)

    def to(self, device):
        device = torch.device(device)
        if device != self.device:
            self.device = device
            self.y = self.y.to(device)
            if isinstance(self.x, torch.Tensor):
                self.x = self.x.to(device)
            self.prepare.to(device)
        return self

    def gather(self, positions):
        """The images at `positions` (into this loader's index), on the device."""
        rows = self.index[positions]
        if isinstance(self.x, torch.Tensor):
            return self.x[torch.as_tensor(rows, device=self.x.device)]
        xb = torch.from_numpy(np.ascontiguousarray(self.x[rows]))
        release(self.x)
        return xb.to(self.device, non_blocking=True)

    def shapes(self):
        """A batch of each shape iterating yields (the full one, and a last partial one), leaving the order and
        `passes` untouched: what a warm-up needs."""
        sizes = {min(self.bs, self.n)}
        if not self.drop_last and self.n % self.bs:
            sizes.add(self.n % self.bs)
        return [(self.prepare(self.gather(np.arange(k))), self.y[:k]) for k in sorted(sizes) if k]

    def to_detach(self, b, cpu=True, gather=True):
        """fastai's metrics detach every batch's values through the loader: detached here without the copy to the
        host, their running sums stay on the device and are read once per epoch instead of once per batch."""
        if isinstance(b, torch.Tensor):
            return b.detach()
        return type(b)(self.to_detach(x) for x in b)

    def __iter__(self):
        self.passes += 1
        # the order lives on the host (a batch is gathered there); it is drawn once per epoch
        order = torch.randperm(self.n, generator=self.generator).numpy() if self.shuffle else np.arange(self.n)
        for i in range(len(self)):
            positions = order[i * self.bs:(i + 1) * self.bs]
            yield self.prepare(self.gather(positions)), self.y[torch.from_numpy(positions).to(self.device)]


def release(x):
    """Drop a memory map's pages from this process (they stay in the page cache, shared): its RSS holds one
    batch, not every image it has read."""
    m = getattr(x, '_mmap', None)
    if m is not None and hasattr(m, 'madvise'):
        m.madvise(mmap.MADV_DONTNEED)


def batches(images, idx, prepare, bs, test=False, train=False, seed=0, device='cpu'):
    """Batches over `idx` of the train folder (or the test folder), shuffled for training. Every image is used,
    except a lone last training image, which BatchNorm cannot normalise."""
    x, y = (images.test_x, images.test_y) if test else (images.train_x, images.train_y)
    return Batches(x, y, prepare, bs, index=idx, shuffle=train, drop_last=train and len(idx) % bs == 1,
                   seed=seed, device=device)
