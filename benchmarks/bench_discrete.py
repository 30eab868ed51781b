"""Benchmark the discrete-optimizer runners (`run_optimizer`, `steps_to_escape`), and measure
steps-to-escape versus learning rate for GD, sign descent, Adam and AdamW.

The problem is the paper's regression setup (docs/theory.md §8): ``sparse_regression(key(0),
n=100, d=300, k=5)`` with a signed depth-3 diagonal network ``SignedDeepDiagonal.scaled(α)``,
float64 (``--quick``: n=20, d=40 and fewer steps).

1. **Runner overhead**: `run_optimizer` (one ``lax.scan``, saving every ``save_every`` steps)
   against a hand-written ``lax.scan`` of the same update that saves nothing, for optax.sgd,
   sign descent (`steepest_descent` with q = 1) and optax.adam. Both are AOT-compiled and
   compile time is reported separately. The two are called alternately ``REPEATS`` times; the
   table gives the best wall time of each (on a shared machine, load only adds time) and the
   median over the pairs of the ratio of process CPU times.
2. **Learning-rate sweep**: 64 learning rates (logspace(-4, -2)) of GD and of Adam as one
   ``vmap``-ed call against 64 separate calls of one compiled single-rate function (the rate
   is a traced argument, so there is one compilation; calls are dispatched asynchronously and
   synchronized once), at the small size (d=40) and the paper's (d=300); each timed
   ``SWEEP_REPEATS`` times alternately, the best time reported. Beside it, the same ratio for
   gradient descent on the linear model (the loss gradient's two matrix products alone): what
   batching can save on this machine when a step is nothing but those products.
3. **Discrete escape**: `steps_to_escape` (loss below half its initial value) for a grid of
   learning rates, each optimizer's grid ``vmap``-ed, next to the flow's escape time T from
   `solve_flow` (GF, and SignGF with ε = 1e-6): a method whose flow escapes at T needs about
   T/η steps.

Usage: ``python benchmarks/bench_discrete.py [--quick]``
"""

import argparse
import dataclasses
import datetime
import os
import platform
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import mirrorflow_jax as mf
from mirrorflow_jax import run_optimizer, steepest_descent, steps_to_escape

REPEATS = 15
SWEEP_REPEATS = 3
SWEEP_SIZE = 64
ESCAPE = mf.LossBelow(0.5)
ESCAPE_LRS = np.array([1e-1, 3e-2, 1e-2, 3e-3, 1e-3])


@dataclasses.dataclass(frozen=True)
class Size:
    n: int
    d: int
    alpha: float
    steps: int
    save_every: int
    sweep_steps: int


FULL = Size(n=100, d=300, alpha=0.03, steps=5_000, save_every=100, sweep_steps=2_000)
QUICK = Size(n=20, d=40, alpha=0.03, steps=2_000, save_every=50, sweep_steps=200)

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "GD (optax.sgd)": optax.sgd,
    "sign descent (steepest_descent q=1)": lambda lr: steepest_descent(lr, 1.0),
    "Adam (optax.adam)": optax.adam,
    "AdamW (optax.adamw, wd=0.1)": lambda lr: optax.adamw(lr, weight_decay=0.1),
}


def timed(fn: Callable, *args):
    """(fn(*args) with its outputs ready, wall seconds)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def compiled(fn: Callable, *args):
    """(the AOT-compiled ``eqx.filter_jit(fn)`` for these args, compile seconds)."""
    lowered = eqx.filter_jit(fn).lower(*args)
    return timed(lowered.compile)


def cpu_and_wall(fn: Callable, *args) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of one call with its outputs ready."""
    cpu = time.process_time()
    _, wall = timed(fn, *args)
    return time.process_time() - cpu, wall


def alternate(fns: list[Callable], args: tuple, repeats: int) -> np.ndarray:
    """(CPU, wall) seconds of calling the functions in turn for ``repeats`` rounds:
    shape (2, repeats, len(fns))."""
    times = [[cpu_and_wall(fn, *args) for fn in fns] for _ in range(repeats)]
    return np.moveaxis(np.array(times), -1, 0)


