"""The benchmark suite: data, strategies, records, leaderboard, and one script per experiment."""
import warnings

# fastai 2.8.12 calls torch.jit.script at import, which torch 2.14 marks deprecated: a notice for fastai's
# maintainers, printed to every user of every script. Silenced here, before anything imports fastai.
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
