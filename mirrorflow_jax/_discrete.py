"""Discrete optimizers next to the flows (theory §1, §5): an optax transform for ℓ_p steepest
descent, `lax.scan` runners for any optax optimizer, the time map t = η·k and the gap between a
discrete run and a `FlowSolution`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._custom_types import Loss, Params, ScalarLike
from ._flow import checked_decay
from ._geometry import Lp
from ._loss import traced_closure
from ._models import effective_weights
from ._solve import AbstractEscape, FlowSolution
from ._validate import as_float, check_choice, check_int, check_params, check_range, is_concrete

GAP_SPACES = ("x", "params")


def scale_by_steepest(
    q: ScalarLike = 2.0, eps: ScalarLike = 0.0, smoothing: str = "sqrt"
) -> optax.GradientTransformation:
    r"""Map updates leafwise through the steepest map φ_q^ε of `Lp` (stateless).

        u ↦ φ_q^ε(u),    φ_q(u) = sign(u)·|u|^(q−1)

    The identity at q = 2 and ``optax.scale_by_sign`` at q = 1 (ε = 0). The smoothing acts on
    the gradient entries themselves, i.e. it is the *naive* smoothing of `SteepestFlow`.

    **Arguments:** ``q`` in [1, 2]; ``eps`` ≥ 0; ``smoothing`` "sqrt" or "tanh" (see `Lp`).
    Arrays (even traced ones) are fine, so that q and ε can be swept.

    **Returns:** an ``optax.GradientTransformation``.
    """
    geometry = Lp(q, eps, smoothing)
    return optax.stateless(lambda updates, params: geometry(updates))


def _check_learning_rate(learning_rate):
    if not callable(learning_rate):
        check_range("learning_rate", learning_rate, 0.0, lo_open=True)


def _is_zero(value) -> bool:
    return is_concrete(value) and not callable(value) and bool(np.all(np.asarray(value) == 0))


def steepest_descent(
    learning_rate: ScalarLike | optax.Schedule,
    q: ScalarLike = 2.0,
    eps: ScalarLike = 0.0,
    *,
    smoothing: str = "sqrt",
    decoupled_wd: ScalarLike = 0.0,
    weight_decay: ScalarLike | None = None,
) -> optax.GradientTransformation:
    r"""ℓ_p steepest descent with decoupled (AdamW-style) weight decay (docs/theory.md §1):

        θ_{k+1} = θ_k − η·(φ_q^ε(∇F(θ_k)) + α·θ_k)

    the forward-Euler discretization, with time t = η·k, of
    ``SteepestFlow(Lp(q, eps), decoupled_wd=α, smoothing_at="naive")``. At ε = 0 it equals
    ``optax.sgd`` for q = 2 and ``optax.sign_sgd`` for q = 1.

    It is ``optax.chain(scale_by_steepest(q, eps), optax.add_decayed_weights(α),
    optax.scale_by_learning_rate(η))`` (the decay link is left out when α is a literal 0, so
    that ``update`` then needs no ``params``); chain further transforms around it as usual.

    **Arguments:**

    - ``learning_rate``: η > 0, or an optax schedule.
    - ``q``, ``eps``, ``smoothing``: the geometry, as in `Lp`.
    - ``decoupled_wd``: decoupled decay α ≥ 0 (``weight_decay``, its former name, is
      deprecated).

    **Returns:** an ``optax.GradientTransformation``.

    **Example:**

    ```python
    sign_descent = mf.steepest_descent(1e-3, q=1.0)
    model = mf.DeepDiagonal.scaled(0.1, depth=3, dim=1)
    run = mf.run_optimizer(sign_descent, model, mf.ScalarToy(), 500)
    ```
    """
    _check_learning_rate(learning_rate)
    decoupled_wd = checked_decay(decoupled_wd, weight_decay)
    if callable(decoupled_wd):
        raise ValueError("`decoupled_wd` must be a number >= 0 here; got a callable.")
    links = [scale_by_steepest(q, eps, smoothing)]
    if not _is_zero(decoupled_wd):
        links.append(optax.add_decayed_weights(decoupled_wd))
    links.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*links)


# ----------------------------------------------------------------------------- runners


class DiscreteRun(eqx.Module):
    """The result of `run_optimizer` (batched along leading axes when vmapped).

    **Fields:**

    - ``steps``: the saved step indices k, shape (S,).
    - ``params``: the parameters θ_k at ``steps`` (leading axis S).
    - ``x``: effective weights at ``steps``, shape (S, dim) (for plain PyTree params, the
      params themselves, leading axis S).
    - ``loss``: f(x) at ``steps``, shape (S,).
    """

    steps: Int[Array, " S"]
    params: Params
    x: Array
    loss: Float[Array, " S"]


class DiscreteEscape(eqx.Module):
    """The result of `steps_to_escape`.

    **Fields:** ``steps``: the first k whose iterate satisfies the escape condition (the
    budget ``max_steps`` if none did); ``escaped``: whether one did; ``params``: θ at ``steps``.
    """

    steps: Int[Array, ""]
    escaped: Bool[Array, ""]
    params: Params


def _objective(params: Params, loss: Loss) -> Array:
    return loss(effective_weights(params))


def _step(optimizer, loss, params, state):
    """One optimizer step: θ ← θ + update(∇F(θ))."""
    grads = jax.grad(_objective)(params, loss)
    # optax's bias corrections compute β**count with an int32 count, which strict dtype
    # promotion rejects; the loss and its gradient keep the caller's promotion rules
    with jax.numpy_dtype_promotion("standard"):
        updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _save_rows(save_steps, num_steps: int) -> tuple[Int[Array, " K"], Int[Array, " S"]]:
    """For each step k = 1..K the buffer row that θ_k goes to (the first slot whose save step
    is k, or the scratch row S for steps that are not saved), and each slot's first slot with
    the same step. K integers of memory buy a single row write as the only per-step cost."""
    num_saves = save_steps.shape[0]
    first = jnp.searchsorted(save_steps, save_steps, side="left", method="scan_unrolled")
    rows = jnp.full(num_steps + 1, num_saves, dtype=save_steps.dtype)
    return rows.at[save_steps].set(first.astype(save_steps.dtype))[1:], first


@eqx.filter_jit
def _run(optimizer, params0, loss, num_steps, save_steps):
    rows, first = _save_rows(save_steps, num_steps)

    def body(carry, row):
        params, state, saved = carry
        params, state = _step(optimizer, loss, params, state)
        saved = jax.tree.map(lambda b, p: b.at[row].set(p), saved, params)
        return (params, state, saved), None

    # one row per save step plus a scratch row, all starting at θ_0 (right for steps equal to 0)
    shape = (save_steps.shape[0] + 1,)
    saved = jax.tree.map(lambda p: jnp.broadcast_to(p, shape + p.shape), params0)
    (_, _, saved), _ = jax.lax.scan(body, (params0, optimizer.init(params0), saved), rows)
    params = jax.tree.map(lambda b: b[first], saved)
    x = jax.vmap(effective_weights)(params)
    return DiscreteRun(steps=save_steps, params=params, x=x, loss=jax.vmap(loss)(x))


def _check_problem(optimizer, params0, loss):
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            "`optimizer` must be an optax.GradientTransformation (e.g. optax.adam(1e-3) or "
            f"steepest_descent(1e-3, q=1.0)); got {type(optimizer).__name__}."
        )
    if not callable(loss):
        raise ValueError("`loss` must be a callable f(x) -> scalar (e.g. LeastSquares).")
    check_params("params0", params0)


def _as_save_steps(save_steps, num_steps: int) -> Int[Array, " S"]:
    if save_steps is None:
        save_steps = [0, num_steps]
    steps = jnp.atleast_1d(jnp.asarray(save_steps))
    if steps.ndim != 1 or not steps.size or not jnp.issubdtype(steps.dtype, jnp.integer):
        raise ValueError(
            "`save_steps` must be a non-empty 1-d array of integer step indices; got dtype "
            f"{steps.dtype} and shape {steps.shape}."
        )
    if is_concrete(steps):
        values = np.asarray(steps)
        if values.min() < 0 or values.max() > num_steps or np.any(np.diff(values) < 0):
            raise ValueError(
                f"`save_steps` must be non-decreasing and lie in [0, num_steps] = "
                f"[0, {num_steps}]; got values in [{values.min()}, {values.max()}]."
            )
    return steps.astype(jnp.result_type(int))


def run_optimizer(
    optimizer: optax.GradientTransformation,
    params0: Params,
    loss: Loss,
    num_steps: int,
    *,
    save_steps: ArrayLike | None = None,
) -> DiscreteRun:
    r"""Run an optax optimizer on F(θ) = f(x(θ)) for ``num_steps`` steps in one ``lax.scan``.

        g_k = ∇F(θ_k),  (u_k, s_{k+1}) = optimizer.update(g_k, s_k, θ_k),  θ_{k+1} = θ_k + u_k

    saving θ_k at the steps k in ``save_steps``. Compare with a flow at the times t = η·k
    (`step_times`, `trajectory_gap`).

    **Arguments:**

    - ``optimizer``: any ``optax.GradientTransformation`` (`steepest_descent`, ``optax.adam``,
      ``optax.adamw``, chains, …).
    - ``params0``: a toolkit model (`DeepDiagonal`, …) or any PyTree of floating arrays.
    - ``loss``: f(x) of the effective weights (as in `solve_flow`: a closure's captured JAX
      arrays are traced, so a new closure over new data does not recompile).
    - ``num_steps``: the number of steps K ≥ 1 (static: one compilation per value).
    - ``save_steps``: non-decreasing integer steps in [0, K] (default (0, K)); an array, which
      may be traced, e.g. ``steps_at_times(ts, lr)`` under ``vmap`` over lr.

    **Returns:** a `DiscreteRun`. Besides the saved iterates the run holds one integer per
    step (which buffer row each step writes), so the only per-step cost is one row write; the
    scan is reverse-mode differentiable.

    **Sweeps:** build the optimizer from array hyperparameters inside the mapped function, so
    that one compilation serves every value:

    ```python
    import optax

    model, problem = mf.DeepDiagonal.scaled(0.1, depth=2, dim=3), mf.ScalarToy()

    def final_loss(lr):
        return mf.run_optimizer(optax.adam(lr), model, problem, 100).loss[-1]

    losses = jax.vmap(final_loss)(jnp.logspace(-4, -2, 8))  # one compilation
    ```
    """
    check_int("num_steps", num_steps, 1)
    _check_problem(optimizer, params0, loss)
    loss = traced_closure(loss)
    return _run(optimizer, params0, loss, num_steps, _as_save_steps(save_steps, num_steps))


@eqx.filter_jit
def _escape(optimizer, params0, loss, escape, max_steps):
    value0 = _objective(params0, loss)

    def escaped(params):
        x = effective_weights(params)
        return escape(x, loss(x), value0) <= 0

    def cond(carry):
        k, params, _ = carry
        return (k < max_steps) & ~escaped(params)

    def body(carry):
        k, params, state = carry
        params, state = _step(optimizer, loss, params, state)
        return k + 1, params, state

    k0 = jnp.asarray(0, jnp.result_type(int))
    k, params, _ = jax.lax.while_loop(cond, body, (k0, params0, optimizer.init(params0)))
    return DiscreteEscape(steps=k, escaped=escaped(params), params=params)


def steps_to_escape(
    optimizer: optax.GradientTransformation,
    params0: Params,
    loss: Loss,
    escape: AbstractEscape,
    *,
    max_steps: int,
) -> DiscreteEscape:
    r"""The number of optimizer steps until the escape condition holds (docs/theory.md §5).

    Counts the first k with ``escape(x_k, f(x_k), f(x_0)) ≤ 0`` (e.g. `LossBelow`,
    `NormAbove`), stopping there or at ``max_steps``. The discrete counterpart of a flow's
    ``event_time``: a method whose flow escapes at time T needs about T/η steps. Vmappable
    over hyperparameters like `run_optimizer` (the batch runs until all its members stop).

    **Arguments:** ``optimizer``, ``params0``, ``loss`` as in `run_optimizer`; ``escape``
    an `AbstractEscape`; ``max_steps`` ≥ 1, the budget.

    **Returns:** a `DiscreteEscape`.

    **Example:**

    ```python
    import optax

    model = mf.DeepDiagonal.scaled(0.1, depth=3, dim=1)
    escape = mf.NormAbove(0.5)
    gd = mf.steps_to_escape(optax.sgd(1e-1), model, mf.ScalarToy(), escape, max_steps=10**4)
    ```
    """
    check_int("max_steps", max_steps, 1)
    _check_problem(optimizer, params0, loss)
    if not isinstance(escape, AbstractEscape):
        raise ValueError(
            "`escape` must be an AbstractEscape such as LossBelow or NormAbove; got "
            f"{type(escape).__name__}."
        )
    return _escape(optimizer, params0, traced_closure(loss), escape, max_steps)


# ----------------------------------------------------------------------------- time map


def step_times(steps: ArrayLike, learning_rate: ScalarLike) -> Array:
    """The flow times t = η·k of optimizer steps k (docs/theory.md §1).

    **Arguments:** ``steps`` integer array of step indices k; ``learning_rate`` η > 0.
    **Returns:** a float array shaped like ``steps``.
    """
    check_range("learning_rate", learning_rate, 0.0, lo_open=True)
    lr = as_float(learning_rate)
    return jnp.asarray(steps).astype(lr.dtype) * lr


def steps_at_times(ts: ArrayLike, learning_rate: ScalarLike) -> Int[Array, "..."]:
    """The steps k = round(t/η) nearest to flow times ``ts`` (the inverse of `step_times`).

    **Arguments:** ``ts`` times ≥ 0; ``learning_rate`` η > 0. **Returns:** an integer array
    shaped like ``ts``.
    """
    check_range("learning_rate", learning_rate, 0.0, lo_open=True)
    check_range("ts", ts, 0.0)
    return jnp.round(as_float(ts) / as_float(learning_rate)).astype(jnp.result_type(int))


def _check_aligned(run: DiscreteRun, sol: FlowSolution, learning_rate):
    if run.steps.shape != sol.ts.shape:
        raise ValueError(
            f"`run` saved {run.steps.shape} steps but `sol` saved {sol.ts.shape} times; save "
            "the flow at step_times(run.steps, learning_rate)."
        )
    if not is_concrete((run.steps, sol.ts, learning_rate)):
        return
    lr = float(learning_rate)
    mismatch = np.max(np.abs(np.asarray(run.steps) * lr - np.asarray(sol.ts)), initial=0.0)
    if not mismatch <= 0.5 * lr * (1 + 1e-9):
        raise ValueError(
            f"`sol.ts` must equal η·run.steps to within η/2 = {0.5 * lr:g} (η = learning_rate); "
            f"they differ by up to {mismatch:g}. Save the flow at step_times(run.steps, η)."
        )


def _max_abs_diff(a, b) -> Array:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(u - v)) for u, v in zip(a, b, strict=True)]))


def trajectory_gap(
    run: DiscreteRun, sol: FlowSolution, learning_rate: ScalarLike, *, space: str = "x"
) -> Float[Array, ""]:
    r"""The largest distance between a discrete run and a flow at matching times t_j = η·k_j:

        gap = max_j ‖z_{k_j} − z(t_j)‖_∞,    z = x (effective weights) or θ (all parameters)

    where ‖·‖_∞ runs over every entry of every leaf (for plain PyTree parameters x is θ).

    For a consistent one-step method (GD ↔ GF, sign descent ↔ SignGF, Adam ↔ the Adam ODE) the
    gap over a fixed time horizon is O(η).

    **Arguments:**

    - ``run``: a `DiscreteRun`; ``sol``: a `FlowSolution` saved at ``step_times(run.steps,
      learning_rate)`` (times may differ from η·k by at most η/2).
    - ``learning_rate``: η.
    - ``space``: ``"x"`` (default) or ``"params"``.

    **Returns:** the gap, a scalar.

    **Example:**

    ```python
    import optax

    model, problem, lr = mf.DeepDiagonal.scaled(0.5, depth=2, dim=1), mf.ScalarToy(), 1e-2
    steps = jnp.array([0, 100, 200])
    run = mf.run_optimizer(optax.sgd(lr), model, problem, 200, save_steps=steps)
    saveat = mf.step_times(steps, lr)
    sol = mf.solve_flow(mf.SteepestFlow(), model, problem, 200 * lr, saveat=saveat)
    gap = mf.trajectory_gap(run, sol, lr)  # O(lr)
    ```
    """
    check_range("learning_rate", learning_rate, 0.0, lo_open=True)
    check_choice("space", space, GAP_SPACES)
    _check_aligned(run, sol, learning_rate)
    run_z, sol_z = (run.x, sol.x) if space == "x" else (run.params, sol.params)
    if jax.tree.structure(run_z) != jax.tree.structure(sol_z):
        raise ValueError(
            f"`run` and `sol` must hold the same kind of {space!r}: got PyTrees of structure "
            f"{jax.tree.structure(run_z)} and {jax.tree.structure(sol_z)}."
        )
    return _max_abs_diff(jax.tree.leaves(run_z), jax.tree.leaves(sol_z))
