"""Discrete optimizers next to their flows: trajectory gaps at t = η·k, and steps to escape."""

import jax
import jax.numpy as jnp
import optax

jax.config.update("jax_enable_x64", True)
import mirrorflow_jax as mf  # noqa: E402

problem = mf.sparse_regression(jax.random.key(0), n=20, d=40, k=3)
model = mf.SignedDeepDiagonal.scaled(0.1, depth=3, dim=40)

# Steepest descent with step η against the flow it discretizes: the gap is O(η).
for lr in (2e-2, 1e-2):
    num_steps = round(2.0 / lr)
    steps = jnp.arange(0, num_steps + 1, num_steps // 10)
    optimizer = mf.steepest_descent(lr, q=1.5)
    run = mf.run_optimizer(optimizer, model, problem, num_steps, save_steps=steps)
    flow = mf.SteepestFlow(mf.Lp(1.5))
    sol = mf.solve_flow(flow, model, problem, 2.0, saveat=mf.step_times(steps, lr))
    print(f"q = 1.5, η = {lr:g}: max |x_k − x(ηk)| = {float(mf.trajectory_gap(run, sol, lr)):.2e}")

# Any optax optimizer: steps until the loss halves, from the saddle-adjacent w_i = 0.1.
escape = mf.LossBelow(0.5)
for name, optimizer in {
    "sgd": optax.sgd(1e-2),
    "sign descent": mf.steepest_descent(1e-2, q=1.0),
    "adam": optax.adam(1e-2),
}.items():
    result = mf.steps_to_escape(optimizer, model, problem, escape, max_steps=100_000)
    print(f"{name:>12}: {int(result.steps)} steps (escaped: {bool(result.escaped)})")

# The flows' escape times T predict about T/η steps.
for q, eps in ((2.0, 0.0), (1.0, 1e-6)):
    sol = mf.solve_flow(mf.SteepestFlow(mf.Lp(q, eps)), model, problem, 1e4, event=escape)
    T = float(sol.event_time)
    print(f"flow q = {q}: T = {T:.4g}, T/η = {T / 1e-2:.4g}")
