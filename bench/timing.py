"""Timing helper shared by the bench scripts, including the PyTorch reference
(so it imports neither TensorFlow nor PyTorch)."""

from __future__ import annotations

import statistics
import time


def median_seconds(step, warmup: int, steps: int) -> float:
    """Median wall time of ``step()`` over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
