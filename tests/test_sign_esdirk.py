"""SignFlowKvaerno3: the ESDIRK solver with a Newton iteration in the velocity.

Independent references: scipy's Radau at rtol 1e-10 (exact Jacobian) on the same regularized
field, `Rodas4` (a different method) at tight tolerances, and the convergence order under
constant steps.
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
from mirrorflow_jax._solver.sign_kvaerno3 import _entry_argument

from .helpers import positive_signed_model, radau_reference, small_regression

TIGHT_SOLVER = mf.SignFlowKvaerno3(rtol=1e-10, atol=1e-12)
TIGHT = diffrax.PIDController(rtol=1e-10, atol=1e-12)


class _Decay(eqx.Module):
    rate: jax.Array

    def __call__(self, t):
        return self.rate * (1 + jnp.sin(t))


def _positive_deep(seed, depth, dim):
    return mf.DeepDiagonal(0.3 + 0.5 * jax.random.uniform(jax.random.key(seed), (depth, dim)))


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
    kind, smoothing, eps, decay_kind, loss_kind, placement, coupled = case
    if loss_kind == "squares":
        loss = small_regression(seed=4, n=5, d=6)
    else:
        loss = mf.sparse_classification(jax.random.key(3), n=5, d=6, k=2, loss="logistic")
    decay = {"none": 0.0, "constant": 0.05, "schedule": _Decay(jnp.asarray(0.05))}[decay_kind]
    flow = mf.SteepestFlow(
        mf.Lp(1.0, eps, smoothing),
        decoupled_wd=decay,
        coupled_wd=coupled,
        smoothing_at=placement,
    )
    model = positive_signed_model(7, 3, 6) if kind == "signed" else _positive_deep(7, 2, 6)
    ts = jnp.linspace(0.0, 8.0, 5)
    sol = mf.solve_flow(
        flow, model, loss, 8.0, saveat=ts, solver=TIGHT_SOLVER, stepsize_controller=TIGHT
    )
    assert bool(sol.ok)
    reference = radau_reference(flow, model, loss, ts)
    scale = np.maximum(np.abs(reference), 1.0)
    assert np.max(np.abs(np.asarray(sol.x) - reference) / scale) <= 1e-6


@pytest.mark.parametrize("placement", ["structured", "naive"])
def test_agrees_with_rodas4_at_small_eps(placement):
    """ε = 1e-6 on the depth-3 signed model: the sign flow reaches the minimum through many
    layer entries; both methods at tight tolerances end within 1e-6 of each other."""
    loss = small_regression(seed=2, n=6, d=12, k=2)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=12)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-6), smoothing_at=placement)
    ts = jnp.linspace(0.0, 20.0, 5)
    runs = [
        mf.solve_flow(flow, model, loss, 20.0, saveat=ts, solver=solver, stepsize_controller=TIGHT)
        for solver in (TIGHT_SOLVER, mf.Rodas4())
    ]
    assert all(bool(run.ok) for run in runs)
    # The naive flow slows near the minimum (an entry with |∂F/∂w_i| ≲ ε moves at about
    # |∂F/∂w_i|/ε), so by t = 20 it is at 1.6e-11, not at the structured flow's 1e-30.
    assert float(runs[0].loss[-1]) < (1e-20 if placement == "structured" else 1e-10)
    assert np.max(np.abs(np.asarray(runs[0].x - runs[1].x))) <= 1e-6


def _forward_euler(flow, model, loss, ts, step=1e-5):
    """Forward Euler on the same field with a constant step, x at ``ts`` (multiples of 0.1).
    At a Filippov sliding point it chatters within one step of 0; equal factors get
    bitwise-equal updates, so a balanced part stays balanced and grows again, with equal
    factors, when the gradient turns (the continuation `SignFlowKvaerno3` takes)."""
    per_save, saves = round(0.1 / step), round(float(ts[-1]) / 0.1)

    @jax.jit
    def run(params):
        def tenth(params, _):
            def one(params, _):
                velocity = flow(0.0, params, loss)
                return jax.tree.map(lambda w, v: w + step * v, params, velocity), None

            params, _ = jax.lax.scan(one, params, None, length=per_save)
            return params, params()

        return jax.lax.scan(tenth, params, None, length=saves)[1]

    every = np.asarray(run(model))
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
    loss = small_regression(seed=1, n=5, d=8, k=2)
    model = mf.SignedDeepDiagonal.scaled(0.3, depth=depth, dim=8)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2), coupled_wd=beta)
    ts = jnp.linspace(0.1, 3.0, 30)
    solver = mf.SignFlowKvaerno3(rtol=1e-10, atol=1e-12, unknowns=unknowns)
    sol = mf.solve_flow(
        flow, model, loss, 3.0, saveat=ts, solver=solver, stepsize_controller=TIGHT
    )
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
    reference = _forward_euler(flow, model, loss, ts)
    assert np.max(np.abs(np.asarray(sol.x) - reference)) <= 1e-4


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_square_diff_collapse_matches_forward_euler(beta):
    """x = u⊙u − v⊙v: ∂x/∂u = 2u flips with u itself, so a shrinking u reaches 0 and is held
    there (without decay as with it); the solver parks it, as forward Euler does."""
    loss = small_regression(seed=1, n=5, d=8, k=2)
    model = mf.SquareDiff.scaled(0.3, dim=8)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2), coupled_wd=beta)
    ts = jnp.linspace(0.1, 3.0, 30)
    sol = mf.solve_flow(
        flow, model, loss, 3.0, saveat=ts, solver=TIGHT_SOLVER, stepsize_controller=TIGHT
    )
    assert bool(sol.ok)
    factors = np.concatenate([np.asarray(sol.params.u), np.asarray(sol.params.v)], axis=1)
    assert np.any(factors == 0), "no factor parked: the test does not exercise parking"
    assert np.max(np.abs(np.asarray(sol.x) - _forward_euler(flow, model, loss, ts))) <= 1e-4


@pytest.mark.parametrize("depth", [2, 4])
def test_collapse_continuation_is_the_limit_of_sign_descent(depth):
    """Discrete sign descent (ε = 0) from the balanced init keeps equal factors equal through
    the collapse: as η shrinks its iterates at t = η·k approach the solver's ε = 1e-6 path
    (measured max |Δx| 2.4e-2 / 2.1e-3 at depth 2 and 7.5e-2 / 2.5e-3 at depth 4, for
    η = 1e-3 / 1e-4)."""
    loss = small_regression(seed=1, n=5, d=8, k=2)
    model = mf.SignedDeepDiagonal.scaled(0.3, depth=depth, dim=8)
    ts = jnp.array([0.5, 1.0, 2.0, 3.0])
    sol = mf.solve_flow(
        mf.SteepestFlow(mf.Lp(1.0, 1e-6)),
        model,
        loss,
        3.0,
        saveat=ts,
        solver=TIGHT_SOLVER,
        stepsize_controller=TIGHT,
        max_steps=200_000,
    )
    assert bool(sol.ok)

    def gap(eta):
        steps = [round(float(t) / eta) for t in ts]
        run = mf.run_optimizer(
            mf.steepest_descent(eta, q=1.0), model, loss, steps[-1], save_steps=steps
        )
        return float(np.max(np.abs(np.asarray(run.x) - np.asarray(sol.x))))

    coarse, fine = gap(1e-3), gap(1e-4)
    assert fine <= 5e-3
    assert fine <= coarse / 5


@pytest.mark.parametrize("kind", ["signed", "deep"])
def test_coupled_decay_structured_matches_forward_euler(kind):
    """Coupled decay with the structure-preserving placement (one velocity per factor entry)
    from unbalanced factors, through collapses: on the signed model two factors of a part
    reach 0 together at t ≈ 0.5, where scipy's Radau stops ("step size less than spacing").
    Forward Euler (step 1e-5) agrees to O(step): measured 8.5e-6 and 3.7e-5, and 5× less at
    step 2e-6."""
    if kind == "signed":
        loss = small_regression(seed=4, n=5, d=6)
        model = positive_signed_model(7, 3, 6)
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3, "tanh"), decoupled_wd=0.05, coupled_wd=0.02)
    else:
        loss = mf.sparse_classification(jax.random.key(3), n=5, d=6, k=2, loss="logistic")
        model = _positive_deep(7, 2, 6)
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), coupled_wd=0.01)
    ts = jnp.linspace(0.1, 3.0, 30)
    sol = mf.solve_flow(
        flow, model, loss, 3.0, saveat=ts, solver=TIGHT_SOLVER, stepsize_controller=TIGHT
    )
    assert bool(sol.ok)
    assert np.max(np.abs(np.asarray(sol.x) - _forward_euler(flow, model, loss, ts))) <= 1e-4


def test_vmap_over_coupled_decay_equals_single_solves():
    """A swept (traced) β with ``unknowns="entry"``: one velocity per factor entry, which at
    β = 0 is the same flow as the per-coordinate solve that a concrete β = 0 gets; every
    member agrees with its single solve to the tolerance."""
    loss = small_regression(seed=6, n=5, d=8)
    model = mf.SignedDeepDiagonal.scaled(0.3, depth=3, dim=8)
    per_entry = mf.SignFlowKvaerno3(rtol=1e-10, atol=1e-12, unknowns="entry")

    def endpoint(beta, solver=TIGHT_SOLVER):
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), coupled_wd=beta)
        sol = mf.solve_flow(flow, model, loss, 5.0, solver=solver, stepsize_controller=TIGHT)
        return sol.x[-1], sol.ok

    betas = (0.0, 0.02)
    batched, batched_ok = jax.jit(jax.vmap(lambda b: endpoint(b, per_entry)))(jnp.array(betas))
    assert bool(batched_ok.all())
    for i, beta in enumerate(betas):
        single, ok = endpoint(beta)
        assert bool(ok)
        np.testing.assert_allclose(batched[i], single, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("depth, beta", [(2, 0.0), (3, 0.0), (3, 0.05)])
def test_padded_model_equals_unpadded(depth, beta):
    """A depth-L model padded to depth 4 (a sweep over depth) takes the same path as the
    unpadded one: its padding rows (zeros with ∂x/∂w = 0, like a part resting at 0) are never
    restarted, parked or moved."""
    loss = small_regression(seed=1, n=5, d=8, k=2)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2), coupled_wd=beta)
    plain = mf.SignedDeepDiagonal.scaled(0.3, depth=depth, dim=8)
    deep = mf.SignedDeepDiagonal.scaled(0.3, depth=4, dim=8)
    padded = mf.PaddedSignedDeepDiagonal.truncated(deep, depth)
    runs = [
        mf.solve_flow(flow, model, loss, 3.0, solver=TIGHT_SOLVER, stepsize_controller=TIGHT)
        for model in (plain, padded)
    ]
    assert all(bool(run.ok) for run in runs)
    assert np.all(np.asarray(runs[1].params.u[-1, depth:]) == 0)
    assert np.max(np.abs(np.asarray(runs[0].x[-1] - runs[1].x[-1]))) <= 1e-9


def test_unbalanced_crossing_is_not_parked():
    """5% off balance, the factors of a part cross 0 one after the other (transversally):
    nothing is parked, and the solve agrees with `Rodas4` at tight tolerances."""
    loss = small_regression(seed=1, n=5, d=8, k=2)
    base = mf.SignedDeepDiagonal.scaled(0.3, depth=2, dim=8)
    model = mf.SignedDeepDiagonal(base.u.at[0].multiply(1.05), base.v.at[1].multiply(1.05))
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2))
    ts = jnp.linspace(0.5, 3.0, 6)
    runs = [
        mf.solve_flow(flow, model, loss, 3.0, saveat=ts, solver=solver, stepsize_controller=TIGHT)
        for solver in (TIGHT_SOLVER, mf.Rodas4())
    ]
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
    loss = small_regression(seed=1, n=5, d=8, k=2)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2), coupled_wd=beta)
    ends = [
        mf.solve_flow(
            flow,
            mf.SignedDeepDiagonal.scaled(alpha, depth=depth, dim=8),
            loss,
            2.0,
            solver=TIGHT_SOLVER,
            stepsize_controller=TIGHT,
        )
        for alpha in (0.0, 1e-6)
    ]
    assert all(bool(end.ok) for end in ends)
    size = float(jnp.max(jnp.abs(ends[0].x[-1])))
    assert size == 0.0 if (depth, beta) == (3, 0.3) else size > 0.1
    assert np.max(np.abs(np.asarray(ends[0].x[-1] - ends[1].x[-1]))) <= 1e-4


def test_is_third_order():
    """Halving a constant step divides the global error by ≈ 2³ (a smooth case, ε = 1, with
    decoupled decay; t1 = 0.25 keeps every factor away from 0, where sign(∂x/∂w) would
    change)."""
    loss = small_regression(seed=1, n=4, d=5)
    model = positive_signed_model(3, 2, 5)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1.0), decoupled_wd=0.1)
    tightest = diffrax.PIDController(rtol=1e-12, atol=1e-14)
    reference = mf.solve_flow(
        flow, model, loss, 0.25, solver=mf.Rodas4(), stepsize_controller=tightest
    )

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


def test_vmap_over_eps_equals_single_solves():
    """Batched and single solves agree to the solve's tolerance (batched linear algebra rounds
    differently, and at ε = 1e-6 the layer entries carry that to ≈ 1e-10). Depth 2 from the
    balanced init: the shrinking factors collapse to 0 and are parked there."""
    loss = small_regression(seed=6, n=5, d=8)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=2, dim=8)

    @jax.jit
    def endpoint(eps):
        flow = mf.SteepestFlow(mf.Lp(1.0, eps))
        sol = mf.solve_flow(flow, model, loss, 10.0, solver=mf.SignFlowKvaerno3())
        return sol.x[-1], sol.ok

    eps = jnp.array([1e-3, 1e-6])
    batched, batched_ok = jax.vmap(endpoint)(eps)
    assert bool(batched_ok.all())
    for i in range(2):
        single, ok = endpoint(eps[i])
        assert bool(ok)
        np.testing.assert_allclose(batched[i], single, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("placement", ["structured", "naive"])
def test_reverse_mode_gradient_matches_finite_differences(placement):
    """jax.grad through the solve (the stage roots differentiate by the implicit function
    theorem) equals central finite differences of the final loss in the init scale."""
    loss = small_regression(seed=4, n=5, d=6)
    base = positive_signed_model(7, 3, 6)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at=placement)

    def final_loss(scale):
        model = mf.SignedDeepDiagonal(base.u * scale, base.v * scale)
        sol = mf.solve_flow(
            flow, model, loss, 0.25, solver=TIGHT_SOLVER, stepsize_controller=TIGHT
        )
        return sol.loss[-1]

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
    loss = small_regression(seed=1, n=5, d=8, k=2)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2), coupled_wd=beta)

    def solve(scale):
        model = mf.SignedDeepDiagonal.scaled(0.3 * scale, depth=depth, dim=8)
        return mf.solve_flow(flow, model, loss, t1, solver=TIGHT_SOLVER, stepsize_controller=TIGHT)

    def final_loss(scale):
        return solve(scale).loss[-1]

    end = solve(1.0).params
    parked = [np.all(np.asarray(part[-1]) == 0, axis=0) for part in (end.u, end.v)]
    assert np.any(parked), f"no part parked by t = {t1}"
    gradient = jax.grad(final_loss)(1.0)
    step = 1e-5
    finite_difference = (final_loss(1.0 + step) - final_loss(1.0 - step)) / (2 * step)
    assert abs(float(gradient)) > 0.01
    np.testing.assert_allclose(gradient, finite_difference, rtol=1e-6)


def test_eps_sensitivity_down_to_1e_minus_8():
    """Through `eps_sensitivity` (ε traced, one compiled map): every ε down to 1e-8 finishes
    and the endpoints approach the smallest-ε one as ε shrinks (the structure-preserving
    flow converges as ε → 0)."""
    loss = small_regression(seed=0, n=10, d=20, k=3)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=20)
    eps = jnp.array([1e-2, 1e-4, 1e-6, 1e-8])
    result = mf.eps_sensitivity(
        mf.SteepestFlow(mf.Lp(1.0, 1e-3)), model, loss, 20.0, eps, solver=mf.SignFlowKvaerno3()
    )
    assert bool(result.ok.all())
    assert float(result.loss_final.max()) < 1e-20
    distance = np.asarray(result.distance_to_smallest_eps)
    assert np.all(np.diff(distance) < 0)


def test_eps_sensitivity_default_solver_passes_collapses():
    """Without ``solver=``, `eps_sensitivity` takes `SignFlowKvaerno3` for the sign flow (with
    the controller's tolerances): from the balanced init at depth 2 the shrinking parts
    collapse to 0 at t ≈ α, where `Rodas4` stalls (bench_collapse.py); the default finishes
    every ε and each endpoint equals a single solve's. Other q get `Rodas4`."""
    loss = small_regression(seed=0, n=6, d=8, k=2)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=2, dim=8)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3))
    controller = diffrax.PIDController(rtol=1e-7, atol=1e-9)
    eps = [1e-3, 1e-8]
    kwargs = dict(stepsize_controller=controller, max_steps=3000)
    result = mf.eps_sensitivity(flow, model, loss, 5.0, eps, **kwargs)
    assert result.attrs["solver"] == "SignFlowKvaerno3"
    assert bool(result.ok.all())
    single = mf.solve_flow(
        mf.SteepestFlow(mf.Lp(1.0, 1e-8)),
        model,
        loss,
        5.0,
        solver=mf.SignFlowKvaerno3(rtol=1e-7, atol=1e-9),
        **kwargs,
    )
    np.testing.assert_allclose(result.x_final.sel(eps=1e-8), single.x[-1], rtol=1e-12, atol=1e-14)
    stalled = mf.eps_sensitivity(flow, model, loss, 5.0, eps, solver=mf.Rodas4(), **kwargs)
    assert not bool(stalled.ok.any())
    other = mf.eps_sensitivity(mf.SteepestFlow(mf.Lp(1.5, 1e-3)), model, loss, 1.0, [1e-3])
    assert other.attrs["solver"] == "Rodas4" and bool(other.ok.all())


