"""Compile and run time of the toolkit's solver programs under XLA's two CPU code generators:
the fusion emitters (XLA's default) and the loop emitters (``XLA_FLAGS=
--xla_cpu_use_fusion_emitters=false``), each in a fresh process; and the largest difference
between their results, which should be rounding at most.

    python benchmarks/bench_compile.py            # d = 8 (the tests' size) and d = 100
    python benchmarks/bench_compile.py --quick    # d = 8 only

Compile time is the backend compile of the lowered program (tracing and lowering are the same
for both and reported once); run time is the median of three calls of the compiled program.
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
import diffrax, equinox as eqx, jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
import mirrorflow_jax as mf

d = int(sys.argv[1])
n = max(5, d * 2 // 5)
loss = mf.sparse_regression(jax.random.key(4), n=n, d=d, k=3)
u = 0.3 + 0.5 * jax.random.uniform(jax.random.key(7), (3, d))
v = 0.3 + 0.5 * jax.random.uniform(jax.random.key(8), (3, d))
model = mf.SignedDeepDiagonal(u, v)
saves = jnp.linspace(0.1, 3.0, 30)
controller = diffrax.PIDController(rtol=1e-8, atol=1e-10)
CASES = {
    "Tsit5, q = 2": (diffrax.Tsit5(), 2.0, 0.0),
    "Kvaerno3 (diffrax), q = 1.5, eps 1e-3": (diffrax.Kvaerno3(), 1.5, 1e-3),
    "Rodas4, q = 1.5, eps 1e-3": (mf.Rodas4(), 1.5, 1e-3),
    "SignFlowKvaerno3, q = 1, eps 1e-3": (mf.SignFlowKvaerno3(), 1.0, 1e-3),
    "auto (vmapped over q)": ("auto", None, 1e-3),
}
if d > 8:  # diffrax's Kvaerno3 with a dense Newton on 3·2·d unknowns: about 50 s a call
    del CASES["Kvaerno3 (diffrax), q = 1.5, eps 1e-3"]
rows = {}
for name, (solver, q, eps) in CASES.items():
    def solve(model, q):
        flow = mf.SteepestFlow(mf.Lp(q, eps))
        sol = mf.solve_flow(flow, model, loss, 3.0, saveat=saves, solver=solver,
                            stepsize_controller=controller, max_steps=100_000)
        return sol.x, sol.num_steps
    if q is None:
        fn, arg = jax.vmap(solve, in_axes=(None, 0)), jnp.array([1.0, 1.5, 2.0])
    else:
        fn, arg = solve, jnp.asarray(q)
    start = time.perf_counter()
    lowered = eqx.filter_jit(fn).lower(model, arg)
    traced = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        x, steps = jax.block_until_ready(compiled(model, arg))
        walls.append(time.perf_counter() - start)
    rows[name] = dict(trace_lower=traced, compile=compile_s, run=statistics.median(walls),
                      steps=int(jnp.sum(steps)), x=x.tolist())
print(json.dumps(rows))
"""

FLAG = "--xla_cpu_use_fusion_emitters=false"


def child(dim: int, loop_emitters: bool) -> dict:
    flags = os.environ.get("XLA_FLAGS", "").replace(FLAG, "").strip()
    env = dict(os.environ, XLA_FLAGS=f"{flags} {FLAG}".strip() if loop_emitters else flags)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(dim)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="d = 8 only")
    args = parser.parse_args()
    import numpy as np

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for dim in (8,) if args.quick else (8, 100):
        fusion, loop = child(dim, False), child(dim, True)
        print(f"\nd = {dim}: compile s (fusion → loop emitters), run ms, steps, max |Δx|")
        for name in fusion:
            a, b = fusion[name], loop[name]
            gap = float(np.max(np.abs(np.asarray(a["x"]) - np.asarray(b["x"]))))
            print(
                f"  {name:40s} compile {a['compile']:5.2f} → {b['compile']:5.2f} "
                f"({a['compile'] / b['compile']:.2f}×)   run {1e3 * a['run']:7.1f} → "
                f"{1e3 * b['run']:7.1f}   steps {a['steps']} / {b['steps']}   {gap:.1e}",
                flush=True,
            )
        total = [sum(r["compile"] for r in side.values()) for side in (fusion, loop)]
        print(f"  all compiles: {total[0]:.2f} → {total[1]:.2f} s ({total[0] / total[1]:.2f}×)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
