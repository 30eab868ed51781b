"""SignFlowKvaerno3: the ESDIRK solver with a Newton iteration in the velocity.

Independent references: scipy's Radau at rtol 1e-10 (exact Jacobian) on the same regularized
field, `Rodas4` (a different method) at tight tolerances, forward Euler and discrete sign
descent, central finite differences, and the convergence order under constant steps.

Compilation dominates this file's time, so its solves share a few compiled programs. `_solve`
is the one tight setup (tolerances, `SAVES` save times ending at t1, `MAX_STEPS`): solves that
differ only in values (t1, ε, β's value, the init, data of the same shapes) reuse one program.
What stays static is the model's type and depth, the loss's type and shapes, the smoothing
kind and placement, the decay's kind, and whether a concrete β is 0 (one velocity per
coordinate) or not (one per factor entry). The problems are sized to land on shared programs:
signed models on 8 coordinates under a 5×8 regression (`_regression`), and 20 coordinates
under a 10×20 one at the default tolerances (`_default_endpoint`).
"""

import functools
import json
import os
import subprocess
import sys

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mirrorflow_jax as mf
from mirrorflow_jax._solver.rows import linearized_rows, rows as _rows, unrows as _unrows
from mirrorflow_jax._solver.stages import entry_argument as _entry_argument

from .helpers import positive_signed_model, radau_reference, small_regression

TIGHT_SOLVER = mf.SignFlowKvaerno3(rtol=1e-10, atol=1e-12)
TIGHT = diffrax.PIDController(rtol=1e-10, atol=1e-12)
SAVES = 30  # at t1 = 3: every 0.1
MAX_STEPS = 200_000
DIM = 8


def _regression(seed=1, k=2):
    """The 5×8 regression (the seed and k change values only: one compiled program)."""
    return small_regression(seed=seed, n=5, d=DIM, k=k)


def _save_times(t1):
    return jnp.linspace(t1 / SAVES, t1, SAVES)


def _solve(flow, model, loss, t1, solver=TIGHT_SOLVER):
    """The tight solve with `SAVES` save times t1/SAVES, …, t1 (one static setup for all)."""
    return mf.solve_flow(
        flow,
        model,
        loss,
        t1,
        saveat=_save_times(t1),
        solver=solver,
        stepsize_controller=TIGHT,
        max_steps=MAX_STEPS,
    )


class _Decay(eqx.Module):
    rate: jax.Array

    def __call__(self, t):
        return self.rate * (1 + jnp.sin(t))


def _positive_deep(seed, depth, dim):
    return mf.DeepDiagonal(0.3 + 0.5 * jax.random.uniform(jax.random.key(seed), (depth, dim)))


def _placement(placement):
    """``smoothing_at`` for a placement: "auto" (structured for these separable models) for
    the structured one, as in the other tests (the field is static: "structured" spelled
    out would compile programs of its own)."""
    return "naive" if placement == "naive" else "auto"


