"""Solvers for the smoothed sign flow: what ``solver="auto"`` (the default) picks, and the
alternatives a user can pass: explicit Tsit5, the Rosenbrock Rodas4, SignFlowKvaerno3."""

import diffrax
import jax

jax.config.update("jax_enable_x64", True)  # simulations are meant to run in float64

import mirrorflow_jax as mf  # noqa: E402

problem = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=3)
model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=20)
flow = mf.SteepestFlow(mf.Lp(q=1.0, eps=1e-4))  # sign flow, structure-preserving smoothing
controller = diffrax.PIDController(rtol=1e-8, atol=1e-10)


def report(name, sol):
    status = "ok" if bool(sol.ok) else "stiff" if sol.result == mf.RESULTS.stiff else "failed"
    t_end, loss_end = float(sol.ts[-1]), float(sol.loss[-1])
    print(f"{name}: {int(sol.num_steps)} steps, {status}, at t = {t_end:.3g} f = {loss_end:.1e}")


# No solver argument: "auto" picks from the flow, the model and the loss.
sol = mf.solve_flow(flow, model, problem, 50.0, stepsize_controller=controller)
report(f"auto chose {sol.solver}", sol)

# Overriding it with any diffrax solver. Near the minimum the smoothed sign flow is stiff:
# explicit steps are held at ~ε by stability, which the stiffness check reports.
for name, solver in [("Tsit5", diffrax.Tsit5()), ("Rodas4", mf.Rodas4())]:
    sol = mf.solve_flow(
        flow, model, problem, 50.0, solver=solver, stepsize_controller=controller, max_steps=5_000
    )
    report(name, sol)

# How far does the endpoint move with ε? (one compiled solve per ε, one solver for all)
sensitivity = mf.eps_sensitivity(flow, model, problem, 50.0, [1e-2, 1e-3, 1e-4])
for eps in sensitivity.eps.values:
    row = sensitivity.sel(eps=eps)
    print(
        f"eps = {eps:.0e}: |x - x(eps=1e-4)|_inf = {float(row.distance_to_smallest_eps):.2e}, "
        f"|x|_1 = {float(row.l1_norm):.3f}"
    )
