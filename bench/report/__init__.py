"""Verdicts in, pages out: the leaderboard's markdown, its tables and figures, the advisor's answer. Imports no torch.
"""