CASES = [
    # (model, smoothing kind, eps, decoupled decay, loss, placement, coupled decay β)
    ("signed", "sqrt", 1e-4, "none", "squares", "structured", 0.0),
    ("signed", "tanh", 1e-3, "constant", "squares", "structured", 0.0),
    ("deep", "sqrt", 1e-3, "schedule", "logistic", "structured", 0.0),
    # The naive placement: one velocity per factor entry, coupled decay allowed.
    ("signed", "sqrt", 1e-4, "none", "squares", "naive", 0.0),
    ("signed", "tanh", 1e-3, "constant", "squares", "naive", 0.02),
    ("deep", "sqrt", 1e-3, "schedule", "logistic", "naive", 0.01),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_radau_reference(case):
    """Each case is its own static setup (one program each; the signed sqrt ones are shared
    with the Rodas4 and gradient tests below)."""
    kind, smoothing, eps, decay_kind, loss_kind, placement, coupled = case
    if loss_kind == "squares":
        loss = _regression(seed=4, k=3)
    else:
        loss = mf.sparse_classification(jax.random.key(3), n=5, d=6, k=2, loss="logistic")
    decay = {"none": 0.0, "constant": 0.05, "schedule": _Decay(jnp.asarray(0.05))}[decay_kind]
    flow = mf.SteepestFlow(
        mf.Lp(1.0, eps, smoothing),
        decoupled_wd=decay,
        coupled_wd=coupled,
        smoothing_at=_placement(placement),
    )
    model = positive_signed_model(7, 3, DIM) if kind == "signed" else _positive_deep(7, 2, 6)
    assert flow.smoothing_for(model) == placement
    sol = _solve(flow, model, loss, 8.0)
    assert bool(sol.ok)
    reference = radau_reference(flow, model, loss, _save_times(8.0))
    scale = np.maximum(np.abs(reference), 1.0)
    assert np.max(np.abs(np.asarray(sol.x) - reference) / scale) <= 1e-6


@pytest.mark.parametrize("placement", ["structured", "naive"])
def test_agrees_with_rodas4_at_small_eps(placement):
    """ε = 1e-6 on the depth-3 signed model: the sign flow reaches the minimum through many
    layer entries; both methods at tight tolerances end within 1e-6 of each other."""
    loss = _regression(seed=2)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=DIM)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-6), smoothing_at=_placement(placement))
    assert flow.smoothing_for(model) == placement
    runs = [_solve(flow, model, loss, 20.0, solver) for solver in (TIGHT_SOLVER, mf.Rodas4())]
    assert all(bool(run.ok) for run in runs)
    # The naive flow slows near the minimum (an entry with |∂F/∂w_i| ≲ ε moves at about
    # |∂F/∂w_i|/ε), so by t = 20 it is at 1.1e-11, not at the structured flow's 1e-30.
    assert float(runs[0].loss[-1]) < (1e-20 if placement == "structured" else 1e-10)
    assert np.max(np.abs(np.asarray(runs[0].x - runs[1].x))) <= 1e-6


@functools.partial(eqx.filter_jit)
def _euler_path(flow, model, loss, saves, per_save, step):
    """x after every ``per_save`` forward Euler steps of ``step``, ``saves`` times."""

    def save(params, _):
        def one(params, _):
            velocity = flow(0.0, params, loss)
            return jax.tree.map(lambda w, v: w + step * v, params, velocity), None

        params, _ = jax.lax.scan(one, params, None, length=per_save)
        return params, params()

    return jax.lax.scan(save, model, None, length=saves)[1]


def _forward_euler(flow, model, loss, ts, step=1e-5):
    """Forward Euler on the same field with a constant step, x at ``ts`` (multiples of 0.1).
    At a Filippov sliding point it chatters within one step of 0; equal factors get
    bitwise-equal updates, so a balanced part stays balanced and grows again, with equal
    factors, when the gradient turns (the continuation `SignFlowKvaerno3` takes). One compiled
    program per model and flow structure (β, ε, the data are values)."""
    per_save, saves = round(0.1 / step), round(float(ts[-1]) / 0.1)
    every = np.asarray(_euler_path(flow, model, loss, saves, per_save, step))
    return every[np.rint(np.asarray(ts) / 0.1).astype(int) - 1]


