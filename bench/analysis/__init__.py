"""Records in, verdicts out: tables and paired intervals, across datasets, across regimes, the race replayed, what a
sweep will cost. Imports no torch.
"""