# ----------------------------------------------------------------------------- 1. overhead


def hand_written(optimizer, num_steps: int):
    """The same update in a bare ``lax.scan`` that keeps only the final parameters."""

    def run(model, problem):
        def body(carry, _):
            params, state = carry
            grads = jax.grad(lambda p: problem(p()))(params)
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(body, (model, optimizer.init(model)), None, num_steps)
        return params

    return run


def overhead_rows(model, problem, size: Size) -> list[str]:
    save_steps = np.arange(0, size.steps + 1, size.save_every)
    rows = []
    for name in ["GD (optax.sgd)", "sign descent (steepest_descent q=1)", "Adam (optax.adam)"]:
        optimizer = OPTIMIZERS[name](1e-3)

        def ours(model, problem, optimizer=optimizer):
            return run_optimizer(optimizer, model, problem, size.steps, save_steps=save_steps)

        runner, runner_compile = compiled(ours, model, problem)
        bare, bare_compile = compiled(hand_written(optimizer, size.steps), model, problem)
        cpu, wall = alternate([runner, bare], (model, problem), REPEATS)
        per_step = 1e6 * wall.min(axis=0) / size.steps
        cpu_ratio = np.median(cpu[:, 0] / cpu[:, 1])
        rows.append(
            f"| {name} | {size.steps} | {len(save_steps)} | {runner_compile:.2f} / "
            f"{bare_compile:.2f} | {per_step[0]:.2f} | {per_step[1]:.2f} | "
            f"{per_step[0] / per_step[1]:.3f} | {cpu_ratio:.3f} |"
        )
    return rows


OVERHEAD_HEADER = [
    "| optimizer | steps | saves | compile [s] runner / bare | runner [µs/step] "
    "| bare lax.scan [µs/step] | runner / bare, best wall | runner / bare, CPU time |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
]


# ----------------------------------------------------------------------------- 2. sweep


def sweep_rows(size: Size, name: str) -> list[str]:
    """One vmapped call over ``SWEEP_SIZE`` rates against as many calls of one compiled run."""
    problem, model = setup(size)
    lrs = jnp.logspace(-4, -2, SWEEP_SIZE)
    make = OPTIMIZERS[name]

    def one(lr, model, problem):
        return run_optimizer(make(lr), model, problem, size.sweep_steps).loss[-1]

    batched, batched_compile = compiled(
        jax.vmap(one, in_axes=(0, None, None)), lrs, model, problem
    )
    single, single_compile = compiled(one, lrs[0], model, problem)

    def separate(lrs, model, problem):
        return jnp.stack([single(lr, model, problem) for lr in lrs])

    walls = alternate([batched, separate], (lrs, model, problem), SWEEP_REPEATS)[1].min(axis=0)
    agree = np.max(np.abs(batched(lrs, model, problem) - separate(lrs, model, problem)))
    floor = products_floor(problem, size.sweep_steps)
    label = f"| d={size.d}, {size.sweep_steps} steps | {name.split(' (')[0]} |"
    return [
        f"{label} {batched_compile:.2f} / {single_compile:.2f} | {walls[0]:.3g} | "
        f"{walls[1]:.3g} | {walls[1] / walls[0]:.3g} | {floor[1] / floor[0]:.3g} | "
        f"{agree:.1e} |"
    ]


def products_floor(problem, num_steps: int) -> np.ndarray:
    """Best wall times of gradient descent on the *linear* model x ↦ ½‖A x − b‖², a bare
    ``lax.scan`` of ``num_steps``: (``vmap``-ed over ``SWEEP_SIZE`` rates, one call per rate
    ``SWEEP_SIZE`` times). Each step is the gradient's two matrix products and nothing else, so
    the ratio is what batching the rates can save on this machine (matrix–matrix products
    against as many matrix–vector ones) before the factors' elementwise work is added."""

    def descend(lr, problem):
        def loss(z):
            return 0.5 * jnp.sum((problem.A @ z - problem.b) ** 2)

        def body(z, _):
            return z - lr * jax.grad(loss)(z), None

        return jax.lax.scan(body, jnp.zeros(problem.dim), None, length=num_steps)[0]

    lrs = jnp.full(SWEEP_SIZE, 1e-6)
    batched, _ = compiled(jax.vmap(descend, in_axes=(0, None)), lrs, problem)
    single, _ = compiled(descend, lrs[0], problem)

    def separate(lrs, problem):
        return [single(lr, problem) for lr in lrs]

    return alternate([batched, separate], (lrs, problem), SWEEP_REPEATS)[1].min(axis=0)


