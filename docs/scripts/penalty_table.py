"""Table 1, measured: the effective weight-decay penalty exponent of long-run steepest flows.

A thin wrapper around the experiment `mirrorflow_jax.experiments.weight_decay`, which holds the
problem, the solves, the fits and the figure (the derivation is in docs/mirror.md, "Table 1,
measured"; the experiment's checks run with ``mirrorflow run configs/weight_decay.yaml``). This
script runs the experiment's default config, prints the Markdown tables of docs/mirror.md (the
main table, q = 1 as ε → 0, targets beyond the decoupled cap, q = 1.5 with the exact map) and
writes docs/figures/penalty_table.png.

Run: python docs/scripts/penalty_table.py   (under two minutes on two CPU cores)
"""

import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import mirrorflow_jax as mf  # noqa: E402
from mirrorflow_jax.experiments import weight_decay  # noqa: E402

CONFIG = weight_decay.Config()
EPS_Q1 = (1e-2, 1e-3, 1e-4)  # q = 1 needs ε > 0 (structure-preserving smoothing)
FIGURE = Path(__file__).resolve().parents[1] / "figures" / "penalty_table.png"


def main_table(ds):
    print(
        "| L | q | ε | decay | p from ∇f | p from φ_q^ε(∇f) | predicted "
        "(`penalty_exponent`) | theory §6 | fit rms (∇f / φ) | stationarity residual "
        "| max velocity | solve |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for depth in ds.depth.values:
        for q in ds.q.values[::-1]:
            for decay in ds.decay.values:
                r = ds.sel(depth=depth, q=q, decay=decay)
                paper = float(r.paper) if decay == "decoupled" else 2 / depth
                steps = int(r.steps)
                status = f"ok, {steps} steps" if bool(r.ok) else f"FAILED ({steps} steps)"
                print(
                    f"| {depth} | {q:g} | {float(r.eps):g} | {decay} | {float(r.p_grad):.6f} "
                    f"| {float(r.p_phi):.6f} | {float(r.predicted):.6f} | {paper:.6f} "
                    f"| {float(r.resid_grad):.1e} / {float(r.resid_phi):.1e} "
                    f"| {float(r.stationarity):.1e} | {float(r.velocity):.1e} | {status} |"
                )


def eps_table():
    print("| L | decay | ε | p from ∇f | p from φ_1^ε(∇f) | max abs(b − x) | stationarity |")
    print("|---|---|---|---|---|---|---|")
    for depth in (2, 8):
        for decay in ("coupled", "decoupled"):
            for eps in EPS_Q1:
                r = weight_decay.measure(CONFIG, depth, 1.0, eps, decay)
                print(
                    f"| {depth} | {decay} | {eps:g} | {r['p_grad']:.6f} | {r['p_phi']:.6f} "
                    f"| {r['max_gap']:.2e} | {r['stationarity']:.1e} |"
                )


def main():
    start = time.perf_counter()
    ds = weight_decay.run(CONFIG)
    print(
        f"f(x) = Σ(x_j − b_j)²/2, d = {CONFIG.dim}, b_j = geomspace({CONFIG.target_min:g}, "
        f"{CONFIG.target_max:g}), β or α = {CONFIG.strength}, t1 = {CONFIG.t1:g}, Rodas4, "
        f"rtol {CONFIG.rtol:g}, atol {CONFIG.atol:g}\n"
    )
    main_table(ds)
    print("\nq = 1, ε → 0:\n")
    eps_table()

    # q = 1, decoupled, with targets above the cap (1/α)^L: x is clipped there.
    alpha = 0.3
    cap = alpha ** (-2)
    r = weight_decay.measure(CONFIG, 2, 1.0, EPS_Q1[-1], "decoupled", strength=alpha)
    clipped = np.minimum(weight_decay.targets(CONFIG), cap)
    print(
        f"\nq = 1, L = 2, decoupled α = {alpha}, ε = {EPS_Q1[-1]:g}: cap (1/α)^L = {cap:.4f}; "
        f"max abs(x − min(b, cap)) = {np.max(np.abs(r['x'] - clipped)):.2e}; "
        f"x = {np.array2string(r['x'], precision=4)}; ok = {r['ok']}"
    )

    # Beyond the table: q = 1.5 (exact φ), decoupled, where the two sides differ by a power.
    print("\nq = 1.5, ε = 0, decoupled:\n")
    print("| L | p from ∇f | 1 + (1 − m)/(q − 1) | p from φ_q(∇f) | 2 − m | stationarity |")
    print("|---|---|---|---|---|---|")
    for depth in CONFIG.depths:
        r = weight_decay.measure(CONFIG, depth, 1.5, 0.0, "decoupled")
        m = mf.metric_exponent(1.5, depth)
        print(
            f"| {depth} | {r['p_grad']:.6f} | {1 + (1 - m) / 0.5:.6f} | {r['p_phi']:.6f} "
            f"| {2 - m:.6f} | {r['stationarity']:.1e} |"
        )
    weight_decay.figures(ds)["penalty_table"].savefig(FIGURE, dpi=120)
    print(f"\nwrote {FIGURE.name}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
