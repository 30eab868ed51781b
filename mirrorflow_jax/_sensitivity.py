"""How a regularized flow's endpoint and implicit bias move with the smoothing scale ε, and how
often its parameter entries enter and leave the smoothing layer."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree
from jaxtyping import ArrayLike

from ._custom_types import Loss, Params, ScalarLike
from ._flow import SteepestFlow
from ._models import AbstractReparam
from ._solve import DEFAULT_CONTROLLER, solve_flow
from ._solver.auto import choose_solver
from ._solver.stiffness import StiffnessCheck
from ._validate import as_float, check_range


def eps_sensitivity(
    flow: SteepestFlow,
    params0: Params,
    loss: Loss,
    t1: ScalarLike,
    eps: ArrayLike,
    **solve_kwargs,
) -> xr.Dataset:
    r"""Solve one configuration at several smoothing scales ε and compare the endpoints.

    The flow dθ/dt = −φ_q^ε(∇F) − α θ is solved from ``params0`` to ``t1`` once per ε (one
    compiled ``lax.map`` over ε). Unless ``solver=`` is given, one solver serves every ε:
    ``solver="auto"``'s choice for the smallest ε, the stiffest (`SignFlowKvaerno3` for the
    sign flow where it applies: its cost stays bounded as ε → 0, and it passes factors that
    collapse to 0, where `Rodas4` chatters or stalls; `Rodas4` for other q < 2). Its Newton
    test takes the tolerances of the ``stepsize_controller`` (default `solve_flow`'s). The
    choice is reported in the
    ``solver`` attribute; see ``ok`` for solves that ran out of steps. Reported per
    ε: the endpoint x_ε(t1), its loss, ‖x_ε‖₁ and ‖x_ε‖₂ (the implicit-bias norms), and
    ‖x_ε − x_ε₀‖_∞ against the smallest ε₀ — the closest to the unregularized flow.

    **Arguments:** ``flow`` a `SteepestFlow` (its own ε is replaced); ``params0``, ``loss``,
    ``t1`` as in `solve_flow`; ``eps`` a 1-d array of ε > 0; ``solve_kwargs`` any other
    keyword of `solve_flow` (``saveat`` is fixed to the endpoint).

    **Returns:** an ``xarray.Dataset`` with coordinates ``eps`` and ``coordinate``.
    """
    if not isinstance(flow, SteepestFlow):
        raise ValueError(f"`flow` must be a SteepestFlow; got {type(flow).__name__}.")
    eps = np.atleast_1d(np.asarray(eps, dtype=float))
    if eps.ndim != 1 or eps.size == 0:
        raise ValueError(f"`eps` must be a non-empty 1-d array; got shape {eps.shape}.")
    check_range("eps", eps, 0.0, lo_open=True)
    if "saveat" in solve_kwargs:
        raise ValueError("`saveat` is fixed to the endpoint by `eps_sensitivity`; drop it.")
    solver = solve_kwargs.get("solver")
    if solver is None or (isinstance(solver, str) and solver == "auto"):
        # The choice for the smallest ε, which is the stiffest: one solver for every ε.
        smallest = eqx.tree_at(lambda f: f.geometry.eps, flow, float(eps.min()))
        controller = solve_kwargs.get("stepsize_controller") or DEFAULT_CONTROLLER
        (solve_kwargs["solver"],) = choose_solver(smallest, params0, loss, controller).solvers

    def endpoint(e):
        flow_e = eqx.tree_at(lambda f: f.geometry.eps, flow, e)
        sol = solve_flow(flow_e, params0, loss, t1, **solve_kwargs)
        return sol.x[-1], sol.loss[-1], sol.num_steps, sol.ok

    x, final_loss, steps, ok = jax.lax.map(endpoint, as_float(eps))
    x = np.asarray(x)
    reference = x[np.argmin(eps)]
    return xr.Dataset(
        {
            "x_final": (("eps", "coordinate"), x),
            "loss_final": ("eps", np.asarray(final_loss)),
            "l1_norm": ("eps", np.abs(x).sum(axis=1)),
            "l2_norm": ("eps", np.sqrt((x * x).sum(axis=1))),
            "distance_to_smallest_eps": ("eps", np.abs(x - reference).max(axis=1)),
            "num_steps": ("eps", np.asarray(steps)),
            "ok": ("eps", np.asarray(ok)),
        },
        coords={"eps": eps, "coordinate": np.arange(x.shape[1])},
        attrs={
            "q": float(jnp.asarray(flow.geometry.q)),
            "smoothing": flow.geometry.smoothing,
            "smoothing_at": flow.smoothing_for(params0),
            "t1": float(t1),
            "solver": _solver_name(solve_kwargs["solver"]),
        },
    )


def _solver_name(solver) -> str:
    return type(solver.solver if isinstance(solver, StiffnessCheck) else solver).__name__


@eqx.filter_jit
def _scaled_gradients(flow: SteepestFlow, params: Params, loss: Loss) -> jax.Array:
    """`SteepestFlow.scaled_gradient` at each saved state, raveled: shape (T, entries)."""
    return jax.vmap(lambda p: ravel_pytree(flow.scaled_gradient(p, loss))[0])(params)


def _layer_states(ratio: np.ndarray, inside: float = 1.0, outside: float = 3.0) -> np.ndarray:
    """Each column's layer state at each row of ``ratio`` (rows in time order): 1 inside,
    −1 outside, 0 not yet known.

    A column is *inside* once |r| < ``inside`` and *outside* once |r| > ``outside``; between
    the two it keeps its last state (hysteresis, so noise at the layer's edge does not flip
    it). NaN entries keep the state as it is.
    """
    ratio = np.abs(np.asarray(ratio, dtype=float))
    states = np.zeros(ratio.shape, dtype=np.int8)
    state = np.zeros(ratio.shape[1], dtype=np.int8)
    for row, values in enumerate(ratio):
        state = np.where(values < inside, 1, np.where(values > outside, -1, state))
        states[row] = state
    return states


def _count_transitions(states: np.ndarray):
    """Entries (outside → inside) and exits (inside → outside) per column of `_layer_states`;
    reaching a first state is not a transition.

    **Returns:** ``(entries, exits, first_entry, inside_at_end)``: counts per column, the row
    index of each column's first entry (−1 if none) and whether it ends inside.
    """
    entering = (states[1:] == 1) & (states[:-1] == -1)
    exiting = (states[1:] == -1) & (states[:-1] == 1)
    first_entry = np.where(entering.any(axis=0), entering.argmax(axis=0) + 1, -1)
    return entering.sum(axis=0), exiting.sum(axis=0), first_entry, states[-1] == 1


def layer_transitions(
    flow: SteepestFlow,
    loss: Loss,
    ts: ArrayLike,
    params: Params,
    *,
    inside: float = 1.0,
    outside: float = 3.0,
    timeline: bool = False,
) -> xr.Dataset:
    r"""Count how often each parameter entry of a saved trajectory enters and leaves the
    smoothing layer of a regularized flow.

    Entry i is in the layer where its scaled gradient r_i = (∂F/∂w_i)/(its smoothing scale)
    (`SteepestFlow.scaled_gradient`) is small: there φ^ε is far from ±1 and, at q = 1, the
    entry slides instead of moving at full speed. Each entry and exit is a velocity kink of
    the ε → 0 flow that a solver has to resolve on a time scale ≈ ε/|dg/dt|, so these counts
    explain how the cost of a solve grows as ε shrinks (benchmarks/README.md). Counting uses
    hysteresis: inside once |r| < ``inside``, outside once |r| > ``outside``.

    Only saved states are seen: a visit shorter than the spacing of ``ts`` is missed. Save
    every accepted step (``saveat=diffrax.SaveAt(steps=True)`` in `solve_flow`) to see all
    the ones the solver resolved.

    **Arguments:** ``flow`` the `SteepestFlow` that was solved; ``loss`` f(x); ``ts`` save
    times, shape (T,), non-finite ones (unused slots of a `FlowSolution`) dropped together
    with their states; ``params`` the parameter PyTree at ``ts`` (leading axis T), e.g.
    ``sol.ts, sol.params`` of an unbatched `FlowSolution`; ``inside`` > 0 and ``outside`` >
    ``inside`` the thresholds on |r|; ``timeline`` whether to also return each entry's state
    at each kept save time (T × entries booleans: leave it off for long solves of large
    models).

    **Returns:** an ``xarray.Dataset`` over the raveled parameter entries (dim ``entry``,
    with the coordinate j of x each entry belongs to for toolkit models) with ``entries``,
    ``exits``, ``first_entry_time`` (nan if never) and ``inside_at_end``; with ``timeline``
    also ``inside`` over (``time``, ``entry``), True where the entry is in the layer (before
    its first |r| < ``inside`` or > ``outside`` it counts as outside).

    **Example:**

    ```python
    import diffrax
    import jax
    import mirrorflow_jax as mf

    jax.config.update("jax_enable_x64", True)
    problem = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=3)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=20)
    flow = mf.SteepestFlow(mf.Lp(1.0, eps=1e-6))
    sol = mf.solve_flow(
        flow, model, problem, 5.0, solver=mf.SignFlowKvaerno3(),
        saveat=diffrax.SaveAt(steps=True), max_steps=20_000,
    )
    events = mf.layer_transitions(flow, problem, sol.ts, sol.params)
    print(int(events.entries.sum()), int(events.exits.sum()))
    ```
    """
    if not isinstance(flow, SteepestFlow):
        raise ValueError(f"`flow` must be a SteepestFlow; got {type(flow).__name__}.")
    check_range("inside", inside, 0.0, lo_open=True)
    check_range("outside", outside, inside, lo_open=True)
    ts = np.asarray(ts, dtype=float)
    if ts.ndim != 1:
        raise ValueError(
            f"`ts` must be 1-d (one trajectory; index a batched solution first); got shape "
            f"{ts.shape}."
        )
    keep = np.isfinite(ts)
    if keep.sum() < 2:
        raise ValueError(f"need at least 2 finite save times in `ts`; got {int(keep.sum())}.")
    leaves = jax.tree.leaves(params)
    if any(np.shape(leaf)[:1] != ts.shape for leaf in leaves):
        raise ValueError(
            f"every leaf of `params` needs leading axis {ts.size} (one state per time in `ts`)."
        )
    kept = jax.tree.map(lambda leaf: leaf[np.flatnonzero(keep)], params)
    ratio = np.asarray(_scaled_gradients(flow, kept, loss))
    states = _layer_states(ratio, inside, outside)
    entries, exits, first_entry, inside_at_end = _count_transitions(states)
    times = ts[keep]
    coords = {"entry": np.arange(ratio.shape[1])}
    first = jax.tree.map(lambda leaf: leaf[0], kept)
    if isinstance(first, AbstractReparam):
        coords["coordinate"] = ("entry", coords["entry"] % first().shape[0])
    variables = {
        "entries": ("entry", entries),
        "exits": ("entry", exits),
        "first_entry_time": ("entry", np.where(first_entry >= 0, times[first_entry], np.nan)),
        "inside_at_end": ("entry", inside_at_end),
    }
    if timeline:
        variables["inside"] = (("time", "entry"), states == 1)
        coords["time"] = times
    return xr.Dataset(
        variables,
        coords=coords,
        attrs={
            "inside_threshold": float(inside),
            "outside_threshold": float(outside),
            "eps": float(jnp.asarray(flow.geometry.eps)),
            "smoothing_at": flow.smoothing_for(first),
            "num_saves": int(keep.sum()),
        },
    )
