"""Datasets are declarations, like experiments: a name, where an offline copy is found, what fastai can download,
the metric the literature reports, the size images are stored at, and what is known about the data's curation.
Imports no torch.

`--data` takes a declared name (found as <name>.tgz or <name>/ in the data folder $FTBENCH_DATA, else downloaded
with fastai's `untar_data` where the declaration names a URL and a network exists) or any folder or .tgz of images
in fastai's layout (`train/<class>/*` and `test/<class>/*`, or only `<class>/*`: a test split is then held out).
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

DATA_ENV = 'FTBENCH_DATA'
CACHE_ENV = 'FTBENCH_CACHE'
# VTAB's groups: everyday photos as ImageNet has them, and images from instruments (satellite, microscope)
DOMAINS = {'natural': 'natural (everyday photos)', 'specialized': 'specialized (aerial, medical)'}


@dataclass(frozen=True)
class Metric:
    """A metric a dataset can be ranked by: declared once, read by every table, verdict and choice."""
    key: str              # what a dataset declares
    test: str             # the record field of its test score
    valid: str            # the record field of its validation score (what tuning and the race choose by)
    words: str            # 'top-1 accuracy'
    test_words: str       # its test score in a verdict: 'test accuracy'
    column: str           # a table's column of it, after 'test' or 'valid': 'acc %'
    short: str            # a column across datasets: 'top-1 %'
    higher_is_better: bool = True


TOP1 = Metric('top1', 'test_acc', 'valid_acc', 'top-1 accuracy', 'test accuracy', 'acc %', 'top-1 %')
CLASS_MEAN = Metric('class_mean', 'test_class_acc', 'valid_class_acc', 'mean per-class accuracy',
                    'test mean per-class accuracy', 'mean per-class acc %', 'mean per-class %')
METRICS = {m.key: m for m in (TOP1, CLASS_MEAN)}
BY_FIELD = {m.test: m for m in METRICS.values()}  # a table holds its metric's test field


@dataclass(frozen=True)
class Dataset:
    name: str
    metric: str = 'top1'      # key of METRICS: what the leaderboard shows first, tuning chooses by
    stored: int = 0           # px: images are stored square, shorter side to this, then centre-cropped; 0 (data
                              # nobody declared): the largest shorter side of the first images, at most 256
    url: str = ''             # attribute of fastai's URLs that downloads it, where a network exists
    drop: tuple = ()          # class folders left out (curation), said in the README
    about: str = ''           # one line for the leaderboard: where it comes from, what was curated
    domain: str = ''          # key of DOMAINS: the group a cross-dataset verdict ranks it in
    notes: dict = field(default_factory=dict)


CIFAR10 = Dataset(
    name='cifar10', metric='top1', stored=32, url='CIFAR', domain='natural',
    about='CIFAR-10: 50,000 train / 10,000 test images of 32 px in 10 balanced classes')

CALTECH101 = Dataset(
    name='caltech101', metric='class_mean', stored=224, domain='natural',
    # Faces_easy holds tight crops of the same photographs as Faces (all 435); in the shipped split 144 of them
    # sit across the train/test line under the other label, so a model is tested on photographs it trained on.
    drop=('Faces_easy',),
    about='Caltech-101: 8,677 photos (80-457 px wide) in 101 classes of 31-800 images; Faces_easy dropped '
          '(crops of the Faces photographs), so 100 classes')

# VTAB-1k-sized sets from domains ImageNet does not cover; their offline copies and splits: ../shared/data/README.md.
UC_MERCED = Dataset(
    name='uc_merced', metric='top1', stored=128, domain='specialized',   # balanced: 47-48 training images per class
    about='UC Merced Land Use: aerial orthoimagery at ~0.3 m/px, 21 balanced classes, 1,000 train / 420 test images '
          'at 128 px (USGS National Map, public domain; Yang & Newsam, ACM SIGSPATIAL GIS 2010)')

PBC_BLOOD_CELLS = Dataset(
    name='pbc_blood_cells', metric='class_mean', stored=128, domain='specialized',   # imbalanced: 71-195 training images per class
    about='PBC peripheral blood cells: stained microscopy, 8 imbalanced classes, 1,000 train / 2,000 test images at '
          '128 px, subsampled and resized from the original (CC BY 4.0: Acevedo et al., "A dataset of microscopic '
          'peripheral blood cell images for development of automatic recognition systems", Data in Brief 30, 2020)')

DATASETS = {d.name: d for d in (CIFAR10, CALTECH101, UC_MERCED, PBC_BLOOD_CELLS)}


class DataNotFound(Exception):
    pass


def metric_of(dataset):
    """The Metric a dataset (a name; a folder's is top-1) is ranked and chosen by."""
    return METRICS[DATASETS[dataset].metric] if dataset in DATASETS else TOP1


def declared(name_or_path):
    """The declaration of a dataset name, else a folder's default one (named after the folder)."""
    if name_or_path in DATASETS:
        return DATASETS[name_or_path]
    return Dataset(name=stem(Path(str(name_or_path))))


def stem(path):
    name = path.name
    for suffix in ('.tar.gz', '.tgz', '.tar'):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def cache_root():
    """The folder decoded images (and runs' kept weights) are cached in: $FTBENCH_CACHE, else ~/.cache/ftbench."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'ftbench')


def data_folder():
    """The folder offline copies are found in by name ($FTBENCH_DATA), or None."""
    spec = os.environ.get(DATA_ENV)
    return Path(spec).expanduser() if spec else None


def offline_copy(name):
    """<name>.tgz, <name>.tar.gz or <name>/ in the data folder, or None."""
    folder = data_folder()
    if folder is not None and folder.is_file():  # $FTBENCH_DATA naming one archive: the folder it is in
        folder = folder.parent
    if folder is None or not folder.is_dir():
        return None
    for candidate in (f'{name}.tgz', f'{name}.tar.gz', f'{name}.tar', name):
        path = folder / candidate
        if path.exists():
            return path
    return None


def is_name(spec):
    """A bare word (cifar10, caltech101), not a path."""
    return '/' not in spec and not spec.endswith(('.tgz', '.tar.gz', '.tar')) and not Path(spec).exists()
