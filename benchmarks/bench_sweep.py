"""Benchmark `mirrorflow_jax.sweep` against Python loops over the same 24-configuration grid.

Grid: (q, ε) ∈ {(1, 1e-3), (1.5, 0), (2, 0)} × α ∈ 8 log-spaced values in [1e-3, 1e-1]
(q-major, so that consecutive members share q); a signed depth-3 diagonal network,
``SignedDeepDiagonal.scaled(α)``, on seeded sparse regression (n = 40, d = 100, k = 5),
integrated to t1 = 100 with rtol = 1e-8, atol = 1e-10 by default (``--rtol/--atol``: the same
tolerances for every method; scipy's own defaults are 1e-3/1e-6), float64, structured
smoothing. diffrax rows use `Rodas4` for the stiff q = 1 members and Tsit5 for the others,
picked per member inside the compiled program (``--solver tsit5``: Tsit5 for all).

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

Usage: ``python benchmarks/bench_sweep.py [--quick] [--budget SECONDS] [--batch-size B]
[--rtol R] [--atol A] [--solver-rtol R] [--solver-atol A] [--strategies map,auto]
[--solver {rodas4-for-q1,tsit5}]``
"""

import argparse
import dataclasses
import datetime
import os
import platform
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import BudgetExceeded, CountingField, load, timed
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

import mirrorflow_jax as mf
from mirrorflow_jax import Grid, sweep

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
    rtol: float = 1e-8  # every method (LSODA, and diffrax unless solver_rtol is set)
    atol: float = 1e-10
    solver: str = "rodas4-for-q1"
    solver_rtol: float | None = None  # diffrax rows only
    solver_atol: float | None = None

    @property
    def diffrax_tolerances(self) -> tuple[float, float]:
        """(rtol, atol) of the diffrax rows."""
        return self.solver_rtol or self.rtol, self.solver_atol or self.atol


FULL = Size(n=40, d=100, t1=100.0, num_alphas=8, max_steps=200_000, budget=30.0)
QUICK = Size(n=20, d=40, t1=20.0, num_alphas=2, max_steps=20_000, budget=2.0)
SOLVERS = ("rodas4-for-q1", "tsit5")


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
    """The sweep function. With ``size.solver == "rodas4-for-q1"`` each member picks its solver
    inside the compiled program (``lax.cond`` on the traced q, ε): `Rodas4` for the stiff
    smoothed sign flow (q = 1, ε > 0), Tsit5 for the rest; with ``"tsit5"`` every member uses
    Tsit5."""
    rtol, atol = size.diffrax_tolerances
    controller = diffrax.PIDController(rtol=rtol, atol=atol)

    def run(q, eps, alpha):
        flow = mf.SteepestFlow(mf.Lp(q, eps))
        model = mf.SignedDeepDiagonal.scaled(alpha, depth=DEPTH, dim=size.d)

        def solve(solver):
            return lambda: mf.solve_flow(
                flow,
                model,
                problem,
                size.t1,
                solver=solver,
                stepsize_controller=controller,
                max_steps=size.max_steps,
            )

        if size.solver == "tsit5":
            return solve(diffrax.Tsit5())()
        stiff = (q == 1.0) & (eps > 0.0)
        return jax.lax.cond(stiff, solve(mf.Rodas4()), solve(diffrax.Tsit5()))

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
            res = solve_ivp(
                field, (0.0, size.t1), np.asarray(y0), "LSODA", rtol=size.rtol, atol=size.atol
            )
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


def accuracy(grid: Grid, problem, size: Size, rows: list[Row]) -> list[str]:
    """Each row's error against a reference solved 100× tighter (rtol/100, atol/100, Rodas4
    for the q = 1 members), over the members the LSODA loop finished: at loose tolerances the
    rows' agreement with LSODA alone does not say which is off."""
    tight = dataclasses.replace(
        size, rtol=size.rtol / 100, atol=size.atol / 100, solver_rtol=None, solver_atol=None
    )
    solve = eqx.filter_jit(make_run(problem, tight))
    done = rows[0].finished
    reference = np.full_like(rows[0].x, np.nan)
    for i, config in enumerate(configs(grid)):
        if done[i]:
            reference[i] = np.asarray(solve(*(jnp.asarray(v) for v in config)).x[-1])
    lines = [
        f"| method | max abs x − x_ref over the {int(done.sum())} members LSODA finished |",
        "|---|---:|",
    ]
    for row in rows:
        both = done & row.finished
        error = np.max(np.abs(row.x[both] - reference[both])) if both.any() else np.nan
        lines.append(f"| {row.method} | {error:.1e} |")
    return lines


def summary(rows: list[Row]) -> str:
    sweeps = [row for row in rows if row.method.startswith("sweep")]
    if not sweeps:
        return "no sweep strategy timed"
    best = min(sweeps, key=lambda row: row.run_s)
    auto = next((row for row in sweeps if "'auto'" in row.method), None)
    if auto is None:
        return f"fastest strategy: {best.method} ({best.run_s:.3g} s)"
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
            f"t1={size.t1:g}; rtol={size.rtol:g}, atol={size.atol:g}; float64; "
            f"diffrax solver: {size.solver}, rtol={size.diffrax_tolerances[0]:g}, "
            f"atol={size.diffrax_tolerances[1]:g}",
            f"caps: diffrax max_steps={size.max_steps}; LSODA budget {size.budget:g} s/member",
            load(),
        ]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n=20, d=40, t1=20, 6 members")
    parser.add_argument("--budget", type=float, help="wall-time budget per LSODA solve [s]")
    parser.add_argument("--batch-size", type=int, default=8, help="for strategy='batched'")
    parser.add_argument("--rtol", type=float, default=1e-8, help="for every method")
    parser.add_argument("--atol", type=float, default=1e-10, help="for every method")
    parser.add_argument("--solver-rtol", type=float, help="diffrax rows only (default: --rtol)")
    parser.add_argument("--solver-atol", type=float, help="diffrax rows only (default: --atol)")
    parser.add_argument(
        "--strategies",
        default="map,batched,vmap,auto",
        help="comma-separated sweep strategies to time",
    )
    parser.add_argument(
        "--solver",
        choices=SOLVERS,
        default=SOLVERS[0],
        help="diffrax rows: Rodas4 for the q = 1 members and Tsit5 for the rest, or Tsit5 for all",
    )
    return parser.parse_args()


def main():
    args = parse_args()
    jax.config.update("jax_enable_x64", True)
    size = QUICK if args.quick else FULL
    size = dataclasses.replace(
        size,
        rtol=args.rtol,
        atol=args.atol,
        solver=args.solver,
        solver_rtol=args.solver_rtol,
        solver_atol=args.solver_atol,
    )
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
    unknown = set(args.strategies.split(",")) - {"map", "batched", "vmap", "auto"}
    if unknown:
        raise SystemExit(f"--strategies: unknown {sorted(unknown)}; use map, batched, vmap, auto")
    batch_sizes = {"batched": args.batch_size}
    strategies = [(name, batch_sizes.get(name)) for name in args.strategies.split(",")]
    for strategy, batch_size in strategies:
        rows.append(sweep_row(grid, run, strategy, batch_size))
        print(markdown_row(rows[-1], rows[0]), flush=True)
    print("\n" + "\n".join(per_geometry(grid, rows[:2])))
    print(f"\nreference: rtol={size.rtol / 100:g}, atol={size.atol / 100:g}")
    print("\n".join(accuracy(grid, problem, size, rows)), flush=True)
    print(f"\n{summary(rows)}\n{load()}")


if __name__ == "__main__":
    main()
