"""Images in, batches out. Knows files and tensors; knows nothing about models.

source (folder | .tgz | untar_data)  ->  `load`: decoded once into a uint8 cache keyed by the source
  ->  `split`: train / valid / test indices, stratified and seeded, optional subsets
  ->  `Batches`: index the cached tensors, transform the whole batch at once, on the model's device.

A source is fastai's layout, `train/<class>/*` and `test/<class>/*`, as a folder or a .tgz/.tar.gz of one (also
one folder deeper, as archives unpack). Images are stored at the size of the first one read; others are resized
to it. The cache lives in $FTBENCH_CACHE (default ~/.cache/ftbench), one folder per source.
"""
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.model_selection import StratifiedKFold, train_test_split

DATA_ENV, CACHE_ENV = 'FTBENCH_DATA', 'FTBENCH_CACHE'
IMAGE_SUFFIXES = {'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff'}
CACHE_VERSION = 1


class DataError(Exception):
    """The data source is missing, malformed or corrupt; the message says what to do."""


@dataclass(frozen=True)
class Images:
    train_x: torch.Tensor   # (N, H, W, 3) uint8, the train folder
    train_y: torch.Tensor   # (N,) int64
    test_x: torch.Tensor    # (M, H, W, 3) uint8, the test folder
    test_y: torch.Tensor
    classes: tuple          # folder names, sorted; label i is classes[i]
    name: str               # the source's stem, e.g. cifar10
    fingerprint: str        # sha1 of the decoded content: the same images give the same runs

    @property
    def key(self):
        return f'{self.name}:{self.fingerprint[:12]}'


# ---- source -> cache ------------------------------------------------------------------------------------

def resolve_source(spec=None):
    """The path to read: `spec`, else $FTBENCH_DATA, else fastai's CIFAR-10 download."""
    spec = spec or os.environ.get(DATA_ENV)
    if spec:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f'data path {spec} does not exist; pass a folder or .tgz in fastai layout '
                            f'(train/<class>/*, test/<class>/*)')
        return path
    from fastai.data.external import URLs, untar_data
    # fastai draws its download bar on stdout; where stdout is a file or a pipe it would be stray characters
    quiet = contextlib.nullcontext() if sys.stdout.isatty() else contextlib.redirect_stdout(io.StringIO())
    try:
        with quiet:
            return Path(untar_data(URLs.CIFAR))
    except Exception as e:
        raise DataError(f'could not download CIFAR-10 ({type(e).__name__}); give the data path of a local folder '
                        f'or .tgz, or set {DATA_ENV} to one') from None


def local_source(spec=None):
    """The path `resolve_source` would read, if it needs no download; else None. Downloads nothing."""
    if spec or os.environ.get(DATA_ENV):
        return resolve_source(spec)
    if not (Path(os.environ.get('FASTAI_HOME', '~/.fastai')).expanduser() / 'config.ini').is_file():
        return None  # fastai has never downloaded anything for this user (and asking it would write its config)
    from fastai.data.external import URLs
    path = URLs.path(URLs.CIFAR, c_key='data').with_suffix('')  # where untar_data extracts cifar10.tgz
    return path if path.is_dir() else None


def load(source, cache_dir=None, log=print):
    """Images of `source`, decoded once and cached; later calls read the cache."""
    source = Path(source)
    cache = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'ftbench')
    folder = cache / f'{_stem(source)}-{_source_key(source)}'
    if not (folder / 'meta.json').is_file():
        t = time.perf_counter()
        log(f'decoding {source} into {folder} (once)')
        _write_cache(folder, *_decode(source))
        log(f'decoded in {time.perf_counter() - t:.1f} s')
    return read_cache(folder)


def read_cache(folder):
    try:
        meta = json.loads((folder / 'meta.json').read_text())
        arrays = {k: torch.from_numpy(np.load(folder / f'{k}.npy')) for k in ('train_x', 'train_y', 'test_x', 'test_y')}
    except (OSError, ValueError) as e:
        raise DataError(f'the data cache {folder} is unreadable ({e}); delete it and rerun') from None
    return Images(**arrays, classes=tuple(meta['classes']), name=meta['name'], fingerprint=meta['fingerprint'])


