"""The mirror-flow side (docs/theory.md §4): potentials against closed forms and quadrature, the
equivalence of the factor flow with the x-space mirror flow, and the implicit bias."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize

import mirrorflow_jax as mf
from mirrorflow_jax import (
    AbstractMirror,
    DeepDiagonalMirror,
    MirrorFlow,
    SquareDiffMirror,
    implicit_bias,
    solve_mirror_flow,
)

from .helpers import DECAYS, TIGHT, Decay, small_regression

X = jnp.array([-3.0, -0.2, 0.0, 1e-6, 0.5, 10.0, 1e4])
SHAPES = [(1.0, 2), (1.0, 4), (1.5, 3), (1.25, 5), (2.0, 2), (2.0, 3), (1.75, 3)]


@pytest.mark.parametrize("c", [0.5, 1e-3])
def test_potential_closed_forms(c):
    hyperbolic = DeepDiagonalMirror(2.0, 2, c)
    np.testing.assert_allclose(hyperbolic.grad(X), 0.5 * np.arcsinh(2 * X / c), rtol=1e-13)
    np.testing.assert_allclose(hyperbolic.metric(X), np.sqrt(4 * X**2 + c**2), rtol=1e-13)
    z = 0.5 * np.arcsinh(2 * X / c)
    np.testing.assert_allclose(hyperbolic.grad_inverse(z), X, rtol=1e-10, atol=1e-15)
    depth3 = DeepDiagonalMirror(2.0, 3, c)
    rho = np.sqrt(depth3.first_factor(X))
    np.testing.assert_allclose(rho * (rho**2 + c), np.abs(X), rtol=1e-12)
    expected = np.sign(X) * np.arctan(rho / np.sqrt(c)) / np.sqrt(c)
    np.testing.assert_allclose(depth3.grad(X), expected, rtol=1e-12, atol=1e-15)
    sign_flow = DeepDiagonalMirror(1.0, 4, c)  # q = 1: ∇R(x) = w_1
    np.testing.assert_allclose(sign_flow.grad(X), np.sign(X) * sign_flow.first_factor(X))


@pytest.mark.parametrize("q, depth", SHAPES)
def test_metric_equals_factor_formula_and_inverse_hessian(q, depth):
    c = 0.3
    w1 = jnp.array([-1.2, -0.1, 0.0, 0.05, 0.7, 2.0])
    model = mf.DeepDiagonal.balanced(w1, c, q=q, depth=depth)
    w = np.abs(np.asarray(model.factors)) ** q
    by_factors = sum(np.prod(np.delete(w, i, axis=0), axis=0) for i in range(depth))
    mirror = DeepDiagonalMirror(q, depth, c)
    x = model()
    np.testing.assert_allclose(mirror.metric(x), by_factors, rtol=1e-12)
    np.testing.assert_allclose(mirror.first_factor(x), np.abs(np.asarray(w1)) ** q, atol=1e-14)
    # ∇²R = 1/h, by central differences of ∇R away from the kink of |x| at 0
    x, step = x[x != 0], 1e-6 * jnp.maximum(jnp.abs(x[x != 0]), 1e-3)
    hessian = (mirror.grad(x + step) - mirror.grad(x - step)) / (2 * step)
    np.testing.assert_allclose(hessian * mirror.metric(x), 1.0, rtol=1e-6)


@pytest.mark.parametrize("q, depth", SHAPES)
def test_potential_by_scipy_quadrature(q, depth):
    mirror = DeepDiagonalMirror(q, depth, 0.3)
    for x in (-2.5, 0.01, 0.8, 40.0):
        reference = integrate.quad(lambda s: float(mirror.grad(s)), 0.0, x, epsrel=1e-12)[0]
        np.testing.assert_allclose(mirror.potential(jnp.array([x])), reference, rtol=1e-9)
    xs, ys = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.1, 0.5, 2.0])
    assert float(mirror.bregman(xs, ys)) > 0
    assert float(mirror.bregman(ys, ys)) == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("q, depth", SHAPES)
def test_legendre_exactly_when_gradient_is_unbounded(q, depth):
    """is_legendre ⟺ m ≤ 1, checked against the growth of ∇R: over equal factors of x its
    increments stay level (log growth) or grow when m ≤ 1, and die out (bounded ∇R) when m > 1."""
    mirror = DeepDiagonalMirror(q, depth, 0.3)
    assert bool(mirror.is_legendre) == (mf.metric_exponent(q, depth) <= 1)
    g8, g16, g32 = mirror.grad(jnp.array([1e8, 1e16, 1e32]))
    bounded = float(g32 - g16) < 0.5 * float(g16 - g8)
    assert bounded == (not bool(mirror.is_legendre))


# ------------------------------------------------------- the factor flow is the mirror flow
#
# Compile budget: the factor-flow solves below are one compiled program per solver (depths
# padded to MAX_DEPTH with `Padded`), the mirror-flow solves one per solver and depth (the
# mirror's depth is static); the decay kinds are values of one schedule (`Decay`).

GEOMETRIES = [(1.5, 0.0), (2.0, 0.0), (1.0, 1e-3), (1.5, 1e-3)]
DEPTHS = [2, 3, 4]
MAX_DEPTH = max(DEPTHS)
BALANCE_C = 0.2
TS = jnp.linspace(0.0, 1.0, 5)


def test_float_decay_is_the_constant_schedule():
    """The tests below run the decay kinds as `Decay` values; a float ``decoupled_wd`` is the
    same constant α(t), and both flows read α only through ``decay_rate``."""
    for level in (0.0, 0.3):
        module = Decay(jnp.array(level), jnp.array(0.0))
        flows = [
            (
                mf.SteepestFlow(decoupled_wd=wd),
                MirrorFlow(mf.Lp(), depth=2, c=0.2, decoupled_wd=wd),
            )
            for wd in (level, module)
        ]
        for t in (0.0, 0.7):
            rates = [float(flow.decay_rate(t)) for pair in flows for flow in pair]
            assert rates == [level] * 4, rates


def _w1(depth):
    dim = small_regression().dim
    return 0.3 * jax.random.normal(jax.random.key(depth), (dim,), dtype=jnp.float64)


def _flow_cases():
    return [
        dict(depth=depth, decay=decay, q=q, eps=eps)
        for depth in DEPTHS
        for decay in DECAYS
        for q, eps in GEOMETRIES
    ]


# One explicit solver per vmapped call (a vmapped "auto" with traced q, ε compiles a switch over
# its candidates, each run over the whole batch): for the smoothed sign flow what "auto" takes
# (`SignFlowKvaerno3` for the factor flow, a dense `Rodas4` for the mirror flow; Tsit5's
# stiffness watch ends those solves with `stiff`), and Tsit5 for every other (q, ε) here
# ("auto" takes Rodas4 for 1 < q < 2, ε > 0, where Tsit5, watched for stiffness, takes fewer
# steps over t ≤ 1; every solve must end ok).
FACTOR_SOLVERS = {"sign": mf.SignFlowKvaerno3(), "explicit": diffrax.Tsit5()}
MIRROR_SOLVERS = {"sign": mf.Rodas4(structure="dense"), "explicit": diffrax.Tsit5()}


def _region(case):
    return "sign" if case["q"] == 1 and case["eps"] > 0 else "explicit"


def _by_region(batches, cases, columns):
    """``batches[region](*columns)`` (jitted vmaps) over the rows of each solver region,
    reassembled in case order as NumPy arrays."""
    groups = {}
    for k, case in enumerate(cases):
        groups.setdefault(_region(case), []).append(k)
    order, parts = [], []
    for region, members in groups.items():
        parts.append(batches[region](*[column[np.array(members)] for column in columns]))
        order += members
    inverse = np.argsort(order)
    return jax.tree.map(lambda *leaves: np.concatenate(leaves)[inverse], *parts)


def _factor_run(q, eps, w1, depth, level, scale, *, solver):
    model = mf.Padded(mf.DeepDiagonal.balanced(w1, BALANCE_C, q=q, depth=MAX_DEPTH), depth)
    flow = mf.SteepestFlow(mf.Lp(q, eps), decoupled_wd=Decay(level, scale))
    problem = small_regression()
    sol = mf.solve_flow(
        flow, model, problem, 1.0, saveat=TS, solver=solver, stepsize_controller=TIGHT
    )
    return sol.x, sol.ok


def _mirror_run(q, eps, x0, c, level, scale, *, depth, solver):
    flow = MirrorFlow(mf.Lp(q, eps), depth=depth, c=c, decoupled_wd=Decay(level, scale))
    problem = small_regression()
    sol = solve_mirror_flow(
        flow, x0, problem, 1.0, saveat=TS, solver=solver, stepsize_controller=TIGHT
    )
    return sol.x, sol.ok


def _jit_vmap(run, **static):
    return jax.jit(jax.vmap(functools.partial(run, **static)))


_FACTOR_BATCH = {region: _jit_vmap(_factor_run, solver=s) for region, s in FACTOR_SOLVERS.items()}
_MIRROR_BATCH = {
    depth: {
        region: _jit_vmap(_mirror_run, depth=depth, solver=s)
        for region, s in MIRROR_SOLVERS.items()
    }
    for depth in DEPTHS
}

# The mirror flow at c = 0 (the uniform init w_i = α), checked against scipy below, runs with
# the c = 0.2 ones of its depth.
UNIFORM_CASES = [(2.0, 2), (1.5, 3)]
UNIFORM_ALPHA = 0.5


@pytest.fixture(scope="module")
def flows():
    """(cases, factor x, mirror x): every (depth, decay, geometry) from the balanced init
    (w_1 random, c = 0.2), and ("uniform", q, depth) at c = 0 (mirror only)."""
    cases = _flow_cases()
    columns = [
        np.array([c["q"] for c in cases]),
        np.array([c["eps"] for c in cases]),
        np.array([np.asarray(_w1(c["depth"])) for c in cases]),
        np.array([c["depth"] for c in cases]),
        np.array([DECAYS[c["decay"]][0] for c in cases]),
        np.array([DECAYS[c["decay"]][1] for c in cases]),
    ]
    factor_x, factor_ok = _by_region(_FACTOR_BATCH, cases, columns)
    for k, case in enumerate(cases):
        assert factor_ok[k], ("factor", case)
    dim = small_regression().dim
    mirror_x = {}
    for depth in DEPTHS:
        members = [k for k, c in enumerate(cases) if c["depth"] == depth]
        uniform = [q for q, d in UNIFORM_CASES if d == depth]
        rows = [(cases[k]["q"], cases[k]["eps"], factor_x[k, 0], BALANCE_C) for k in members]
        rows += [(q, 0.0, np.full(dim, UNIFORM_ALPHA**depth), 0.0) for q in uniform]
        decays = [DECAYS[cases[k]["decay"]] for k in members] + [DECAYS["none"]] * len(uniform)
        columns = [np.array(column) for column in zip(*rows, strict=True)]
        columns += [np.array(column) for column in zip(*decays, strict=True)]
        named = [cases[k] for k in members] + [
            dict(depth=depth, decay="uniform", q=q, eps=0.0) for q in uniform
        ]
        x, ok = _by_region(_MIRROR_BATCH[depth], named, columns)
        for case, x_k, ok_k in zip(named, x, ok, strict=True):
            assert ok_k, ("mirror", case)
            mirror_x[tuple(case.values())] = x_k
    return cases, factor_x, mirror_x


def test_factor_flow_equals_mirror_flow(flows):
    """Thm 4.6: the structured factor flow mapped to x equals the x-space mirror flow, at every
    depth, decay (none, constant 0.3, cosine schedule) and geometry."""
    cases, factor_x, mirror_x = flows
    for k, case in enumerate(cases):
        mirror = mirror_x[tuple(case.values())]
        scale = np.max(np.abs(factor_x[k]))
        error = np.max(np.abs(factor_x[k] - mirror)) / scale
        assert error <= 1e-6, (case, error)


def test_naive_smoothing_departs_from_mirror_flow(flows):
    """Measured: the naive smoothing's x(t) leaves the smoothed mirror flow by O(1e-2). The
    mirror flow is the (depth 3, no decay, q = 1, ε = 1e-3) one of `flows`, from the same x."""
    _, _, mirror_x = flows
    mirror = mirror_x[(3, "none", 1.0, 1e-3)]
    problem = small_regression()
    model = mf.DeepDiagonal.balanced(_w1(3), BALANCE_C, q=1.0, depth=3)
    naive = mf.solve_flow(
        mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at="naive"),
        model,
        problem,
        1.0,
        saveat=TS,
        stepsize_controller=TIGHT,
    )
    np.testing.assert_allclose(mirror[0], naive.x[0], rtol=1e-14)  # the same start
    departure = float(np.max(np.abs(naive.x - mirror)) / np.max(np.abs(mirror)))
    print(
        f"naive smoothing vs mirror flow, q=1, eps=1e-3, L=3: relative departure {departure:.3g}"
    )
    assert departure > 1e-3


CONVERGED = diffrax.PIDController(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c", [1.0, 0.1])
def test_gradient_flow_limit_is_bregman_argmin(c):
    """GF at q = 2, L = 2 converges to argmin_{Ax=b} D_R(x, x₀) for every c > 0."""
    problem = small_regression()
    w1 = 0.3 * jax.random.normal(jax.random.key(2), (problem.dim,), dtype=jnp.float64)
    model = mf.DeepDiagonal.balanced(w1, c, q=2.0, depth=2)
    sol = mf.solve_flow(
        mf.SteepestFlow(mf.Lp(2.0)), model, problem, 2000.0, stepsize_controller=CONVERGED
    )
    assert float(sol.loss[-1]) < 1e-18
    predicted = implicit_bias(DeepDiagonalMirror(2.0, 2, c), problem.A, problem.b, model())
    assert bool(predicted.converged) and float(predicted.residual) < 1e-12
    np.testing.assert_allclose(sol.x[-1], predicted.x, atol=1e-5)


def test_square_diff_limit_is_woodworth_potential_argmin():
    problem = small_regression()
    alpha = 0.3
    model = mf.SquareDiff.scaled(alpha, dim=problem.dim)
    sol = mf.solve_flow(
        mf.SteepestFlow(mf.Lp(2.0)), model, problem, 5000.0, stepsize_controller=CONVERGED
    )
    predicted = implicit_bias(
        SquareDiffMirror(alpha), problem.A, problem.b, jnp.zeros(problem.dim)
    )
    np.testing.assert_allclose(sol.x[-1], predicted.x, atol=1e-5)


def test_small_scale_approaches_minimum_l1():
    """Q_α → ℓ1 as α → 0: compare the predicted limits with a linear program."""
    problem = small_regression()
    A, b = np.asarray(problem.A), np.asarray(problem.b)
    d = A.shape[1]
    lp = optimize.linprog(np.ones(2 * d), A_eq=np.hstack([A, -A]), b_eq=b, bounds=(0, None))
    l1 = lp.x[:d] - lp.x[d:]
    np.testing.assert_allclose(mf.min_l1_interpolant(A, b), l1, atol=1e-12)
    distance = [
        float(np.max(np.abs(implicit_bias(SquareDiffMirror(a), A, b, np.zeros(d)).x - l1)))
        for a in (1e-1, 1e-2, 1e-3)
    ]
    assert distance[0] > distance[1] > distance[2]
    assert distance[2] < 1e-3


# ----------------------------------------------------------------------------- implicit bias


class _CountingMirror(AbstractMirror):
    """∇R(x) = arcsinh(x/(2α²)) (`SquareDiffMirror`'s map), counting how often it is traced."""

    alpha: jax.Array
    traces: list = eqx.field(static=True)

    def grad(self, x):
        self.traces.append(None)
        return jnp.arcsinh(x / (2 * self.alpha**2))

    def grad_inverse(self, z):
        return 2 * self.alpha**2 * jnp.sinh(z)

    def potential(self, x):
        return SquareDiffMirror(self.alpha).potential(x)


def test_implicit_bias_is_the_kkt_point_and_compiles_once():
    """Optimality: ∇R(x) − ∇R(x₀) ∈ range(Aᵀ) and Ax = b, checked by least squares; a second
    call with another α and other data reuses the compiled program."""
    traces = []
    for seed, alpha in [(0, 0.3), (1, 0.1)]:
        problem = small_regression(seed)
        A, b, x0 = problem.A, problem.b, 0.1 * jnp.ones(problem.dim)
        mirror = _CountingMirror(jnp.asarray(alpha), traces)
        bias = implicit_bias(mirror, A, b, x0)
        if seed == 0:
            first = len(traces)
        x = np.asarray(bias.x)
        residual = np.max(np.abs(np.asarray(A) @ x - np.asarray(b)))
        assert bool(bias.converged) and residual < 1e-12
        np.testing.assert_allclose(bias.residual, residual, rtol=1e-6, atol=1e-16)
        shift = np.arcsinh(x / (2 * alpha**2)) - np.arcsinh(np.asarray(x0) / (2 * alpha**2))
        nu = np.linalg.lstsq(np.asarray(A).T, shift, rcond=None)[0]
        np.testing.assert_allclose(np.asarray(A).T @ nu, shift, atol=1e-9)
    assert first > 0 and len(traces) == first


def test_implicit_bias_flags_an_inconsistent_system():
    bias = implicit_bias(
        SquareDiffMirror(0.5),
        jnp.array([[1.0, 0.0, 0.0]] * 2),
        jnp.array([1.0, 2.0]),
        jnp.zeros(3),
    )
    assert not bool(bias.converged)
    assert not float(bias.residual) < 0.5  # Ax = b is off by at least 1/2 (or x is not finite)


def test_implicit_bias_bad_setup():
    with pytest.raises(ValueError, match="`A`, `b` and `x0` must have shapes"):
        implicit_bias(SquareDiffMirror(0.5), jnp.ones((2, 3)), jnp.ones(3), jnp.zeros(3))
    with pytest.raises(ValueError, match="`mirror` must be an AbstractMirror"):
        implicit_bias(object(), jnp.ones((2, 3)), jnp.ones(2), jnp.zeros(3))


# ----------------------------------------------------------------------------- c = 0


@pytest.mark.parametrize("q, depth", SHAPES)
def test_uniform_init_metric_and_first_factor(q, depth):
    """c = 0: a = |x|^(q/L) and h = L·|x|^(q(L−1)/L) = Σ_i ∏_{j≠i} |w_j|^q at w_i = |x|^(1/L)."""
    mirror = DeepDiagonalMirror(q, depth, 0.0)
    x = X[X != 0]
    np.testing.assert_allclose(mirror.first_factor(x), np.abs(x) ** (q / depth), rtol=1e-12)
    w = np.abs(np.asarray(x)) ** (1 / depth)
    by_factors = depth * (w**q) ** (depth - 1)
    np.testing.assert_allclose(mirror.metric(x), by_factors, rtol=1e-12)
    np.testing.assert_allclose(
        mirror.metric(x), depth * np.abs(x) ** (q * (depth - 1) / depth), rtol=1e-12
    )
    assert float(mirror.metric(jnp.zeros(1))[0]) == (1.0 if depth == 1 else 0.0)


@pytest.mark.parametrize("q, depth", [(1.25, 3), (1.5, 2), (1.0, 4)])
def test_uniform_init_potential_by_quadrature(q, depth):
    """(L−1)(q−1) < 1: ∇R(x) = ∫_0^x ds/h(s) and R(x) = ∫_0^x ∇R by scipy quadrature; the
    per-coordinate c = (0, 0.3) agrees with the scalar mirrors."""
    mirror = DeepDiagonalMirror(q, depth, 0.0)
    m = q * (depth - 1) / depth
    for x in (-2.5, 0.01, 0.8, 40.0):
        grad = integrate.quad(lambda s: 1 / (depth * abs(s) ** m), 0.0, abs(x), epsrel=1e-12)[0]
        np.testing.assert_allclose(mirror.grad(jnp.array([x])), np.sign(x) * grad, rtol=1e-9)
        potential = integrate.quad(lambda s: float(mirror.grad(s)), 0.0, x, epsrel=1e-12)[0]
        np.testing.assert_allclose(mirror.potential(jnp.array([x])), potential, rtol=1e-8)
        z = mirror.grad(jnp.array([x]))
        np.testing.assert_allclose(mirror.grad_inverse(z), [x], rtol=1e-10)
    mixed = DeepDiagonalMirror(q, depth, jnp.array([0.0, 0.3]))
    xs = jnp.array([0.7, 0.7])
    singles = [DeepDiagonalMirror(q, depth, c).grad(xs[:1])[0] for c in (0.0, 0.3)]
    np.testing.assert_allclose(mixed.grad(xs), singles, rtol=1e-13)
    grads = jax.grad(lambda v: mixed.potential(v))(xs)
    assert bool(jnp.all(jnp.isfinite(grads)))


def test_uniform_init_potential_diverges_for_large_exponent():
    """(L−1)(q−1) ≥ 1 (here q = 2, L = 2): ∫_0 ds/h diverges, ∇R is infinite off 0."""
    mirror = DeepDiagonalMirror(2.0, 2, 0.0)
    np.testing.assert_array_equal(mirror.grad(jnp.array([-1.0, 0.0, 2.0])), [-np.inf, 0.0, np.inf])
    assert bool(jnp.isnan(mirror.grad_inverse(jnp.array([1.0]))[0]))


def _factor_flow_scipy(A, b, q, depth, alpha, ts):
    """The exact steepest flow dw_i/dt = −φ_q(g ⊙ ∏_{j≠i} w_j) of x = ∏ w_i from w_i = α,
    g = Aᵀ(Ax − b)/n, by scipy's DOP853: an integrator independent of the toolkit."""
    n, d = A.shape

    def phi(u):
        return np.sign(u) * np.abs(u) ** (q - 1)

    def rhs(_, flat):
        w = flat.reshape(depth, d)
        g = A.T @ (A @ np.prod(w, axis=0) - b) / n
        others = np.stack([np.prod(np.delete(w, i, axis=0), axis=0) for i in range(depth)])
        return -phi(g * others).ravel()

    w0 = np.full(depth * d, alpha)
    sol = integrate.solve_ivp(
        rhs, (0, ts[-1]), w0, t_eval=ts, method="DOP853", rtol=1e-12, atol=1e-14
    )
    return np.prod(sol.y.reshape(depth, d, -1), axis=0).T


@pytest.mark.parametrize("q, depth", UNIFORM_CASES)
def test_mirror_flow_at_c_zero_equals_the_factor_flow_from_a_uniform_init(flows, q, depth):
    """The mirror flow at c = 0 (solved in `flows`, with the c = 0.2 ones of its depth)
    against scipy's DOP853 on the factor flow from w_i = α."""
    _, _, mirror_x = flows
    x = mirror_x[(depth, "uniform", q, 0.0)]
    problem = small_regression()
    A, b = np.asarray(problem.A), np.asarray(problem.b)
    expected = _factor_flow_scipy(A, b, q, depth, UNIFORM_ALPHA, np.asarray(TS))
    assert np.max(np.abs(expected[-1] - expected[0])) > 1e-2  # it moved
    np.testing.assert_allclose(x, expected, rtol=1e-8, atol=1e-10)


class _Euclidean(AbstractMirror):
    """R(x) = ½‖x‖²: a user's own mirror, with bregman inherited."""

    def potential(self, x):
        return 0.5 * jnp.sum(jnp.asarray(x) ** 2)

    def grad(self, x):
        return jnp.asarray(x)

    def grad_inverse(self, z):
        return jnp.asarray(z)


def test_bregman_is_the_integral_of_the_gradient_gap():
    """D_R(x, y) = Σ_j ∫_{y_j}^{x_j} (∇R(s) − ∇R(y_j)) ds, by scipy quadrature, for both
    toolkit mirrors; ½‖x − y‖² for the Euclidean one."""
    x, y = np.array([0.3, -1.0, 2.0]), np.array([0.1, 0.5, 2.0])
    for mirror in (DeepDiagonalMirror(1.5, 3, 0.3), SquareDiffMirror(0.4)):
        reference = sum(
            integrate.quad(
                lambda s, b=b, mirror=mirror: float(
                    mirror.grad(jnp.array([s]))[0] - mirror.grad(jnp.array([b]))[0]
                ),
                b,
                a,
                epsrel=1e-12,
            )[0]
            for a, b in zip(x, y, strict=True)
        )
        np.testing.assert_allclose(float(mirror.bregman(x, y)), reference, rtol=1e-9)
    np.testing.assert_allclose(float(_Euclidean().bregman(x, y)), 0.5 * np.sum((x - y) ** 2))


def test_implicit_bias_takes_a_users_mirror():
    """With R = ½‖x‖² the argmin of D_R(x, x₀) over Ax = b is the projection
    x₀ + A⁺(b − Ax₀) (NumPy's pseudo-inverse)."""
    problem = mf.sparse_regression(jax.random.key(3), n=4, d=9, k=2)
    x0 = jnp.linspace(-1.0, 1.0, 9)
    bias = implicit_bias(_Euclidean(), problem.A, problem.b, x0)
    A, b = np.asarray(problem.A), np.asarray(problem.b)
    expected = np.asarray(x0) + np.linalg.pinv(A) @ (b - A @ np.asarray(x0))
    assert bool(bias.converged)
    np.testing.assert_allclose(bias.x, expected, rtol=1e-9, atol=1e-10)
