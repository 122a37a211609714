"""Images as a user's folder has them: every mode becomes RGB correctly, aspect is kept, a truncated file is named,
and any folder runs under the default profile."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from bench import finetune
from bench.images import data, decode, loader
from tests.helpers import run_script

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def jpeg(img, **kw):
    buf = io.BytesIO()
    img.save(buf, 'JPEG', quality=95, **kw)
    return buf.getvalue()


def quarter_red(w, h):
    """Left quarter red, the rest blue: a squash would keep red in the centre crop, aspect kept crops it away."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = BLUE
    a[:, :w // 4] = RED
    return Image.fromarray(a)


def exif_rotated():
    """Stored landscape (top red, bottom blue) with EXIF orientation 6: shown portrait, red on the right."""
    a = np.zeros((100, 200, 3), np.uint8)
    a[:50], a[50:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg(Image.fromarray(a), exif=exif)


def modes():
    """(file name, bytes, expected RGB of the stored image's centre) for every mode a photo folder holds."""
    rgba = Image.new('RGBA', (120, 90), (255, 0, 0, 0))  # transparent -> white background
    la = Image.new('LA', (90, 60), (0, 0))
    pal = Image.new('P', (80, 80), 0)
    pal.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    pal.info['transparency'] = 0
    grey16 = Image.fromarray(np.full((100, 140), 32896, np.uint16))  # 0.502 of 65535 -> 128
    out = []
    for name, img, fmt, kw, rgb in [
        ('grey.jpg', Image.new('L', (300, 200), 128), 'JPEG', {}, (128, 128, 128)),
        ('rgba.png', rgba, 'PNG', {}, WHITE),
        ('la.png', la, 'PNG', {}, WHITE),
        ('cmyk.jpg', Image.new('CMYK', (200, 200), (0, 255, 255, 0)), 'JPEG', {}, RED),
        ('palette.gif', pal, 'GIF', dict(transparency=0), WHITE),
        ('upper.JPEG', Image.new('RGB', (500, 260), BLUE), 'JPEG', {}, BLUE),
        ('web.webp', Image.new('RGB', (64, 60), (0, 255, 0)), 'WEBP', dict(lossless=True), (0, 255, 0)),
        ('grey16.png', grey16, 'PNG', {}, (128, 128, 128)),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out.append((name, buf.getvalue(), rgb))
    return out


@pytest.mark.parametrize('name,raw,rgb', modes(), ids=lambda v: v if isinstance(v, str) else '')
def test_every_mode_becomes_the_right_rgb(name, raw, rgb):
    pixels = decode.decode_one(raw, 48)
    assert pixels.shape == (48, 48, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels[24, 24].astype(int) - rgb).max() <= 6, (name, pixels[24, 24])


def test_aspect_is_kept_never_squashed():
    pixels = decode.decode_one(jpeg(quarter_red(400, 100)), 64)
    assert pixels.shape == (64, 64, 3)
    assert pixels[..., 2].min() > 200 and pixels[..., 0].max() < 60  # the centre crop is all blue: no squash


def test_exif_orientation_is_applied():
    pixels = decode.decode_one(exif_rotated(), 64).astype(int)
    assert pixels[32, 5, 2] > 200 and pixels[32, 58, 0] > 200  # shown portrait: blue left, red right


def make_mixed(root, truncated=True):
    """Two classes in fastai's layout, 60-500 px, every mode above, and (if `truncated`) one truncated JPEG."""
    files = modes() + [('quarter.jpg', jpeg(quarter_red(400, 100)), None), ('exif.jpg', exif_rotated(), None)]
    for i, (name, raw, _) in enumerate(files):
        for split in ('train', 'test') if i < 2 else ('train',):
            folder = root / split / ('a' if i % 2 else 'b')
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(raw)
    if truncated:
        (root / 'train' / 'a' / 'cut.jpg').write_bytes(jpeg(Image.new('RGB', (300, 300), RED))[:400])
    return root


@pytest.mark.parametrize('small', [decode.SMALL, 0])  # decoded here, and by decoding processes
def test_a_truncated_file_is_named_and_nothing_is_half_written(tmp_path, monkeypatch, small):
    src = make_mixed(tmp_path / 'mixed')
    monkeypatch.setattr(decode, 'SMALL', small)
    with pytest.raises(data.DataError, match=r'cut\.jpg'):
        data.load(src, tmp_path / 'cache', log=lambda m: None, workers=2)
    assert not list((tmp_path / 'cache').glob('*/meta.json'))


def test_a_mixed_folder_is_stored_square_at_its_own_size_in_parallel(tmp_path, monkeypatch):
    src = make_mixed(tmp_path / 'mixed', truncated=False)
    small = data.load(src, tmp_path / 'cache0', workers=2, log=lambda m: None)
    assert small.decode['workers'] == 1  # 12 images: decoded here, no processes forked
    monkeypatch.setattr(decode, 'SMALL', 0)  # as if they were many
    said = []
    images = data.load(src, tmp_path / 'cache', log=said.append, workers=2)
    assert images.stored == 256  # the largest shorter side (260 px) capped at 256: no 16 px image blown up
    assert images.classes == ('a', 'b') and len(images.train_y) == 10 and len(images.test_y) == 2
    assert isinstance(images.train_x, np.memmap)  # mapped, not held
    assert any('decoded 12 images' in m and 'peak RSS' in m for m in said)
    assert images.decode['workers'] == 2 and images.decode['seconds'] >= 0
    one = data.load(src, tmp_path / 'cache1', workers=1, log=lambda m: None)
    assert np.array_equal(np.asarray(one.train_x), np.asarray(images.train_x))  # parallel decoding changes nothing
    assert np.array_equal(np.asarray(small.train_x), np.asarray(images.train_x))


def test_class_folders_without_a_split_hold_out_every_fifth_image(tmp_path):
    for c in ('cat', 'dog'):
        (tmp_path / 'photos' / c).mkdir(parents=True)
        for i in range(7):
            Image.new('RGB', (40, 30), (i * 30, 0, 0)).save(tmp_path / 'photos' / c / f'{i}.png')
    images = data.load(tmp_path / 'photos', tmp_path / 'cache', log=lambda m: None)
    assert len(images.test_y) == 2 and len(images.train_y) == 12 and images.stored == 30


def test_batches_gather_from_the_map_without_copying_the_split(images):
    s = data.split(images, subset=0.5)
    dl = loader.batches(images, s.train, loader.Prepare(), bs=8, train=True)
    assert dl.x is images.train_x  # the split is an index, the images stay mapped
    xb, yb = next(iter(dl))
    assert xb.shape == (8, 3, 16, 16) and yb.shape == (8,)


@pytest.mark.slow
def test_any_folder_runs_under_the_default_profile_without_a_flag(tmp_path):
    """36 images in 3 classes, sizes 60-500 px: the cpu profile's budget (1,000 training images) fits 21."""
    rng = np.random.default_rng(0)
    for c, colour in enumerate((RED, BLUE, (0, 255, 0))):
        folder = tmp_path / 'mine' / f'class{c}'
        folder.mkdir(parents=True)
        for i in range(12):
            w, h = (int(v) for v in rng.integers(60, 500, 2))
            Image.new('RGB', (w, h), colour).save(folder / f'{i}.jpg')
    code = run_script(finetune, ['--data', str(tmp_path / 'mine'), '--backbone', 'cifar_cnn', '--weights', 'none',
                                 '--results', str(tmp_path / 'r.jsonl'), '--no-render', '--no-bar'])
    assert code == 0
    rec = json.loads((tmp_path / 'r.jsonl').read_text().splitlines()[0])
    assert rec['error'] is None and rec['profile'] == 'cpu'
    assert rec['train_images'] == 24 and rec['test_class_acc'] is not None and rec['image_size'] == 32
