"""Figures of the Concepts pages: steepest maps, smoothing placement, balance laws, weight decay.

    python docs/scripts/concepts.py [maps|smoothing|balance|decay ...]   # default: all

writes docs/figures/{steepest_maps,smoothing_escape,balance,weight_decay}.png and prints the
numbers quoted on the pages.
"""

import pathlib
import sys

import diffrax
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

jax.config.update("jax_enable_x64", True)
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import mirrorflow_jax as mf  # noqa: E402

FIGURES = pathlib.Path(__file__).parents[1] / "figures"
Q, EPS = 1.5, 1e-3  # the weight-decay figure
CONTROLLER = diffrax.PIDController(rtol=1e-10, atol=1e-12)


def save(fig, name: str):
    out = FIGURES / name
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def maps():
    """φ_q (exact) for several q, and the two smoothings of the sign map."""
    g = jnp.linspace(-2.0, 2.0, 801)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), constrained_layout=True)
    for q in (1.0, 1.25, 1.5, 1.75, 2.0):
        left.plot(g, mf.steepest_map(g, q), label=f"q = {q}")
    left.set(xlabel="g", ylabel="φ_q(g)", title="exact φ_q(g) = sign(g)|g|^(q−1)")
    left.legend(fontsize=8)
    zoom = jnp.linspace(-0.05, 0.05, 801)
    right.plot(zoom, mf.steepest_map(zoom, 1.0), "k", lw=1, label="sign (ε = 0)")
    for smoothing in ("sqrt", "tanh"):
        right.plot(
            zoom, mf.steepest_map(zoom, 1.0, 1e-2, smoothing), label=f"{smoothing}, ε = 0.01"
        )
    right.set(xlabel="g", ylabel="φ_1^ε(g)", title="smoothed sign maps near 0")
    right.legend(fontsize=8)
    save(fig, "steepest_maps.png")


def smoothing():
    """Escape of x = ∏ w_i from w_i = 1e-3 (depth 4) on f(x) = (x − 1)²/2, three ways."""
    model = mf.DeepDiagonal.scaled(1e-3, depth=4, dim=1)
    ts = jnp.logspace(-3, 4, 400)
    runs = {
        "sign flow, exact (ε = 0)": mf.SteepestFlow(mf.Lp(1.0)),
        "structured smoothing, ε = 1e-3": mf.SteepestFlow(mf.Lp(1.0, 1e-3)),
        "naive smoothing, ε = 1e-3": mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at="naive"),
    }
    fig, ax = plt.subplots(figsize=(6, 3.4), constrained_layout=True)
    for (label, flow), style in zip(runs.items(), ("k-", "C0--", "C3-"), strict=True):
        sol = mf.solve_flow(flow, model, mf.ScalarToy(), 1e4, saveat=ts, event=mf.NormAbove(0.5))
        escape = float(sol.event_time)
        print(f"{label}: escape time {escape:.6g}, {int(sol.num_steps)} steps")
        reached = jnp.isfinite(sol.ts)
        ax.semilogx(sol.ts[reached], sol.x[reached, 0], style, label=f"{label}: T = {escape:.4g}")
        ax.plot([escape], [0.5], style[:2] + "o")
    ax.axhline(0.5, color="gray", lw=0.6, ls=":")
    ax.set(
        xlabel="t",
        ylabel="x(t) until the escape",
        title="escape from w_i = 10⁻³, depth 4, f(x) = (x − 1)²/2",
    )
    ax.legend(fontsize=8, loc="upper left")
    save(fig, "smoothing_escape.png")


