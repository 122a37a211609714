"""Files in, a cache of decoded images out. Knows image files, archives and the cache's layout; nothing of models.

Every image becomes RGB (greyscale, CMYK and palette converted; RGBA, LA and transparent palettes composited on
white; 16-bit greyscale scaled to 8 bits; EXIF orientation applied), its shorter side scaled to the dataset's
stored size (aspect kept) and centre-cropped square. Images are decoded in parallel, one process per core, each
writing its images straight into the cache file at their index: the whole dataset is never held in memory (a source
of at most SMALL images is decoded in this process: forking a process that holds torch costs more than that). The
cache is written into a temporary folder and renamed when complete, so a crash or a corrupt file leaves nothing
half-written.

Cache layout: `meta.json`, and `train.u8` / `test.u8`, raw uint8 arrays of shape (N, S, S, 3) that
bench/images/data.py memory-maps, plus `train_y.npy` / `test_y.npy`.
"""
import concurrent.futures as cf
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from collections import Counter, deque
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

IMAGE_SUFFIXES = {'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff'}
BACKGROUND = (255, 255, 255)   # what transparent pixels become
TEST_EVERY = 5                 # a folder without train/test: every 5th image of a class (sorted) is a test image
CHUNK = 32                     # images per task handed to a decoding process
SMALL = 4 * CHUNK              # a source of this many images or fewer is decoded in this process


class DataError(Exception):
    """The data source is missing, malformed or corrupt; the message says what to do."""
    user_mistake = True   # a script ends it in that sentence and exit code 2 (bench/command/exits.py)


# ---- one image ------------------------------------------------------------------------------------------

