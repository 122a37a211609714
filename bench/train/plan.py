"""The dry run's words: the phases a strategy would run (bench/train/run.py's `planned`, on a parameter-free model):
which groups train, the LR of each, and the exact trainable parameters, without data, weights or training."""


def format_plan(cfg, p):
    lines = [f'{cfg.experiment} | {cfg.backbone} | {cfg.strategy} | weights {cfg.weights} | seed {cfg.seed}',
             '  groups: ' + ' | '.join(f'{n} {s:,}' for n, s in zip(p['names'], p['sizes']))
             + f'  (total {p["total"]:,})']
    if not p['phases']:
        lines.append(f'  no training; evaluate only (trainable 0 of {p["total"]:,})')
    for ph in p['phases']:
        trained = [n for n, t in zip(p['names'], ph['trains']) if t]
        lrs = ' '.join(f'{x:.0e}' for x in ph['lrs'])
        kind = 'one-cycle peak' if ph['one_cycle'] else 'flat'
        lines.append(f'  epochs {ph["start"] + 1}-{ph["stop"]}: train {", ".join(trained)}; lr per group ({kind}) '
                     f'[{lrs}]; trainable {ph["trainable"]:,} of {p["total"]:,}')
    return '\n'.join(lines)