def balance():
    """Drift of |w_i|^q − |w_1|^q under both smoothings, and its decay under decoupled decay."""
    problem = mf.sparse_regression(jax.random.key(0), n=8, d=12, k=3)
    model = mf.SignedDeepDiagonal.random(jax.random.key(1), depth=3, dim=12, scale=0.5)
    ts = jnp.linspace(0.0, 1.0, 101)

    def run(q, eps, **kwargs):
        flow = mf.SteepestFlow(mf.Lp(q, eps), **kwargs)
        return mf.solve_flow(
            flow, model, problem, 1.0, saveat=ts, stepsize_controller=CONTROLLER, max_steps=10**6
        )

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.3), constrained_layout=True)
    for place, color in (("structured", "C0"), ("naive", "C3")):
        sol = run(1.0, 1e-3, smoothing_at=place)
        drift = jnp.max(jnp.abs(sol.balance - sol.balance[0]), axis=(1, 2, 3))
        print(f"q = 1, ε = 1e-3, {place}: max balance drift on [0, 1] = {float(drift[-1]):.2g}")
        left.semilogy(ts[1:], drift[1:], color=color, label=f"{place}")
    left.set(xlabel="t", ylabel="max |B(t) − B(0)|", title="q = 1, ε = 10⁻³, no decay")
    left.legend(fontsize=8)
    alpha = 0.5
    for q, eps, color in ((1.0, 1e-3, "C0"), (1.5, 0.0, "C1"), (2.0, 0.0, "C2")):
        sol = run(q, eps, decoupled_wd=alpha)
        ratio = jnp.sum(jnp.abs(sol.balance), axis=(1, 2, 3)) / jnp.sum(jnp.abs(sol.balance[0]))
        predicted = jnp.exp(-q * alpha * ts)
        gap = float(jnp.max(jnp.abs(ratio - predicted)))
        print(f"q = {q}, α = {alpha}: max |ratio − e^(−qαt)| = {gap:.2g}")
        right.plot(ts, ratio, color=color, lw=3, alpha=0.4, label=f"q = {q}: measured")
        right.plot(ts, predicted, "k:", lw=1)
    right.set(
        xlabel="t",
        ylabel="Σ|B(t)| / Σ|B(0)|",
        title=f"decoupled decay α = {alpha} (dotted: e^(−qαt))",
    )
    right.legend(fontsize=8)
    save(fig, "balance.png")


def decay():
    """Endpoints of the q = 1.5 flow at depth 3 without decay, with decoupled and coupled decay."""
    problem = mf.sparse_regression(jax.random.key(0), n=20, d=40, k=3)
    model = mf.SignedDeepDiagonal.scaled(0.1, depth=3, dim=40)
    runs = {
        "no decay": {},
        "decoupled α = 0.02": {"decoupled_wd": 0.02},
        "coupled β = 0.02": {"coupled_wd": 0.02},
    }
    fig, ax = plt.subplots(figsize=(6, 3.4), constrained_layout=True)
    for label, kwargs in runs.items():
        flow = mf.SteepestFlow(mf.Lp(Q, EPS), **kwargs)
        sol = mf.solve_flow(flow, model, problem, 200.0, max_steps=10**6)
        x = sol.x[-1]
        support = int(jnp.sum(jnp.abs(x) > 1e-3))
        line = f"{label}: f = {float(sol.loss[-1]):.2e}, |x_j| > 1e-3 on {support} of 40"
        line += f", {int(sol.num_steps)} steps, ok={bool(sol.ok)}"
        if kwargs:
            grad_f = jax.grad(problem)(x)
            residual = mf.stationarity_residual(x, grad_f, Q, 3, eps=EPS, **kwargs)
            line += f", stationarity residual {float(residual):.1e}"
        print(line)
        ax.semilogy(np.sort(np.abs(np.asarray(x)))[::-1], "o-", ms=3, label=f"{label} ({support})")
    ax.set_ylim(1e-8, 3)
    ax.set(
        xlabel="rank j",
        ylabel="|x_j| (sorted)",
        title=f"q = {Q}, ε = {EPS:g}, signed depth 3, t = 200",
    )
    ax.legend(fontsize=8)
    save(fig, "weight_decay.png")


FIGURES_BY_NAME = {"maps": maps, "smoothing": smoothing, "balance": balance, "decay": decay}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(FIGURES_BY_NAME):
        FIGURES_BY_NAME[name]()