def to_rgb(img):
    """Any PIL image as 8-bit RGB, upright."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ('I;16', 'I;16L', 'I;16B', 'I'):  # 16-bit greyscale: 0-65535 -> 0-255
        a = np.asarray(img).astype(np.float64)
        scale = 257.0 if a.max(initial=0) > 255 or img.mode.startswith('I;16') else 1.0
        img = Image.fromarray(np.clip(np.round(a / scale), 0, 255).astype(np.uint8), 'L')
    if img.mode == 'P':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
    if img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in img.info:
        rgba = img.convert('RGBA')
        out = Image.new('RGB', rgba.size, BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel('A'))
        return out
    return img.convert('RGB')


def decode_one(raw, stored):
    """Bytes of an image file -> (stored, stored, 3) uint8: shorter side to `stored`, centre crop, aspect kept."""
    img = Image.open(io.BytesIO(raw))
    img.draft(img.mode, (stored, stored))  # JPEG: decode at 1/2, 1/4 or 1/8 scale where that still covers it
    img.load()
    img = to_rgb(img)
    w, h = img.size
    if min(w, h) != stored:
        scale = stored / min(w, h)
        w, h = max(stored, round(w * scale)), max(stored, round(h * scale))
        img = img.resize((w, h), Image.BICUBIC)
    left, top = (w - stored) // 2, (h - stored) // 2
    return np.asarray(img.crop((left, top, left + stored, top + stored)), dtype=np.uint8)


# ---- entries --------------------------------------------------------------------------------------------

def entries(source, drop=()):
    """Yield (split, class, name, bytes) for every image, in sorted order: fastai's layout (train/<class>/*,
    test/<class>/*, at the top or one folder down), or class folders alone, where every TEST_EVERY-th image of
    a class is held out as a test image. Classes in `drop` are left out."""
    if source.is_file():
        if not source.name.endswith(('.tgz', '.tar.gz', '.tar')):
            raise DataError(f'data path {source} is a file but not a .tgz/.tar.gz archive')
        try:
            with tarfile.open(source) as tar:
                members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
                items = [(Path(m.name).parts, m) for m in members]
                yield from _placed(items, lambda m: tar.extractfile(m).read(), drop)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f'data archive {source} is corrupt or unreadable ({e}); download it again') from None
    else:
        paths = sorted(p for p in source.rglob('*') if p.is_file())
        yield from _placed([(p.relative_to(source).parts, p) for p in paths], lambda p: p.read_bytes(), drop)


def _placed(items, read, drop):
    images = [(parts, it) for parts, it in items if Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES]
    layout = _layout(images)
    if layout is None:
        return
    seen = Counter()
    for parts, it in images:
        where = layout(parts)
        if where is None or where[1] in drop:
            continue
        split, cls = where
        if split is None:
            split = 'test' if seen[cls] % TEST_EVERY == TEST_EVERY - 1 else 'train'
            seen[cls] += 1
        yield split, cls, '/'.join(parts), read(it)


def _layout(images):
    """How paths map to (split, class): fastai's layout at depth 0 or 1, else class folders at depth 0 or 1."""
    for offset in (0, 1):
        if any(len(p) == offset + 3 and p[offset] in ('train', 'test') for p, _ in images):
            return lambda p, o=offset: (p[o], p[o + 1]) if len(p) == o + 3 and p[o] in ('train', 'test') else None
    for offset in (0, 1):
        if any(len(p) == offset + 2 for p, _ in images):
            return lambda p, o=offset: (None, p[o]) if len(p) == o + 2 else None
    return None


def probe_size(source, drop=(), sample=256, cap=256):
    """The stored size for data nobody declared: the largest shorter side among the first `sample` images (read
    from their headers), at most `cap` px: small images are never blown up, large ones keep a margin for 224 px."""
    sides = []
    for _, _, name, raw in entries(source, drop):
        try:
            sides.append(min(Image.open(io.BytesIO(raw)).size))
        except Exception:
            pass  # decoding names the file
        if len(sides) >= sample:
            break
    return min(cap, max(sides, default=cap))


# ---- decoding in parallel -------------------------------------------------------------------------------

def _write_chunk(folder, stored, chunk):
    """In a decoding process: decode each (split, index, name, bytes) and write it at its index. Returns the
    process's peak RSS in MB."""
    size = stored * stored * 3
    handles = {}
    try:
        for split, index, name, raw in chunk:
            try:
                pixels = decode_one(raw, stored)
            except Exception as e:
                raise DataError(f'image {name} cannot be decoded ({type(e).__name__}: {e}); the data is corrupt') \
                    from None
            if split not in handles:
                handles[split] = os.open(Path(folder) / f'{split}.u8', os.O_WRONLY | os.O_CREAT, 0o644)
            os.pwrite(handles[split], pixels.tobytes(), index * size)
    finally:
        for fd in handles.values():
            os.close(fd)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def decode(source, folder, stored, drop=(), name='', workers=None, log=print):
    """Decode `source` into the cache `folder` (created whole, or not at all). Returns the cache's meta."""
    workers = max(1, workers or len(os.sched_getaffinity(0)))
    stored = stored or probe_size(source, drop)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix='.tmp-'))
    t0 = time.perf_counter()
    try:
        labels, worker_rss, workers = _decode_into(source, tmp, stored, drop, workers, log)
        meta = _finish(source, tmp, stored, labels, name)
        meta['decode'] = dict(seconds=round(time.perf_counter() - t0, 2), workers=workers,
                              peak_rss_mb=round(max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                                     *worker_rss]), 1))
        (tmp / 'meta.json').write_text(json.dumps(meta))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _decode_into(source, tmp, stored, drop, workers, log):
    """(labels, each task's peak RSS, how many processes decoded): a source of SMALL images or fewer is decoded here,
    once it is known to end; a larger one by `workers` processes."""
    labels = {'train': [], 'test': []}
    chunk, held, pending, worker_rss = [], [], deque(), []
    bar = Progress(log)
    with contextlib.ExitStack() as stack:
        pool = _InProcess()

        def submit(items):
            held.append(items)
            if workers > 1 and isinstance(pool, _InProcess) and sum(map(len, held)) <= SMALL:
                return  # small so far: held until the source ends or grows past SMALL
            hand_out()

        def hand_out():
            nonlocal pool
            if workers > 1 and isinstance(pool, _InProcess) and sum(map(len, held)) > SMALL:
                fork = multiprocessing.get_context('fork')
                pool = stack.enter_context(cf.ProcessPoolExecutor(workers, mp_context=fork))
            while held:
                items = held.pop(0)
                pending.append((pool.submit(_write_chunk, str(tmp), stored, items), len(items)))
                while len(pending) > 2 * workers:  # a bounded window: bytes in flight stay a few chunks
                    collect()

        def collect():
            future, n = pending.popleft()
            worker_rss.append(future.result())
            bar.add(n)

        try:
            for split, cls, name, raw in entries(source, drop):
                chunk.append((split, len(labels[split]), name, raw))
                labels[split].append(cls)
                if len(chunk) == CHUNK:
                    submit(chunk)
                    chunk = []
            if chunk:
                held.append(chunk)
            hand_out()
            while pending:
                collect()
        except BaseException:
            for future, _ in pending:
                future.cancel()
            raise
    bar.done()
    return labels, worker_rss, 1 if isinstance(pool, _InProcess) else workers


class _InProcess:
    """The executor's interface, decoding here (one worker)."""
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        future = cf.Future()
        try:
            future.set_result(fn(*args))
        except Exception as e:
            future.set_exception(e)
        return future


def _finish(source, tmp, stored, labels, name):
    if not labels['train'] or not labels['test']:
        missing = 'train' if not labels['train'] else 'test'
        raise DataError(f'data path {source} has no images under {missing}/<class>/; expected fastai layout '
                        f'(train/<class>/*, test/<class>/*) or one folder per class')
    classes = sorted(set(labels['train']))
    strays = sorted(set(labels['test']) - set(classes))
    if strays:
        raise DataError(f'data path {source} has test class {strays[0]!r} that is not among the train classes')
    index = {c: i for i, c in enumerate(classes)}
    digest = hashlib.sha1()  # over test_x, test_y, train_x, train_y: the same images give the same fingerprint
    counts = {}
    for split in ('test', 'train'):
        y = np.array([index[c] for c in labels[split]], dtype=np.int64)
        np.save(tmp / f'{split}_y.npy', y)
        counts[split] = len(y)
        with open(tmp / f'{split}.u8', 'rb') as f:
            for block in iter(lambda: f.read(1 << 24), b''):
                digest.update(block)
        digest.update(y.tobytes())
        expected = len(y) * stored * stored * 3
        if (tmp / f'{split}.u8').stat().st_size != expected:
            raise DataError(f'decoding {source} wrote {split}.u8 incompletely; delete the cache and rerun')
    # the digest above mixes x and y per split; the order is fixed, so it identifies the content
    return dict(classes=classes, name=name, fingerprint=digest.hexdigest(), stored=stored, counts=counts,
                version=CACHE_VERSION)


CACHE_VERSION = 2


class Progress:
    """Images decoded so far and their rate: tqdm's bar on a terminal, a line every 10 s elsewhere (a log)."""
    def __init__(self, log):
        self.log, self.n, self.t0 = log, 0, time.perf_counter()
        self.last = self.t0
        self.bar = tqdm(desc='decoding', unit=' images', file=sys.stderr) if sys.stderr.isatty() else None

    def add(self, n):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last > 10:
            self.log(f'decoding: {self.n:,} images so far, {self.n / (now - self.t0):,.0f}/s')
            self.last = now

    def done(self):
        if self.bar is not None:
            self.bar.close()
