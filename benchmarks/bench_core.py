"""Benchmark `mirrorflow_jax.solve_flow` (diffrax) against scipy's `solve_ivp` on the same field.

Integrates dθ/dt = −φ_q^ε(∇F(θ)) for a signed depth-3 diagonal network on seeded sparse
regression, for gradient flow (q = 2), the exact q = 1.5 flow and the smoothed sign flow
(q = 1, ε = 1e-3, structured and naive smoothing), with rtol = 1e-8 and atol = 1e-10 throughout.

- diffrax rows: `solve_flow` wrapped in `eqx.filter_jit`; compile time is the AOT
  ``.lower(...).compile()`` time, wall time that of one call of the compiled function (the
  median of three for calls under a second). Solves are capped by ``max_steps`` (a smaller
  cap for implicit solvers, sized to the time budget: their steps cost far more).
- scipy rows: the flow flattened with ``ravel_pytree`` and jitted, returning NumPy arrays;
  compile time is the jit of the right-hand side (and of its ``jax.jacfwd`` where used); wall
  time is timed like diffrax's. A run whose wall time passes the budget is stopped by the
  right-hand side.

Wall-time ratios are against scipy LSODA (finite-difference Jacobian) on the same flow, run in
the same process.

Usage: ``python benchmarks/bench_core.py [--quick] [--budget SECONDS] [--rtol R]`` (atol =
R/100; default rtol 1e-8, atol 1e-10)
"""

import argparse
import dataclasses
import datetime
import os
import platform
import time
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import numpy as np
import scipy
from _common import (
    FULL,
    QUICK,
    REPEAT_BELOW_S,
    REPEATS,
    BudgetExceeded,
    CountingField,
    Size,
    jitted,
    load,
    steady_wall,
    timed,
)
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

import mirrorflow_jax as mf

RTOL, ATOL = 1e-8, 1e-10


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    flow: mf.SteepestFlow
    with_implicit: bool = False


@dataclasses.dataclass(frozen=True)
class Row:
    case: str
    method: str
    work: str
    status: str
    finished: bool
    compile_s: float
    wall_s: float
    loss: float
    x: np.ndarray


def cases() -> list[Case]:
    sign = mf.Lp(q=1.0, eps=1e-3)
    return [
        Case("q=2", mf.SteepestFlow(mf.Lp(q=2.0))),
        Case("q=1.5, eps=0", mf.SteepestFlow(mf.Lp(q=1.5))),
        Case("q=1, eps=1e-3 (structured)", mf.SteepestFlow(sign), with_implicit=True),
        Case("q=1, eps=1e-3 (naive)", mf.SteepestFlow(sign, smoothing_at="naive")),
    ]


# ----------------------------------------------------------------------------- diffrax


def compile_solve(case, model, problem, size, solver, max_steps, pcoeff=0.0, icoeff=1.0):
    """AOT-compiled ``solve_flow`` for this case, and its compile time. ``pcoeff`` and
    ``icoeff`` are the PID controller's (diffrax's defaults: an I controller)."""
    controller = diffrax.PIDController(rtol=RTOL, atol=ATOL, pcoeff=pcoeff, icoeff=icoeff)
    solve = eqx.filter_jit(
        lambda flow, params0, loss: mf.solve_flow(
            flow,
            params0,
            loss,
            size.t1,
            solver=solver,
            max_steps=max_steps,
            stepsize_controller=controller,
        )
    )
    compiled, seconds = timed(lambda: solve.lower(case.flow, model, problem).compile())
    return (lambda: compiled(case.flow, model, problem)), seconds


def diffrax_status(sol, max_steps: int) -> str:
    if bool(sol.ok):
        return "ok"
    if bool(sol.result == mf.RESULTS.max_steps_reached):
        return f"max_steps={max_steps} hit at t={float(sol.ts[-1]):.3g}"
    return f"failed: {sol.result}"


def run_diffrax(case, model, problem, size, solver) -> Row:
    implicit = isinstance(solver, diffrax.AbstractImplicitSolver)
    max_steps = size.implicit_max_steps if implicit else size.max_steps
    solve, compile_s = compile_solve(case, model, problem, size, solver, max_steps)
    sol, wall = steady_wall(solve)
    return Row(
        case=case.name,
        method=f"diffrax {type(solver).__name__} + PID",
        work=f"{int(sol.num_steps)} steps",
        status=diffrax_status(sol, max_steps),
        finished=bool(sol.ok),
        compile_s=compile_s,
        wall_s=wall,
        loss=float(sol.loss[-1]),
        x=np.asarray(sol.x[-1]),
    )


# ----------------------------------------------------------------------------- scipy


def flat_field(case, problem, unravel) -> Callable:
    """The flow as a function of flat parameters (`ravel_pytree` of the model)."""

    def field(t, y):
        return ravel_pytree(case.flow(t, unravel(y), problem))[0]

    return field


def scipy_label(method: str, exact_jac: bool) -> str:
    if exact_jac:
        return f"scipy {method} + jax.jacfwd"
    return f"scipy {method} (FD Jacobian)" if method == "LSODA" else f"scipy {method}"


def scipy_outcome(res, rhs: CountingField, budget: float) -> tuple[str, str]:
    """(work, status) of a solve_ivp result, or of a solve stopped by the budget (None)."""
    work = f"{rhs.calls} rhs calls"
    if res is None:
        return work, f"budget {budget:g} s hit at t={rhs.t:.3g}"
    work += f", {res.njev} jac" if res.njev else ""
    return work, "ok" if res.success else f"failed: {res.message}"


