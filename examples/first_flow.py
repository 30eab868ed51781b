"""A first flow: gradient flow vs the smoothed sign flow from a saddle of a depth-3 model."""

import sys

import jax
import jax.numpy as jnp
import matplotlib

jax.config.update("jax_enable_x64", True)  # simulations are meant to run in float64
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import mirrorflow_jax as mf  # noqa: E402

problem = mf.sparse_regression(jax.random.key(0), n=20, d=40, k=3)
model = mf.DeepDiagonal.saddle(0.1, depth=3, dim=40)  # w_1 = 0, w_2 = w_3 = 0.1
ts = jnp.linspace(0.0, 5.0, 101)
fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
for q, eps in [(2.0, 0.0), (1.5, 1e-3), (1.0, 1e-3)]:
    flow = mf.SteepestFlow(mf.Lp(q, eps))  # structured smoothing (the default for models)
    sol = mf.solve_flow(flow, model, problem, t1=5.0, saveat=ts)
    print(f"q = {q}: f(x(5)) = {float(sol.loss[-1]):.2e}, {int(sol.num_steps)} steps")
    ax.semilogy(sol.ts, sol.loss, label=f"q = {q}, ε = {eps:g}")
ax.set(xlabel="t", ylabel="f(x(t))", title="depth 3, from the saddle w₁ = 0, w₂ = w₃ = 0.1")
ax.set_ylim(1e-16, 10.0)
ax.legend()
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else "first_flow.png", dpi=120)