@pytest.mark.parametrize(
    "depth, beta, unknowns",
    [(2, 0.0, "auto"), (4, 0.0, "auto"), (4, 0.0, "entry"), (2, 0.05, "auto"), (3, 0.05, "auto")],
)
def test_collapse_matches_forward_euler(depth, beta, unknowns):
    """From the balanced init the factors of a shrinking part reach 0 together; at even depth
    sign(∂x/∂w) flips with them, and with coupled decay β the term β·w_i/|∂x/∂w_i| does at
    any depth: a Filippov sliding point of the structure-preserving flow, at which `Rodas4`
    stalls. The solver parks them at 0 and restarts them when the velocity turns (one
    velocity per coordinate, or per entry as with β > 0); forward Euler (step 1e-5, O(step)
    error) on the same field follows the same path."""
    loss = _regression()
    model = mf.SignedDeepDiagonal.scaled(0.3, depth=depth, dim=DIM)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2), coupled_wd=beta)
    solver = mf.SignFlowKvaerno3(rtol=1e-10, atol=1e-12, unknowns=unknowns)
    sol = _solve(flow, model, loss, 3.0, solver)
    assert bool(sol.ok)
    # (time, part, coordinate): every factor of the part at 0
    at_rest = np.stack(
        [np.all(np.asarray(p) == 0, axis=1) for p in (sol.params.u, sol.params.v)], axis=1
    )
    assert at_rest.any(), "no part collapsed: the test does not exercise parking"
    if depth == 4 and beta == 0:
        # Parts that rested and grew again, to a size above any noise: at depth 4 on this
        # problem four do (to 0.05–0.36). At depth 2 none does: its resting parts only move
        # near the minimum, on the rounding-level gradient, to about 1e-13 (which an earlier
        # form of this check counted); restarts from α = 0 are tested below.
        rested = at_rest.any(axis=0)  # (part, coordinate)
        size = np.max(np.abs(np.stack([sol.params.u[-1], sol.params.v[-1]])), axis=1)
        assert np.any(rested & (size > 1e-3)), "no parked part grew again"
    reference = _forward_euler(flow, model, loss, _save_times(3.0))
    assert np.max(np.abs(np.asarray(sol.x) - reference)) <= 1e-4


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_square_diff_collapse_matches_forward_euler(beta):
    """x = u⊙u − v⊙v: ∂x/∂u = 2u flips with u itself, so a shrinking u reaches 0 and is held
    there (without decay as with it); the solver parks it, as forward Euler does."""
    loss = _regression()
    model = mf.SquareDiff.scaled(0.3, dim=DIM)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2), coupled_wd=beta)
    sol = _solve(flow, model, loss, 3.0)
    assert bool(sol.ok)
    factors = np.concatenate([np.asarray(sol.params.u), np.asarray(sol.params.v)], axis=1)
    assert np.any(factors == 0), "no factor parked: the test does not exercise parking"
    reference = _forward_euler(flow, model, loss, _save_times(3.0))
    assert np.max(np.abs(np.asarray(sol.x) - reference)) <= 1e-4


@pytest.mark.parametrize("depth", [2, 4])
def test_collapse_continuation_is_the_limit_of_sign_descent(depth):
    """Discrete sign descent (ε = 0) from the balanced init keeps equal factors equal through
    the collapse: as η shrinks its iterates at t = η·k approach the solver's ε = 1e-6 path
    (measured max |Δx| 2.4e-2 / 2.1e-3 at depth 2 and 7.5e-2 / 2.5e-3 at depth 4, for
    η = 1e-3 / 1e-4)."""
    loss = _regression()
    model = mf.SignedDeepDiagonal.scaled(0.3, depth=depth, dim=DIM)
    sol = _solve(mf.SteepestFlow(mf.Lp(1.0, 1e-6)), model, loss, 3.0)
    assert bool(sol.ok)
    ts = np.array([0.5, 1.0, 2.0, 3.0])
    at = np.rint(ts / 0.1).astype(int) - 1  # among the save times 0.1, 0.2, …, 3
    np.testing.assert_allclose(np.asarray(sol.ts)[at], ts, rtol=1e-12)
    path = np.asarray(sol.x)[at]

    def gap(eta):
        steps = [round(float(t) / eta) for t in ts]
        run = mf.run_optimizer(
            mf.steepest_descent(eta, q=1.0), model, loss, steps[-1], save_steps=steps
        )
        return float(np.max(np.abs(np.asarray(run.x) - path)))

    coarse, fine = gap(1e-3), gap(1e-4)
    assert fine <= 5e-3
    assert fine <= coarse / 5


@pytest.mark.parametrize("kind", ["signed", "deep"])
def test_coupled_decay_structured_matches_forward_euler(kind):
    """Coupled decay with the structure-preserving placement (one velocity per factor entry)
    from unbalanced factors, through collapses: on the signed model factors of a part reach 0
    together by t = 0.4 and are parked (scipy's Radau stops at such a collapse: "step size
    less than spacing"). Forward Euler (step 1e-5) agrees to O(step): measured 9.8e-6 (signed)
    and 3.7e-5 (deep)."""
    if kind == "signed":
        loss = _regression(seed=4, k=3)
        model = positive_signed_model(7, 3, DIM)
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), decoupled_wd=0.05, coupled_wd=0.02)
    else:
        loss = mf.sparse_classification(jax.random.key(3), n=5, d=6, k=2, loss="logistic")
        model = _positive_deep(7, 2, 6)
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), coupled_wd=0.01)
    sol = _solve(flow, model, loss, 3.0)
    assert bool(sol.ok)
    reference = _forward_euler(flow, model, loss, _save_times(3.0))
    assert np.max(np.abs(np.asarray(sol.x) - reference)) <= 1e-4


