"""Figure docs/figures/layer_transitions.png: where a small ε spends its steps.

The benchmark problem of benchmarks/bench_sign_flow_eps.py (sparse regression n = 40, d = 100,
k = 5; signed depth-3 model from 1e-2), sign flow with the structure-preserving smoothing,
solved by `SignFlowKvaerno3` at rtol 1e-8 for ε = 1e-3 and 1e-6 with every accepted step
saved. Top: which coordinates are inside the smoothing layer when (`layer_transitions` with
``timeline=True``); bottom: the step sizes. Every step falls in t < 0.6, where coordinates
enter the layer one after another; at ε = 1e-6 they also leave and re-enter it, and each
transition pulls the step size down.

Usage: ``python docs/scripts/layer_transitions.py [--out docs/figures/layer_transitions.png]``
"""

import argparse

import diffrax
import jax
import matplotlib
import numpy as np

import mirrorflow_jax as mf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EPSILONS = (1e-3, 1e-6)
RTOL = 1e-8
WINDOW = (0.15, 0.6)


def solve(eps: float, problem, model):
    """The layer timeline per coordinate and the accepted step times for one ε."""
    flow = mf.SteepestFlow(mf.Lp(1.0, eps))
    sol = mf.solve_flow(
        flow,
        model,
        problem,
        1.0,
        solver=mf.SignFlowKvaerno3(rtol=RTOL, atol=RTOL / 100),
        stepsize_controller=diffrax.PIDController(
            rtol=RTOL, atol=RTOL / 100, pcoeff=0.3, icoeff=0.3
        ),
        saveat=diffrax.SaveAt(steps=True),
        max_steps=60_000,
    )
    if not bool(sol.ok):
        raise RuntimeError(f"the solve at eps = {eps:g} did not finish: {sol.result}")
    events = mf.layer_transitions(flow, problem, sol.ts, sol.params, timeline=True)
    # The six factor entries of a coordinate share their state: keep one per coordinate.
    first = events.isel(entry=np.unique(events.coordinate, return_index=True)[1])
    counts = f"{int(first.entries.sum())} entries, {int(first.exits.sum())} exits"
    print(f"eps = {eps:g}: {int(sol.num_steps)} steps; {counts} (per coordinate)")
    return first, counts, int(sol.num_steps)


def plot(results: dict, out: str):
    fig, axes = plt.subplots(
        3, 1, figsize=(7.0, 7.2), sharex=True, gridspec_kw={"height_ratios": [2, 2, 1.4]}
    )
    order = np.argsort(np.nan_to_num(results[EPSILONS[-1]][0].first_entry_time, nan=np.inf))
    for ax, eps in zip(axes[:2], EPSILONS, strict=True):
        events, counts, steps = results[eps]
        inside = events.inside.values[:, order].T
        rows = np.arange(inside.shape[0])
        ax.pcolormesh(events.time, rows, inside, cmap="Greys", shading="auto")
        ax.set_ylabel("coordinate\n(by first entry)")
        ax.set_title(f"ε = {eps:g}: {steps} steps; {counts}", fontsize=9)
    for eps, color in zip(EPSILONS, ("C0", "C3"), strict=True):
        times = results[eps][0].time.values
        axes[2].semilogy(times[1:], np.diff(times), ".", ms=1.5, color=color, label=f"ε = {eps:g}")
    axes[2].set_ylabel("step size")
    axes[2].set_xlabel("t")
    axes[2].set_xlim(*WINDOW)
    axes[2].legend(fontsize=8, markerscale=6)
    fig.suptitle(
        "Sign flow, layer occupancy (dark: inside |r| < 1) and steps, SignFlowKvaerno3, "
        f"rtol {RTOL:g}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=130)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/figures/layer_transitions.png")
    options = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    problem = mf.sparse_regression(jax.random.key(0), n=40, d=100, k=5)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=100)
    plot({eps: solve(eps, problem, model) for eps in EPSILONS}, options.out)
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
