"""The paper's laws for the factor flow (docs/theory.md §1, §3, §5), each against an independent
computation: a closed form or a quadrature of the one-dimensional ODE.

Compile budget: cases that differ only in values share one compiled program. Depths share one
through `Padded` models (max depth 4), the
three decay kinds through one schedule module (`Decay`), and each vmapped call asserts per case
with a message naming it."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
from scipy import integrate

import mirrorflow_jax as mf

from .helpers import (
    COSINE,
    DECAYS,
    DEPTHS,
    EXACT_GEOMETRIES,
    SMOOTHED_GEOMETRIES,
    TIGHT,
    Decay,
    positive_signed_model,
    small_regression,
    toy_escape_time,
)

GEOMETRIES = EXACT_GEOMETRIES + SMOOTHED_GEOMETRIES
MAX_DEPTH = max(DEPTHS)
T1 = 1.0  # before the exact q = 1.5 flow reaches its non-Lipschitz minimum
TS = jnp.linspace(0.0, T1, 7)


def _decay_integral(kind, t):
    if kind == "none":
        return 0.0
    if kind == "constant":
        return 0.3 * t
    return integrate.quad(lambda s: float(COSINE(s)), 0.0, t, epsabs=1e-14)[0]


def _pad(stack, depth=MAX_DEPTH):
    """A (L, dim) factor stack padded with zero rows to (depth, dim)."""
    stack = np.asarray(stack)
    return np.concatenate([stack, np.zeros((depth - stack.shape[0], stack.shape[1]))])


# ---------------------------------------------------------------- balance and ε → 0 (one solve)

APPROACH_EPS = (0.0, 1e-1, 1e-2, 1e-3)
APPROACH_T1 = 0.05


def _signed_cases():
    """Every structured solve of the signed model on the regression at TIGHT tolerances: the
    balance law over depth × decay × geometry (t1 = 1) and the ε → 0 limit (depth 2,
    t1 = 0.05)."""
    cases = []
    for depth in DEPTHS:
        for decay in DECAYS:
            for q, eps in GEOMETRIES:
                cases.append(dict(law="balance", depth=depth, decay=decay, q=q, eps=eps, t1=T1))
    for q in (1.0, 1.5):
        for eps in APPROACH_EPS:
            cases.append(dict(law="approach", depth=2, decay="none", q=q, eps=eps, t1=APPROACH_T1))
    return cases


def _signed_run(q, eps, u, v, depth, level, scale, t1, *, solver):
    problem = small_regression()
    flow = mf.SteepestFlow(mf.Lp(q, eps), decoupled_wd=Decay(level, scale))
    model = mf.Padded(mf.SignedDeepDiagonal(u, v), depth)
    ts = jnp.linspace(0.0, t1, len(TS))
    sol = mf.solve_flow(
        flow, model, problem, t1, saveat=ts, solver=solver, stepsize_controller=TIGHT
    )
    return dict(x=sol.x, balance=sol.balance, ok=sol.ok)


# One explicit solver per vmapped call (a vmapped "auto" with traced q, ε compiles a switch over
# three solvers, each run over the whole batch): `SignFlowKvaerno3` for the smoothed sign flow,
# as "auto" takes (Tsit5's stiffness watch ends those solves with `stiff`), and Tsit5 for every
# other (q, ε) of these tests ("auto" takes Rodas4 for 1 < q < 2, ε > 0, where Tsit5, watched
# for stiffness, takes fewer steps on these short intervals; every solve must end ok).
REGION_SOLVERS = {"sign": mf.SignFlowKvaerno3(), "explicit": diffrax.Tsit5()}


def _region(case):
    return "sign" if case["q"] == 1 and case["eps"] > 0 else "explicit"


@functools.cache
def _batch(run, region):
    return jax.jit(jax.vmap(functools.partial(run, solver=REGION_SOLVERS[region])))


def _by_region(run, cases, columns):
    """``jax.vmap(run)`` over ``columns`` (one row per case), one jitted call per solver
    region, reassembled in case order as NumPy arrays."""
    groups = {}
    for k, case in enumerate(cases):
        groups.setdefault(_region(case), []).append(k)
    order, parts = [], []
    for region, members in groups.items():
        parts.append(_batch(run, region)(*[column[np.array(members)] for column in columns]))
        order += members
    inverse = np.argsort(order)
    return jax.tree.map(lambda *leaves: np.concatenate(leaves)[inverse], *parts)


@pytest.fixture(scope="module")
def signed_runs():
    """(cases, solution, inputs): the balance runs from positive_signed_model(L, L, d), the
    ε → 0 runs from positive_signed_model(7, 2, d), padded to depth 4."""
    cases = _signed_cases()
    dim = small_regression().dim
    models = [
        positive_signed_model(c["depth"] if c["law"] == "balance" else 7, c["depth"], dim)
        for c in cases
    ]
    columns = [
        np.array([c["q"] for c in cases]),
        np.array([c["eps"] for c in cases]),
        np.array([_pad(m.u) for m in models]),
        np.array([_pad(m.v) for m in models]),
        np.array([c["depth"] for c in cases]),
        np.array([DECAYS[c["decay"]][0] for c in cases]),
        np.array([DECAYS[c["decay"]][1] for c in cases]),
        np.array([c["t1"] for c in cases]),
    ]
    sol = _by_region(_signed_run, cases, columns)
    for k, case in enumerate(cases):
        assert sol["ok"][k], case
    return cases, sol, columns


def test_balance_law(signed_runs):
    """|w_i|^q − |w_1|^q = (initial)·exp(−q∫α): exact φ and the structured smoothing, at every
    depth in DEPTHS and decay none / constant 0.3 / cosine schedule."""
    cases, sol, _ = signed_runs
    balance = sol["balance"]  # (case, T, u/v, MAX_DEPTH − 1, dim), NaN on padding
    checked = 0
    for k, case in enumerate(cases):
        if case["law"] != "balance":
            continue
        rows = balance[k, :, :, : case["depth"] - 1]
        assert np.all(np.isfinite(rows)), case
        b0 = rows[0]
        for j, t in enumerate(np.asarray(TS)):
            predicted = b0 * np.exp(-case["q"] * _decay_integral(case["decay"], t))
            error = np.max(np.abs(rows[j] - predicted))
            assert error <= 1e-8 * np.max(np.abs(b0)), (case, t, error)
        checked += 1
    assert checked == len(DEPTHS) * len(DECAYS) * len(GEOMETRIES)
    # which smoothing the solves applied (FlowSolution.smoothing_at is this)
    padded = mf.Padded(positive_signed_model(4, 4, small_regression().dim), 3)
    assert mf.SteepestFlow(mf.Lp(1.0, 1e-3)).smoothing_for(padded) == "structured"


def test_float_decay_is_the_constant_schedule():
    """The balance law runs the decay kinds as `Decay` values; a float ``decoupled_wd`` is
    the same constant α(t), and the flow reads α only through ``decay_rate``."""
    for level in (0.0, 0.3):
        by_float = mf.SteepestFlow(mf.Lp(1.5), decoupled_wd=level)
        by_module = mf.SteepestFlow(mf.Lp(1.5), decoupled_wd=Decay(jnp.array(level), 0.0))
        for t in (0.0, 0.7):
            assert float(by_float.decay_rate(t)) == float(by_module.decay_rate(t)) == level


def test_smoothed_flow_approaches_exact(signed_runs):
    """Away from ∇f = 0 the smoothed trajectory converges to the exact one as ε → 0 (q = 1 and
    q = 1.5, at t = 0, 0.025, 0.05)."""
    cases, sol, _ = signed_runs
    problem = small_regression()
    model = positive_signed_model(7, 2, problem.dim)
    g0 = jax.grad(problem)(model())
    assert float(jnp.min(jnp.abs(g0))) > 1e-2  # the regime the claim is about
    x = sol["x"][:, ::3]  # t = 0, 0.025, 0.05
    for q in (1.0, 1.5):
        at = {c["eps"]: k for k, c in enumerate(cases) if c["law"] == "approach" and c["q"] == q}
        exact = x[at[0.0]]
        errors = [float(np.max(np.abs(x[at[e]] - exact))) for e in APPROACH_EPS[1:]]
        # the smoothing error is O(ε²) where |∇f| ≫ ε: at least a factor 10 per decade of ε
        assert errors[1] < errors[0] / 10 and errors[2] < errors[1] / 10, (q, errors)
        assert errors[2] < 1e-5, (q, errors)


# ------------------------------------------------------------------ the naive smoothing's damage

SIGN_SMOOTHED = mf.Lp(1.0, 1e-3)
NAIVE_CONTROLLER = diffrax.PIDController(rtol=1e-8, atol=1e-10)


def _balanced_starts():
    """The balanced depth-2 init u_i = v_i = 1e-2 and a copy nudged by 1e-12 relative."""
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=2, dim=small_regression().dim)
    noise = jax.tree.map(lambda a: jax.random.normal(jax.random.key(7), a.shape), model)
    nudged = jax.tree.map(lambda a, z: a * (1 + 1e-12 * z), model, noise)
    return model, nudged


def _naive_run(u, v, depth, t1):
    flow = mf.SteepestFlow(SIGN_SMOOTHED, smoothing_at="naive")
    model = mf.Padded(mf.SignedDeepDiagonal(u, v), depth)
    ts = jnp.linspace(0.0, t1, len(TS))
    solver = mf.SignFlowKvaerno3()  # what "auto" takes; its tolerances from the controller
    controller = NAIVE_CONTROLLER
    sol = mf.solve_flow(
        flow,
        model,
        small_regression(),
        t1,
        saveat=ts,
        solver=solver,
        stepsize_controller=controller,
    )
    return dict(x=sol.x, balance=sol.balance, ok=sol.ok)


@pytest.fixture(scope="module")
def naive_runs():
    """The naive smoothing's solves, one vmapped call: the unbalanced depth-3 model over
    [0, 1] and the balanced depth-2 starts over [0, 10] (padded to depth 3)."""
    unbalanced = positive_signed_model(3, 3, small_regression().dim)
    models = [unbalanced, *_balanced_starts()]
    pad = functools.partial(_pad, depth=3)
    columns = [
        np.array([pad(m.u) for m in models]),
        np.array([pad(m.v) for m in models]),
        np.array([3, 2, 2]),
        np.array([T1, 10.0, 10.0]),
    ]
    sol = jax.tree.map(np.asarray, jax.jit(jax.vmap(_naive_run))(*columns))
    assert np.all(sol["ok"])
    return sol, columns


MEMBER_FIELDS = ("law", "depth", "decay", "q", "eps")


def test_naive_smoothing_breaks_balance(signed_runs, naive_runs):
    """Measured, not hidden: the naive smoothing drifts by O(1e-2) where the structured one
    conserves to 1e-8 (docs/theory.md §1 gives the measured drifts). The structured run is
    the balance law's (depth 3, no decay, q = 1, ε = 1e-3) member, from the same model."""
    cases, runs, inputs = signed_runs
    naive_sol, naive_inputs = naive_runs
    member = ("balance", 3, "none", 1.0, 1e-3)
    [k] = [k for k, c in enumerate(cases) if tuple(c[f] for f in MEMBER_FIELDS) == member]
    start = positive_signed_model(3, 3, small_regression().dim)
    for u, v in [(inputs[2][k, :3], inputs[3][k, :3]), (naive_inputs[0][0], naive_inputs[1][0])]:
        np.testing.assert_array_equal(u, start.u)  # the same start
        np.testing.assert_array_equal(v, start.v)
    structured = runs["balance"][k][:, :, :2]  # the real rows of depth 3
    naive = naive_sol["balance"][0]
    drift = {
        "naive": float(np.max(np.abs(naive[-1] - naive[0]))),
        "structured": float(np.max(np.abs(structured[-1] - structured[0]))),
    }
    print(f"balance drift at q=1, eps=1e-3, t={T1}: {drift}")
    assert drift["structured"] < 1e-8
    assert drift["naive"] > 1e-3


