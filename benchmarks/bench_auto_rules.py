"""Benchmark the rules of ``solver="auto"`` that are decided by measurement, not by theory:
which solver takes the naive smoothed sign flow (``Rodas4`` or ``SignFlowKvaerno3``, by ε),
which takes gradient flow of a toolkit model under a factored loss (``Rodas4`` or Tsit5), and
whether ``PowerFlowKvaerno5`` (the exact maps, 1 < q < 2) also holds from a saddle init.

Each row solves one flow with each candidate at rtol 1e-6 / atol 1e-9 and reports the accepted
steps and the largest |x(t1) − x_ref(t1)|, x_ref from ``Rodas4`` at rtol 1e-10 / atol 1e-13
(1e-11 / 1e-14 for gradient flow), in float64. Steps and errors do not depend on the load of
the machine; no seconds are reported here (the per-step costs are in benchmarks/README.md).

Problems: ``dd100``: ``DeepDiagonal.scaled(α, depth=3, dim=100)`` on a 40×100 sparse
regression (the auto-solver grid's), t1 = 100; ``sdd20``: ``SignedDeepDiagonal.scaled(α,
depth=3, dim=20)`` on a 10×20 one, t1 = 10; ``dd20d2`` (gradient flow only): depth 2 on the
10×20 problem, t1 = 30. ``--part saddle``: the saddle_escape experiment's scalar toy from
its saddle init (w_1 = 0, w_i = α), escape at |x| = 1/2, rtol 1e-10 and atol 1e-10·α^L
(max norm), as that experiment solves it; escape time and steps per solver.

Usage: ``python benchmarks/bench_auto_rules.py [--part sign|small_eps|gf|saddle] [--quick]``.
"""

import argparse
import os

os.environ.setdefault("EQX_ON_ERROR", "nan")

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402
from _common import load

import mirrorflow_jax as mf

jax.config.update("jax_enable_x64", True)


def solve(flow, model, problem, t1, solver, rtol, atol, max_steps=300_000):
    sol = mf.solve_flow(
        flow,
        model,
        problem,
        t1,
        solver=solver,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
    )
    return np.asarray(sol.params()), int(sol.num_steps), bool(sol.ok)


def problems(quick: bool):
    big = mf.sparse_regression(jax.random.key(0), n=40, d=100, k=5)
    small = mf.sparse_regression(jax.random.key(1), n=10, d=20, k=2)
    rows = [("dd100", big, mf.DeepDiagonal, 3, 100, 100.0)]
    rows.append(("sdd20", small, mf.SignedDeepDiagonal, 3, 20, 10.0))
    return rows[1:] if quick else rows


def cell(x, ref, steps, ok):
    return f"{np.max(np.abs(x - ref)):.1e}, {steps}" + ("" if ok else " (not ok)")


def sign_part(quick: bool, epss, alphas, max_steps):
    print("| problem | α | ε | `Rodas4`: error, steps | `SignFlowKvaerno3`: error, steps |")
    print("|---|---|---|---|---|")
    for name, problem, cls, depth, d, t1 in problems(quick):
        for alpha in alphas:
            model = cls.scaled(alpha, depth=depth, dim=d)
            for eps in epss:
                flow = mf.SteepestFlow(mf.Lp(1.0, eps), smoothing_at="naive")
                ref, _, ref_ok = solve(flow, model, problem, t1, mf.Rodas4(), 1e-10, 1e-13)
                cells = []
                for solver in (mf.Rodas4(), mf.SignFlowKvaerno3()):
                    x, steps, ok = solve(flow, model, problem, t1, solver, 1e-6, 1e-9, max_steps)
                    cells.append(cell(x, ref, steps, ok) if ref_ok else f"—, {steps}")
                print(f"| {name} | {alpha:g} | {eps:g} | {cells[0]} | {cells[1]} |", flush=True)


