"""Factors that collapse to 0: which solvers pass the structure-preserving sign flow's
Filippov sliding points.

The structure-preserving smoothing keeps sign(∂x/∂w_i) exact. From the balanced init
`SignedDeepDiagonal.scaled(α)` the factors of the part that has to shrink reach 0 together;
at even depth sign(∂x/∂w_i) flips with them, and with coupled weight decay β the term
β·w_i/|∂x/∂w_i| of the scaled gradient does so at any depth: both sides push the factors back
to 0. The rows solve a sparse regression (n = 10, d = 20, k = 3; q = 1, ε = 1e-3, t1 = 20,
rtol 1e-8, atol 1e-10, at most 20 000 steps) from that init, without decay at depth 2, 3 and 4
(α = 1e-2) and with coupled decay at depth 3 (α = 0.5, β = 1e-3 and 1e-2, both placements),
with `SignFlowKvaerno3`, `Rodas4` and Tsit5. Per row: whether the solve finished, the time it
reached, accepted steps, the final loss, wall time (median of three calls under a second)
and compile time.

Usage: ``python benchmarks/bench_collapse.py``
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import QUICK, steady_wall, timed
from bench_core import environment

import mirrorflow_jax as mf

T1, EPS, MAX_STEPS = 20.0, 1e-3, 20_000
RTOL, ATOL = 1e-8, 1e-10
SOLVERS = {
    "SignFlowKvaerno3": mf.SignFlowKvaerno3(rtol=RTOL, atol=ATOL),
    "Rodas4": mf.Rodas4(),
    "Tsit5": diffrax.Tsit5(),
}
# (depth, init scale α, coupled decay β, placement)
CASES = [
    (2, 1e-2, 0.0, "structured"),
    (3, 1e-2, 0.0, "structured"),
    (4, 1e-2, 0.0, "structured"),
    (3, 0.5, 1e-3, "structured"),
    (3, 0.5, 1e-3, "naive"),
    (3, 0.5, 1e-2, "structured"),
    (3, 0.5, 1e-2, "naive"),
]


def run(problem, depth, alpha, beta, placement, solver):
    """(finished, time reached, steps, final loss, wall s, compile s) of one solve."""
    model = mf.SignedDeepDiagonal.scaled(alpha, depth=depth, dim=problem.A.shape[1])
    flow = mf.SteepestFlow(mf.Lp(1.0, EPS), coupled_wd=beta, smoothing_at=placement)
    if isinstance(solver, mf.SignFlowKvaerno3):
        # Inside the jit below β is traced: settle the unknowns (per entry for β > 0) here.
        controller = diffrax.PIDController(rtol=RTOL, atol=ATOL)
        solver = solver.resolve(flow, model, problem, controller)

    def solve(flow, model):
        sol = mf.solve_flow(
            flow,
            model,
            problem,
            T1,
            solver=solver,
            saveat=diffrax.SaveAt(steps=True),
            stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=ATOL),
            max_steps=MAX_STEPS,
        )
        reached = jnp.isfinite(sol.ts)
        last = jnp.max(jnp.where(reached, jnp.arange(sol.ts.shape[0]), 0))
        return sol.ok, sol.ts[last], sol.num_steps, sol.loss[last]

    compiled, compile_s = timed(lambda: eqx.filter_jit(solve).lower(flow, model).compile())
    out, wall = steady_wall(lambda: compiled(flow, model))
    ok, reached, steps, loss = (np.asarray(v) for v in out)
    return bool(ok), float(reached), int(steps), float(loss), wall, compile_s


def main():
    jax.config.update("jax_enable_x64", True)
    # Date, machine, versions and devices: environment()'s first four lines (the rest
    # describes bench_core's problem).
    print("\n".join(environment(QUICK).splitlines()[:4]))
    problem = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=3)
    print(f"sparse regression n=10 d=20 k=3, q=1, eps={EPS:g}, t1={T1:g}, rtol={RTOL:g}")
    print(
        "| depth | α | β | placement | solver | finished | t reached | steps | final loss "
        "| wall (s) | compile (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for depth, alpha, beta, placement in CASES:
        for name, solver in SOLVERS.items():
            ok, reached, steps, loss, wall, compile_s = run(
                problem, depth, alpha, beta, placement, solver
            )
            print(
                f"| {depth} | {alpha:g} | {beta:g} | {placement} | {name} | "
                f"{'yes' if ok else '**no**'} | {reached:.4g} | {steps} | {loss:.3g} | "
                f"{wall:.3f} | {compile_s:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
