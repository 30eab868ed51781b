"""Figure docs/figures/eps_endpoints.png: how far the sign flow's endpoint moves between
ε = 1e-3 and ε = 1e-6, per smoothing placement, over random sparse regressions (docs/theory.md §1).

The configuration is a sparse regression with n = 40, d = 100, a signed depth-3 model from
w0 = 1e-2 and t = 200. This script solves it for several seeds of `sparse_regression` (k = 5)
with `eps_sensitivity` (`SignFlowKvaerno3`, rtol 1e-8, atol 1e-10, PI controller) and plots
max |x_ε=1e-3(t1) − x_ε=1e-6(t1)| per seed and placement.

``--small`` solves n = 10, d = 20, k = 3 to t = 20 instead (prints only, no figure).

Usage: ``python docs/scripts/eps_endpoints.py [--seeds 8] [--small]
[--out docs/figures/eps_endpoints.png]``
"""

import argparse

import diffrax
import jax
import matplotlib
import numpy as np

import mirrorflow_jax as mf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PLACES = ("structured", "naive")
EPS = (1e-3, 1e-6)


FULL = dict(n=40, d=100, k=5, t1=200.0)
SMALL = dict(n=10, d=20, k=3, t1=20.0)


def spread(seed: int, place: str, size: dict) -> tuple[float, bool]:
    """max |Δx| between the ε endpoints for one seed, and whether every solve finished."""
    n, d, k = size["n"], size["d"], size["k"]
    problem = mf.sparse_regression(jax.random.key(seed), n=n, d=d, k=k)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=d)
    flow = mf.SteepestFlow(mf.Lp(1.0, EPS[0]), smoothing_at=place)
    controller = diffrax.PIDController(rtol=1e-8, atol=1e-10, pcoeff=0.3, icoeff=0.3)
    report = mf.eps_sensitivity(
        flow, model, problem, size["t1"], EPS, stepsize_controller=controller
    )
    return float(report.distance_to_smallest_eps.max()), bool(report.ok.all())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--small", action="store_true", help="n=10, d=20, k=3, t1=20; no figure")
    parser.add_argument("--out", default="docs/figures/eps_endpoints.png")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1; got {args.seeds}")
    jax.config.update("jax_enable_x64", True)
    size = SMALL if args.small else FULL
    results = {
        place: [spread(seed, place, size) for seed in range(args.seeds)] for place in PLACES
    }
    for place, rows in results.items():
        values = np.array([value for value, _ in rows])
        finished = all(ok for _, ok in rows)
        print(
            f"{place}: max |Δx| per seed {np.array2string(values, precision=3)}; median "
            f"{np.median(values):.3f}, range [{values.min():.3f}, {values.max():.3f}]; "
            f"every solve finished: {finished}"
        )
    pairs = zip(results["naive"], results["structured"], strict=True)
    ratios = np.array([naive / structured for (naive, _), (structured, _) in pairs])
    print(f"naive / structured per seed: {np.array2string(ratios, precision=1)}")
    if args.small:
        return
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for i, place in enumerate(PLACES):
        values = [value for value, _ in results[place]]
        ax.scatter(np.full(len(values), i), values, color=f"C{i}", label=f"{place} (seeds)")
        ax.hlines(np.median(values), i - 0.3, i + 0.3, color="k", linestyles="dashed")
    ax.plot([], [], "k--", label="median over seeds")
    ax.set_xticks(range(len(PLACES)), PLACES)
    ax.set_yscale("log")
    ax.set_ylabel("max |x(ε=1e-3) − x(ε=1e-6)| at t = 200")
    ax.set_xlim(-0.6, len(PLACES) - 0.4)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