@eqx.filter_jit
def _structured_ends(starts):
    flow = mf.SteepestFlow(SIGN_SMOOTHED, smoothing_at="structured")
    solver = mf.SignFlowKvaerno3(rtol=1e-8, atol=1e-10)

    def end(start):
        controller = NAIVE_CONTROLLER
        sol = mf.solve_flow(
            flow, start, small_regression(), 10.0, solver=solver, stepsize_controller=controller
        )
        return sol.x[-1]

    return jax.vmap(end)(starts)


def test_naive_smoothing_amplifies_asymmetry_of_balanced_depth_two(naive_runs):
    """From the balanced init at depth 2 the naive flow keeps equal factors equal, but their
    difference grows at a rate up to |∇f|/ε inside the layer: a 1e-12 relative perturbation
    of the init moves the endpoint by more than 1e-7 (0.022 … 0.025 measured on three seeds),
    where the structured flow, which moves both factors with one velocity, moves it by less
    than 1e-9 (solver noise at rtol 1e-8: 1.7e-12 … 6.5e-11). benchmarks/bench_precision.py
    measures 0.09 on a larger problem."""
    naive_sol, naive_inputs = naive_runs
    model, nudged = _balanced_starts()
    np.testing.assert_array_equal(naive_inputs[0][1:, :2], [model.u, nudged.u])  # the starts
    np.testing.assert_array_equal(naive_inputs[1][1:, :2], [model.v, nudged.v])
    naive = naive_sol["x"][1:, -1]
    structured = _structured_ends(jax.tree.map(lambda a, b: jnp.stack([a, b]), model, nudged))
    moved = {
        "naive": float(np.max(np.abs(naive[1] - naive[0]))),
        "structured": float(jnp.max(jnp.abs(structured[1] - structured[0]))),
    }
    assert moved["naive"] > 1e-7, moved
    assert moved["structured"] < 1e-9, moved