FLOAT32_RUN = r"""
import json, diffrax, jax, jax.numpy as jnp
import mirrorflow_jax as mf

problem = mf.sparse_regression(jax.random.key(0), n=6, d=8, k=2)  # float32: x64 is off
model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=8)
flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3))
try:
    mf.solve_flow(flow, model, problem, 5.0, solver=mf.SignFlowKvaerno3())
    error = ""
except ValueError as caught:
    error = str(caught)
tight = dict(rtol=1e-4, atol=1e-6)
sol = mf.solve_flow(flow, model, problem, 5.0, solver=mf.SignFlowKvaerno3(**tight),
                    stepsize_controller=diffrax.PIDController(**tight))
result = dict(error=error, ok=bool(sol.ok), dtype=str(sol.x.dtype), x32=sol.x[-1].tolist())
# Balanced depth 2 under a PI controller: near the minimum the parts resting at 0 would restart
# and collapse on the rounding-level gradient at every step (it ran out of steps so).
pi = diffrax.PIDController(**tight, pcoeff=0.3, icoeff=0.3)
larger = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=3)
two = mf.SignedDeepDiagonal.scaled(1e-2, depth=2, dim=20)
sol = mf.solve_flow(flow, two, larger, 10.0, solver=mf.SignFlowKvaerno3(**tight),
                    stepsize_controller=pi, max_steps=5000)
result["depth_two_ok"] = bool(sol.ok)
jax.config.update("jax_enable_x64", True)  # the same problem (the float32 draws) in float64
problem, model = jax.tree.map(lambda a: a.astype(jnp.float64), (problem, model))
tight = dict(rtol=1e-10, atol=1e-12)
sol = mf.solve_flow(flow, model, problem, 5.0, solver=mf.SignFlowKvaerno3(**tight),
                    stepsize_controller=diffrax.PIDController(**tight))
print(json.dumps(dict(result, x64=sol.x[-1].tolist())))
"""


