"""Figure docs/figures/adam_eps.png: Adam's ε acts as the naive smoothing (docs/theory.md §1).

From a small-scale saddle of the toy f(x) = (x − 1)²/2 with x = w₁w₂w₃ and w_i = α, count
optax.adam's steps to escape (|x| ≥ 1/2) across ε at a fixed learning rate η. Near the saddle
|∂F/∂w| ≈ α². With ε well above the gradient scale Adam is GD with step η/ε; with ε well below
it Adam escapes in a number of steps independent of ε, close to sign descent's.

Usage: ``python docs/scripts/adam_eps.py [--out docs/figures/adam_eps.png]``
"""

import argparse

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import mirrorflow_jax as mf
from mirrorflow_jax import steps_to_escape

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LR = 1e-2
DEPTH = 3
ALPHAS = (0.1, 0.03)
EPSS = np.logspace(-7, 2, 28)
MAX_STEPS = 10**7
ESCAPE = mf.NormAbove(0.5)
PROBLEM = mf.ScalarToy()


def escape_steps(make_optimizer, values, alpha: float) -> np.ndarray:
    """Steps to escape for ``make_optimizer(value)`` at each value (one vmapped call)."""
    model = mf.DeepDiagonal.scaled(alpha, depth=DEPTH, dim=1)

    def steps(value):
        optimizer = make_optimizer(value)
        result = steps_to_escape(optimizer, model, PROBLEM, ESCAPE, max_steps=MAX_STEPS)
        return jnp.where(result.escaped, result.steps, -1)

    return np.asarray(jax.vmap(steps)(jnp.asarray(values)))


def measure(alpha: float) -> dict[str, np.ndarray]:
    stable = EPSS >= 1e-1  # GD with step η/ε is stable and meaningful only for ε ≳ 0.1
    return {
        "adam": escape_steps(lambda eps: optax.adam(LR, eps=eps), EPSS, alpha),
        "gd_slowed_eps": EPSS[stable],
        "gd_slowed": escape_steps(optax.sgd, LR / EPSS[stable], alpha),
        "sign": escape_steps(optax.sign_sgd, [LR], alpha)[0],
        "gd": escape_steps(optax.sgd, [LR], alpha)[0],
    }


def plot(results: dict[float, dict[str, np.ndarray]], out: str):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (alpha, r), color in zip(results.items(), ("C0", "C3"), strict=True):
        ax.loglog(EPSS, r["adam"], "o-", ms=3.5, color=color, label=f"Adam, α = {alpha:g}")
        ax.loglog(
            r["gd_slowed_eps"],
            r["gd_slowed"],
            "--",
            color=color,
            alpha=0.6,
            label=f"GD with step η/ε, α = {alpha:g}",
        )
        ax.axhline(
            r["sign"],
            color=color,
            ls=":",
            lw=1.2,
            label=f"sign descent, α = {alpha:g} ({r['sign']} steps)",
        )
        ax.axvline(alpha**2 * (1 - alpha**DEPTH), color=color, ls="-.", lw=0.8, alpha=0.5)
    ax.set_xlabel("Adam ε   (dash-dotted: gradient scale α²(1 − α³) at the saddle)")
    ax.set_ylabel("steps to escape (|x| ≥ 1/2)")
    ax.set_title(f"Adam's ε is the naive smoothing: toy, depth {DEPTH}, η = {LR:g}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=150)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/figures/adam_eps.png")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    results = {alpha: measure(alpha) for alpha in ALPHAS}
    for alpha, r in results.items():
        print(f"α = {alpha:g}: sign descent {r['sign']} steps, GD(η) {r['gd']} steps")
        print("  ε       Adam steps")
        for eps, steps in zip(EPSS, r["adam"], strict=True):
            print(f"  {eps:7.1e} {steps}")
        for eps, steps in zip(r["gd_slowed_eps"], r["gd_slowed"], strict=True):
            print(f"  GD(η/ε) at ε = {eps:7.1e}: {steps} steps")
    plot(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
