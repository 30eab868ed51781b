"""The exact q = 1.5 flow of bench_sweep.py's grid: the velocity-Newton solvers against Tsit5,
member by member, with their errors against a tighter reference.

Problem (as bench_sweep.py): ``sparse_regression(key(0), n=40, d=100, k=5)``,
``SignedDeepDiagonal.scaled(alpha, depth=3, dim=100)``, ``SteepestFlow(Lp(1.5))`` (ε = 0),
t1 = 100, float64, ``PIDController(rtol=1e-8, atol=1e-10)``; α from ``logspace(-3, -1, 8)``
(``--alphas`` picks some of them by index).

Rows per member: ``--solver`` (`PowerFlowKvaerno3` by default; ``auto``: no solver argument,
which takes `PowerFlowKvaerno5`) and Tsit5 (``solve_flow(..., solver=diffrax.Tsit5())``,
watched for stiffness as any explicit solver) at the benchmark tolerances, and the
reference: `PowerFlowKvaerno3` at rtol 1e-10, atol 1e-12. Each solve is one call of a
program compiled once per solver (α traced); *steps* is ``num_steps`` (accepted + rejected),
*wall* the compiled call. Errors are max |x(t1) − x_ref(t1)|; Tsit5's is an independent
check of the reference (another method, another step sequence).

Usage: ``python benchmarks/bench_exact_q.py [--alphas 0,4,7] [--solver auto] [--no-tsit5]``
"""

import argparse
import datetime
import os
import platform

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import load, timed

import mirrorflow_jax as mf

ALPHAS = np.logspace(-3, -1, 8)
DEPTH, N, D, T1 = 3, 40, 100, 100.0
RTOL, ATOL = 1e-8, 1e-10
REFERENCE_RTOL, REFERENCE_ATOL = 1e-10, 1e-12
MAX_STEPS = 200_000


def make_solve(problem, solver, rtol, atol):
    """A compiled solve of member α (traced) with ``solver`` at (rtol, atol), and its
    compile time."""
    controller = diffrax.PIDController(rtol=rtol, atol=atol)

    @eqx.filter_jit
    def solve(alpha):
        model = mf.SignedDeepDiagonal.scaled(alpha, depth=DEPTH, dim=D)
        return mf.solve_flow(
            mf.SteepestFlow(mf.Lp(1.5)),
            model,
            problem,
            T1,
            solver=solver,
            stepsize_controller=controller,
            max_steps=MAX_STEPS,
        )

    return timed(lambda: solve.lower(jnp.asarray(ALPHAS[0])).compile())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", default="0,1,2,3,4,5,6,7", help="indices into ALPHAS")
    parser.add_argument("--no-tsit5", action="store_true", help="skip the Tsit5 rows")
    parser.add_argument(
        "--solver", choices=("PowerFlowKvaerno3", "auto"), default="PowerFlowKvaerno3"
    )
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    alphas = ALPHAS[[int(i) for i in args.alphas.split(",")]]
    problem = mf.sparse_regression(jax.random.key(0), n=N, d=D, k=5)
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__}; {load()}", flush=True)
    chosen = mf.PowerFlowKvaerno3() if args.solver == "PowerFlowKvaerno3" else "auto"
    power, power_compile = make_solve(problem, chosen, RTOL, ATOL)
    reference, _ = make_solve(problem, mf.PowerFlowKvaerno3(), REFERENCE_RTOL, REFERENCE_ATOL)
    name = args.solver if args.solver != "auto" else "auto (PowerFlowKvaerno5)"
    solvers = [(name, power, power_compile)]
    if not args.no_tsit5:
        tsit5, tsit5_compile = make_solve(problem, diffrax.Tsit5(), RTOL, ATOL)
        solvers.append(("Tsit5", tsit5, tsit5_compile))
    print("compile [s]: " + ", ".join(f"{name} {c:.1f}" for name, _, c in solvers))
    print(
        "\n| α | solver | result | steps | wall [s] | max abs x − x_ref | reference steps |\n"
        "|---:|---|---|---:|---:|---:|---:|",
        flush=True,
    )
    steps = {name: [] for name, _, _ in solvers}  # per member: (steps, ok)
    for alpha in alphas:
        ref, _ = timed(reference, jnp.asarray(alpha))
        x_ref = np.asarray(ref.x[-1])
        for name, compiled, _ in solvers:
            sol, wall = timed(compiled, jnp.asarray(alpha))
            error = np.max(np.abs(np.asarray(sol.x[-1]) - x_ref))
            status = "ok" if bool(sol.ok) else str(sol.result).split("<")[-1][:40]
            steps[name].append((int(sol.num_steps), bool(sol.ok)))
            print(
                f"| {alpha:.3g} | {name} | {status} | {int(sol.num_steps)} | {wall:.3g} | "
                f"{error:.1e} | {int(ref.num_steps)} ({'ok' if bool(ref.ok) else 'failed'}) |",
                flush=True,
            )
    print()
    for name, runs in steps.items():
        finished = [count for count, ok in runs if ok]
        print(
            f"{name}: {len(finished)}/{len(runs)} ok, {np.mean(finished):.0f} steps per ok member"
        )
    if "Tsit5" in steps:
        both = [ok and ok5 for (_, ok), (_, ok5) in zip(*steps.values(), strict=True)]
        ratio = sum(c for (c, _), b in zip(steps["Tsit5"], both, strict=True) if b) / sum(
            c for (c, _), b in zip(steps[name], both, strict=True) if b
        )
        print(f"Tsit5 / {name} steps, the {sum(both)} members both finished: {ratio:.1f}x")
    print(load())


if __name__ == "__main__":
    main()
