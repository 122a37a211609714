"""The suite's tests (a package, so that `tests.helpers` is ours: baycomp installs a top-level `tests` package)."""