def _stem(source):
    name = source.name
    for suffix in ('.tar.gz', '.tgz', '.tar'):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _source_key(source):
    """Changes when the source does: path, size and mtime of the archive, or of every file in the folder."""
    h = hashlib.sha1(f'{CACHE_VERSION}:{source.resolve()}'.encode())
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


def _entries(source):
    """Yield (split, class, relative path, bytes) for every image, in sorted order."""
    if source.is_file():
        if not source.name.endswith(('.tgz', '.tar.gz', '.tar')):
            raise DataError(f'data path {source} is a file but not a .tgz/.tar.gz archive')
        try:
            with tarfile.open(source) as tar:
                members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
                for m in members:
                    where = _place(Path(m.name).parts)
                    if where:
                        yield (*where, m.name, tar.extractfile(m).read())
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f'data archive {source} is corrupt or unreadable ({e}); download it again') from None
    else:
        for path in sorted(p for p in source.rglob('*') if p.is_file()):
            where = _place(path.relative_to(source).parts)
            if where:
                yield (*where, str(path), path.read_bytes())


def _place(parts):
    """('train'|'test', class) for .../train/<class>/<image>, at the top or one folder down; else None."""
    if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    for offset in (0, 1):
        if len(parts) == offset + 3 and parts[offset] in ('train', 'test'):
            return parts[offset], parts[offset + 1]
    return None


def _decode(source):
    images, labels = {'train': [], 'test': []}, {'train': [], 'test': []}
    shape = None
    for split, cls, name, raw in _entries(source):
        try:
            img = Image.open(io.BytesIO(raw)).convert('RGB')
        except Exception as e:
            raise DataError(f'image {name} in {source} cannot be decoded ({type(e).__name__}); the data is corrupt') from None
        if shape is None:
            shape = img.size
        elif img.size != shape:
            img = img.resize(shape, Image.BILINEAR)
        images[split].append(np.asarray(img))
        labels[split].append(cls)
    if not images['train'] or not images['test']:
        missing = 'train' if not images['train'] else 'test'
        raise DataError(f'data path {source} has no images under {missing}/<class>/; expected fastai layout '
                        f'(train/<class>/*, test/<class>/*)')
    classes = sorted(set(labels['train']))
    strays = sorted(set(labels['test']) - set(classes))
    if strays:
        raise DataError(f'data path {source} has test class {strays[0]!r} that is not among the train classes')
    index = {c: i for i, c in enumerate(classes)}
    arrays = {}
    for split in ('train', 'test'):
        arrays[f'{split}_x'] = np.stack(images[split])
        arrays[f'{split}_y'] = np.array([index[c] for c in labels[split]], dtype=np.int64)
    digest = hashlib.sha1()
    for k in sorted(arrays):
        digest.update(arrays[k].tobytes())
    return arrays, dict(classes=classes, name=_stem(source), fingerprint=digest.hexdigest())


