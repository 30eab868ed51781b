"""Benchmark the defaults: a sweep with no solver argument anywhere, against a Python loop of
scipy LSODA solves, with its accuracy against a tight reference.

Grids (``--grid``):

- ``naive``: α ∈ logspace(−3, −1, 8) × q ∈ {1, 1.5, 2}, ε = 1e-3 for every q, the naive
  smoothing placement, ``DeepDiagonal.scaled(α, depth=3, dim=100)`` on a 40×100 sparse
  least-squares problem, t1 = 100, rtol 1e-6 / atol 1e-9. With the old default (Tsit5) every
  member reported ok while the sign-flow members ended up to 4.4e-2 from the truth.
- ``bench_sweep``: bench_sweep.py's grid, (q, ε) ∈ {(1, 1e-3), (1.5, 0), (2, 0)} × 8 α,
  ``SignedDeepDiagonal.scaled(α, depth=3)``, structured smoothing, same problem and tolerances.

Rows, in one process: the LSODA loop (the flow flattened with ``ravel_pytree`` and jitted
once; compile = that jit), then ``sweep`` with every default twice: the first call pays
tracing and compilation (cold), the second traces again and, with ``--cache DIR`` (a fresh
folder), loads the compiled program from JAX's persistent cache instead of compiling: what a
rerun of the same sweep in a new process costs. Accuracy: the largest
|x − x_ref| at t1 over the members, x_ref at rtol 1e-10 / atol 1e-13 from another method
than the default's wherever one is practical: Tsit5 (rtol 1e-12) for gradient flow,
`SignFlowKvaerno3` for the naive sign flow and `Rodas4` for the structure-preserving one,
`PowerFlowKvaerno3` for the exact maps with 1 < q < 2, and `Rodas4` (the default's own) for
the smoothed 1 < q < 2, whose stiffness rules out explicit methods.

Usage: ``python benchmarks/bench_auto.py [--grid naive|bench_sweep] [--quick]
[--cache DIR] [--no-lsoda] [--no-reference]``.
"""

import argparse
import os
import time

# Run-time checks as NaN, not host callbacks, so that the persistent cache can keep the
# programs (as the mirrorflow command does); read when equinox is first imported.
os.environ.setdefault("EQX_ON_ERROR", "nan")

import diffrax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from _common import BudgetExceeded, CountingField, load
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

import mirrorflow_jax as mf

jax.config.update("jax_enable_x64", True)

DEPTH = 3


def grid_and_model(name: str, quick: bool):
    alphas = np.logspace(-3, -1, 2 if quick else 8)
    if name == "naive":
        grid = mf.Grid(q=[1.0, 1.5, 2.0]) * mf.Grid(alpha=alphas)
        eps_of = {1.0: 1e-3, 1.5: 1e-3, 2.0: 1e-3}
        return grid, eps_of, mf.DeepDiagonal, "naive"
    grid = mf.Grid(q=[1.0, 1.5, 2.0]) * mf.Grid(alpha=alphas)
    eps_of = {1.0: 1e-3, 1.5: 0.0, 2.0: 0.0}
    return grid, eps_of, mf.SignedDeepDiagonal, "structured"


def make_run(problem, model_cls, placement, d, t1, controller, solver="auto"):
    def run(q, alpha):
        eps = 1e-3 * (q == 1.0) if placement == "structured" else 1e-3
        flow = mf.SteepestFlow(mf.Lp(q, eps), smoothing_at=placement)
        model = model_cls.scaled(alpha, depth=DEPTH, dim=d)
        return mf.solve_flow(
            flow,
            model,
            problem,
            t1,
            solver=solver,
            stepsize_controller=controller,
            max_steps=200_000,
        )

    return run


def lsoda_loop(grid, problem, model_cls, placement, eps_of, d, t1, budget):
    model0 = model_cls.scaled(1.0, depth=DEPTH, dim=d)
    y0, unravel = ravel_pytree(model0)

    @jax.jit
    def rhs(t, y, flow):
        return ravel_pytree(flow(t, unravel(y), problem))[0]

    start = time.perf_counter()
    rhs.lower(0.0, y0, mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at=placement)).compile()
    compile_s = time.perf_counter() - start
    members = grid.members()
    finals, finished = [], []
    start = time.perf_counter()
    for q, alpha in zip(members["q"], members["alpha"], strict=True):
        flow = mf.SteepestFlow(mf.Lp(q, eps_of[float(q)]), smoothing_at=placement)
        field = CountingField(lambda t, y, f=flow: np.asarray(rhs(float(t), y, f)), budget)
        y0 = ravel_pytree(model_cls.scaled(alpha, depth=DEPTH, dim=d))[0]
        field.start()
        try:
            res = solve_ivp(field, (0.0, t1), np.asarray(y0), "LSODA", rtol=1e-6, atol=1e-9)
            finished.append(bool(res.success))
            finals.append(np.asarray(unravel(res.y[:, -1])()))
        except BudgetExceeded:
            finished.append(False)
            finals.append(np.full(d, np.nan))
    return compile_s, time.perf_counter() - start, np.array(finished), np.stack(finals)


