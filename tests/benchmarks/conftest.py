"""Every benchmark round carries the machine's speed at that moment: a fixed calibration workload, timed just
before the round (pytest-benchmark's `setup`, off the clock) and stored in the benchmark's extra_info, so that
bench/tools/regress.py compares rounds in units of the machine's speed at the time rather than in seconds."""
import time

import pytest
import torch


def calibration_seconds(repeats=3):
    """Fastest of `repeats` runs of a fixed mix of what the benchmarks do: a small conv forward and backward,
    batched tensor arithmetic, and plain Python."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(32, 16, 16, 16, generator=g)
    values = torch.rand(20000, generator=g).tolist()
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter()
        conv(x).relu().sum().backward()
        (x * 0.5 + 1).clamp_(0, 1).mean()
        sorted(f'{v:.6f}' for v in values)
        best = min(best, time.perf_counter() - t)
    return best


class Calibrated:
    """pytest-benchmark's `benchmark`, timing `rounds` rounds of `target`, each right after a calibration; each
    round's own time is kept beside its calibration's (bench/tools/regress.py reads a benchmark's noise from them)."""
    def __init__(self, benchmark):
        self.benchmark = benchmark
        self.calibrations = benchmark.extra_info.setdefault('calibration_s', [])
        self.rounds = benchmark.extra_info.setdefault('round_s', [])

    def __call__(self, target, args=(), rounds=10):
        def setup():
            self.calibrations.append(calibration_seconds())
            return args, {}

        def timed(*args):
            t = time.perf_counter()
            out = target(*args)
            self.rounds.append(time.perf_counter() - t)
            return out
        return self.benchmark.pedantic(timed, setup=setup, rounds=rounds, iterations=1)


@pytest.fixture
def calibrated(benchmark):
    return Calibrated(benchmark)