# ---------------------------------------------------------------------------- saddle speed

SADDLE_GEOMETRIES = [(1.0, 0.0), (1.0, 1e-3), (1.5, 0.0), (2.0, 0.0)]
SADDLE_H = 1e-6


@eqx.filter_jit
def _saddle_speeds(q, eps, factors, depth):
    """Per member: the velocity's ẋ, ∇f(x) and, from a solve over [0, h], (x(h) − x(0))/h.

    One explicit solver (Tsit5) for every geometry: over h = 1e-6 the smoothed field is not
    stiff (h/ε = 1e-3), and the claim is about the speed, not the solver."""
    problem = small_regression()

    def one(q, eps, factors, depth):
        model = mf.Padded(mf.DeepDiagonal(factors), depth)
        flow = mf.SteepestFlow(mf.Lp(q, eps))
        velocity = flow(0.0, model, problem)
        _, x_dot = jax.jvp(lambda m: m(), (model,), (velocity,))
        g = jax.grad(problem)(model())
        sol = mf.solve_flow(
            flow, model, problem, SADDLE_H, solver=diffrax.Tsit5(), stepsize_controller=TIGHT
        )
        return x_dot, g, (sol.x[-1] - sol.x[0]) / SADDLE_H, sol.ok

    return jax.vmap(one)(q, eps, factors, depth)


