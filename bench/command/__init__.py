"""The command line every script shares: its flags (made from the settings), and its flow: flags -> configs ->
validated -> planned (--dry-run) or run through the sweep loop -> the leaderboard rendered.
"""
