"""The benchmark suite: data, strategies, records, leaderboard, and one script per experiment."""