def test_vmap_over_coupled_decay_equals_single_solves():
    """A swept (traced) β with ``unknowns="entry"``: one velocity per factor entry, which at
    β = 0 is the same flow as the per-coordinate solve that a concrete β = 0 gets; every
    member agrees with its single solve to the tolerance."""
    loss = _regression(seed=6, k=3)
    model = mf.SignedDeepDiagonal.scaled(0.3, depth=3, dim=DIM)
    per_entry = mf.SignFlowKvaerno3(rtol=1e-10, atol=1e-12, unknowns="entry")

    def endpoint(beta, solver=TIGHT_SOLVER):
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), coupled_wd=beta)
        sol = _solve(flow, model, loss, 5.0, solver)
        return sol.x[-1], sol.ok

    betas = (0.0, 0.02)
    batched, batched_ok = jax.jit(jax.vmap(lambda b: endpoint(b, per_entry)))(jnp.array(betas))
    assert bool(batched_ok.all())
    for i, beta in enumerate(betas):
        single, ok = endpoint(beta)
        assert bool(ok)
        np.testing.assert_allclose(batched[i], single, rtol=1e-8, atol=1e-9, err_msg=beta)


@pytest.mark.parametrize("depth, beta", [(2, 0.0), (3, 0.0), (3, 0.05)])
def test_padded_model_equals_unpadded(depth, beta):
    """A depth-L model padded to depth 4 (a sweep over depth) takes the same path as the
    unpadded one: its padding rows (zeros with ∂x/∂w = 0, like a part resting at 0) are never
    restarted, parked or moved."""
    loss = _regression()
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2), coupled_wd=beta)
    plain = mf.SignedDeepDiagonal.scaled(0.3, depth=depth, dim=DIM)
    padded = mf.Padded(mf.SignedDeepDiagonal.scaled(0.3, depth=4, dim=DIM), depth)
    runs = [_solve(flow, model, loss, 3.0) for model in (plain, padded)]
    assert all(bool(run.ok) for run in runs)
    assert np.all(np.asarray(runs[1].params.model.u[-1, depth:]) == 0)
    assert np.max(np.abs(np.asarray(runs[0].x[-1] - runs[1].x[-1]))) <= 1e-9


def _crossing_model():
    base = mf.SignedDeepDiagonal.scaled(0.3, depth=2, dim=DIM)
    return mf.SignedDeepDiagonal(base.u.at[0].multiply(1.05), base.v.at[1].multiply(1.05))


def test_unbalanced_crossing_is_not_parked():
    """5% off balance, the factors of a part cross 0 one after the other (transversally):
    nothing is parked, and the solve agrees with `Rodas4` at tight tolerances."""
    loss = _regression()
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2))
    runs = [_solve(flow, _crossing_model(), loss, 3.0, s) for s in (TIGHT_SOLVER, mf.Rodas4())]
    assert all(bool(run.ok) for run in runs)
    crossed = np.asarray(runs[0].params.u[-1]) < 0
    assert crossed.any(), "no factor crossed 0: the test does not exercise a crossing"
    assert np.max(np.abs(np.asarray(runs[0].x - runs[1].x))) <= 1e-8


@pytest.mark.parametrize("depth, beta", [(2, 0.0), (3, 0.0), (2, 0.3), (3, 0.3)])
def test_leaves_the_origin_like_a_vanishing_init(depth, beta):
    """All factors 0 is an equilibrium of the field (∂x/∂w = 0); the solver continues it as the
    limit of the balanced init α → 0: from α = 0 it ends within 1e-4 of the solve from
    α = 1e-6. Without decay the sign flow leaves in time O(α) (docs/theory.md §5); with coupled
    decay β at depth 2 a part leaves where |∇f| > β, and at depth 3 the decay term
    β·w_i/|∂x/∂w_i| ~ β/α wins and x stays at 0."""
    loss = _regression()
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2), coupled_wd=beta)
    ends = [
        _solve(flow, mf.SignedDeepDiagonal.scaled(alpha, depth=depth, dim=DIM), loss, 2.0)
        for alpha in (0.0, 1e-6)
    ]
    assert all(bool(end.ok) for end in ends)
    size = float(jnp.max(jnp.abs(ends[0].x[-1])))
    assert size == 0.0 if (depth, beta) == (3, 0.3) else size > 0.1
    assert np.max(np.abs(np.asarray(ends[0].x[-1] - ends[1].x[-1]))) <= 1e-4


