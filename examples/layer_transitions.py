"""Where a small ε spends its steps: count how often coordinates enter and leave the smoothing
layer of the regularized sign flow, at two ε, with `layer_transitions`."""

import diffrax
import jax

jax.config.update("jax_enable_x64", True)  # simulations are meant to run in float64

import mirrorflow_jax as mf  # noqa: E402

problem = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=3)
model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=20)
controller = diffrax.PIDController(rtol=1e-8, atol=1e-10, pcoeff=0.3, icoeff=0.3)
for eps in (1e-3, 1e-6):
    flow = mf.SteepestFlow(mf.Lp(1.0, eps))  # sign flow, structure-preserving smoothing
    sol = mf.solve_flow(
        flow,
        model,
        problem,
        5.0,
        solver=mf.SignFlowKvaerno3(rtol=1e-8, atol=1e-10),
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(steps=True),  # every accepted step: no transition is missed
        max_steps=20_000,
    )
    events = mf.layer_transitions(flow, problem, sol.ts, sol.params)
    # The six factor entries of a coordinate share one velocity here: count coordinates.
    counts = events[["entries", "exits"]].groupby("coordinate").max().sum()
    print(
        f"eps = {eps:.0e}: {int(sol.num_steps)} steps, ok {bool(sol.ok)}; "
        f"{int(counts.entries)} layer entries, {int(counts.exits)} exits"
    )
