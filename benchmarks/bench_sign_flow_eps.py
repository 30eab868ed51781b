"""How the cost of the regularized sign flow grows as ε shrinks, and where the steps go.

Same problem as ``bench_sign_flow.py`` (sparse regression n=40, d=100, k=5; signed depth-3
model, 600 states; w0 = 1e-2, t1 = 200; rtol 1e-8, atol 1e-10), q = 1, solved with
`Rodas4` (structured Jacobian) for ε from 1e-3 down to 1e-10. One compilation per smoothing
placement (ε is a traced leaf of the flow); compile time is reported apart.

Per ε it reports the attempted, accepted and rejected steps and the number of *layer
crossings*: the times a gradient entry r = ∂F/∂w_i / ε_i changes sign while |r| > 3 on both
sides (hysteresis, so a coordinate resting inside the layer |r| ≲ 1 is not counted), read off
the accepted steps. A crossing is where the ε → 0 flow's velocity jumps; the regularized
flow turns it over a time ≈ ε/|dg/dt|, and an error-controlled method has to shrink its step
to that scale and grow it back afterwards, so each crossing costs more steps the thinner
the layer; at loose tolerances the solution can also chatter across the layer, which shows
as crossings far outnumbering the steps. The last columns give the steps per crossing and
the extra steps against the largest ε.

``--implicit`` instead compares `Rodas4` with diffrax's fully implicit ``Kvaerno3`` and
``Kvaerno5`` under a full Newton iteration (``optimistix.Newton``: the Jacobian re-evaluated
at every iterate, dense) at ε = 1e-3 and 1e-6, on the ``--quick`` problem (dense Newton on
600 states is too slow for the full one), to see whether an implicit method that
re-linearizes inside the step makes the cost independent of ε.

``--solver kvaerno3`` runs the ε sweep with `SignFlowKvaerno3` (Newton in the velocity, per
coordinate for the structure-preserving placement and per factor entry for the naive one,
under a PI controller) instead of `Rodas4`.

``--rtol-sweep`` runs `SignFlowKvaerno3` at ε = 1e-3 and 1e-6 for rtol from 1e-4 to 1e-10
and reports, per placement and rtol, the cost ratio of the two ε (steps and wall time, the
median of three calls under a second) next to the layer entries and exits of each trajectory
(`mirrorflow_jax.layer_transitions` on every accepted step; hysteresis |r| < 1 inside,
|r| > 3 outside, and exits that reach |r| > 100): whether the ratio is a property of the
solver or of the two flows.

``--oracle`` asks whether locating the layer transitions would cut the cost: `SignFlowKvaerno3`
at ε = 1e-3 and 1e-6 with step boundaries forced exactly on the times at which some entry's
|r| crosses 1, 3 or 30 on a tight reference (rtol 1e-10), as diffrax ``step_ts`` (a boundary)
or ``jump_ts`` (a boundary and a fresh first stage, as an event restart), against the plain
solve.

``--eps-bound`` checks that the cost stays bounded as ε → 0: `SignFlowKvaerno3` with its default
options under `solve_flow`'s default controller (``PIDController(rtol, atol = rtol/100)``, an
I controller; rtol 1e-8 unless ``--rtol``) at ε = 1e-3, 1e-6, 1e-10 and 1e-12, on three
problems: the one above (``--quick`` shrinks it), a depth-2 signed model
``SignedDeepDiagonal.scaled(0.1, depth=2, dim=20)`` on ``sparse_regression(key(0), n=10, d=20,
k=2)`` with t1 = 10, and the same regression from a random init
``SignedDeepDiagonal.random(key(1), depth=2, dim=20, scale=0.1)``; it prints the steps and
the ratio of ε = 1e-10 to ε = 1e-6. ``--error-order 2`` runs it with the step-size controller
told that the local error estimate is of order 2 instead of 3 (to compare the two).

Usage: ``python benchmarks/bench_sign_flow_eps.py [--quick] [--smoothing sqrt|tanh]
[--rtol R] [--implicit] [--solver rodas4|kvaerno3] [--rtol-sweep] [--oracle] [--eps-bound
[--error-order 2|3]]`` (atol = R/100; default rtol 1e-8, ``--implicit`` 1e-4)
"""