def test_saddle_speed():
    """At w_1 = 0, w_i = λ the speed of x is λ^(q(L−1))·|φ^ε_q-part of ∇f| (docs/theory.md §5),
    for every depth in DEPTHS and q, ε in SADDLE_GEOMETRIES."""
    dim, lam = small_regression().dim, 0.3
    cases = [(depth, q, eps) for depth in DEPTHS for q, eps in SADDLE_GEOMETRIES]
    factors = jnp.array(
        [_pad(mf.DeepDiagonal.saddle(lam, depth=depth, dim=dim).factors) for depth, _, _ in cases]
    )
    q, eps = jnp.array([c[1:] for c in cases]).T
    depth = jnp.array([c[0] for c in cases])
    x_dots, gs, measured, ok = map(np.asarray, _saddle_speeds(q, eps, factors, depth))
    for k, (depth, q, eps) in enumerate(cases):
        g = gs[k]
        phi_g = g * (g * g + eps * eps) ** ((q - 2) / 2) if eps else np.abs(g) ** (q - 1)
        np.testing.assert_allclose(
            np.abs(x_dots[k]),
            lam ** (q * (depth - 1)) * np.abs(phi_g),
            rtol=1e-12,
            err_msg=str(cases[k]),
        )
        # The same speed, measured from a short solve: (x(h) − x(0))/h.
        assert ok[k], cases[k]
        np.testing.assert_allclose(
            measured[k], x_dots[k], rtol=1e-4, atol=1e-12, err_msg=str(cases[k])
        )


