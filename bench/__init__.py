"""The benchmark suite: the scripts a user runs, here, and the library they import, in sub-packages named for their
layer, lowest first (each imports only those below it):

    declare/   what a run is: config, experiments, datasets, strategies, the record            (no torch)
    images/    files -> a memory-mapped image cache -> splits -> batches
    train/     one run: resolved, built once, trained, timed, evaluated
    sweep/     many runs: the one loop, its policies (tuning, search, the race), what a budget buys, executors
    analysis/  records -> verdicts: tables, across datasets, across regimes, costs             (no torch)
    report/    verdicts -> the leaderboard's pages and figures, the advisor's answer           (no torch)
    command/   the command line the scripts share: flags, and flags -> runs -> the leaderboard
    tools/     diagnostic scripts: speed, precision, families, regress, stability, the GPU check

Scripts (each `python bench/<name>.py --help`): finetune, scratch, search, advise (the questions), suite (what `make
bench` runs), leaderboard, race (the advisor's race replayed on a sweep).
"""
import warnings

# fastai 2.8.12 calls torch.jit.script at import, which torch 2.14 marks deprecated: a notice for fastai's
# maintainers, printed to every user of every script. Silenced here, before anything imports fastai.
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
