"""Benchmark `mirrorflow_jax.sweep` against Python loops over the same 24-configuration grid.

Grid: (q, ε) ∈ {(1, 1e-3), (1.5, 0), (2, 0)} × α ∈ 8 log-spaced values in [1e-3, 1e-1]
(q-major, so that consecutive members share q); a signed depth-3 diagonal network,
``SignedDeepDiagonal.scaled(α)``, on seeded sparse regression (n = 40, d = 100, k = 5),
integrated to t1 = 100 with rtol = 1e-8, atol = 1e-10 (float64, structured smoothing).

Rows, all run in this process, one after another:

- scipy ``solve_ivp`` (LSODA) in a Python loop: the flow flattened with ``ravel_pytree`` and
  jitted once with the flow as an argument (compile = that jit); each solve is stopped after
  ``--budget`` seconds (counted as unfinished);
- a Python loop of per-configuration calls of one AOT-compiled ``solve_flow`` (Tsit5);
- ``sweep`` with each strategy: compile = trace + lower + compile (the result's attrs), run =
  the compiled calls, end to end = the whole ``sweep`` call.

diffrax solves are capped at ``max_steps`` (members that hit it are unfinished). Ratios are the
LSODA loop's run time over each row's run and end-to-end times; where some solves stopped
early the times are lower bounds, marked ``>`` (only LSODA stopped early: the ratio is a lower
bound), ``<`` (only this row did) or ``~`` (both did).

Usage: ``python benchmarks/bench_sweep.py [--quick] [--budget SECONDS] [--batch-size B]``
"""

import argparse
import dataclasses
import datetime
import os
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from bench_core import BudgetExceeded, CountingField, load, timed
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

import mirrorflow_jax as mf
from mirrorflow_jax._sweep import Grid, sweep

RTOL, ATOL = 1e-8, 1e-10
DEPTH = 3
GEOMETRIES = {"q": [1.0, 1.5, 2.0], "eps": [1e-3, 0.0, 0.0]}


@dataclasses.dataclass(frozen=True)
class Size:
    n: int
    d: int
    t1: float
    num_alphas: int
    max_steps: int
    budget: float


FULL = Size(n=40, d=100, t1=100.0, num_alphas=8, max_steps=200_000, budget=30.0)
QUICK = Size(n=20, d=40, t1=20.0, num_alphas=2, max_steps=20_000, budget=2.0)


@dataclasses.dataclass(frozen=True)
class Row:
    method: str
    compile_s: float
    run_s: float
    total_s: float
    work: str
    finished: np.ndarray  # per member, grid order
    x: np.ndarray  # final effective weights per member, (members, d)
    member_s: np.ndarray | None = None  # per-member wall time (loops only)


def make_grid(size: Size) -> Grid:
    return Grid.zip(**GEOMETRIES) * Grid(alpha=np.logspace(-3, -1, size.num_alphas))


def make_run(problem, size: Size):
    def run(q, eps, alpha):
        flow = mf.SteepestFlow(mf.Lp(q, eps))
        model = mf.SignedDeepDiagonal.scaled(alpha, depth=DEPTH, dim=size.d)
        return mf.solve_flow(flow, model, problem, size.t1, max_steps=size.max_steps)

    return run


def configs(grid: Grid):
    members = grid.members()
    return list(zip(members["q"], members["eps"], members["alpha"], strict=True))


def scipy_row(grid: Grid, problem, size: Size) -> Row:
    model0 = mf.SignedDeepDiagonal.scaled(1.0, depth=DEPTH, dim=size.d)
    y0, unravel = ravel_pytree(model0)

    @jax.jit
    def rhs(t, y, flow):
        return ravel_pytree(flow(t, unravel(y), problem))[0]

    flow0 = mf.SteepestFlow(mf.Lp(1.0, 1e-3))
    _, compile_s = timed(lambda: rhs.lower(0.0, y0, flow0).compile())
    finished, finals, seconds, calls = [], [], [], 0
    for q, eps, alpha in configs(grid):
        flow = mf.SteepestFlow(mf.Lp(q, eps))
        field = CountingField(
            lambda t, y, flow=flow: np.asarray(rhs(float(t), y, flow)), size.budget
        )
        y0 = ravel_pytree(mf.SignedDeepDiagonal.scaled(alpha, depth=DEPTH, dim=size.d))[0]
        start = time.perf_counter()
        field.start()
        try:
            res = solve_ivp(field, (0.0, size.t1), np.asarray(y0), "LSODA", rtol=RTOL, atol=ATOL)
            done = bool(res.success)
        except BudgetExceeded:
            done = False
        seconds.append(time.perf_counter() - start)
        calls += field.calls
        finished.append(done)
        finals.append(np.asarray(unravel(res.y[:, -1])()) if done else np.full(size.d, np.nan))
    run_s = sum(seconds)
    return Row(
        "scipy LSODA, Python loop",
        compile_s,
        run_s,
        compile_s + run_s,
        f"{calls} rhs calls",
        np.array(finished),
        np.stack(finals),
        np.array(seconds),
    )


def jitted_loop_row(grid: Grid, run) -> Row:
    solve = eqx.filter_jit(run)
    example = [jnp.asarray(v) for v in configs(grid)[0]]
    compiled, compile_s = timed(lambda: solve.lower(*example).compile())
    finished, finals, seconds, steps = [], [], [], 0
    for config in configs(grid):
        sol, wall = timed(compiled, *(jnp.asarray(v) for v in config))
        seconds.append(wall)
        steps += int(sol.num_steps)
        finished.append(bool(sol.ok))
        finals.append(np.asarray(sol.x[-1]))
    run_s = sum(seconds)
    return Row(
        "jitted solve_flow, Python loop",
        compile_s,
        run_s,
        compile_s + run_s,
        f"{steps} steps",
        np.array(finished),
        np.stack(finals),
        np.array(seconds),
    )


