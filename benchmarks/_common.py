"""What the benchmarks share: problem sizes, timing, a counting right-hand side for scipy, and
the machine's load. Each benchmark script imports what it needs from here."""

import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np

REPEAT_BELOW_S = 1.0  # runs faster than this are repeated and the median is reported
REPEATS = 3


@dataclasses.dataclass(frozen=True)
class Size:
    n: int
    d: int
    t1: float
    max_steps: int
    implicit_max_steps: int
    budget: float


# implicit_max_steps: Kvaerno5 steps cost 0.1–0.4 s here (2-core CPU, see README.md)
FULL = Size(n=40, d=100, t1=200.0, max_steps=200_000, implicit_max_steps=500, budget=120.0)
QUICK = Size(n=20, d=40, t1=50.0, max_steps=5_000, implicit_max_steps=10, budget=1.0)


def timed(fn: Callable, *args):
    """(fn(*args) with its outputs ready, wall seconds)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def steady_wall(fn: Callable):
    """(last output, median wall time): one call, repeated only while calls are fast."""
    out, wall = timed(fn)
    walls = [wall]
    if wall < REPEAT_BELOW_S:
        for _ in range(REPEATS - 1):
            out, wall = timed(fn)
            walls.append(wall)
    return out, statistics.median(walls)


class BudgetExceeded(Exception):
    pass


def jitted(fn: Callable, y0: np.ndarray) -> tuple[Callable, float]:
    """``fn(t, y)`` jitted and warmed up, as scipy's f(t, y) -> ndarray; and its compile time.

    scipy passes t as float or np.float64; ``float(t)`` keeps both to one trace.
    """
    compiled = jax.jit(fn)
    _, seconds = timed(compiled, 0.0, y0)
    return (lambda t, y: np.asarray(compiled(float(t), y))), seconds


class CountingField:
    """A right-hand side that counts its calls and stops the solve past a deadline."""

    def __init__(self, field: Callable, budget: float):
        self.field = field
        self.budget = budget
        self.calls = 0
        self.t = 0.0
        self.deadline = np.inf

    def start(self):
        self.calls, self.t = 0, 0.0
        self.deadline = time.perf_counter() + self.budget

    def __call__(self, t, y):
        if time.perf_counter() > self.deadline:
            raise BudgetExceeded
        self.calls += 1
        self.t = t
        return self.field(t, y)


def load() -> str:
    return "load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