def run_scipy(case, model, problem, size, method: str, exact_jac: bool) -> Row:
    y0, unravel = ravel_pytree(model)
    y0 = np.asarray(y0)
    field = flat_field(case, problem, unravel)
    numpy_field, compile_s = jitted(field, y0)
    options = {}
    if exact_jac:
        options["jac"], jac_s = jitted(jax.jacfwd(field, argnums=1), y0)
        compile_s += jac_s
    rhs = CountingField(numpy_field, size.budget)

    def solve():
        rhs.start()
        try:
            return solve_ivp(
                rhs, (0.0, size.t1), y0, method=method, rtol=RTOL, atol=ATOL, **options
            )
        except BudgetExceeded:
            return None

    res, wall = steady_wall(solve)
    work, status = scipy_outcome(res, rhs, size.budget)
    finished = res is not None and res.success
    x = mf.effective_weights(unravel(res.y[:, -1])) if finished else np.full(problem.dim, np.nan)
    return Row(
        case=case.name,
        method=scipy_label(method, exact_jac),
        work=work,
        status=status,
        finished=finished,
        compile_s=compile_s,
        wall_s=wall,
        loss=float(problem(x)) if finished else np.nan,
        x=np.asarray(x),
    )


# ----------------------------------------------------------------------------- report


def rows_for(case, model, problem, size) -> list[Row]:
    rows = [
        run_scipy(case, model, problem, size, "LSODA", exact_jac=False),
        run_scipy(case, model, problem, size, "LSODA", exact_jac=True),
        run_scipy(case, model, problem, size, "RK45", exact_jac=False),
        run_diffrax(case, model, problem, size, diffrax.Tsit5()),
    ]
    if case.with_implicit:
        rows.append(run_diffrax(case, model, problem, size, diffrax.Kvaerno5()))
    return rows


def markdown_rows(rows: list[Row]) -> list[str]:
    baseline = rows[0]
    lines = []
    for row in rows:
        more = "" if row.finished else ">"
        gap = np.max(np.abs(row.x - baseline.x)) if row.finished and baseline.finished else None
        cells = [
            row.case,
            row.method,
            row.work,
            row.status,
            f"{row.compile_s:.2f}",
            f"{more}{row.wall_s:.3g}",
            f"{more}{row.wall_s / baseline.wall_s:.3g}" if baseline.finished else "n/a",
            "—" if np.isnan(row.loss) else f"{row.loss:.3g}",
            "—" if gap is None else f"{gap:.1e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


HEADER = [
    "| flow | method | work | result | compile [s] | wall [s] | wall / LSODA | final loss "
    "| max abs x − x_LSODA |",
    "|---|---|---|---|---:|---:|---:|---:|---:|",
]


def environment(size: Size) -> str:
    versions = ", ".join(
        f"{module.__name__} {module.__version__}" for module in (jax, diffrax, eqx, scipy, np, mf)
    )
    return "\n".join(
        [
            f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            f"python {platform.python_version()}; {versions}",
            f"jax.devices(): {jax.devices()}",
            f"problem: sparse_regression(key(0), n={size.n}, d={size.d}, k=5); model: "
            f"SignedDeepDiagonal.scaled(1e-2, depth=3, dim={size.d}); t1={size.t1:g}; "
            f"rtol={RTOL:g}, atol={ATOL:g}; float64",
            f"caps: diffrax max_steps={size.max_steps} (implicit: {size.implicit_max_steps}); "
            f"scipy wall-time budget {size.budget:g} s; runs under {REPEAT_BELOW_S:g} s are "
            f"repeated {REPEATS}x (median)",
            load(),
        ]
    )


def setup(description: str, parser: argparse.ArgumentParser | None = None):
    """Parse ``--quick`` / ``--budget`` (added to ``parser`` when a benchmark brings its own
    options), enable float64, print the environment and the table header; return the size,
    the problem and the initial model."""
    global RTOL, ATOL
    parser = parser or argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="n=20, d=40, t1=50 smoke run")
    parser.add_argument("--budget", type=float, help="wall-time budget per scipy run [s]")
    parser.add_argument(
        "--rtol", type=float, help=f"rtol of every method, atol = rtol/100 (default {RTOL:g})"
    )
    args = parser.parse_args()
    if args.rtol is not None:
        if not 0 < args.rtol < 1:
            parser.error(f"--rtol must lie in (0, 1); got {args.rtol:g}")
        RTOL, ATOL = args.rtol, args.rtol / 100
    jax.config.update("jax_enable_x64", True)
    size = QUICK if args.quick else FULL
    if args.budget is not None:
        size = dataclasses.replace(size, budget=args.budget)
    problem = mf.sparse_regression(jax.random.key(0), n=size.n, d=size.d, k=5)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=size.d)
    print(environment(size), end="\n\n", flush=True)
    print("\n".join(HEADER), flush=True)
    return size, problem, model


def main():
    size, problem, model = setup(__doc__.splitlines()[0])
    start = time.perf_counter()
    for case in cases():
        print("\n".join(markdown_rows(rows_for(case, model, problem, size))), flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; {load()}")


if __name__ == "__main__":
    main()