def test_float32_needs_a_tolerance_it_resolves():
    """In float32 (jax_enable_x64 off, as on a TPU) the default rtol 1e-8 lies below what the
    Newton test can resolve: a ValueError says so before compiling. At rtol 1e-4 the float32
    solve ends within 1e-4 of a float64 solve of the same problem (measured 6e-7 here, 1.4e-4
    on d = 20: benchmarks/bench_precision.py), and from the balanced init at depth 2 it
    finishes under a PI controller too. Runs in a subprocess: this process has float64 on."""
    env = dict(os.environ, JAX_ENABLE_X64="0")
    done = subprocess.run(
        [sys.executable, "-c", FLOAT32_RUN], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "rtol=1e-08" in result["error"] and "float32" in result["error"]
    assert result["ok"] and result["dtype"] == "float32" and result["depth_two_ok"]
    error = np.abs(np.array(result["x32"]) - np.array(result["x64"])).max()
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
    # would stop a whole sweep); β = 0 runs.
    traced = jax.jit(lambda beta: solve(mf.SteepestFlow(mf.Lp(1.0, 1e-3), coupled_wd=beta)))
    failed = traced(0.1)
    assert not bool(failed.ok) and int(failed.num_steps) == 1
    assert failed.result == mf.RESULTS.nonlinear_divergence
    assert bool(traced(0.0).ok)
    with pytest.raises(ValueError, match="unknowns"):
        mf.SignFlowKvaerno3(unknowns="factor")
    with pytest.raises(ValueError, match="AbstractReparam"):
        solve(mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at="naive"), params=jnp.ones(5))
    with pytest.raises(ValueError, match="newton_tol"):
        mf.SignFlowKvaerno3(newton_tol=0.0)
    with pytest.raises(ValueError, match="max_newton"):
        mf.SignFlowKvaerno3(max_newton=0)


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
    argument = functools.partial(_entry_argument, flow)
    value, operator = linearized_rows(argument, model, loss)

    def rows_of(w):
        return _rows(argument(_unrows(w, model), loss), 6).ravel()

    w = _rows(model, 6)
    dense = jax.jacfwd(rows_of)(w).reshape(w.size, w.size)
    np.testing.assert_allclose(value.ravel(), rows_of(w), rtol=1e-12)
    scale = np.max(np.abs(dense))
    assert np.max(np.abs(np.asarray(operator.as_matrix()) - dense)) <= 1e-10 * scale


