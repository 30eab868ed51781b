"""Factors that collapse to 0: the structure-preserving sign flow from the balanced init at
depth 2, without decay and with coupled weight decay. `Rodas4` stalls where the factors of a
shrinking part reach 0 together; `SignFlowKvaerno3` parks them there and goes on (without decay
the parked parts grow again later; under coupled decay they stay at 0)."""

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)  # simulations are meant to run in float64

import mirrorflow_jax as mf  # noqa: E402

problem = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=3)
cases = {
    "depth 2, no decay": (mf.SignedDeepDiagonal.scaled(1e-2, depth=2, dim=20), 0.0),
    "depth 2, coupled decay 1e-2": (mf.SignedDeepDiagonal.scaled(0.5, depth=2, dim=20), 1e-2),
}
for name, (model, beta) in cases.items():
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), coupled_wd=beta)  # structure-preserving
    for solver in (mf.Rodas4(), mf.SignFlowKvaerno3()):
        sol = mf.solve_flow(flow, model, problem, 20.0, solver=solver, max_steps=5_000)
        # A part of coordinate j: its u or its v factors; at rest when all of them are 0.
        parked = sum(
            int(np.all(np.asarray(part[-1]) == 0, axis=0).sum())
            for part in (sol.params.u, sol.params.v)
        )
        print(
            f"{name}, {type(solver).__name__}: ok {bool(sol.ok)}, {int(sol.num_steps)} steps, "
            f"final loss {float(sol.loss[-1]):.2e}, parts at 0 at the end: {parked}"
        )
