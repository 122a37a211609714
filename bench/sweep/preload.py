"""What the pool's fork server imports, once, before it forks any worker (bench/sweep/pool.py): torch, fastai, timm
and the suite's run code, so that a worker starts in a fraction of a second instead of spending ~5 s importing them
itself. The server ignores Ctrl-C from here on (the driver ends the workers and it), as its workers do: a Ctrl-C at
a terminal reaches the whole process group, and a server interrupted mid-import would print a traceback."""
import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)

import bench.train.runner  # noqa: E402,F401