@pytest.mark.parametrize("init", ["scaled", "random"])
def test_cost_bounded_as_eps_vanishes(init):
    """Default options and `solve_flow`'s default controller: ε = 1e-10 and 1e-12 finish
    within twice the steps of ε = 1e-6 (depth 2 on a 10×20 regression; parts of coordinates
    rest at 0 and restart while their coordinate sits in the layer, which stalled the step
    size at 0 before), reach the interpolating solution, and end close to each other. Not
    to the tolerance: once ‖∇²f‖·atol exceeds ε the layer is not resolved, and the endpoints
    lie 2e-4 to 5e-4 from a solve at rtol 1e-11 (at ε = 1e-6, 2e-8)."""
    loss = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=2)
    if init == "scaled":
        model = mf.SignedDeepDiagonal.scaled(0.1, depth=2, dim=20)
    else:
        model = mf.SignedDeepDiagonal.random(jax.random.key(1), depth=2, dim=20, scale=0.1)

    @jax.jit
    def solve(eps):
        flow = mf.SteepestFlow(mf.Lp(1.0, eps))
        sol = mf.solve_flow(flow, model, loss, 10.0, solver=mf.SignFlowKvaerno3())
        return sol.num_steps, sol.ok, sol.loss[-1], sol.x[-1]

    steps_6, ok_6, _, _ = solve(jnp.asarray(1e-6))
    assert bool(ok_6)
    ends = []
    for eps in (1e-10, 1e-12):
        steps, ok, final_loss, x = solve(jnp.asarray(eps))
        assert bool(ok), eps
        assert int(steps) <= 2 * int(steps_6), (eps, int(steps), int(steps_6))
        assert float(final_loss) < 1e-20
        ends.append(np.asarray(x))
    np.testing.assert_allclose(ends[0], ends[1], atol=1e-3)
