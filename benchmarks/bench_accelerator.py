"""A sweep laid out for accelerators: a 10,000-member grid α × q × ε × depth × seed.

Grid (``--size`` members, default 10,000, rounded to a multiple of 100): q ∈ {1, 1.25, 1.5,
1.75, 2} × ε ∈ {1e-4, 1e-3, 1e-2, 1e-1} × depth ∈ {2, …, 6} (100 geometry-depth
combinations) × α (log-spaced in [1e-3, 1e-1]) × seed, with as many α as seeds (or one more).
Each member: ``SignedDeepDiagonal.scaled(α, depth=6)`` with its factors scaled by
(1 + 0.2·N(0, 1)) from ``key(seed)``, truncated to ``depth`` by `Padded`,
on ``sparse_regression(key(0), n=25, d=50, k=5)`` to t1 = 10, float64,
``PIDController(rtol=1e-4, atol=1e-7)``, at most ``--max-steps`` steps. The solver is an
explicit, fixed choice per member made by ``lax.cond`` on (q, ε): `Rodas4` for the stiff
smoothed sign flow (q = 1), Tsit5 otherwise.

For every strategy in ``--strategies`` (default: ``auto``, ``grouped``, and ``vmap`` on an
accelerator or ``map`` on CPU, where plain vmap runs both solvers for every member until the
slowest is done) the script reports the strategy chosen, compile and run seconds, throughput
(members and solver steps per second of run), members finished, the lockstep efficiency
(Σ steps / Σ over vmapped batches of members × the batch's most steps) and memory: on a GPU
the device's peak bytes in use (``device.memory_stats()``), on CPU the process's peak
resident set so far.

Usage: ``python benchmarks/bench_accelerator.py [--size 10000] [--chunk-size C]
[--strategies auto,grouped,vmap] [--max-steps 20000]``; on CPU run it at a reduced size
(e.g. ``--size 200``).
"""

import argparse
import datetime
import math
import os
import platform
import resource

import diffrax
import jax
import numpy as np

import mirrorflow_jax as mf
from mirrorflow_jax import Grid, sweep

QS = [1.0, 1.25, 1.5, 1.75, 2.0]
EPSS = [1e-4, 1e-3, 1e-2, 1e-1]
DEPTHS = [2, 3, 4, 5, 6]
N, D, T1 = 25, 50, 10.0


def summary(sol) -> dict:
    """What each member returns: the same PyTree whichever solver ran (a `FlowSolution`
    records its solver's name, so the two branches of a ``lax.cond`` could not return one)."""
    return {"x": sol.x[-1], "loss": sol.loss[-1], "num_steps": sol.num_steps, "solved": sol.ok}


def make_grid(size: int) -> Grid:
    per_geometry = max(1, round(size / (len(QS) * len(EPSS) * len(DEPTHS))))
    seeds = max(1, math.isqrt(per_geometry))
    alphas = math.ceil(per_geometry / seeds)
    return Grid(
        alpha=np.logspace(-3, -1, alphas), q=QS, eps=EPSS, depth=DEPTHS, seed=np.arange(seeds)
    )


def make_run(max_steps: int):
    problem = mf.sparse_regression(jax.random.key(0), n=N, d=D, k=5)
    controller = diffrax.PIDController(rtol=1e-4, atol=1e-7)

    def run(alpha, q, eps, depth, seed):
        full = mf.SignedDeepDiagonal.scaled(alpha, depth=max(DEPTHS), dim=D)
        leaves, treedef = jax.tree.flatten(full)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        leaves = [
            leaf * (1.0 + 0.2 * jax.random.normal(key, leaf.shape, leaf.dtype))
            for leaf, key in zip(leaves, keys, strict=True)
        ]
        model = mf.Padded(jax.tree.unflatten(treedef, leaves), depth)
        flow = mf.SteepestFlow(mf.Lp(q, eps))

        def solve(solver):
            return lambda: summary(
                mf.solve_flow(
                    flow,
                    model,
                    problem,
                    T1,
                    solver=solver,
                    stepsize_controller=controller,
                    max_steps=max_steps,
                )
            )

        return jax.lax.cond(q == 1.0, solve(mf.Rodas4()), solve(diffrax.Tsit5()))

    return run


def memory() -> str:
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB device peak"
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return f"{peak_kib / 2**20:.2f} GiB process peak RSS"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000, help="members (about)")
    parser.add_argument("--chunk-size", type=int, help="members per compiled call")
    parser.add_argument("--strategies", help="default: auto,grouped,vmap (CPU: auto,grouped,map)")
    parser.add_argument("--max-steps", type=int, default=20_000)
    args = parser.parse_args()
    if args.size < 1:
        parser.error("--size must be >= 1")
    jax.config.update("jax_enable_x64", True)
    device = jax.devices()[0]
    fallback = "map" if device.platform == "cpu" else "vmap"
    strategies = args.strategies or f"auto,grouped,{fallback}"
    grid = make_grid(args.size)
    run = make_run(args.max_steps)
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"jax {jax.__version__}, mirrorflow_jax {mf.__version__}; devices: {jax.devices()}")
    kind = getattr(device, "device_kind", device.platform)
    shape = dict(zip(grid.dims, grid.shape, strict=True))
    print(f"device kind: {kind}; grid: {grid.size} members {shape}")
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(
        "| strategy | finished | steps | lockstep efficiency | compile [s] | run [s] "
        "| members/s | steps/s | memory |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|", flush=True)
    for strategy in strategies.split(","):
        ds = sweep(run, grid, strategy=strategy, chunk_size=args.chunk_size, progress=False)
        label = strategy if strategy != "auto" else f"auto → {ds.attrs['strategy']}"
        if ds.attrs["strategy"] == "grouped":
            label += f" (by {', '.join(ds.attrs['group_by'])})"
        run_s = ds.attrs["run_seconds"]
        steps = int(ds.num_steps.sum())
        cells = [
            label,
            f"{int((ds.solved & ds.ok).sum())}/{grid.size}",
            str(steps),
            f"{ds.attrs['lockstep_efficiency']:.2f}",
            f"{ds.attrs['trace_seconds'] + ds.attrs['compile_seconds']:.1f}",
            f"{run_s:.3g}",
            f"{grid.size / run_s:.3g}",
            f"{steps / run_s:.3g}",
            memory(),
        ]
        print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