def test_is_third_order():
    """Halving a constant step divides the global error by ≈ 2³ (a smooth case, ε = 1, with
    decoupled decay; t1 = 0.25 keeps every factor away from 0, where sign(∂x/∂w) would
    change). The reference: `Rodas4` at the tight tolerances (1e-11 from a solve at rtol
    1e-12, 1e-5 of the smallest error here, 8.4e-7; ratios measured 7.4 and 7.6)."""
    loss = _regression()
    model = positive_signed_model(3, 2, DIM)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1.0), decoupled_wd=0.1)
    reference = _solve(flow, model, loss, 0.25, mf.Rodas4())

    def error(dt):
        sol = mf.solve_flow(
            flow,
            model,
            loss,
            0.25,
            solver=mf.SignFlowKvaerno3(rtol=1e-12, atol=1e-14),
            dt0=dt,
            stepsize_controller=diffrax.ConstantStepSize(),
        )
        return float(jnp.max(jnp.abs(sol.x[-1] - reference.x[-1])))

    errors = np.array([error(dt) for dt in (0.05, 0.025, 0.0125)])
    ratios = errors[:-1] / errors[1:]
    assert np.all((ratios > 7.0) & (ratios < 9.5)), ratios


def _default_problem(k=2):
    """The 10×20 regression of the default-tolerance tests (k changes values only)."""
    return mf.sparse_regression(jax.random.key(0), n=10, d=20, k=k)


def _default_solve(model, loss, eps, t1, beta):
    flow = mf.SteepestFlow(mf.Lp(1.0, eps), coupled_wd=beta)
    sol = mf.solve_flow(flow, model, loss, t1, solver=mf.SignFlowKvaerno3())
    return sol.x[-1], sol.ok, sol.num_steps, sol.loss[-1], sol.result


# `solve_flow`'s default controller and `SignFlowKvaerno3()`, with ε, t1 and β traced (so the
# unknowns stay "auto": one velocity per coordinate, a non-zero β ending the solve): one
# program for every single solve of a depth-2 model on 20 coordinates, one for the batch over ε.
_single = jax.jit(_default_solve)
_batch = jax.jit(jax.vmap(_default_solve, in_axes=(None, None, 0, None, None)))


def _values(*values):
    """float64 arrays: Python floats and array elements then take the one program."""
    return [jnp.asarray(value, jnp.float64) for value in values]


def _default_endpoint(model, loss, eps, t1, beta=0.0):
    """(x(t1), ok, steps, loss(t1), result) of the default solve."""
    return _single(model, loss, *_values(eps, t1, beta))


def _default_endpoints(model, loss, eps, t1):
    """`_default_endpoint` batched over ε (β = 0)."""
    return _batch(model, loss, *_values(eps, t1, 0.0))


def test_vmap_over_eps_equals_single_solves():
    """Batched and single solves agree to the solve's tolerance (batched linear algebra rounds
    differently, and at ε = 1e-6 the layer entries carry that to ≈ 4e-10). Depth 2 from the
    balanced init: the shrinking factors collapse to 0 and are parked there."""
    loss = _default_problem()
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=2, dim=20)
    eps = jnp.array([1e-3, 1e-6])
    batched, batched_ok, *_ = _default_endpoints(model, loss, eps, 10.0)
    assert bool(batched_ok.all())
    for i in range(2):
        single, ok, *_ = _default_endpoint(model, loss, eps[i], 10.0)
        assert bool(ok)
        np.testing.assert_allclose(batched[i], single, rtol=1e-8, atol=1e-9, err_msg=eps[i])


def _final_loss(flow, model, loss, t1, scale):
    """The loss at t1 of the tight solve from ``model`` scaled by ``scale``."""
    scaled = jax.tree.map(lambda w: w * scale, model)
    return _solve(flow, scaled, loss, t1).loss[-1]


