"""The benchmark suite: data, strategies, records, leaderboard, and one script per experiment.

Scripts a user runs (each `python bench/<name>.py --help`): finetune, scratch, search (the experiments), suite (what
`make bench` runs), leaderboard, stability, families, speed, precision, regress.
Modules the scripts import, in the order data flows: config, experiments and datasets (declarations), resolve, cli (flags ->
runs; tune expands a comparison into grid and seed runs), executor and cluster (where runs happen), data and decode,
learner, strategies, optim, memory, plan, runner (one run), record (the results file), stats, across, figures.
"""
import warnings

# fastai 2.8.12 calls torch.jit.script at import, which torch 2.14 marks deprecated: a notice for fastai's
# maintainers, printed to every user of every script. Silenced here, before anything imports fastai.
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
