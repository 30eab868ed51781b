"""PowerFlowKvaerno3: the exact steepest flow with 1 < q < 2 against scipy's Radau at rtol 1e-12
on the same field, with traced q under jit and vmap, with weight decay, and its refusals."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import integrate

import mirrorflow_jax as mf
from mirrorflow_jax import FlowArgs
from mirrorflow_jax._solver.auto import choose_solver

from .helpers import rolled, small_regression

CONTROLLER = diffrax.PIDController(rtol=1e-10, atol=1e-12)
SOLVER = mf.PowerFlowKvaerno3()


@pytest.fixture(scope="module")
def problem():
    return small_regression(seed=2, n=5, d=10, k=2)


@pytest.fixture(scope="module")
def model():
    return mf.SignedDeepDiagonal.scaled(0.1, depth=3, dim=10)


class _Decay(eqx.Module):
    rate: jax.Array

    def __call__(self, t):
        return self.rate * (1 + jnp.sin(t))


def _flat_field_impl(flow, model, loss, t, y):
    unravel = ravel_pytree(model)[1]
    return ravel_pytree(flow(t, unravel(y), loss))[0]


# One program per flow structure (q and the decay rates are traced), not one per reference.
_flat_field = jax.jit(_flat_field_impl)


def radau(flow, model, loss, ts):
    """scipy's Radau at rtol 1e-12, atol 1e-14 on the same field flattened with ravel_pytree
    (finite-difference Jacobian: the field's own is unbounded where a gradient entry is 0);
    the effective weights at ``ts``."""
    y0, unravel = ravel_pytree(model)
    result = integrate.solve_ivp(
        lambda t, y: np.asarray(_flat_field(flow, model, loss, t, y)),
        (0.0, float(ts[-1])),
        np.asarray(y0),
        method="Radau",
        t_eval=np.asarray(ts),
        rtol=1e-12,
        atol=1e-14,
    )
    assert result.success
    return np.stack([np.asarray(mf.effective_weights(unravel(y))) for y in result.y.T])


def _f64(*values):
    return tuple(jnp.asarray(v, jnp.float64) for v in values)


def _solve(alpha, q, t1, decoupled, coupled, problem):
    """The exact flow q with constant decoupled and coupled decay from the scaled init α on the
    depth-3 model, saved at 5 times: every number traced, so one program serves every call
    (and one vmapped program every batch)."""
    flow = mf.SteepestFlow(mf.Lp(q), decoupled_wd=decoupled, coupled_wd=coupled)
    model = mf.SignedDeepDiagonal.scaled(alpha, depth=3, dim=10)
    saveat = jnp.linspace(0.0, t1, 5)
    return mf.solve_flow(
        flow, model, problem, t1, saveat=saveat, solver=SOLVER, stepsize_controller=CONTROLLER
    )


_solve_one = eqx.filter_jit(_solve)
_solve_batch = eqx.filter_jit(jax.vmap(_solve, in_axes=(0, 0, 0, 0, 0, None)))

# The members of one vmapped program: (q, t1, decoupled decay). The horizons end before the
# scipy reference stalls: at q = 1.25 a balanced part collapses to 0 in finite time
# (t ≈ 1.24), at q = 1.5 the flow reaches its minimum (t ≈ 5), where every scipy method
# grinds. q = 2 lies outside the solver's range (1, 2).
MEMBERS = {
    "q=1.25": (1.25, 1.0, 0.0),
    "q=1.5": (1.5, 4.5, 0.0),
    "q=2": (2.0, 1.0, 0.0),
    "q=1.5, constant decay": (1.5, 4.5, 0.05),
}
INDEX = {name: i for i, name in enumerate(MEMBERS)}


@pytest.fixture(scope="module")
def batch(problem):
    q, t1, decay = (jnp.array(column) for column in zip(*MEMBERS.values(), strict=True))
    alpha, coupled = jnp.full_like(q, 0.1), jnp.zeros_like(q)
    return _solve_batch(alpha, q, t1, decay, coupled, problem)


@pytest.fixture(scope="module")
def lone(problem):
    """The q = 1.5 member solved on its own (not vmapped)."""
    return _solve_one(*_f64(0.1, 1.5, 4.5, 0.0, 0.0), problem)


_REFERENCES = {}


def _reference(name, problem, model):
    """Radau at the member's save times (cached: the order-5 test reuses q = 1.5's)."""
    if name not in _REFERENCES:
        q, t1, decay = MEMBERS[name]
        flow = mf.SteepestFlow(mf.Lp(q), decoupled_wd=decay)
        _REFERENCES[name] = radau(flow, model, problem, np.linspace(0.0, t1, 5))
    return _REFERENCES[name]


def test_traced_q_under_jit_and_vmap_matches_radau(problem, model, batch):
    """q = 1.25 and 1.5 (and their horizons) in one vmapped program, each within 1e-6 of
    Radau; a q outside (1, 2) in the same batch (2.0) ends at its first step with its own
    result code, and does not disturb the others."""
    assert batch.solver == "PowerFlowKvaerno3"
    for name in ("q=1.25", "q=1.5"):
        i = INDEX[name]
        assert bool(batch.ok[i]), name
        reference = _reference(name, problem, model)
        assert np.max(np.abs(np.asarray(batch.x[i]) - reference)) <= 1e-6, name
        # The flow made progress: not a trivially small motion.
        assert float(batch.loss[i, -1]) < 0.5 * float(batch.loss[i, 0]), name
    i = INDEX["q=2"]
    assert not bool(batch.ok[i])
    assert int(batch.num_steps[i]) == 1
    assert bool(jax.vmap(lambda r: r == mf.RESULTS.nonlinear_divergence)(batch.result)[i])


@pytest.mark.parametrize("decay", ["constant", "schedule and coupled"])
def test_weight_decay_matches_radau(problem, model, batch, decay):
    if decay == "constant":  # a member of the vmapped batch
        assert bool(batch.ok[INDEX["q=1.5, constant decay"]])
        x = batch.x[INDEX["q=1.5, constant decay"]]
        reference = _reference("q=1.5, constant decay", problem, model)
    else:
        schedule = _Decay(jnp.asarray(0.05))
        flow, t1 = mf.SteepestFlow(mf.Lp(1.5), decoupled_wd=schedule, coupled_wd=0.01), 2.0
        ts = jnp.linspace(0.0, t1, 5)
        sol = mf.solve_flow(
            flow, model, problem, t1, saveat=ts, solver=SOLVER, stepsize_controller=CONTROLLER
        )
        assert bool(sol.ok)
        x, reference = sol.x, radau(flow, model, problem, ts)
    assert np.max(np.abs(np.asarray(x) - reference)) <= 1e-6


def test_padded_model_moves_as_the_unpadded_one(problem, lone):
    """Padding rows (u = 0, no curvature: zero rows of the Newton matrix but for ψ') stay in
    place and the real factors follow the unpadded model (solved alone, `lone`)."""
    flow = mf.SteepestFlow(mf.Lp(1.5))
    padded = mf.Padded(mf.SignedDeepDiagonal.scaled(0.1, depth=4, dim=10), 3)
    a = mf.solve_flow(
        flow,
        padded,
        problem,
        4.5,
        saveat=jnp.linspace(0.0, 4.5, 5),
        solver=SOLVER,
        stepsize_controller=CONTROLLER,
    )
    assert a.solver == lone.solver == "PowerFlowKvaerno3"
    assert bool(a.ok) and bool(lone.ok)
    assert np.max(np.abs(np.asarray(a.x) - np.asarray(lone.x))) <= 1e-8
    assert np.all(np.asarray(a.params.model.u[-1, 3:]) == 0.0)


def test_reverse_mode_gradient_matches_finite_differences(problem):
    """d f(x(t1))/dα through the solve (stage roots by the implicit function theorem)
    against central differences of the same solve (the `lone` program, t1 = 1)."""

    def final_loss(alpha):
        return _solve_one(alpha, *_f64(1.5, 1.0, 0.0, 0.0), problem).loss[-1]

    gradient = float(jax.grad(final_loss)(jnp.asarray(0.1)))
    h = 1e-5
    difference = float((final_loss(*_f64(0.1 + h)) - final_loss(*_f64(0.1 - h))) / (2 * h))
    assert abs(gradient) > 1.0  # the init scale matters at t1
    np.testing.assert_allclose(gradient, difference, rtol=1e-5)


def test_auto_takes_the_order_five_solver_for_the_exact_maps(problem, model):
    """`solver="auto"` takes `PowerFlowKvaerno5` for the exact maps with 1 < q < 2 (order 5:
    from a saddle init the order-3 solver ran out of 100k steps where Tsit5 finishes, and
    order 5 takes about Tsit5's steps, test_order_five_matches_radau_and_escapes_a_saddle_in_
    tsit5s_steps), with its tolerances resolved from the controller; the exact sign flow
    (q = 1) stays on the watched Tsit5, and a plain PyTree too."""
    controller = diffrax.PIDController(rtol=1e-8, atol=1e-10)

    def choice(q, eps, params=model):
        return choose_solver(mf.SteepestFlow(mf.Lp(q, eps)), params, problem, controller)

    assert choice(1.5, 0.0).names == choice(1.25, 0.0).names == ("PowerFlowKvaerno5",)
    (solver,) = choice(1.5, 0.0).solvers
    assert (solver.rtol, solver.atol) == (1e-8, 1e-10)
    assert choice(1.0, 0.0).names == ("Tsit5",)
    assert choice(1.5, 0.0, params=model()).names == ("Tsit5",)
    flow = mf.SteepestFlow(mf.Lp(1.5))
    solver = mf.PowerFlowKvaerno3().resolve(flow, model, problem, controller)
    assert (solver.rtol, solver.atol) == (1e-8, 1e-10)


def test_vmapped_members_equal_their_own_solves(batch, lone):
    """q vmapped with this solver passed: the q = 1.5 member equals its own solve, and the
    q = 2 member (outside its range) ends at its first step with a failure code."""
    assert bool(batch.ok[INDEX["q=1.5"]]) and not bool(batch.ok[INDEX["q=2"]])
    np.testing.assert_allclose(batch.x[INDEX["q=1.5"], -1], lone.x[-1], rtol=0, atol=1e-6)


def test_reverse_time_is_refused(problem, model):
    flow = mf.SteepestFlow(mf.Lp(1.5))
    with pytest.raises(ValueError, match="t1"):
        mf.solve_flow(flow, model, problem, -1.0, solver=SOLVER)
    args = FlowArgs(flow, problem, problem(model()))

    def field(t, y, args):
        return args.flow(t, y, args.loss)

    with pytest.raises(Exception, match="forward in time only"):
        diffrax.diffeqsolve(
            diffrax.ODETerm(field), SOLVER, 1.0, 0.0, -0.1, model, args=args, max_steps=100
        )


@pytest.mark.parametrize(
    "setup, match",
    [
        ("sign", "SignFlowKvaerno3"),
        ("smoothed", "eps = 0"),
        ("gradient flow", r"open interval \(1, 2\)"),
        ("plain params", "separable"),
        ("no hessian factor", "AbstractFactoredLoss"),
        ("non-separable model", "separable"),
    ],
)
def test_bad_setup_names_the_alternative(problem, model, setup, match):
    flow, params, loss = mf.SteepestFlow(mf.Lp(1.5)), model, problem
    if setup == "sign":
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3))
    elif setup == "smoothed":
        flow = mf.SteepestFlow(mf.Lp(1.5, 1e-3))
    elif setup == "gradient flow":
        flow = mf.SteepestFlow(mf.Lp(2.0))
    elif setup == "plain params":
        params = {"w": jnp.full((10,), 0.1)}
        loss = lambda p: problem(p["w"])  # noqa: E731
    elif setup == "no hessian factor":
        loss = lambda x: problem(x)  # noqa: E731
    else:
        params = rolled(jnp.full((10,), 0.3), jnp.full((10,), 0.2))
    with pytest.raises(ValueError, match=match):
        mf.solve_flow(flow, params, loss, 1.0, solver=SOLVER)


def test_options_are_checked():
    with pytest.raises(ValueError, match="newton_tol"):
        mf.PowerFlowKvaerno3(newton_tol=0.0)
    with pytest.raises(ValueError, match="max_newton"):
        mf.PowerFlowKvaerno3(max_newton=0)
    with pytest.raises(ValueError, match="rtol"):
        mf.PowerFlowKvaerno3(rtol=-1.0)


def test_order_five_matches_radau_and_escapes_a_saddle_in_tsit5s_steps(problem, model):
    """`PowerFlowKvaerno5`: within 1e-6 of Radau, and from the saddle init of the scalar toy
    (smooth after its first steps) within 2× Tsit5's steps, where the order-3 solver takes
    about 30×; the escape times agree."""
    flow = mf.SteepestFlow(mf.Lp(1.5))
    ts = jnp.linspace(0.0, 4.5, 5)
    solver = mf.PowerFlowKvaerno5()
    sol = mf.solve_flow(
        flow, model, problem, 4.5, saveat=ts, solver=solver, stepsize_controller=CONTROLLER
    )
    assert bool(sol.ok)
    reference = _reference("q=1.5", problem, model)  # the same flow, init and save times
    assert np.max(np.abs(np.asarray(sol.x) - reference)) <= 1e-6
    saddle = mf.DeepDiagonal.saddle(1e-4, depth=4, dim=1)
    escapes = {
        name: mf.solve_flow(
            mf.SteepestFlow(mf.Lp(1.25)),
            saddle,
            mf.ScalarToy(),
            100.0,
            event=mf.NormAbove(0.5),
            solver=chosen,
            stepsize_controller=CONTROLLER,
        )
        for name, chosen in [("order 5", solver), ("tsit5", diffrax.Tsit5())]
    }
    assert all(bool(escape.ok) for escape in escapes.values())
    assert int(escapes["order 5"].num_steps) <= 2 * int(escapes["tsit5"].num_steps)
    np.testing.assert_allclose(
        escapes["order 5"].event_time, escapes["tsit5"].event_time, rtol=1e-6
    )