@pytest.mark.parametrize("placement", ["structured", "naive"])
def test_reverse_mode_gradient_matches_finite_differences(placement):
    """jax.grad through the solve (the stage roots differentiate by the implicit function
    theorem) equals central finite differences of the final loss in the init scale. (Depth 2
    for the structured placement, whose gradient program the collapse test below shares.)"""
    loss = _regression(seed=4, k=3)
    base = positive_signed_model(7, 2 if placement == "structured" else 3, DIM)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at=_placement(placement))
    assert flow.smoothing_for(base) == placement
    final_loss = functools.partial(_final_loss, flow, base, loss, 0.25)
    gradient = jax.grad(final_loss)(1.0)
    step = 1e-4
    finite_difference = (final_loss(1.0 + step) - final_loss(1.0 - step)) / (2 * step)
    assert abs(float(gradient)) > 0.1
    np.testing.assert_allclose(gradient, finite_difference, rtol=1e-6)


@pytest.mark.parametrize("depth, beta, t1", [(2, 0.0, 0.35), (3, 0.05, 0.6)])
def test_reverse_mode_gradient_through_collapses(depth, beta, t1):
    """jax.grad through a solve in which parts are parked at 0 (from t ≈ 0.3: at depth 2 by
    the sign flip of ∂x/∂w, at depth 3 by coupled decay) equals central finite differences of
    the loss at t1 in the init scale."""
    loss = _regression()
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2), coupled_wd=beta)
    model = mf.SignedDeepDiagonal.scaled(0.3, depth=depth, dim=DIM)
    end = _solve(flow, model, loss, t1).params
    parked = [np.all(np.asarray(part[-1]) == 0, axis=0) for part in (end.u, end.v)]
    assert np.any(parked), f"no part parked by t = {t1}"
    final_loss = functools.partial(_final_loss, flow, model, loss, t1)
    gradient = jax.grad(final_loss)(1.0)
    step = 1e-5
    finite_difference = (final_loss(1.0 + step) - final_loss(1.0 - step)) / (2 * step)
    assert abs(float(gradient)) > 0.01
    np.testing.assert_allclose(gradient, finite_difference, rtol=1e-6)


@functools.cache
def _eps_sweep():
    """`eps_sensitivity` without ``solver=`` (its default controller), ε from 1e-2 to 1e-8,
    depth 2 from the balanced init on the 10×20 regression: its shrinking parts collapse to 0
    at t ≈ α. One compiled map, shared by the two tests below."""
    loss = _default_problem()
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=2, dim=20)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3))
    return flow, model, loss, mf.eps_sensitivity(flow, model, loss, 20.0, EPS_SWEEP)


EPS_SWEEP = [1e-2, 1e-4, 1e-6, 1e-8]


def test_eps_sensitivity_down_to_1e_minus_8():
    """Through `eps_sensitivity` (ε traced, one compiled map): every ε down to 1e-8 finishes
    and the endpoints approach the smallest-ε one as ε shrinks (the structure-preserving
    flow converges as ε → 0)."""
    result = _eps_sweep()[-1]
    assert bool(result.ok.all())
    assert float(result.loss_final.max()) < 1e-20
    distance = np.asarray(result.distance_to_smallest_eps)
    assert np.all(np.diff(distance) < 0)


def test_eps_sensitivity_default_solver_passes_collapses():
    """Without ``solver=``, `eps_sensitivity` takes `SignFlowKvaerno3` for the sign flow (with
    the controller's tolerances, here `solve_flow`'s default): from the balanced init at
    depth 2 the shrinking parts collapse to 0 at t ≈ α, where `Rodas4` stalls
    (bench_collapse.py); the default finishes every ε and each endpoint equals a single
    solve's. Other q get `Rodas4`."""
    flow, model, loss, result = _eps_sweep()
    assert result.attrs["solver"] == "SignFlowKvaerno3"
    assert bool(result.ok.all())
    single, ok, *_ = _default_endpoint(model, loss, 1e-8, 20.0)
    assert bool(ok)
    np.testing.assert_allclose(result.x_final.sel(eps=1e-8), single, rtol=1e-12, atol=1e-14)
    stalled = mf.eps_sensitivity(
        flow, model, loss, 5.0, [1e-3, 1e-8], solver=mf.Rodas4(), max_steps=3000
    )
    assert not bool(stalled.ok.any())
    other = mf.eps_sensitivity(mf.SteepestFlow(mf.Lp(1.5, 1e-3)), model, loss, 1.0, [1e-3])
    assert other.attrs["solver"] == "Rodas4" and bool(other.ok.all())