def _write_cache(folder, arrays, meta):
    """Write into a temporary folder, then rename: a crash leaves no half-written cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix='.tmp-'))
    try:
        for k, v in arrays.items():
            np.save(tmp / f'{k}.npy', v)
        (tmp / 'meta.json').write_text(json.dumps(meta))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- split ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    train: np.ndarray   # indices into Images.train_*
    valid: np.ndarray   # indices into Images.train_*
    test: np.ndarray    # indices into Images.test_*


def stratified_subset(idx, labels, n, seed):
    """`n` of `idx`, keeping class proportions; all of them when n is 0 or covers them."""
    if not n or n >= len(idx):
        return np.sort(idx)
    kept, _ = train_test_split(idx, train_size=n, stratify=labels[idx], random_state=seed)
    return np.sort(kept)


def split(images, valid_frac=0.2, seed=0, subset=0, eval_subset=0):
    """Stratified train/valid split of the train folder; the test folder is the test set."""
    y, ty = images.train_y.numpy(), images.test_y.numpy()
    n_classes = len(images.classes)
    n_valid = round(len(y) * valid_frac)
    if n_valid < n_classes or len(y) - n_valid < n_classes:
        raise DataError(f'{len(y)} training images are too few to hold out {valid_frac:.0%} for validation '
                        f'with {n_classes} classes in both parts')
    train, valid = train_test_split(np.arange(len(y)), test_size=n_valid, stratify=y, random_state=seed)
    check_subset(subset, len(train), n_classes, 'training')
    check_subset(eval_subset, min(len(valid), len(ty)), n_classes, 'validation/test')
    return Split(train=stratified_subset(train, y, subset, seed),
                 valid=stratified_subset(valid, y, eval_subset, seed),
                 test=stratified_subset(np.arange(len(ty)), ty, eval_subset, seed))


def check_subset(n, available, n_classes, what):
    if n and n > available:
        raise DataError(f'a {what} subset of {n} is larger than the {available} {what} images available')
    if n and n < n_classes:
        raise DataError(f'a {what} subset of {n} cannot hold all {n_classes} classes; ask for at least {n_classes}')


def folds(split_, images, k, seed=0):
    """K stratified folds over train + valid (the whole train part), each a Split with the same test set."""
    idx = np.concatenate([split_.train, split_.valid])
    y = images.train_y.numpy()[idx]
    if k < 2 or np.bincount(y).min() < k:
        raise DataError(f'{k}-fold cross-validation needs k >= 2 and at least k images of every class')
    kf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [Split(train=np.sort(idx[a]), valid=np.sort(idx[b]), test=split_.test) for a, b in kf.split(idx, y)]


# ---- batches --------------------------------------------------------------------------------------------

class Prepare:
    """uint8 (B, H, W, 3) -> float (B, 3, size, size): [augment], resize shorter side, center crop, normalize."""
    def __init__(self, size=0, resize=0, mean=(0., 0., 0.), std=(1., 1., 1.), augment=False, channels_last=False):
        self.size, self.resize, self.augment, self.channels_last = size, resize or size, augment, channels_last
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
        if self.resize and min(h, w) != self.resize:
            scale = self.resize / min(h, w)
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
    """A loader fastai's Learner accepts: (x, y) batches cut from cached tensors held on the model's device.
    `passes` counts the times it was iterated (how often a test set was touched, say).

    Indexing a batch out of one tensor and transforming it whole replaces per-image decoding and collation,
    the bottleneck of the seed's W1 (its CPU workers resized one PIL image at a time)."""
    n_inp = 1

    def __init__(self, x, y, prepare, bs, shuffle=False, drop_last=False, seed=0, device='cpu'):
        self.x, self.y, self.prepare, self.bs = x, y, prepare, bs
        self.shuffle, self.drop_last = shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.n, self.passes = len(y), 0
        self.device = None
        self.to(device)

    def __len__(self):
        return self.n // self.bs if self.drop_last else -(-self.n // self.bs)

    def to(self, device):
        device = torch.device(device)
        if device != self.device:
            self.device = device
            self.x, self.y = self.x.to(device), self.y.to(device)
            self.prepare.to(device)
        return self

    def shapes(self):
        """A batch of each shape iterating yields (the full one, and a last partial one), leaving the order and
        `passes` untouched: what a warm-up needs."""
        sizes = {min(self.bs, self.n)}
        if not self.drop_last and self.n % self.bs:
            sizes.add(self.n % self.bs)
        return [(self.prepare(self.x[:k]), self.y[:k]) for k in sorted(sizes) if k]

    def to_detach(self, b, cpu=True, gather=True):
        """fastai's metrics detach every batch's values through the loader: detached here without the copy to the
        host, their running sums stay on the device and are read once per epoch instead of once per batch."""
        if isinstance(b, torch.Tensor):
            return b.detach()
        return type(b)(self.to_detach(x) for x in b)

    def __iter__(self):
        self.passes += 1
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        order = order.to(self.device)
        for i in range(len(self)):
            idx = order[i * self.bs:(i + 1) * self.bs]
            yield self.prepare(self.x[idx]), self.y[idx]


def batches(images, idx, prepare, bs, test=False, train=False, seed=0, device='cpu'):
    """Batches over `idx` of the train folder (or the test folder), shuffled for training. Every image is used,
    except a lone last training image, which BatchNorm cannot normalise."""
    x, y = (images.test_x, images.test_y) if test else (images.train_x, images.train_y)
    idx = torch.as_tensor(idx)
    return Batches(x[idx], y[idx], prepare, bs, shuffle=train, drop_last=train and len(idx) % bs == 1, seed=seed,
                   device=device)
