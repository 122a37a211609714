"""How every script ends: a user's mistake in one sentence on stderr and exit code 2, Ctrl-C with 130 and every
finished record kept. Imports no torch, so that a script which only starts others (bench/suite.py) starts at once.
"""
import sys


def main(fn):
    """Run `fn()` and turn its outcome into an exit code. A mistake is an exception whose class says so
    (`user_mistake`: UsageError, DataError, WeightsError), so that this module needs none of theirs."""
    try:
        sys.exit(fn())
    except KeyboardInterrupt:
        print('\ninterrupted: every finished run is kept in the results file; rerun to resume', file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if not getattr(type(e), 'user_mistake', False):
            raise
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