# ---------------------------------------------------------------------------- escape times

ALPHAS = np.logspace(-3, -1, 5)
TOY = mf.ScalarToy()
# Padded to depth 4: the padding's zero errors would loosen the RMS norm; in the max norm the
# padded scale-α solve (all real entries equal) takes exactly the unpadded model's steps.
DEFAULT_TOLERANCES = (1e-8, 1e-10)  # solve_flow's default controller


def _escape_time(q, depth, alpha, t1, rtol, atol):
    """Escape time of the exact flow on the scalar toy from the scale-α init (depth traced)."""
    model = mf.Padded(mf.DeepDiagonal.scaled(alpha, depth=MAX_DEPTH, dim=1), depth)
    controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=optx.max_norm)
    return mf.solve_flow(
        mf.SteepestFlow(mf.Lp(q)),
        model,
        TOY,
        t1,
        event=mf.NormAbove(0.5),
        solver=diffrax.Tsit5(),  # what "auto" takes for every exact map
        stepsize_controller=controller,
    )


@jax.jit
def _escape_batch(q, depth, alpha, t1, rtol, atol):
    sol = jax.vmap(_escape_time)(q, depth, alpha, t1, rtol, atol)
    return sol.event_time, sol.ok


@jax.jit
@jax.grad
def _escape_gradient(alpha, q, depth, t1, rtol, atol):
    """dT/dα, reverse mode through the solve and the event's root find (one program for every
    q: not vmapped, which compiles a larger program)."""
    return _escape_time(q, depth, alpha, t1, rtol, atol).event_time


def _as_columns(rows):
    return [jnp.array(column) for column in zip(*rows, strict=True)]


@pytest.fixture(scope="module")
def escapes():
    """Every exact-flow escape time of this file from one compiled program: a dict from
    (q, depth, alpha, t1, rtol, atol) to the time (every solve ok)."""
    rows = []
    for q, depth in [(1.0, 2), (1.0, 3), (1.0, 4), (2.0, 2), (2.0, 3), (2.0, 4)]:
        rows += [(q, depth, a, 1e12, *DEFAULT_TOLERANCES) for a in ALPHAS]
    rows += [(2.0, 3, a, 1e12, 1e-10, 1e-24) for a in (1e-8, 1e-10)]
    rows += [(q, 3, a, 1e6, 1e-12, 1e-14) for q in GRADIENT_QS for a in (0.05 + 1e-5, 0.05 - 1e-5)]
    times, ok = _escape_batch(*_as_columns(rows))
    for row, fine in zip(rows, np.asarray(ok), strict=True):
        assert fine, row
    return dict(zip(rows, np.asarray(times).tolist(), strict=True))


@pytest.mark.parametrize(
    "q, depth, slope",
    [(1.0, 2, 0.0), (1.0, 3, 0.0), (1.0, 4, 0.0), (2.0, 3, -1.0), (2.0, 4, -2.0)],
)
def test_escape_time_exponent(escapes, q, depth, slope):
    """Fitted d log T / d log α: 0 for SignGF, −(L−2) for GF at L ≥ 3; and T itself agrees
    with a quadrature of the one-dimensional balanced ODE."""
    times = np.array([escapes[(q, depth, a, 1e12, *DEFAULT_TOLERANCES)] for a in ALPHAS])
    reference = [toy_escape_time(a, q, depth) for a in ALPHAS]
    np.testing.assert_allclose(times, reference, rtol=1e-6)
    fitted = np.polyfit(np.log(ALPHAS), np.log(times), 1)[0]
    assert abs(fitted - slope) <= 0.15, fitted