def gf_part(quick: bool):
    small = mf.sparse_regression(jax.random.key(1), n=10, d=20, k=2)
    rows = problems(quick) + [("dd20d2", small, mf.DeepDiagonal, 2, 20, 30.0)]
    print("| problem | α | Tsit5: error, steps | `Rodas4`: error, steps |")
    print("|---|---|---|---|")
    flow = mf.SteepestFlow(mf.Lp(2.0))
    for name, problem, cls, depth, d, t1 in rows:
        for alpha in (1e-2, 1.0) if quick else (1e-3, 1e-2, 1e-1, 1.0):
            model = cls.scaled(alpha, depth=depth, dim=d)
            ref, _, _ = solve(flow, model, problem, t1, mf.Rodas4(), 1e-11, 1e-14)
            cells = []
            for solver in (diffrax.Tsit5(), mf.Rodas4()):
                x, steps, ok = solve(flow, model, problem, t1, solver, 1e-6, 1e-9)
                cells.append(cell(x, ref, steps, ok))
            print(f"| {name} | {alpha:g} | {cells[0]} | {cells[1]} |", flush=True)


def saddle_run(solver, depth: int):
    """Escape time, steps and success of the toy from its saddle init, (q, α) traced."""

    @eqx.filter_jit
    def run(q, alpha):
        model = mf.DeepDiagonal(alpha * jnp.ones((depth, 1)).at[0].set(0.0))
        controller = diffrax.PIDController(
            rtol=1e-10, atol=1e-10 * alpha**depth, norm=optx.max_norm
        )
        sol = mf.solve_flow(
            mf.SteepestFlow(mf.Lp(q)),
            model,
            mf.ScalarToy(),
            1e30,
            event=mf.NormAbove(0.5),
            stepsize_controller=controller,
            max_steps=100_000,
            solver=solver,
        )
        return sol.event_time, sol.num_steps, sol.ok

    return run


def saddle_part(quick: bool):
    solvers = {"Tsit5": diffrax.Tsit5(), "`PowerFlowKvaerno5`": mf.PowerFlowKvaerno5()}
    if not quick:
        solvers["`PowerFlowKvaerno3`"] = mf.PowerFlowKvaerno3()
    print("| L | q | α | escape time | " + " | ".join(f"{n} steps" for n in solvers) + " |")
    print("|---|---|---|---|" + "---|" * len(solvers))
    for depth in (2, 4) if quick else (2, 3, 4):
        runs = [saddle_run(solver, depth) for solver in solvers.values()]
        for q in (1.5,) if quick else (1.25, 1.5, 1.75):
            for alpha in (1e-6, 1e-2) if quick else (1e-6, 1e-4, 1e-2):
                results = [run(q, alpha) for run in runs]
                times = {f"{float(t):.6g}" for t, _, _ in results}
                steps = [f"{int(n)}" + ("" if bool(ok) else " (not ok)") for _, n, ok in results]
                print(
                    f"| {depth} | {q:g} | {alpha:g} | {' / '.join(sorted(times))} | "
                    + " | ".join(steps)
                    + " |",
                    flush=True,
                )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("sign", "small_eps", "gf", "saddle"), default="sign")
    parser.add_argument("--quick", action="store_true", help="the small problem, fewer rows")
    args = parser.parse_args()
    print(f"# bench_auto_rules --part {args.part}; {load()}; jax {jax.__version__}")
    if args.part == "sign":
        alphas = (1e-2,) if args.quick else (1e-3, 1e-2, 1e-1)
        epss = (1e-3, 1e-5) if args.quick else (1e-2, 1e-3, 1e-4, 1e-5)
        sign_part(args.quick, epss, alphas, 300_000)
    elif args.part == "small_eps":
        # Below COARSE_EPS: steps only (the reference itself may not finish), capped at 50k.
        sign_part(args.quick, (1e-6, 1e-7), (1e-2,), 50_000)
    elif args.part == "gf":
        gf_part(args.quick)
    else:
        saddle_part(args.quick)


if __name__ == "__main__":
    main()