FLOAT32_RUN = r"""
import json, diffrax, jax, jax.numpy as jnp
import mirrorflow_jax as mf

problem = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=3)  # float32: x64 is off
model = mf.SignedDeepDiagonal.scaled(1e-2, depth=2, dim=20)
flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3))
try:
    mf.solve_flow(flow, model, problem, 10.0, solver=mf.SignFlowKvaerno3())
    error = ""
except ValueError as caught:
    error = str(caught)
# Balanced depth 2 under a PI controller: near the minimum the parts resting at 0 would restart
# and collapse on the rounding-level gradient at every step (it ran out of steps so).
tight = dict(rtol=1e-4, atol=1e-6)
pi = diffrax.PIDController(**tight, pcoeff=0.3, icoeff=0.3)
sol = mf.solve_flow(flow, model, problem, 10.0, solver=mf.SignFlowKvaerno3(**tight),
                    stepsize_controller=pi, max_steps=5000)
data = dict(A=problem.A, b=problem.b, truth=problem.truth, u=model.u, v=model.v)
print(json.dumps(dict(error=error, ok=bool(sol.ok), dtype=str(sol.x.dtype),
                      x32=sol.x[-1].tolist(), **{k: v.tolist() for k, v in data.items()})))
"""


def test_float32_needs_a_tolerance_it_resolves():
    """In float32 (jax_enable_x64 off, as on a TPU) the default rtol 1e-8 lies below what the
    Newton test can resolve: a ValueError says so before compiling. At rtol 1e-4 the float32
    solve (from the balanced init at depth 2, under a PI controller) finishes and ends within
    1e-4 of a float64 solve of the same problem (the float32 draws, solved here at the default
    rtol 1e-8; measured 2.8e-5, and 1.4e-4 on d = 20 at depth 3:
    benchmarks/bench_precision.py). Runs in a subprocess: this process has float64 on."""
    env = dict(os.environ, JAX_ENABLE_X64="0")
    done = subprocess.run(
        [sys.executable, "-c", FLOAT32_RUN], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "rtol=1e-08" in result["error"] and "float32" in result["error"]
    assert result["ok"] and result["dtype"] == "float32"
    data = {k: jnp.asarray(result[k], jnp.float64) for k in ("A", "b", "truth", "u", "v")}
    problem = mf.LeastSquares(data["A"], data["b"], data["truth"])
    model = mf.SignedDeepDiagonal(data["u"], data["v"])
    x64, ok, *_ = _default_endpoint(model, problem, 1e-3, 10.0)
    assert bool(ok)
    error = np.abs(np.array(result["x32"]) - np.asarray(x64)).max()
    assert error < 1e-4


def test_bad_setup_names_the_problem():
    loss = small_regression(n=4, d=5)
    model = positive_signed_model(1, 2, 5)
    solver = mf.SignFlowKvaerno3()

    def solve(flow, params=model):
        return mf.solve_flow(flow, params, loss, 1.0, solver=solver)

    with pytest.raises(ValueError, match="geometry.q"):
        solve(mf.SteepestFlow(mf.Lp(2.0)))
    with pytest.raises(ValueError, match="geometry.eps"):
        solve(mf.SteepestFlow(mf.Lp(1.0, 0.0)))
    coupled = mf.SteepestFlow(mf.Lp(1.0, 1e-3), coupled_wd=0.1)
    with pytest.raises(ValueError, match="coupled_wd 0 with unknowns='coordinate'"):
        mf.solve_flow(coupled, model, loss, 1.0, solver=mf.SignFlowKvaerno3(unknowns="coordinate"))
    # A traced β cannot choose the unknowns: "auto" takes one velocity per coordinate and a
    # non-zero β ends that solve at its first step with a failure code (no exception, which
    # would stop a whole sweep); β = 0 runs. (`_default_endpoint` traces β.)
    problem = _default_problem()
    start = positive_signed_model(1, 2, 20)
    _, ok, steps, _, result = _default_endpoint(start, problem, 1e-3, 1.0, beta=0.1)
    assert not bool(ok) and int(steps) == 1
    assert result == mf.RESULTS.nonlinear_divergence
    assert bool(_default_endpoint(start, problem, 1e-3, 1.0, beta=0.0)[1])
    with pytest.raises(ValueError, match="unknowns"):
        mf.SignFlowKvaerno3(unknowns="factor")
    with pytest.raises(ValueError, match="AbstractReparam"):
        solve(mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at="naive"), params=jnp.ones(5))
    with pytest.raises(ValueError, match="newton_tol"):
        mf.SignFlowKvaerno3(newton_tol=0.0)
    with pytest.raises(ValueError, match="max_newton"):
        mf.SignFlowKvaerno3(max_newton=0)