def test_large_escape_times_are_located(escapes):
    """At escape times 1e8–1e10 the event function cannot get within the root finder's atol of
    0 (float spacing of t times its slope exceeds it); `EventNewton` stops once t is resolved,
    so the solve succeeds and T agrees with the quadrature. With optimistix's Newton alone
    the same solves report a failed root find (measured: T = 1e8 at α = 1e-8). The default
    atol (1e-10) is no error control for w ≈ α ≤ 1e-8 (measured: T off by 5e-6 and 1e-3
    relative), hence atol ≪ α here."""
    alphas = [1e-8, 1e-10]
    times = np.array([escapes[(2.0, 3, a, 1e12, 1e-10, 1e-24)] for a in alphas])  # every ok
    reference = [toy_escape_time(a, 2.0, 3) for a in alphas]
    np.testing.assert_allclose(times, reference, rtol=1e-6)
    assert times[-1] > 5e9


def test_escape_time_gf_depth_two_grows_like_log(escapes):
    times = np.array([escapes[(2.0, 2, a, 1e12, *DEFAULT_TOLERANCES)] for a in ALPHAS])
    np.testing.assert_allclose(times, [toy_escape_time(a, 2.0, 2) for a in ALPHAS], rtol=1e-6)
    growth = np.polyfit(np.log(1 / ALPHAS), times, 1)[0]
    assert abs(growth - 1.0) <= 0.05, growth


def _smoothed_escape_time(smoothing_at):
    """SignGF ε = 1e-3 at L = 4 from α = 1e-3 ("auto" solver, default controller)."""
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at=smoothing_at)
    model = mf.DeepDiagonal.scaled(1e-3, depth=4, dim=1)
    sol = mf.solve_flow(flow, model, TOY, 1e12, event=mf.NormAbove(0.5), max_steps=20_000)
    assert bool(sol.ok), smoothing_at
    return float(sol.event_time)


def test_naive_smoothing_slows_escape_by_orders_of_magnitude(escapes):
    """SignGF at L = 4 from α = 1e-3 with ε = 1e-3: the naive smoothing is gradient flow
    scaled by 1/ε near the saddle, escaping at t ≈ 500 instead of ≈ 0.84."""
    exact = escapes[(1.0, 4, 1e-3, 1e12, *DEFAULT_TOLERANCES)]
    structured = _smoothed_escape_time("auto")
    naive = _smoothed_escape_time("naive")
    print(f"SignGF escape, L=4, alpha=1e-3: exact {exact}, structured {structured}, naive {naive}")
    np.testing.assert_allclose(exact, 0.5**0.25 - 1e-3, rtol=1e-9)
    np.testing.assert_allclose(structured, toy_escape_time(1e-3, 1.0, 4, 1e-3), rtol=1e-6)
    np.testing.assert_allclose(naive, toy_escape_time(1e-3, 1.0, 4, 1e-3, True), rtol=1e-6)
    assert naive > 300 * exact
    assert abs(structured - exact) < 1e-5


GRADIENT_QS = (2.0, 1.5)


def test_escape_time_gradient_matches_finite_differences(escapes):
    """dT/dα through the solve (q = 2 and 1.5, depth 3) against central differences and the
    closed form."""
    alpha, h = 0.05, 1e-5
    for q in GRADIENT_QS:
        grad = float(_escape_gradient(*map(jnp.asarray, (alpha, q, 3, 1e6, 1e-12, 1e-14))))
        up, down = (escapes[(q, 3, a, 1e6, 1e-12, 1e-14)] for a in (alpha + h, alpha - h))
        fd = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-5, err_msg=f"q={q}")
        # and the closed form dT/dα = −1/(dw/dt at w = α) of the balanced scalar ODE
        speed = (1 - alpha**3) ** (q - 1) * alpha ** (2 * (q - 1))
        np.testing.assert_allclose(grad, -1 / speed, rtol=1e-6, err_msg=f"q={q}")
