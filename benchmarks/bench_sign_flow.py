"""Benchmark the stiff regularized sign flow: `Rodas4` (structured and dense Jacobian) against
scipy LSODA, an explicit and a stock implicit diffrax solver, on the same vector field.

Problem (as in ``bench_core.py``): sparse regression n=40, d=100, k=5; signed deep diagonal
model, depth 3 (600 states), w0 = 1e-2, t1 = 200; q = 1 with ε ∈ {1e-3, 1e-6} and both
smoothing placements; rtol = 1e-8, atol = 1e-10 for every method (``--rtol``). Compile time (AOT
``.lower().compile()`` for diffrax, the jit of the right-hand side for scipy) is reported
apart from wall time; ratios are against LSODA with its default finite-difference Jacobian,
run in the same process.

Usage: ``python benchmarks/bench_sign_flow.py [--quick] [--budget SECONDS] [--fast] [--rtol R]``
(``--rtol``: every method at rtol R, atol R/100)

``--fast`` runs only the baseline (LSODA, finite-difference Jacobian) and `Rodas4` with the
structured Jacobian: the pair behind the headline ratio, minutes instead of most of an hour.
"""

import argparse
import time

import diffrax
import numpy as np
from bench_core import (
    Case,
    Row,
    compile_solve,
    diffrax_status,
    load,
    markdown_rows,
    run_diffrax,
    run_scipy,
    setup,
    steady_wall,
)

import mirrorflow_jax as mf

EPSILONS = (1e-3, 1e-6)
PLACES = ("structured", "naive")


def run_rodas(case, model, problem, size, structure: str) -> Row:
    solver = mf.Rodas4(structure=structure)
    solve, compile_s = compile_solve(case, model, problem, size, solver, size.max_steps)
    sol, wall = steady_wall(solve)
    return Row(
        case=case.name,
        method=f"mirrorflow Rodas4, {structure} Jacobian",
        work=f"{int(sol.num_steps)} steps",
        status=diffrax_status(sol, size.max_steps),
        finished=bool(sol.ok),
        compile_s=compile_s,
        wall_s=wall,
        loss=float(sol.loss[-1]),
        x=np.asarray(sol.x[-1]),
    )


def rows_for(case, eps, place, model, problem, size, fast: bool) -> list[Row]:
    baseline = run_scipy(case, model, problem, size, "LSODA", exact_jac=False)
    if fast:
        return [baseline, run_rodas(case, model, problem, size, "structured")]
    rows = [baseline, run_scipy(case, model, problem, size, "LSODA", exact_jac=True)]
    if eps == EPSILONS[0]:
        rows.append(run_diffrax(case, model, problem, size, diffrax.Tsit5()))
        if place == "structured":
            rows.append(run_diffrax(case, model, problem, size, diffrax.Kvaerno5()))
    rows.append(run_rodas(case, model, problem, size, "dense"))
    rows.append(run_rodas(case, model, problem, size, "structured"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fast", action="store_true", help="only LSODA (FD Jacobian) and structured Rodas4"
    )
    size, problem, model = setup(parser.description, parser)
    fast = parser.parse_args().fast
    start = time.perf_counter()
    structured_wall = {}
    for place in PLACES:
        for eps in EPSILONS:
            flow = mf.SteepestFlow(mf.Lp(1.0, eps), smoothing_at=place)
            case = Case(f"q=1, eps={eps:g} ({place})", flow)
            rows = rows_for(case, eps, place, model, problem, size, fast)
            print("\n".join(markdown_rows(rows)), flush=True)
            structured_wall[place, eps] = rows[-1].wall_s
    print()
    for place in PLACES:
        ratio = structured_wall[place, EPSILONS[1]] / structured_wall[place, EPSILONS[0]]
        print(f"Rodas4 structured, {place}: wall(eps=1e-6) / wall(eps=1e-3) = {ratio:.2f}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; {load()}")


if __name__ == "__main__":
    main()
