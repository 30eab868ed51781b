"""The paper's laws for the factor flow (docs/theory.md §1, §3, §5), each against an independent
computation: a closed form or a quadrature of the one-dimensional ODE."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate

import mirrorflow_jax as mf

from .helpers import (
    DEPTHS,
    EXACT_GEOMETRIES,
    SMOOTHED_GEOMETRIES,
    TIGHT,
    positive_signed_model,
    small_regression,
    toy_escape_time,
)

GEOMETRIES = EXACT_GEOMETRIES + SMOOTHED_GEOMETRIES
T1 = 1.0  # before the exact q = 1.5 flow reaches its non-Lipschitz minimum
TS = jnp.linspace(0.0, T1, 7)
COSINE = optax.cosine_decay_schedule(0.5, decay_steps=T1)


def _decay_integral(kind, t):
    if kind == "none":
        return 0.0
    if kind == "constant":
        return 0.3 * t
    return integrate.quad(lambda s: float(COSINE(s)), 0.0, t, epsabs=1e-14)[0]


def _balance_run(depth, decay, smoothing_at="auto"):
    problem = small_regression()
    model = positive_signed_model(depth, depth, problem.dim)
    wd = {"none": 0.0, "constant": 0.3, "schedule": COSINE}[decay]
    q, eps = jnp.array(GEOMETRIES).T

    def run(q, eps):
        flow = mf.SteepestFlow(mf.Lp(q, eps), decoupled_wd=wd, smoothing_at=smoothing_at)
        return mf.solve_flow(flow, model, problem, T1, saveat=TS, stepsize_controller=TIGHT)

    return jax.vmap(run)(q, eps)


@pytest.mark.parametrize("decay", ["none", "constant", "schedule"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_balance_law(depth, decay):
    """|w_i|^q − |w_1|^q = (initial)·exp(−q∫α): exact φ and the structured smoothing."""
    sol = _balance_run(depth, decay)
    assert bool(jnp.all(sol.ok))
    for k, (q, _) in enumerate(GEOMETRIES):
        b0 = np.asarray(sol.balance[k, 0])
        for j, t in enumerate(np.asarray(TS)):
            predicted = b0 * np.exp(-q * _decay_integral(decay, t))
            error = np.max(np.abs(np.asarray(sol.balance[k, j]) - predicted))
            assert error <= 1e-8 * np.max(np.abs(b0)), (GEOMETRIES[k], t, error)
    assert sol.smoothing_at == "structured"


def test_naive_smoothing_breaks_balance():
    """Measured, not hidden: the naive smoothing drifts by O(1e-2) where the structured one
    conserves to 1e-8 (docs/theory.md §1 gives the measured drifts)."""
    problem = small_regression()
    model = positive_signed_model(3, 3, problem.dim)
    drift = {}
    for where in ("naive", "structured"):
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at=where)
        sol = mf.solve_flow(flow, model, problem, T1, saveat=TS, stepsize_controller=TIGHT)
        drift[where] = float(jnp.max(jnp.abs(sol.balance[-1] - sol.balance[0])))
    print(f"balance drift at q=1, eps=1e-3, t={T1}: {drift}")
    assert drift["structured"] < 1e-8
    assert drift["naive"] > 1e-3


def test_naive_smoothing_amplifies_asymmetry_of_balanced_depth_two():
    """From the balanced init at depth 2 the naive flow keeps equal factors equal, but their
    difference grows at a rate up to |∇f|/ε inside the layer: a 1e-12 relative perturbation
    of the init moves the endpoint by more than 1e-7 (8.6e-6 … 3.3e-5 measured on three
    seeds), where the structured flow, which moves both factors with one velocity, moves it
    by less than 1e-9 (solver noise at rtol 1e-8: 1e-12 … 9e-11). benchmarks/bench_precision.py
    measures 0.09 on a larger problem."""
    problem = small_regression(seed=0, n=6, d=8, k=2)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=2, dim=8)
    noise = jax.tree.map(lambda a: jax.random.normal(jax.random.key(7), a.shape), model)
    nudged = jax.tree.map(lambda a, z: a * (1 + 1e-12 * z), model, noise)
    controller = diffrax.PIDController(rtol=1e-8, atol=1e-10)
    solver = mf.SignFlowKvaerno3(rtol=1e-8, atol=1e-10)
    moved = {}
    for where in ("naive", "structured"):
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at=where)
        ends = [
            mf.solve_flow(
                flow, start, problem, 10.0, solver=solver, stepsize_controller=controller
            ).x[-1]
            for start in (model, nudged)
        ]
        moved[where] = float(jnp.max(jnp.abs(ends[1] - ends[0])))
    assert moved["naive"] > 1e-7, moved
    assert moved["structured"] < 1e-9, moved


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("q, eps", [(1.0, 0.0), (1.0, 1e-3), (1.5, 0.0), (2.0, 0.0)])
def test_saddle_speed(depth, q, eps):
    """At w_1 = 0, w_i = λ the speed of x is λ^(q(L−1))·|φ^ε_q-part of ∇f| (docs/theory.md §5)."""
    problem = small_regression()
    lam = 0.3
    model = mf.DeepDiagonal.saddle(lam, depth=depth, dim=problem.dim)
    flow = mf.SteepestFlow(mf.Lp(q, eps))
    velocity = flow(0.0, model, problem)
    _, x_dot = jax.jvp(lambda m: m(), (model,), (velocity,))
    g = np.asarray(jax.grad(problem)(model()))
    phi_g = g * (g * g + eps * eps) ** ((q - 2) / 2) if eps else np.abs(g) ** (q - 1)
    np.testing.assert_allclose(np.abs(x_dot), lam ** (q * (depth - 1)) * np.abs(phi_g), rtol=1e-12)
    # The same speed, measured from a short solve: (x(h) − x(0))/h.
    h = 1e-6
    sol = mf.solve_flow(flow, model, problem, h, stepsize_controller=TIGHT)
    np.testing.assert_allclose((sol.x[-1] - sol.x[0]) / h, x_dot, rtol=1e-4, atol=1e-12)


ALPHAS = np.logspace(-3, -1, 5)


def _escape_times(q, depth, eps=0.0, smoothing_at="auto", alphas=ALPHAS, controller=None):
    toy = mf.ScalarToy()
    flow = mf.SteepestFlow(mf.Lp(q, eps), smoothing_at=smoothing_at)

    def run(alpha):
        model = mf.DeepDiagonal.scaled(alpha, depth=depth, dim=1)
        return mf.solve_flow(
            flow,
            model,
            toy,
            1e12,
            event=mf.NormAbove(0.5),
            max_steps=20_000,
            stepsize_controller=controller,
        )

    sol = jax.vmap(run)(jnp.asarray(alphas))
    assert bool(jnp.all(sol.ok))
    return np.asarray(sol.event_time)


@pytest.mark.parametrize(
    "q, depth, slope",
    [(1.0, 2, 0.0), (1.0, 3, 0.0), (1.0, 4, 0.0), (2.0, 3, -1.0), (2.0, 4, -2.0)],
)
def test_escape_time_exponent(q, depth, slope):
    """Fitted d log T / d log α: 0 for SignGF, −(L−2) for GF at L ≥ 3; and T itself agrees
    with a quadrature of the one-dimensional balanced ODE."""
    times = _escape_times(q, depth)
    reference = [toy_escape_time(a, q, depth) for a in ALPHAS]
    np.testing.assert_allclose(times, reference, rtol=1e-6)
    fitted = np.polyfit(np.log(ALPHAS), np.log(times), 1)[0]
    assert abs(fitted - slope) <= 0.15, fitted


def test_large_escape_times_are_located():
    """At escape times 1e8–1e10 the event function cannot get within the root finder's atol of
    0 (float spacing of t times its slope exceeds it); `EventNewton` stops once t is resolved,
    so the solve succeeds and T agrees with the quadrature. With optimistix's Newton alone
    the same solves report a failed root find (measured: T = 1e8 at α = 1e-8). The default
    atol (1e-10) is no error control for w ≈ α ≤ 1e-8 (measured: T off by 5e-6 and 1e-3
    relative), hence atol ≪ α here."""
    alphas = [1e-8, 1e-10]
    controller = diffrax.PIDController(rtol=1e-10, atol=1e-24)
    times = _escape_times(2.0, 3, alphas=alphas, controller=controller)  # every solve ok
    reference = [toy_escape_time(a, 2.0, 3) for a in alphas]
    np.testing.assert_allclose(times, reference, rtol=1e-6)
    assert times[-1] > 5e9


def test_escape_time_gf_depth_two_grows_like_log():
    times = _escape_times(2.0, 2)
    np.testing.assert_allclose(times, [toy_escape_time(a, 2.0, 2) for a in ALPHAS], rtol=1e-6)
    growth = np.polyfit(np.log(1 / ALPHAS), times, 1)[0]
    assert abs(growth - 1.0) <= 0.05, growth


def test_naive_smoothing_slows_escape_by_orders_of_magnitude():
    """SignGF at L = 4 from α = 1e-3 with ε = 1e-3: the naive smoothing is gradient flow
    scaled by 1/ε near the saddle, escaping at t ≈ 500 instead of ≈ 0.84."""
    exact = _escape_times(1.0, 4, alphas=[1e-3])[0]
    structured = _escape_times(1.0, 4, 1e-3, alphas=[1e-3])[0]
    naive = _escape_times(1.0, 4, 1e-3, "naive", alphas=[1e-3])[0]
    print(f"SignGF escape, L=4, alpha=1e-3: exact {exact}, structured {structured}, naive {naive}")
    np.testing.assert_allclose(exact, 0.5**0.25 - 1e-3, rtol=1e-9)
    np.testing.assert_allclose(structured, toy_escape_time(1e-3, 1.0, 4, 1e-3), rtol=1e-6)
    np.testing.assert_allclose(naive, toy_escape_time(1e-3, 1.0, 4, 1e-3, True), rtol=1e-6)
    assert naive > 300 * exact
    assert abs(structured - exact) < 1e-5


@pytest.mark.parametrize("q", [1.0, 1.5])
def test_smoothed_flow_approaches_exact(q):
    """Away from ∇f = 0 the smoothed trajectory converges to the exact one as ε → 0."""
    problem = small_regression()
    model = positive_signed_model(7, 2, problem.dim)
    ts = jnp.linspace(0.0, 0.05, 3)

    def x_at(eps):
        flow = mf.SteepestFlow(mf.Lp(q, eps))
        return mf.solve_flow(flow, model, problem, 0.05, saveat=ts, stepsize_controller=TIGHT).x

    exact = x_at(0.0)
    g0 = jax.grad(problem)(model())
    assert float(jnp.min(jnp.abs(g0))) > 1e-2  # the regime the claim is about
    errors = [float(jnp.max(jnp.abs(x_at(e) - exact))) for e in (1e-1, 1e-2, 1e-3)]
    # the smoothing error is O(ε²) where |∇f| ≫ ε: at least a factor 10 per decade of ε
    assert errors[1] < errors[0] / 10 and errors[2] < errors[1] / 10, errors
    assert errors[2] < 1e-5


@pytest.mark.parametrize("q", [2.0, 1.5])
def test_escape_time_gradient_matches_finite_differences(q):
    toy = mf.ScalarToy()
    flow = mf.SteepestFlow(mf.Lp(q))
    controller = diffrax.PIDController(rtol=1e-12, atol=1e-14)

    def escape(alpha):
        model = mf.DeepDiagonal.scaled(alpha, depth=3, dim=1)
        return mf.solve_flow(
            flow, model, toy, 1e6, event=mf.NormAbove(0.5), stepsize_controller=controller
        ).event_time

    alpha, h = 0.05, 1e-5
    grad = jax.grad(escape)(alpha)
    fd = (escape(alpha + h) - escape(alpha - h)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5)
    # and the closed form dT/dα = −1/(dw/dt at w = α) of the balanced scalar ODE
    speed = (1 - alpha**3) ** (q - 1) * alpha ** (2 * (q - 1))
    np.testing.assert_allclose(grad, -1 / speed, rtol=1e-6)