def sweep_row(grid: Grid, run, strategy: str, batch_size: int | None) -> Row:
    ds, total_s = timed(lambda: sweep(run, grid, strategy=strategy, batch_size=batch_size))
    label = f"sweep, strategy={strategy!r}"
    label += f" (batch_size={batch_size})" if batch_size else ""
    label += f" → {ds.attrs['strategy']}" if strategy == "auto" else ""
    x = ds.x.isel(t=-1).transpose(*grid.dims, "coordinate").values.reshape(grid.size, -1)
    return Row(
        label,
        ds.attrs["trace_seconds"] + ds.attrs["compile_seconds"],
        ds.attrs["run_seconds"],
        total_s,
        f"{int(ds.num_steps.sum())} steps",
        ds.ok.transpose(*grid.dims).values.ravel(),
        x,
    )


HEADER = [
    "| method | members finished | work | compile [s] | run [s] | end to end [s] "
    "| LSODA loop / run | LSODA loop / end to end | max abs x − x_LSODA (both finished) |",
    "|---|---:|---|---:|---:|---:|---:|---:|---:|",
]


def bound(row: Row, baseline: Row) -> str:
    """How to read baseline/row time ratios when solves stopped early (times are then lower
    bounds): ">" only the baseline stopped early, "<" only this row, "~" both."""
    if row is baseline:
        return ""
    marks = {(True, True): "", (False, True): ">", (True, False): "<", (False, False): "~"}
    return marks[bool(baseline.finished.all()), bool(row.finished.all())]


def markdown_row(row: Row, baseline: Row) -> str:
    mark = bound(row, baseline)
    both = row.finished & baseline.finished
    gap = np.max(np.abs(row.x[both] - baseline.x[both])) if both.any() else np.nan
    cells = [
        row.method,
        f"{int(row.finished.sum())}/{row.finished.size}",
        row.work,
        f"{row.compile_s:.2f}",
        f"{row.run_s:.3g}",
        f"{row.total_s:.3g}",
        f"{mark}{baseline.run_s / row.run_s:.3g}",
        f"{mark}{baseline.run_s / row.total_s:.3g}",
        f"{gap:.1e}",
    ]
    return "| " + " | ".join(cells) + " |"


def per_geometry(grid: Grid, loops: list[Row]) -> list[str]:
    """Wall time and members finished per (q, ε), summed over α, for the two loops."""
    lines = ["| q, ε | " + " | ".join(row.method for row in loops) + " |", "|---|---:|---:|"]
    q = grid.members()["q"]
    for qi, eps in zip(*GEOMETRIES.values(), strict=True):
        rows = q == qi
        cells = [
            f"{row.member_s[rows].sum():.3g} s ({int(row.finished[rows].sum())}/{rows.sum()})"
            for row in loops
        ]
        lines.append(f"| {qi:g}, {eps:g} | " + " | ".join(cells) + " |")
    return lines


def summary(rows: list[Row]) -> str:
    sweeps = [row for row in rows if row.method.startswith("sweep")]
    best = min(sweeps, key=lambda row: row.run_s)
    auto = next(row for row in sweeps if "'auto'" in row.method)
    return (
        f"fastest strategy: {best.method} ({best.run_s:.3g} s); auto: {auto.run_s:.3g} s "
        f"= {auto.run_s / best.run_s:.2f} × the fastest"
    )


def environment(size: Size, grid: Grid) -> str:
    return "\n".join(
        [
            f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            f"jax {jax.__version__}, mirrorflow_jax {mf.__version__}; "
            f"jax.devices(): {jax.devices()}",
            f"grid: {grid.size} members, dims {grid.dims}; sparse_regression(key(0), "
            f"n={size.n}, d={size.d}, k=5); SignedDeepDiagonal.scaled(alpha, depth={DEPTH}); "
            f"t1={size.t1:g}; rtol={RTOL:g}, atol={ATOL:g}; float64",
            f"caps: diffrax max_steps={size.max_steps}; LSODA budget {size.budget:g} s/member",
            load(),
        ]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n=20, d=40, t1=20, 6 members")
    parser.add_argument("--budget", type=float, help="wall-time budget per LSODA solve [s]")
    parser.add_argument("--batch-size", type=int, default=8, help="for strategy='batched'")
    return parser.parse_args()


def main():
    args = parse_args()
    jax.config.update("jax_enable_x64", True)
    size = QUICK if args.quick else FULL
    if args.budget is not None:
        size = dataclasses.replace(size, budget=args.budget)
    problem = mf.sparse_regression(jax.random.key(0), n=size.n, d=size.d, k=5)
    grid = make_grid(size)
    run = make_run(problem, size)
    print(environment(size, grid), end="\n\n", flush=True)
    print("\n".join(HEADER), flush=True)
    rows = [scipy_row(grid, problem, size), jitted_loop_row(grid, run)]
    for row in rows:
        print(markdown_row(row, rows[0]), flush=True)
    strategies = [("map", None), ("batched", args.batch_size), ("vmap", None), ("auto", None)]
    for strategy, batch_size in strategies:
        rows.append(sweep_row(grid, run, strategy, batch_size))
        print(markdown_row(rows[-1], rows[0]), flush=True)
    print("\n" + "\n".join(per_geometry(grid, rows[:2])))
    print(f"\n{summary(rows)}\n{load()}")


if __name__ == "__main__":
    main()