SWEEP_HEADER = [
    f"| problem | optimizer | compile [s] vmap / single | vmap over {SWEEP_SIZE} rates [s] "
    f"| {SWEEP_SIZE} separate calls [s] | separate / vmap | same ratio, matrix products alone "
    "| max abs Δ final loss |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
]


# ----------------------------------------------------------------------------- 3. escape


def flow_escape_time(model, problem, q: float, eps: float) -> float:
    sol = mf.solve_flow(mf.SteepestFlow(mf.Lp(q, eps)), model, problem, 1e5, event=ESCAPE)
    return float(sol.event_time)


def escape_rows(model, problem) -> list[str]:
    max_steps = 10**6
    rows = []
    for name, make in OPTIMIZERS.items():

        def steps(lr, make=make):
            return steps_to_escape(make(lr), model, problem, ESCAPE, max_steps=max_steps)

        result = jax.vmap(steps)(jnp.asarray(ESCAPE_LRS))
        pairs = zip(result.steps, result.escaped, strict=True)
        cells = [str(int(k)) if ok else f">{max_steps}" for k, ok in pairs]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    times = {
        "GF (q=2)": flow_escape_time(model, problem, 2.0, 0.0),
        "SignGF (q=1, ε=1e-6)": flow_escape_time(model, problem, 1.0, 1e-6),
    }
    for name, t in times.items():
        cells = " | ".join(f"{t / lr:.4g}" for lr in ESCAPE_LRS)
        rows.append(f"| T/η, {name}: T = {t:.4g} | {cells} |")
    return rows


def escape_header() -> list[str]:
    return [
        "| steps to escape (loss ≤ f(x₀)/2) | "
        + " | ".join(f"η={lr:g}" for lr in ESCAPE_LRS)
        + " |",
        "|---|" + "---:|" * len(ESCAPE_LRS),
    ]


# ----------------------------------------------------------------------------- report


def load() -> str:
    return "load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def environment(size: Size) -> str:
    versions = ", ".join(f"{m.__name__} {m.__version__}" for m in (jax, optax, eqx, np, mf))
    return "\n".join(
        [
            f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            f"python {platform.python_version()}; {versions}",
            f"jax.devices(): {jax.devices()}",
            f"problem: sparse_regression(key(0), n={size.n}, d={size.d}, k=5); model: "
            f"SignedDeepDiagonal.scaled({size.alpha:g}, depth=3, dim={size.d}); float64",
            load(),
        ]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n=20, d=40, fewer steps")
    return parser.parse_args()


def setup(size: Size):
    problem = mf.sparse_regression(jax.random.key(0), n=size.n, d=size.d, k=5)
    return problem, mf.SignedDeepDiagonal.scaled(size.alpha, depth=3, dim=size.d)


def main():
    args = parse_args()
    jax.config.update("jax_enable_x64", True)
    size = QUICK if args.quick else FULL
    problem, model = setup(size)
    print(environment(size), end="\n\n", flush=True)
    start = time.perf_counter()
    print("\n".join(OVERHEAD_HEADER + overhead_rows(model, problem, size)), end="\n\n", flush=True)
    sizes = [QUICK] if args.quick else [QUICK, FULL]
    names = ["GD (optax.sgd)", "Adam (optax.adam)"]
    sweeps = [
        row for sweep_size in sizes for name in names for row in sweep_rows(sweep_size, name)
    ]
    print("\n".join(SWEEP_HEADER + sweeps), end="\n\n", flush=True)
    print("\n".join(escape_header() + escape_rows(model, problem)), flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; {load()}")


if __name__ == "__main__":
    main()