import argparse
import functools
import time

import diffrax
import equinox as eqx
import jax
import numpy as np
import optimistix as optx
from _common import FULL, QUICK, load, steady_wall, timed
from bench_core import environment
from jax.flatten_util import ravel_pytree

import mirrorflow_jax as mf

EPSILONS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-10)
SWEEP_RTOLS = (1e-4, 1e-6, 1e-8, 1e-9, 1e-10)
SWEEP_EPSILONS = (1e-3, 1e-6)
PLACES = ("structured", "naive")
HYSTERESIS = 3.0
MAX_STEPS = 60_000


def _field(t, y, args: mf.FlowArgs):
    return args.flow(t, y, args.loss)


def scaled_gradient(flow: mf.SteepestFlow, params, loss) -> jax.Array:
    """r_i = ∂F/∂w_i divided by the smoothing scale the flow applies to entry i, raveled."""
    return ravel_pytree(flow.scaled_gradient(params, loss))[0]


def _controller(solver, rtol, clip=None):
    """diffrax's default I controller; a PI controller (pcoeff = icoeff = 0.3) for
    `SignFlowKvaerno3`, which rejects fewer steps after layer entries with it. ``clip``: keyword
    arguments of a ``diffrax.ClipStepSizeController`` around it (``step_ts`` / ``jump_ts``)."""
    pi = isinstance(solver, mf.SignFlowKvaerno3)
    controller = diffrax.PIDController(
        rtol=rtol, atol=rtol / 100, pcoeff=0.3 if pi else 0.0, icoeff=0.3 if pi else 1.0
    )
    return controller if clip is None else diffrax.ClipStepSizeController(controller, **clip)


def _solve(flow, params0, loss, t1, solver, rtol, saveat, clip=None):
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_field),
        solver,
        0.0,
        t1,
        None,
        flow.init(params0),
        args=mf.FlowArgs(flow, loss, loss(mf.effective_weights(params0))),
        saveat=saveat,
        stepsize_controller=_controller(solver, rtol, clip),
        max_steps=MAX_STEPS,
        throw=False,
    )


@eqx.filter_jit
def solve_steps(flow, params0, loss, t1, solver, rtol):
    """The solve with every accepted step saved, and r at each of them."""
    sol = _solve(flow, params0, loss, t1, solver, rtol, diffrax.SaveAt(steps=True))
    ratio = jax.vmap(lambda y: scaled_gradient(flow, flow.params_of(y), loss))(sol.ys)
    final = jax.tree.map(lambda leaf: leaf[sol.stats["num_accepted_steps"] - 1], sol.ys)
    return sol.stats, sol.result, ratio, loss(mf.effective_weights(flow.params_of(final)))


def count_crossings(ratio: np.ndarray) -> int:
    """Sign changes of each column of ``ratio`` among its entries with |r| > HYSTERESIS."""
    total = 0
    for column in ratio.T:
        signs = np.sign(column[np.abs(column) > HYSTERESIS])
        total += int(np.count_nonzero(signs[1:] != signs[:-1]))
    return total


@eqx.filter_jit
def solve_end(flow, params0, loss, t1, solver, rtol, clip=None):
    """Step statistics, result, final loss and x(t1) of one solve (``clip``: see
    `_controller`)."""
    sol = _solve(flow, params0, loss, t1, solver, rtol, diffrax.SaveAt(t1=True), clip)
    x = mf.effective_weights(flow.params_of(jax.tree.map(lambda leaf: leaf[-1], sol.ys)))
    return sol.stats, sol.result, loss(x), x


def compile_aot(fn, *args):
    """(``fn`` compiled ahead of time for ``args``, compile seconds)."""
    return timed(lambda: fn.lower(*args).compile())


