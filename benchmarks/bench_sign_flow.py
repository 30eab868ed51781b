"""Benchmark the stiff regularized sign flow: `Rodas4` (structured and dense Jacobian) and
`SignFlowKvaerno3` against scipy LSODA, an explicit and a stock implicit diffrax solver, on the
same vector field.

Problem (as in ``bench_core.py``): sparse regression n=40, d=100, k=5; signed deep diagonal
model, depth 3 (600 states), w0 = 1e-2, t1 = 200; q = 1 with ε ∈ {1e-3, 1e-6} and both
smoothing placements; rtol = 1e-8, atol = 1e-10 for every method (``--rtol``). Compile time (AOT
``.lower().compile()`` for diffrax, the jit of the right-hand side for scipy) is reported
apart from wall time; ratios are against LSODA with its default finite-difference Jacobian,
run in the same process.

Usage: ``python benchmarks/bench_sign_flow.py [--quick] [--budget SECONDS] [--fast] [--rtol R]
[--reference]`` (``--rtol``: every method at rtol R, atol R/100)

``--reference`` also measures each row's accuracy: max |x(t1) − x_ref(t1)| against
`SignFlowKvaerno3` at rtol 1e-11, atol 1e-13 (which agrees with a fifth-order variant at rtol
1e-12 to 2.3e-11 / 6.5e-11 at ε = 1e-3 / 1e-6, benchmarks/README.md), so that methods are
compared at the accuracy they reach, not only at the tolerance they were given.

``--fast`` runs only the baseline (LSODA, finite-difference Jacobian), `SignFlowKvaerno3`
and `Rodas4` with the structured Jacobian, minutes instead of most of an hour. The last lines
give each method's wall-time ratio ε = 1e-6 : ε = 1e-3.
"""

import argparse
import time

import bench_core
import diffrax
import numpy as np
from _common import load, steady_wall
from bench_core import (
    Case,
    Row,
    compile_solve,
    diffrax_status,
    markdown_rows,
    run_diffrax,
    run_scipy,
    setup,
)

import mirrorflow_jax as mf

EPSILONS = (1e-3, 1e-6)
PLACES = ("structured", "naive")
REFERENCE_RTOL = 1e-11
REFERENCE_MAX_STEPS = 400_000


def _run(case, model, problem, size, solver, method: str, **controller) -> Row:
    solve, compile_s = compile_solve(
        case, model, problem, size, solver, size.max_steps, **controller
    )
    sol, wall = steady_wall(solve)
    return Row(
        case=case.name,
        method=method,
        work=f"{int(sol.num_steps)} steps",
        status=diffrax_status(sol, size.max_steps),
        finished=bool(sol.ok),
        compile_s=compile_s,
        wall_s=wall,
        loss=float(sol.loss[-1]),
        x=np.asarray(sol.x[-1]),
    )


def run_rodas(case, model, problem, size, structure: str) -> Row:
    solver = mf.Rodas4(structure=structure)
    return _run(case, model, problem, size, solver, f"mirrorflow Rodas4, {structure} Jacobian")


def run_kvaerno(case, model, problem, size) -> Row:
    """`SignFlowKvaerno3` (Newton in the velocity) under a PI controller (pcoeff = icoeff =
    0.3), which rejects fewer steps after a layer entry than diffrax's default I controller."""
    solver = mf.SignFlowKvaerno3(rtol=bench_core.RTOL, atol=bench_core.ATOL)
    method = "mirrorflow SignFlowKvaerno3 (PI controller)"
    return _run(case, model, problem, size, solver, method, pcoeff=0.3, icoeff=0.3)


def reference_x(case, model, problem, size) -> np.ndarray:
    """x(t1) of a tight `SignFlowKvaerno3` solve (rtol 1e-11, atol 1e-13)."""
    rtol, atol = REFERENCE_RTOL, REFERENCE_RTOL / 100
    sol = mf.solve_flow(
        case.flow,
        model,
        problem,
        size.t1,
        solver=mf.SignFlowKvaerno3(rtol=rtol, atol=atol),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.3),
        max_steps=REFERENCE_MAX_STEPS,
    )
    if not bool(sol.ok):
        raise RuntimeError(f"the reference solve of {case.name} did not finish: {sol.result}")
    return np.asarray(sol.x[-1])


def accuracy_rows(rows: list[Row], reference: np.ndarray) -> list[str]:
    """Markdown rows: each finished row's max |x(t1) − x_ref(t1)|."""
    return [
        f"| {row.case} | {row.method} | "
        + (f"{np.max(np.abs(row.x - reference)):.1e}" if row.finished else "—")
        + " |"
        for row in rows
    ]


def rows_for(case, eps, place, model, problem, size, fast: bool) -> list[Row]:
    baseline = run_scipy(case, model, problem, size, "LSODA", exact_jac=False)
    kvaerno = [run_kvaerno(case, model, problem, size)]
    if fast:
        return [baseline, *kvaerno, run_rodas(case, model, problem, size, "structured")]
    rows = [baseline, run_scipy(case, model, problem, size, "LSODA", exact_jac=True)]
    if eps == EPSILONS[0]:
        rows.append(run_diffrax(case, model, problem, size, diffrax.Tsit5()))
        if place == "structured":
            rows.append(run_diffrax(case, model, problem, size, diffrax.Kvaerno5()))
    rows.append(run_rodas(case, model, problem, size, "dense"))
    return [*rows, *kvaerno, run_rodas(case, model, problem, size, "structured")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also report max |x(t1) - x_ref(t1)| against SignFlowKvaerno3 at rtol 1e-11",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="only LSODA (FD Jacobian), SignFlowKvaerno3 and structured Rodas4",
    )
    size, problem, model = setup(parser.description, parser)
    options = parser.parse_args()
    start = time.perf_counter()
    walls = {}
    accuracy = ["", "| flow | method | max abs x − x_ref |", "|---|---|---:|"]
    for place in PLACES:
        for eps in EPSILONS:
            flow = mf.SteepestFlow(mf.Lp(1.0, eps), smoothing_at=place)
            case = Case(f"q=1, eps={eps:g} ({place})", flow)
            rows = rows_for(case, eps, place, model, problem, size, options.fast)
            print("\n".join(markdown_rows(rows)), flush=True)
            if options.reference:
                accuracy += accuracy_rows(rows, reference_x(case, model, problem, size))
            for row in rows[1:]:
                walls[row.method, place, eps] = row.wall_s
    if options.reference:
        print("\n".join(accuracy))
    print()
    for (method, place, eps), wall in walls.items():
        if eps == EPSILONS[1]:
            ratio = wall / walls[method, place, EPSILONS[0]]
            print(f"{method}, {place}: wall(eps=1e-6) / wall(eps=1e-3) = {ratio:.2f}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; {load()}")


if __name__ == "__main__":
    main()
