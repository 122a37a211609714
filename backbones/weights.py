"""Where a backbone's pretrained weights come from, and whether a file fits the architecture.

Weights `hub` first looks for `<arch>.<tag>.safetensors` in the folder named by FTBENCH_WEIGHTS, then asks
timm to download (`pretrained=True`). Weights `none` is random init, said out loud. Weights FILE loads a
.safetensors or .pth state dict with timm's key names. A file must fill every parameter and buffer of the body;
keys of a classifier the body does not use may be missing.
"""
import hashlib
import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch

WEIGHTS_ENV = 'FTBENCH_WEIGHTS'
_IGNORED = ('num_batches_tracked',)


class WeightsError(Exception):
    """Pretrained weights cannot be had or do not fit; the message says what to do."""
    user_mistake = True   # a script ends it in that sentence and exit code 2 (bench/command/exits.py)


def local_file(arch, tag, folder=None):
    """The file for `arch.tag` in the FTBENCH_WEIGHTS folder, or None."""
    folder = folder or os.environ.get(WEIGHTS_ENV)
    if not folder or not tag:
        return None
    path = Path(folder) / f'{arch}.{tag}.safetensors'
    return path if path.is_file() else None


def file_shapes(path):
    """{key: shape} of a weights file, without loading a .safetensors' tensors."""
    path = Path(path)
    try:
        if path.suffix == '.safetensors':
            from safetensors import safe_open
            with safe_open(str(path), framework='pt') as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        return {k: tuple(v.shape) for k, v in load_state_dict(path).items()}
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f'cannot read weights file {path}: {_first_line(e)}') from None


def load_state_dict(path):
    path = Path(path)
    try:
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise WeightsError(f'cannot read weights file {path}: {_first_line(e)}') from None
    for key in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f'weights file {path} holds no state dict')
    return state


def check_fit(path, name, model_shapes, body_keys, file_keys=None):
    """Raise WeightsError unless a file with `file_keys` ({key: shape}) fits a model with `model_shapes`
    and fills every key in `body_keys`."""
    file_keys = file_shapes(path) if file_keys is None else file_keys
    foreign = sorted(k for k in file_keys if k not in model_shapes)
    if foreign:
        raise WeightsError(f'weights file {path} does not fit {name}: {len(foreign)} of its keys are not in the '
                           f'model (e.g. {foreign[0]}); it was saved from another architecture')
    wrong = sorted(k for k in file_keys if tuple(file_keys[k]) != tuple(model_shapes[k]))
    if wrong:
        k = wrong[0]
        raise WeightsError(f'weights file {path} does not fit {name}: {k} has shape {tuple(file_keys[k])}, '
                           f'the model needs {tuple(model_shapes[k])}')
    missing = sorted(k for k in body_keys if k not in file_keys and not k.endswith(_IGNORED))
    if missing:
        raise WeightsError(f'weights file {path} lacks {len(missing)} of the {name} body\'s tensors '
                           f'(e.g. {missing[0]}); use a complete file, or weights none for random init')


@lru_cache(maxsize=None)
def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def host_of(hub_id):
    """The host timm downloads `hub_id` from: the URL's, else the Hugging Face hub's ($HF_ENDPOINT)."""
    url = hub_id if '://' in hub_id else os.environ.get('HF_ENDPOINT', 'https://huggingface.co')
    return urlparse(url).hostname or 'huggingface.co'


@lru_cache(maxsize=None)
def reachable(host, timeout=3.0):
    """Whether `host` answers on port 443 at all. Behind a proxy the download itself finds out."""
    if any(os.environ.get(k) for k in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy')):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def no_hub_message(name, reason):
    return (f'could not download pretrained weights for {name} ({reason}); use weights FILE (a local file), set '
            f'{WEIGHTS_ENV} to a folder holding {name}.safetensors, or use weights none to train from random init')


def nothing_to_download(name):
    return f'{name} has no pretrained weights to download; use weights FILE (a local file) or weights none'


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