def reference_solver(q: float, eps: float, placement: str):
    """(solver, controller) of the reference for one q: see the module docstring."""
    tight = diffrax.PIDController(rtol=1e-10, atol=1e-13)
    if q == 2:
        return diffrax.Tsit5(), diffrax.PIDController(rtol=1e-12, atol=1e-15)
    if q == 1:
        return (mf.SignFlowKvaerno3() if placement == "naive" else mf.Rodas4()), tight
    return (mf.PowerFlowKvaerno3() if eps == 0 else mf.Rodas4()), tight


def reference(problem, model_cls, placement, d, t1, grid, eps_of):
    """x(t1) per member from `reference_solver`, one sweep over α per q."""
    members = grid.members()
    x_ref, oks = np.empty((grid.size, d)), []
    for q in np.unique(members["q"]):
        solver, tight = reference_solver(float(q), eps_of[float(q)], placement)
        run = make_run(problem, model_cls, placement, d, t1, tight, solver=solver)
        mask = members["q"] == q
        ref = mf.sweep(
            lambda alpha, q=q, run=run: run(q, alpha),
            mf.Grid(alpha=members["alpha"][mask]),
            progress=False,
        )
        x_ref[mask] = ref.x.isel(t=-1).values.reshape(-1, d)
        oks.append(bool(ref.ok.all()))
    return x_ref, all(oks)


def timed_sweep(run, grid):
    start = time.perf_counter()
    ds = mf.sweep(run, grid, progress=False)
    return ds, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=("naive", "bench_sweep"), default="naive")
    parser.add_argument("--quick", action="store_true", help="2 alphas, n=20, d=40, t1=20")
    parser.add_argument("--cache", help="persistent compilation cache folder (default: off)")
    parser.add_argument("--budget", type=float, default=60.0, help="LSODA seconds per member")
    parser.add_argument("--no-lsoda", action="store_true")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    if args.cache:
        mf.enable_compilation_cache(args.cache, min_compile_seconds=0.0)
    n, d, t1 = (20, 40, 20.0) if args.quick else (40, 100, 100.0)
    problem = mf.sparse_regression(jax.random.key(0), n=n, d=d, k=5)
    grid, eps_of, model_cls, placement = grid_and_model(args.grid, args.quick)
    controller = diffrax.PIDController(rtol=1e-6, atol=1e-9)
    run = make_run(problem, model_cls, placement, d, t1, controller)
    print(f"# bench_auto --grid {args.grid}{' --quick' if args.quick else ''}")
    print(f"# {grid.size} members, n={n}, d={d}, t1={t1}, rtol 1e-6 / atol 1e-9, float64")
    print(f"# {load()}; jax {jax.__version__}; cache: {args.cache or 'off'}")
    ds, first = timed_sweep(run, grid)
    again, second = timed_sweep(run, grid)
    steps = ds.num_steps.values
    solvers = np.array(ds.attrs["solvers"])[ds.solver_index.values]
    chosen = dict(zip(*np.unique(solvers, return_counts=True), strict=True))
    print(f"solvers chosen: { {str(k): int(v) for k, v in chosen.items()} }")
    print(f"all ok: {bool(ds.ok.all())}; steps: {int(steps.sum())} in all, max {steps.max()}")
    for label, result, total in (("first", ds, first), ("second", again, second)):
        parts = ", ".join(
            f"{key.split('_')[0]} {float(result.attrs[key]):.2f} s"
            for key in ("trace_seconds", "compile_seconds", "run_seconds")
        )
        print(f"sweep {label} call: {total:.2f} s end to end ({parts})")
    x = ds.x.isel(t=-1).values.reshape(grid.size, d)
    if not args.no_reference:
        x_ref, refs_ok = reference(problem, model_cls, placement, d, t1, grid, eps_of)
        errors = np.abs(x - x_ref).max(axis=1)
        print(f"reference ok: {refs_ok}; max |x - x_ref|: {errors.max():.2e}")
        for q in (1.0, 1.5, 2.0):
            mask = grid.members()["q"] == q
            print(f"  q = {q}: max |x - x_ref| = {errors[mask].max():.2e}")
    if not args.no_lsoda:
        lsoda_compile, lsoda_run, done, finals = lsoda_loop(
            grid, problem, model_cls, placement, eps_of, d, t1, args.budget
        )
        lsoda_total = lsoda_compile + lsoda_run
        print(f"LSODA loop: compile {lsoda_compile:.2f} s, run {lsoda_run:.2f} s, ")
        print(f"  finished {int(done.sum())}/{done.size}")
        gap = np.abs(finals[done] - x[done]).max() if done.any() else np.nan
        print(f"  max |x - x_LSODA| over finished members: {gap:.2e}")
        run_s = float(ds.attrs["run_seconds"])
        print(f"LSODA end to end / sweep first call: {lsoda_total / first:.1f}x")
        print(f"LSODA end to end / sweep second call: {lsoda_total / second:.1f}x")
        print(f"LSODA run / sweep compiled run: {lsoda_run / run_s:.1f}x")
    print(f"# finished; {load()}; pid {os.getpid()}")


if __name__ == "__main__":
    main()