def status(result) -> str:
    return "" if result == diffrax.RESULTS.successful else " (max_steps)"


def compare_implicit(problem, model, size, smoothing: str, rtol: float):
    """`Rodas4` against fully implicit Kvaerno methods with a full Newton iteration."""
    newton = optx.Newton(rtol=rtol / 10, atol=rtol / 1000)
    solvers = {
        "Rodas4 (structured)": mf.Rodas4(structure="structured"),
        "Kvaerno3 + Newton": diffrax.Kvaerno3(root_finder=newton),
        "Kvaerno5 + Newton": diffrax.Kvaerno5(root_finder=newton),
    }
    print(
        "| placement | solver | ε | steps | rejected | steps / steps at ε=1e-3 | compile [s] "
        "| wall [s] | final loss |\n|---|---|---:|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    for place in PLACES:
        for name, solver in solvers.items():
            base = None
            for eps in (1e-3, 1e-6):
                flow = mf.SteepestFlow(mf.Lp(1.0, eps, smoothing), smoothing_at=place)
                compiled, compile_s = compile_aot(
                    solve_end, flow, model, problem, size.t1, solver, rtol
                )
                (stats, result, final_loss, _), wall = timed(
                    compiled, flow, model, problem, size.t1, solver, rtol
                )
                steps = int(stats["num_steps"])
                base = steps if base is None else base
                print(
                    f"| {place} | {name} | {eps:g} | {steps}{status(result)} "
                    f"| {int(stats['num_rejected_steps'])} | {steps / base:.1f} "
                    f"| {compile_s:.1f} | {wall:.2f} | {float(final_loss):.2g} |",
                    flush=True,
                )


@eqx.filter_jit
def solve_saved(flow, params0, loss, t1, solver, rtol):
    """Every accepted step of the solve: (times, states, result)."""
    sol = _solve(flow, params0, loss, t1, solver, rtol, diffrax.SaveAt(steps=True))
    return sol.ts, sol.ys, sol.result


def transitions(flow, params0, loss, t1, solver, rtol) -> tuple[int, int, int]:
    """Layer entries, exits, and exits reaching |r| > 100, over every accepted step."""
    ts, states, _ = solve_saved(flow, params0, loss, t1, solver, rtol)
    near = mf.layer_transitions(flow, loss, ts, states, inside=1.0, outside=3.0)
    far = mf.layer_transitions(flow, loss, ts, states, inside=1.0, outside=100.0)
    return int(near.entries.sum()), int(near.exits.sum()), int(far.exits.sum())


def rtol_sweep(problem, model, size, smoothing: str):
    """The cost ratio ε = 1e-6 : 1e-3 across tolerances, with the layer transitions."""
    print(
        "| placement | rtol | steps (ε = 1e-3 / 1e-6) | rejected | steps ratio "
        "| wall [s] | wall ratio | entries / exits (far exits) | compile [s] | final loss |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    for place in PLACES:
        for rtol in SWEEP_RTOLS:
            solver = mf.SignFlowKvaerno3(rtol=rtol, atol=rtol / 100)
            runs = []
            for eps in SWEEP_EPSILONS:
                flow = mf.SteepestFlow(mf.Lp(1.0, eps, smoothing), smoothing_at=place)
                if not runs:
                    compiled, compile_s = compile_aot(
                        solve_end, flow, model, problem, size.t1, solver, rtol
                    )
                call = functools.partial(compiled, flow, model, problem, size.t1, solver, rtol)
                (stats, result, final_loss, _), wall = steady_wall(call)
                counts = transitions(flow, model, problem, size.t1, solver, rtol)
                runs.append((stats, result, float(final_loss), wall, counts))
            steps = [int(run[0]["num_steps"]) for run in runs]
            walls = [run[3] for run in runs]
            columns = [
                " / ".join(f"{n}{status(run[1])}" for n, run in zip(steps, runs, strict=True)),
                " / ".join(str(int(run[0]["num_rejected_steps"])) for run in runs),
                f"{steps[1] / steps[0]:.2f}",
                " / ".join(f"{wall:.3f}" for wall in walls),
                f"{walls[1] / walls[0]:.2f}",
                " ; ".join("{} / {} ({})".format(*run[4]) for run in runs),
                f"{compile_s:.1f}",
                f"{max(run[2] for run in runs):.1g}",
            ]
            print(
                f"| {place} | {rtol:g} | " + " | ".join(columns) + " |",
                flush=True,
            )


ORACLE_REFERENCE_RTOL = 1e-10
ORACLE_LEVELS = (1.0, 3.0, 30.0)


def reference_ratio(flow, params0, loss, t1) -> tuple[np.ndarray, np.ndarray]:
    """(times, |r| per entry) at every accepted step of a tight reference: `SignFlowKvaerno3`
    at rtol 1e-10."""
    rtol = ORACLE_REFERENCE_RTOL
    solver = mf.SignFlowKvaerno3(rtol=rtol, atol=rtol / 100).resolve(flow, params0, loss, None)
    ts, states, _ = solve_saved(flow, params0, loss, t1, solver, rtol)
    keep = np.isfinite(np.asarray(ts))
    states = jax.tree.map(lambda leaf: leaf[keep], states)
    ratio = jax.vmap(lambda y: scaled_gradient(flow, flow.params_of(y), loss))(states)
    return np.asarray(ts)[keep], np.abs(np.asarray(ratio))


def crossing_times(ts: np.ndarray, ratio: np.ndarray, level: float, t1: float) -> np.ndarray:
    """The times in (0, t1) at which some column of ``ratio`` (|r| at times ``ts``) crosses
    ``level``, either way, by linear interpolation between rows."""
    shifted = ratio - level
    rows, columns = np.nonzero((shifted[1:] < 0) != (shifted[:-1] < 0))
    before, after = shifted[rows, columns], shifted[rows + 1, columns]
    times = ts[rows] + (ts[rows + 1] - ts[rows]) * before / (before - after)
    return np.unique(times[(times > 0) & (times < t1)])


def oracle(problem, model, size, smoothing: str, rtol: float):
    """Would locating the layer transitions cut the steps? Force step boundaries at the exact
    times (from a tight reference) at which entries cross |r| = level, as diffrax ``step_ts``
    (no restart) or ``jump_ts`` (restart: the first stage re-evaluated after the time), and
    compare with the plain solve."""
    print(
        "| placement | ε | boundaries | times | steps | accepted | rejected "
        "| max abs x − x_plain | wall [s] |\n|---|---:|---|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    for place in PLACES:
        for eps in SWEEP_EPSILONS:
            flow = mf.SteepestFlow(mf.Lp(1.0, eps, smoothing), smoothing_at=place)
            solver = mf.SignFlowKvaerno3(rtol=rtol, atol=rtol / 100).resolve(
                flow, model, problem, None
            )
            runs = [("none", None, 0)]
            ts, ratio = reference_ratio(flow, model, problem, size.t1)
            for level in ORACLE_LEVELS:
                times = jax.numpy.asarray(crossing_times(ts, ratio, level, size.t1))
                kinds = ("step_ts", "jump_ts") if level == 1.0 else ("step_ts",)
                runs += [(f"{kind}, |r| = {level:g}", {kind: times}, len(times)) for kind in kinds]
            plain = None
            for label, clip, count in runs:
                args = (flow, model, problem, size.t1, solver, rtol, clip)
                compiled, _ = compile_aot(solve_end, *args)
                call = functools.partial(compiled, *args)
                (stats, result, _, x), wall = steady_wall(call)
                plain = np.asarray(x) if plain is None else plain
                print(
                    f"| {place} | {eps:g} | {label} | {count} "
                    f"| {int(stats['num_steps'])}{status(result)} "
                    f"| {int(stats['num_accepted_steps'])} | {int(stats['num_rejected_steps'])} "
                    f"| {np.abs(np.asarray(x) - plain).max():.1e} | {wall:.3f} |",
                    flush=True,
                )


BOUND_EPSILONS = (1e-3, 1e-6, 1e-10, 1e-12)
BOUND_MAX_STEPS = 200_000


class _ErrorOrder(mf.SignFlowKvaerno3):
    """`SignFlowKvaerno3` with the order its error estimate reports to the controller set."""

    order_of_error: int = eqx.field(static=True, default=3)

    def error_order(self, terms):
        return self.order_of_error


@eqx.filter_jit
def solve_default(flow, params0, loss, t1, solver, controller):
    """One solve as `solve_flow` runs it by default (same controller, ``max_steps`` 200k):
    step statistics, result, final loss."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_field),
        solver,
        0.0,
        t1,
        None,
        flow.init(params0),
        args=mf.FlowArgs(flow, loss, loss(mf.effective_weights(params0))),
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=controller,
        max_steps=BOUND_MAX_STEPS,
        throw=False,
    )
    x = mf.effective_weights(flow.params_of(jax.tree.map(lambda leaf: leaf[-1], sol.ys)))
    return sol.stats, sol.result, loss(x)


def eps_bound(size, smoothing: str, rtol: float, error_order: int):
    """Steps of `SignFlowKvaerno3` (default options) as ε → 0 on three problems."""
    regression = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=2)
    cases = {
        f"benchmark (n={size.n}, d={size.d}, depth 3, t1={size.t1:g})": (
            mf.sparse_regression(jax.random.key(0), n=size.n, d=size.d, k=5),
            mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=size.d),
            size.t1,
        ),
        "depth 2, scaled(0.1), n=10, d=20, t1=10": (
            regression,
            mf.SignedDeepDiagonal.scaled(0.1, depth=2, dim=20),
            10.0,
        ),
        "depth 2, random(key(1), scale=0.1), n=10, d=20, t1=10": (
            regression,
            mf.SignedDeepDiagonal.random(jax.random.key(1), depth=2, dim=20, scale=0.1),
            10.0,
        ),
    }
    controller = diffrax.PIDController(rtol=rtol, atol=rtol / 100)
    print(
        f"error_order {error_order}\n\n"
        "| problem | ε | steps | accepted | rejected | wall [s] | final loss |\n"
        "|---|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    ratios = {}
    for name, (loss, model, t1) in cases.items():
        steps = {}
        for eps in BOUND_EPSILONS:
            flow = mf.SteepestFlow(mf.Lp(1.0, eps, smoothing))
            solver = _ErrorOrder(order_of_error=error_order).resolve(flow, model, loss, controller)
            (stats, result, final_loss), wall = timed(
                solve_default, flow, model, loss, t1, solver, controller
            )
            steps[eps] = int(stats["num_steps"])
            print(
                f"| {name} | {eps:g} | {steps[eps]}{status(result)} "
                f"| {int(stats['num_accepted_steps'])} | {int(stats['num_rejected_steps'])} "
                f"| {wall:.2f} | {float(final_loss):.2g} |",
                flush=True,
            )
        ratios[name] = steps[1e-10] / steps[1e-6]
    print("\nsteps at ε = 1e-10 / steps at ε = 1e-6 (each problem's first wall time compiles):")
    for name, ratio in ratios.items():
        print(f"  {name}: {ratio:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n=20, d=40, t1=50")
    parser.add_argument("--smoothing", choices=("sqrt", "tanh"), default="sqrt")
    parser.add_argument("--rtol", type=float, help="rtol of every solve (atol = rtol/100)")
    parser.add_argument(
        "--implicit", action="store_true", help="Rodas4 against Kvaerno3/5 + full Newton"
    )
    parser.add_argument(
        "--solver",
        choices=("rodas4", "kvaerno3"),
        default="rodas4",
        help="the ε sweep's solver (kvaerno3: SignFlowKvaerno3)",
    )
    parser.add_argument(
        "--rtol-sweep",
        action="store_true",
        help="SignFlowKvaerno3 at eps 1e-3, 1e-6 for rtol 1e-4 ... 1e-10, with layer transitions",
    )
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="SignFlowKvaerno3 at eps 1e-3, 1e-6 with step boundaries at the exact transitions",
    )
    parser.add_argument(
        "--eps-bound",
        action="store_true",
        help="SignFlowKvaerno3 (default options) at eps 1e-3 ... 1e-12 on three problems",
    )
    parser.add_argument(
        "--error-order",
        type=int,
        choices=(2, 3),
        default=3,
        help="with --eps-bound: the error estimate's order told to the controller",
    )
    options = parser.parse_args()
    rtol = options.rtol or (1e-4 if options.implicit else 1e-8)
    if not 0 < rtol < 1:
        parser.error(f"--rtol must lie in (0, 1); got {rtol:g}")
    jax.config.update("jax_enable_x64", True)
    size = QUICK if options.quick or options.implicit else FULL
    problem = mf.sparse_regression(jax.random.key(0), n=size.n, d=size.d, k=5)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=size.d)
    header = environment(size).splitlines()[:4]  # date, machine, versions, devices
    header.append(
        f"problem: sparse_regression(key(0), n={size.n}, d={size.d}, k=5); "
        f"SignedDeepDiagonal.scaled(1e-2, depth=3, dim={size.d}); t1={size.t1:g}; "
        f"smoothing {options.smoothing}; rtol {rtol:g}, atol {rtol / 100:g}; float64; {load()}"
    )
    print("\n".join(header), end="\n\n")
    start = time.perf_counter()
    if options.eps_bound:
        eps_bound(size, options.smoothing, rtol, options.error_order)
        print(f"\ntotal {time.perf_counter() - start:.0f} s; {load()}")
        return
    if options.oracle:
        oracle(problem, model, size, options.smoothing, rtol)
        print(f"\ntotal {time.perf_counter() - start:.0f} s; {load()}")
        return
    if options.rtol_sweep:
        rtol_sweep(problem, model, size, options.smoothing)
        print(f"\ntotal {time.perf_counter() - start:.0f} s; {load()}")
        return
    if options.implicit:
        compare_implicit(problem, model, size, options.smoothing, rtol)
        print(f"\ntotal {time.perf_counter() - start:.0f} s; {load()}")
        return
    print(
        "| placement | ε | steps | accepted | rejected | crossings | steps / crossing "
        "| extra steps / crossing | wall [s] | final loss |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    if options.solver == "rodas4":
        solver = mf.Rodas4(structure="structured")
    else:
        solver = mf.SignFlowKvaerno3(rtol=rtol, atol=rtol / 100)
    for place in PLACES:

        def flow_at(eps, place=place):
            return mf.SteepestFlow(mf.Lp(1.0, eps, options.smoothing), smoothing_at=place)

        compiled, compile_s = compile_aot(
            solve_steps, flow_at(EPSILONS[0]), model, problem, size.t1, solver, rtol
        )
        base_steps = None
        for eps in EPSILONS:
            (stats, result, ratio, final_loss), wall = timed(
                compiled, flow_at(eps), model, problem, size.t1, solver, rtol
            )
            accepted = int(stats["num_accepted_steps"])
            steps = int(stats["num_steps"])
            crossings = count_crossings(np.asarray(ratio[:accepted]))
            base_steps = steps if base_steps is None else base_steps
            print(
                f"| {place} | {eps:g} | {steps}{status(result)} | {accepted} "
                f"| {int(stats['num_rejected_steps'])} | {crossings} "
                f"| {steps / max(crossings, 1):.1f} "
                f"| {(steps - base_steps) / max(crossings, 1):.1f} "
                f"| {wall:.2f} | {float(final_loss):.2g} |",
                flush=True,
            )
        print(f"(compile {compile_s:.1f} s for {place})", flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; {load()}")


if __name__ == "__main__":
    main()
