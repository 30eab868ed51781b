"""Cost of `solve_flow`'s run-time checks on the sweep benchmark (`bench_sweep.py`'s grid and
member function): the range checks of traced hyperparameters and the step-size-controller
guard that ends a solve at a non-finite state or a stall.

Both variants are compiled once as the sweep's ``map`` strategy runs its members (``lax.map``
over the 24 members inside one program); "without" traces `solve_flow` with the checks
replaced by pass-throughs. Calls alternate between the variants, ``--repeats`` times each;
the table gives the minimum and median wall and process CPU times (CPU time is less disturbed
by other processes on a loaded machine), and the step counts (which must agree).

Usage: ``python benchmarks/bench_guard.py [--quick] [--repeats N]``
"""

import argparse
import contextlib
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import load
from bench_sweep import FULL, QUICK, make_grid, make_run

import mirrorflow_jax as mf

# The one benchmark that reaches into a private module: it measures `_guard` by switching its
# checks off, which no public name can do.
from mirrorflow_jax import _guard


@contextlib.contextmanager
def checks_removed():
    """`solve_flow` traced without the run-time checks (every member valid, no guard)."""
    saved = _guard.check_traced, _guard.guarded

    def unchecked(flow, t0, t1, dt0, saveat):
        return jnp.array(True), t0, t1, dt0, saveat

    _guard.check_traced, _guard.guarded = unchecked, lambda controller: controller
    try:
        yield
    finally:
        _guard.check_traced, _guard.guarded = saved


def compiled(run, members):
    def program(values):
        return jax.lax.map(lambda member: run(*member), values)

    start = time.perf_counter()
    fn = jax.jit(program).lower(members).compile()
    return fn, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bench_sweep's --quick size")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    size = dataclasses.replace(QUICK if args.quick else FULL, solver="rodas4-for-q1")
    problem = mf.sparse_regression(jax.random.key(0), n=size.n, d=size.d, k=5)
    grid = make_grid(size)
    members = tuple(jnp.asarray(grid.members()[name]) for name in ("q", "eps", "alpha"))
    run = make_run(problem, size)
    with_checks, compile_with = compiled(run, members)
    with checks_removed():
        without, compile_without = compiled(run, members)
    times = {"with checks": [], "without": []}
    cpu = {"with checks": [], "without": []}
    steps = {}
    for _ in range(args.repeats):
        for name, fn in (("with checks", with_checks), ("without", without)):
            start, start_cpu = time.perf_counter(), time.process_time()
            out = jax.block_until_ready(fn(members))
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            steps[name] = int(out.num_steps.sum())
            assert bool(np.all(out.ok)), name
    assert steps["with checks"] == steps["without"], steps
    print(f"{grid.size} members, n={size.n}, d={size.d}, t1={size.t1:g}, rtol={size.rtol:g}")
    print(f"compile: with checks {compile_with:.2f} s, without {compile_without:.2f} s")
    print("| variant | steps | wall min [s] | wall median [s] | CPU min [s] | CPU median [s] |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in times:
        cells = [f"{f(v):.3f}" for v in (times[name], cpu[name]) for f in (min, statistics.median)]
        print(f"| {name} | {steps[name]} | " + " | ".join(cells) + " |")
    for label, values in (("wall", times), ("CPU", cpu)):
        ratio = min(values["with checks"]) / min(values["without"])
        median = statistics.median(values["with checks"]) / statistics.median(values["without"])
        print(f"{label} with / without: {ratio:.4f} (minima), {median:.4f} (medians)")
    print(load())


if __name__ == "__main__":
    main()
