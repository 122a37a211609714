"""The flags every script shares, made from the fields of `Config` (bench/declare/config.py), where each setting's
meaning and unit is written once: one flag per setting that has one, the scripts' input and output flags, and where
runs happen. Flags not given are None: the experiment's value stands.
"""
import argparse

from bench.declare.config import COUNTS, FIELDS, PROFILES, RESULTS, Config, UsageError


def _count_or_fraction(text):
    value = float(text)
    return int(value) if value.is_integer() else value


def _csv_ints(text):
    try:
        return tuple(int(x) for x in text.split(',') if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None


def add_run_flags(p):
    """One flag per Config field that has one, with the field's help; default None (not given: the experiment's
    value stands)."""
    g = p.add_argument_group('run settings (override the preset)')
    for f in Config.__dataclass_fields__.values():
        if not f.metadata.get('flag'):
            continue
        name = '--' + f.name.replace('_', '-')
        help_text = f'{f.metadata["help"]} (default: {_shown(f.default)})'
        if f.type is bool or f.type == 'bool':
            g.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.type is tuple or f.type == 'tuple':
            g.add_argument(name, type=_csv_ints, metavar='N,N', help=help_text)
        else:
            kind = {'int': int, 'float': float, 'str': str}.get(f.type, f.type)
            kind = _count_or_fraction if f.name in COUNTS else kind
            g.add_argument(name, type=kind, choices=f.metadata.get('choices'), help=help_text)
    return p


def _shown(value):
    return ','.join(map(str, value)) if isinstance(value, tuple) else value


def add_io_flags(p, presets):
    p.add_argument('--preset', choices=presets, help='the experiment\'s settings (bench/declare/experiments.py); flags override them')
    p.add_argument('--profile', default='auto', choices=['auto', *PROFILES],
                   help='full: the seed\'s settings; cpu: a budget a 2-core CPU finishes (see bench/declare/experiments.py); '
                        'auto: full where the runs have CUDA, else cpu (default: auto)')
    p.add_argument('--seeds', type=int, default=1, help='seeds per configuration, counting up from --seed (default: 1)')
    p.add_argument('--seed', type=int, default=0, help='first seed (default: 0)')
    p.add_argument('--results', default=RESULTS, help=f'JSON-lines file the records are appended to (default: {RESULTS})')
    p.add_argument('--out', default=None, help='leaderboard file (default: leaderboard.md beside --results)')
    p.add_argument('--dry-run', action='store_true', help='print the plan; train, download and write nothing')
    p.add_argument('--force', action='store_true', help='rerun configurations already recorded')
    p.add_argument('--tune', default='auto', choices=('auto', 'lr', 'off'),
                   help='lr: each strategy\'s LR chosen on validation from its grid (bench/sweep/tune.py), then the seeds '
                        'at it; off: --lr and --head-lr as given; auto: lr where the runs compare strategies '
                        '(default: auto)')
    p.add_argument('--no-render', action='store_true', help='do not render the leaderboard at the end')
    p.add_argument('--bar', action=argparse.BooleanOptionalAction, default=None,
                   help='progress bars (default: only when the output is a terminal)')
    add_cluster_flags(p)
    return p


def add_cluster_flags(p):
    g = p.add_argument_group('where runs happen')
    g.add_argument('--cluster', default='auto',
                   help='auto: pool on a CPU of two cores or more, else local (default) | local: one after another in '
                        'this process | pool: side by side in worker processes, one per --cpus-per-run cores of this '
                        'machine | ray: a private Ray on this machine\'s GPUs or cores | ray:auto: the running Ray '
                        'cluster ($RAY_ADDRESS) | ray:HOST:PORT')
    g.add_argument('--gpus-per-run', type=float,
                   help='GPUs each run gets on a Ray cluster (default: 1 where the cluster has GPUs, else 0)')
    g.add_argument('--cpus-per-run', type=float,
                   help='CPU cores each run gets in a pool or on a Ray cluster, and its torch threads (default: 1)')
    return p


def flag_overrides(args):
    return {name: getattr(args, name) for name, f in FIELDS.items()
            if f.metadata.get('flag') and getattr(args, name, None) is not None}


def split_list(text):
    return [x.strip() for x in text.split(',') if x.strip()] if text else []


def add_side_by_side_flags(p, size, bs, steps, repeats, tolerance, rounds, slower):
    """The flags of a tool that times two ways of one step side by side (bench/tools/precision.py, conv_grad.py):
    image size and batch, steps per round, alternating `rounds` (what alternates), and how much `slower` (what
    counts as slower) may measure before the tool exits 1."""
    p.add_argument('--size', type=int, default=size, help='px, with --backbone (default: %(default)s)')
    p.add_argument('--bs', type=int, default=bs, help='images per step (default: %(default)s)')
    p.add_argument('--steps', type=int, default=steps, help='training steps per round (default: %(default)s)')
    p.add_argument('--repeats', type=int, default=repeats,
                   help=f'alternating rounds of {rounds} (default: %(default)s)')
    p.add_argument('--tolerance', type=float, default=tolerance,
                   help=f'how much slower {slower} may measure before it counts (default: %(default)s)')


def check_side_by_side_flags(args):
    if min(args.size, args.bs, args.steps, args.repeats) < 1 or args.tolerance < 0:
        raise UsageError('--size, --bs, --steps and --repeats must be at least 1, --tolerance at least 0')