@eqx.filter_jit
def _entry_jacobians(flow, model, loss):
    """The per-entry Newton's value and Jacobian (rows layout) from `linearized_rows`, and the
    same map's value and jax.jacfwd: one program per model depth and loss."""
    argument = functools.partial(_entry_argument, flow)
    value, operator = linearized_rows(argument, model, loss)
    dim = model().shape[0]

    def rows_of(w):
        return _rows(argument(_unrows(w, model), loss), dim).ravel()

    w = _rows(model, dim)
    dense = jax.jacfwd(rows_of)(w).reshape(w.size, w.size)
    return value.ravel(), rows_of(w), operator.as_matrix(), dense


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("loss_kind", ["squares", "logistic"])
def test_entry_argument_jacobian_equals_jacfwd(depth, loss_kind):
    """The per-entry Newton's Jacobian of (∂F/∂w_i)/|∂x/∂w_i| (structure-preserving smoothing,
    coupled decay), as a `BlockLowRankOperator` from one linearization, equals jax.jacfwd of
    the same map to 1e-10 relative, from unbalanced factors of both signs."""
    if loss_kind == "squares":
        loss = small_regression(seed=4, n=5, d=6)
    else:
        loss = mf.sparse_classification(jax.random.key(3), n=5, d=6, k=2, loss="logistic")
    ku, kv = jax.random.split(jax.random.key(depth))
    model = mf.SignedDeepDiagonal(
        jax.random.normal(ku, (depth, 6)), jax.random.normal(kv, (depth, 6))
    )
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), coupled_wd=0.05)
    value, direct, operator, dense = _entry_jacobians(flow, model, loss)
    np.testing.assert_allclose(value, direct, rtol=1e-12)
    scale = np.max(np.abs(dense))
    assert np.max(np.abs(np.asarray(operator) - dense)) <= 1e-10 * scale


@pytest.mark.parametrize("init", ["scaled", "random"])
def test_cost_bounded_as_eps_vanishes(init):
    """Default options and `solve_flow`'s default controller: ε = 1e-10 and 1e-12 finish
    within twice the steps of ε = 1e-6 (depth 2 on a 10×20 regression; parts of coordinates
    rest at 0 and restart while their coordinate sits in the layer, which stalled the step
    size at 0 before), reach the interpolating solution, and end close to each other. Not
    to the tolerance: once ‖∇²f‖·atol exceeds ε the layer is not resolved, and the endpoints
    lie 2e-4 to 5e-4 from a solve at rtol 1e-11 (at ε = 1e-6, 2e-8)."""
    loss = _default_problem()
    if init == "scaled":
        model = mf.SignedDeepDiagonal.scaled(0.1, depth=2, dim=20)
    else:
        model = mf.SignedDeepDiagonal.random(jax.random.key(1), depth=2, dim=20, scale=0.1)
    _, ok_6, steps_6, *_ = _default_endpoint(model, loss, 1e-6, 10.0)
    assert bool(ok_6)
    ends = []
    for eps in (1e-10, 1e-12):
        x, ok, steps, final_loss, _ = _default_endpoint(model, loss, eps, 10.0)
        assert bool(ok), eps
        assert int(steps) <= 2 * int(steps_6), (eps, int(steps), int(steps_6))
        assert float(final_loss) < 1e-20
        ends.append(np.asarray(x))
    np.testing.assert_allclose(ends[0], ends[1], atol=1e-3)
