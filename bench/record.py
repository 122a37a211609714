"""The results file: one JSON line per run, appended and never rewritten.

A run's identity is its resolved config (which holds the experiment, the seed and the dataset fingerprint) plus
any search bookkeeping; a run whose identity already has a successful record is done, and a rerun skips it.
Reading is tolerant: a torn last line (a crash mid-write) is skipped with a warning, never fatal.
"""
import hashlib
import json
import os
import sys
from pathlib import Path


def run_key(config, extra=None):
    """Stable identity of a run: sha1 of its config (and search bookkeeping), independent of key order."""
    text = json.dumps({'config': config, 'extra': extra or {}}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def append(path, record):
    """Append one record as a single write, then fsync; a torn tail from an earlier crash is closed off first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str) + '\n'
    with open(path, 'ab') as f:
        if f.tell() > 0:
            with open(path, 'rb') as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b'\n':
                    line = '\n' + line
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


def read(path, warn=True):
    """All records in `path` (none if it does not exist), skipping lines that are not JSON objects."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, 'rb') as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                rec = None
            if isinstance(rec, dict) and 'config' in rec:
                records.append(rec)
            elif warn:
                print(f'warning: {path}:{n} is not a run record; skipped', file=sys.stderr)
    return records


def done(path):
    """{key: record} of the runs in `path` recorded without error: what a rerun skips."""
    return {r['key']: r for r in read(path) if r.get('error') is None and 'key' in r}
