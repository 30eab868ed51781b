"""How far is the steepest flow's limit from the Bregman argmin of its own mirror map, for q < 2?

For q = 2 the limit of the factor flow is argmin_{Ax=b} D_R(x, x₀) (docs/theory.md §4, checked in
tests/test_mirror.py). For q ≠ 2 the paper leaves the implicit bias open; this script measures
the distance between the flow's limit and the D_{R_{q,L,c}} argmin, the natural candidate.

    python docs/scripts/bias_q.py   # writes docs/figures/bias_q.png, prints a table
"""

import pathlib

import diffrax
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

jax.config.update("jax_enable_x64", True)
import mirrorflow_jax as mf  # noqa: E402

QS = (1.25, 1.5, 1.75, 2.0)
DEPTHS = (2, 3)
EPS = 1e-4
C = 0.5


def measure(q: float, depth: int, problem) -> tuple[float, float, float]:
    w1 = 0.3 * jax.random.normal(jax.random.key(2), (problem.dim,), dtype=jnp.float64)
    model = mf.DeepDiagonal.balanced(w1, C, q=q, depth=depth)
    eps = 0.0 if q == 2.0 else EPS
    sol = mf.solve_flow(
        mf.SteepestFlow(mf.Lp(q, eps)),
        model,
        problem,
        400.0,
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
        max_steps=400_000,
    )
    bias = mf.implicit_bias(mf.DeepDiagonalMirror(q, depth, C), problem.A, problem.b, model())
    assert bool(bias.converged), f"implicit_bias: residual {float(bias.residual):.1e}"
    predicted = bias.x
    gap = float(jnp.max(jnp.abs(sol.x[-1] - predicted)))
    return gap, float(sol.loss[-1]), float(jnp.max(jnp.abs(predicted)))


def main():
    problem = mf.sparse_regression(jax.random.key(0), n=8, d=12, k=3)
    rows = {L: [measure(q, L, problem) for q in QS] for L in DEPTHS}
    print(f"c = {C}, eps = {EPS} (q < 2, structured smoothing), t1 = 400")
    print("| L | q | max abs(x_flow − argmin D_R) | final loss | max abs argmin |")
    print("|---|---|---|---|---|")
    for L, values in rows.items():
        for q, (gap, loss, scale) in zip(QS, values, strict=True):
            print(f"| {L} | {q} | {gap:.2e} | {loss:.1e} | {scale:.2f} |")
    fig, ax = plt.subplots(figsize=(5, 3.5), constrained_layout=True)
    for L, values in rows.items():
        ax.semilogy(QS, [max(v[0], 1e-16) for v in values], "o-", label=f"L = {L}")
    ax.set(xlabel="q", ylabel="max |x_flow(∞) − argmin D_R(x, x₀)|")
    ax.set_title("Implicit bias vs the Bregman argmin of R_{q,L,c}")
    ax.legend()
    out = pathlib.Path(__file__).parents[1] / "figures" / "bias_q.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
