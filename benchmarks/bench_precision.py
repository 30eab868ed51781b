"""The sign flow in float32 (jax_enable_x64 off, as on a TPU or a GPU run in single precision)
against float64 on the same problem.

A sparse regression (n = 10, d = 20, k = 3, drawn in float32 and cast to float64 for the
reference) with q = 1, ε = 1e-3, t1 = 10, from `SignedDeepDiagonal.scaled(1e-2)` at depth 2,
3 and 4 and from unbalanced positive factors at depth 2, solved in float32 with
`SignFlowKvaerno3`, `Rodas4` and Tsit5 at rtol 1e-3, 1e-4 and 1e-5 (atol = rtol/100, at most
20 000 steps). Each float32 endpoint is compared with a float64 `SignFlowKvaerno3` solve at
rtol 1e-10 (same placement). The naive placement is solved too, with `SignFlowKvaerno3` and
`Rodas4` at rtol 1e-4. Each precision runs in its own Python process (x64 is set at
start-up). Per row: whether the solve finished, the time it reached, steps (accepted +
rejected), the final loss, max |x(t_end) − x_ref(t1)| and the wall time of a second call.
A second table asks whether a gap is precision or conditioning: how far the float64
endpoint moves when the init is perturbed by a relative δ = 1e-12 or 1e-9 (seeded normal).

Usage: ``python benchmarks/bench_precision.py``
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
from _common import QUICK
from bench_core import environment

RUN = r"""
import json, sys, time
import diffrax, jax, jax.numpy as jnp
import mirrorflow_jax as mf

reference = sys.argv[1] == "reference"
problem = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=3)  # float32 draws
ku, kv = jax.random.split(jax.random.key(3))
models = {
    f"balanced, depth {depth}": mf.SignedDeepDiagonal.scaled(1e-2, depth=depth, dim=20)
    for depth in (2, 3, 4)
}
models["unbalanced, depth 2"] = mf.SignedDeepDiagonal(
    0.3 + 0.5 * jax.random.uniform(ku, (2, 20)), 0.3 + 0.5 * jax.random.uniform(kv, (2, 20))
)
if reference:
    jax.config.update("jax_enable_x64", True)
    problem, models = jax.tree.map(lambda a: a.astype(jnp.float64), (problem, models))
    # (placement, solver, rtol, relative perturbation of the init)
    cases = [
        (place, "SignFlowKvaerno3", 1e-10, delta)
        for place in ("structured", "naive")
        for delta in (0.0, 1e-12, 1e-9)
    ]
else:
    cases = [
        ("structured", solver, rtol, 0.0)
        for solver in ("SignFlowKvaerno3", "Rodas4", "Tsit5")
        for rtol in (1e-3, 1e-4, 1e-5)
    ]
    cases += [("naive", solver, 1e-4, 0.0) for solver in ("SignFlowKvaerno3", "Rodas4")]
rows = []
for name, model in models.items():
    for place, solver_name, rtol, delta in cases:
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at=place)
        tolerances = dict(rtol=rtol, atol=rtol / 100)
        solver = {
            "SignFlowKvaerno3": lambda: mf.SignFlowKvaerno3(**tolerances),
            "Rodas4": mf.Rodas4,
            "Tsit5": diffrax.Tsit5,
        }[solver_name]()
        noise = jax.tree.map(lambda a: jax.random.normal(jax.random.key(7), a.shape), model)
        start_model = jax.tree.map(lambda a, z: a * (1 + delta * z), model, noise)

        @jax.jit
        def solve(model, problem):
            sol = mf.solve_flow(
                flow, model, problem, 10.0, solver=solver,
                max_steps=200_000 if reference else 20_000,
                stepsize_controller=diffrax.PIDController(**tolerances),
            )
            return sol.ok, sol.ts[-1], sol.num_steps, sol.loss[-1], sol.x[-1]

        jax.block_until_ready(solve(start_model, problem))
        start = time.perf_counter()
        ok, t_end, steps, loss, x = jax.block_until_ready(solve(start_model, problem))
        rows.append(dict(
            model=name, placement=place, solver=solver_name, rtol=rtol, delta=delta,
            ok=bool(ok), t=float(t_end), steps=int(steps), loss=float(loss), x=x.tolist(),
            dtype=str(x.dtype), wall=time.perf_counter() - start,
        ))
print(json.dumps(rows))
"""


def run(kind: str) -> list[dict]:
    env = {key: value for key, value in os.environ.items() if key != "JAX_ENABLE_X64"}
    done = subprocess.run(
        [sys.executable, "-c", RUN, kind], capture_output=True, text=True, env=env
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    print("\n".join(environment(QUICK).splitlines()[:3]), end="\n\n")
    start = time.perf_counter()
    reference_rows = run("reference")
    references = {
        (row["model"], row["placement"]): np.array(row["x"])
        for row in reference_rows
        if row["delta"] == 0.0
    }
    print(
        "| model | placement | solver | rtol | dtype | finished | t reached | steps | final loss "
        "| max abs x − x_ref | wall [s] |\n|---|---|---|---:|---|---|---:|---:|---:|---:|---:|",
        flush=True,
    )
    for row in run("float32"):
        error = np.abs(np.array(row["x"]) - references[row["model"], row["placement"]]).max()
        print(
            f"| {row['model']} | {row['placement']} | {row['solver']} | {row['rtol']:g} "
            f"| {row['dtype']} | {'yes' if row['ok'] else '**no**'} | {row['t']:.3g} "
            f"| {row['steps']} | {row['loss']:.1e} | {error:.1e} | {row['wall']:.3f} |",
            flush=True,
        )
    print(
        "\nConditioning in float64 (`SignFlowKvaerno3`, rtol 1e-10): max |Δx(t1)| after a "
        "relative perturbation δ of the init\n\n| model | placement | δ = 1e-12 | δ = 1e-9 "
        "|\n|---|---|---:|---:|"
    )
    for (model, place), x_ref in references.items():
        moved = {
            row["delta"]: np.abs(np.array(row["x"]) - x_ref).max()
            for row in reference_rows
            if (row["model"], row["placement"]) == (model, place) and row["delta"] > 0
        }
        print(f"| {model} | {place} | {moved[1e-12]:.1e} | {moved[1e-9]:.1e} |")
    finished = all(row["ok"] for row in reference_rows)
    print(f"\nevery float64 solve finished: {finished}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
