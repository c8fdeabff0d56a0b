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


def alternating_times(steps: dict, warmup: int, rounds: int, per_round: int = 1) -> tuple:
    """Wall and process-CPU seconds per call of each callable in ``steps``
    (name -> callable), the callables taking turns: each is called ``warmup``
    times untimed, then ``rounds`` rounds call each ``per_round`` times.
    Taking turns keeps a drift of the host's speed from favouring one.
    Returns ``({name: [wall s]}, {name: [cpu s]})``."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(per_round):
                t, c = time.perf_counter(), time.process_time()
                step()
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
    return wall, cpu
