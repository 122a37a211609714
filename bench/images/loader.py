"""Batches out of the decoded images (bench/images/data.py): each step gathers its images from the memory map and
transforms the whole batch at once, on the model's device (`Batches`, `Prepare`). An evaluation split, which every
run of a process reads the same way, is prepared once and kept (`batches(..., keep=True)`).
"""
import hashlib
import mmap
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F


class Prepare:
    """uint8 (B, H, W, 3) -> float (B, 3, size, size): [augment], resize shorter side, center crop, normalize."""
    def __init__(self, size=0, resize=0, mean=(0., 0., 0.), std=(1., 1., 1.), augment=False, channels_last=False):
        self.size, self.resize, self.augment, self.channels_last = size, resize, augment, channels_last
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def to(self, device):
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def key(self):
        """What the output depends on, besides the images."""
        return (self.size, self.resize, self.augment, self.channels_last, tuple(self.mean.flatten().tolist()),
                tuple(self.std.flatten().tolist()))

    def resized(self, h, w):
        """(h, w) an image stored at h x w is resized to, before the crop: its shorter side to `resize` (0: as
        stored, unless smaller than `size`)."""
        target = self.resize or (self.size if min(h, w) < self.size else 0)
        if target and min(h, w) != target:
            return round(h * target / min(h, w)), round(w * target / min(h, w))
        return h, w

    def out_pixels(self, hw):
        """Pixels per channel of a prepared image stored at `hw`."""
        h, w = self.resized(*hw)
        return self.size * self.size if self.size else h * w

    def __call__(self, xb):
        x = xb.permute(0, 3, 1, 2).float().div_(255)
        if self.augment:
            x = random_crop_flip(x, pad=4)
        size = self.resized(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode='bilinear', antialias=True, align_corners=False)
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
        return [(self.head(k), self.y[:k]) for k in sorted(sizes) if k]

    def head(self, k):
        """The first `k` images (all, where fewer), prepared, leaving the order and `passes` untouched."""
        return self.prepare(self.gather(np.arange(min(k, self.n))))

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


def batches(images, idx, prepare, bs, test=False, train=False, seed=0, device='cpu', keep=False):
    """Batches over `idx` of the train folder (or the test folder), shuffled for training. Every image is used,
    except a lone last training image, which BatchNorm cannot normalise. `keep` (an evaluation split, on a CPU):
    the images prepared once per process and kept for the runs after (`kept`), where they fit KEEP_MB."""
    x, y = (images.test_x, images.test_y) if test else (images.train_x, images.train_y)
    if keep and not train and torch.device(device).type == 'cpu' and not prepare.augment:
        ready = kept(images, x, y, idx, prepare, test)
        if ready is not None:
            return Batches(ready, y[np.asarray(idx)], Unchanged(), bs, device=device)
    return Batches(x, y, prepare, bs, index=idx, shuffle=train, drop_last=train and len(idx) % bs == 1,
                   seed=seed, device=device)


# ---- evaluation splits, prepared once per process -------------------------------------------------------------

KEEP_MB = 768  # prepared images a process keeps at most (W7 at 96 px: 2,200 per dataset, 243 MB)
_kept = OrderedDict()  # key -> prepared images, the most recently used last


def kept(images, x, y, idx, prepare, test):
    """The images at `idx` of `x` prepared as `prepare` does, one float tensor, made once per process and kept while
    they fit KEEP_MB (the least recently used dropped first); None where they alone would not fit. Every run of a
    sweep evaluates the same validation and test images: they are resized and normalized once, not once per run
    and validation point (on a CPU, 10-20% of a Lite0 evaluation at 96 px). The same numbers as batch by batch:
    each image is prepared alone either way."""
    idx = np.asarray(idx)
    mb = len(idx) * 3 * prepare.out_pixels(x.shape[1:3]) * 4 / 2**20
    if mb > KEEP_MB:
        return None
    key = (images.folder or id(images), images.fingerprint, test, hashlib.sha1(idx.tobytes()).hexdigest(),
           prepare.key())
    if key in _kept:
        _kept.move_to_end(key)
        return _kept[key]
    while _kept and sum(t.numel() * 4 for t in _kept.values()) / 2**20 + mb > KEEP_MB:
        _kept.popitem(last=False)
    fmt = torch.channels_last if prepare.channels_last else torch.contiguous_format
    _kept[key] = torch.cat([xb for xb, _ in Batches(x, y, prepare, 256, index=idx)]).contiguous(memory_format=fmt)
    return _kept[key]
