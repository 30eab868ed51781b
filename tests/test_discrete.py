"""Discrete optax optimizers against the flows (docs/theory.md §1, §5): the ℓ_p transform against
optax's own optimizers and written-out formulas, the scan runner against a Python loop, O(η)
gaps to the flows, and discrete saddle escape against quadratures and closed forms."""

import operator

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mirrorflow_jax as mf
from mirrorflow_jax import (
    run_optimizer,
    scale_by_steepest,
    steepest_descent,
    step_times,
    steps_at_times,
    steps_to_escape,
    trajectory_gap,
)

from .helpers import small_regression, toy_escape_time

GRADS = {
    "a": jnp.array([1.5, -2.0, 0.0, 3e-12]),
    "b": jnp.array([[0.25, -0.0], [-3.0, 7.0]]),
}
PARAMS = {"a": jnp.array([0.5, -1.0, 2.0, 0.1]), "b": jnp.array([[1.0, -2.0], [0.3, 0.0]])}
CONTROLLER = diffrax.PIDController(rtol=1e-10, atol=1e-12)
ESCAPE = mf.NormAbove(0.5)


def _update(optimizer, grads=GRADS, params=PARAMS):
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return updates


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


# ----------------------------------------------------------------------------- the transform


@pytest.mark.parametrize("q, reference", [(2.0, optax.sgd), (1.0, optax.sign_sgd)])
def test_q2_is_sgd_and_q1_is_sign_sgd_leaf_for_leaf(q, reference):
    ours, theirs = steepest_descent(0.1, q), reference(0.1)
    params = (PARAMS, PARAMS)
    states = (ours.init(PARAMS), theirs.init(PARAMS))
    for _ in range(3):  # a few steps of each, chained through optax.apply_updates
        grads = jax.grad(lambda p: jnp.sum(jnp.sin(3 * p["a"])) + jnp.sum(p["b"] ** 3))
        outs = [
            opt.update(grads(p), s, p)
            for opt, p, s in zip((ours, theirs), params, states, strict=True)
        ]
        _assert_trees_equal(outs[0][0], outs[1][0])
        states = tuple(out[1] for out in outs)
        params = tuple(optax.apply_updates(p, out[0]) for p, out in zip(params, outs, strict=True))
    _assert_trees_equal(*params)


@pytest.mark.parametrize("smoothing", ["sqrt", "tanh"])
def test_steepest_descent_matches_written_out_formula(smoothing):
    lr, q, eps, decay = 0.1, 1.5, 1e-2, 0.3

    def phi(g):
        g = np.asarray(g)
        if smoothing == "sqrt":
            return g * (g * g + eps * eps) ** ((q - 2) / 2)
        return np.tanh(g / eps) * np.abs(g) ** (q - 1)

    updates = _update(steepest_descent(lr, q, eps, smoothing=smoothing, decoupled_wd=decay))
    for key in GRADS:
        expected = -lr * (phi(GRADS[key]) + decay * np.asarray(PARAMS[key]))
        np.testing.assert_allclose(updates[key], expected, rtol=1e-13, atol=1e-300)
    chained = optax.chain(
        scale_by_steepest(q, eps, smoothing),
        optax.add_decayed_weights(decay),
        optax.scale_by_learning_rate(lr),
    )
    _assert_trees_equal(updates, _update(chained))


def test_sign_descent_with_decay_is_adamw_without_memory():
    """AdamW with β1 = β2 = 0 and ε → 0 is sign descent with the same decoupled decay."""
    grads = {"a": jnp.array([1.5, -2.0, 0.5]), "b": jnp.array([[0.25, -1.0]])}
    params = {"a": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array([[1.0, -2.0]])}
    ours = _update(steepest_descent(0.1, 1.0, decoupled_wd=0.3), grads, params)
    with jax.numpy_dtype_promotion("standard"):  # optax's β**count under strict promotion
        adamw = _update(
            optax.adamw(0.1, b1=0.0, b2=0.0, eps=1e-13, weight_decay=0.3), grads, params
        )
    for u, v in zip(jax.tree.leaves(ours), jax.tree.leaves(adamw), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-11)


# ----------------------------------------------------------------------------- the runner


def test_runner_saves_the_iterates_of_a_python_loop():
    problem = mf.ScalarToy()
    model = mf.DeepDiagonal(jnp.array([[0.2, 0.5, 0.9], [0.4, 0.3, 1.2]]))
    optimizer = optax.adam(0.05)
    save_steps = np.array([0, 0, 3, 7, 7, 12])
    run = run_optimizer(optimizer, model, problem, 12, save_steps=save_steps)

    expected, params, state = [model], model, optimizer.init(model)
    for _ in range(12):
        grads = jax.grad(lambda m: problem(m()))(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        expected.append(params)
    for j, k in enumerate(save_steps):
        np.testing.assert_allclose(run.params.factors[j], expected[k].factors, rtol=1e-13)
        np.testing.assert_allclose(run.x[j], expected[k](), rtol=1e-13)
        np.testing.assert_allclose(run.loss[j], problem(expected[k]()), rtol=1e-13)
    np.testing.assert_array_equal(run.steps, save_steps)


def test_vmap_over_learning_rates_with_traced_save_steps_matches_single_runs():
    problem = small_regression()
    model = mf.SignedDeepDiagonal.scaled(0.5, depth=2, dim=problem.dim)
    ts = jnp.array([0.0, 0.2, 0.4])

    def run(lr):
        steps = steps_at_times(ts, lr)
        return run_optimizer(steepest_descent(lr, 1.5), model, problem, 40, save_steps=steps)

    lrs = jnp.array([0.04, 0.02, 0.01])
    batched = jax.vmap(run)(lrs)
    single = jax.jit(run)
    for i, lr in enumerate(lrs):
        one = single(lr)
        np.testing.assert_array_equal(batched.steps[i], one.steps)
        np.testing.assert_allclose(step_times(one.steps, lr), ts, rtol=1e-12)
        np.testing.assert_allclose(batched.x[i], one.x, rtol=1e-12, atol=1e-15)


def test_grad_of_final_loss_through_the_runner_matches_finite_differences():
    model, problem = _toy()

    def final_loss(lr):
        return run_optimizer(optax.adam(lr), model, problem, 30).loss[-1]

    lr, h = 0.01, 1e-6
    fd = (final_loss(lr + h) - final_loss(lr - h)) / (2 * h)
    np.testing.assert_allclose(jax.grad(final_loss)(lr), fd, rtol=1e-6)


# ----------------------------------------------------------------------------- gaps to flows


# name: (q, ε, decoupled decay α) of the discrete map and its flow (naive smoothing). q = 2,
# ε = 0 is optax.sgd leaf for leaf (test_q2_is_sgd_and_q1_is_sign_sgd_leaf_for_leaf).
GAP_CASES = {
    "GD-GF": (2.0, 0.0, 0.0),
    "smoothed sign descent-SignGF": (1.0, 0.1, 0.0),
    "q=1.5 with decay": (1.5, 0.0, 0.3),
}
GAP_LRS = jnp.array([0.02, 0.01, 0.005])
GAP_T1 = 2.0


def _gap_setup():
    problem = small_regression()
    return mf.SignedDeepDiagonal.scaled(0.5, depth=3, dim=problem.dim), problem


@pytest.fixture(scope="module")
def gap_flows():
    """The three flows in one vmapped program (q, ε and α traced; one explicit solver, so
    no switch over auto's candidates)."""
    model, problem = _gap_setup()
    ts = jnp.linspace(0.0, GAP_T1, 5)

    def solve(q, eps, decay):
        flow = mf.SteepestFlow(mf.Lp(q, eps), decoupled_wd=decay, smoothing_at="naive")
        return mf.solve_flow(
            flow,
            model,
            problem,
            GAP_T1,
            saveat=ts,
            solver=diffrax.Tsit5(),
            stepsize_controller=CONTROLLER,
        )

    columns = (jnp.array(column) for column in zip(*GAP_CASES.values(), strict=True))
    return jax.jit(jax.vmap(solve))(*columns)


@pytest.fixture(scope="module")
def gap_runs():
    """Every case at every learning rate: one vmapped program of 9 runs."""
    model, problem = _gap_setup()
    ts = jnp.linspace(0.0, GAP_T1, 5)

    def run(q, eps, decay, lr):
        steps = steps_at_times(ts, lr)
        optimizer = steepest_descent(lr, q, eps, decoupled_wd=decay)
        return run_optimizer(optimizer, model, problem, 400, save_steps=steps)

    cases = jnp.array(list(GAP_CASES.values()))  # (3, 3)
    q, eps, decay = (jnp.repeat(column, len(GAP_LRS)) for column in cases.T)
    lrs = jnp.tile(GAP_LRS, len(GAP_CASES))
    runs = jax.jit(jax.vmap(run))(q, eps, decay, lrs)
    shape = (len(GAP_CASES), len(GAP_LRS))
    return jax.tree.map(lambda leaf: leaf.reshape(shape + leaf.shape[1:]), runs)


@pytest.mark.parametrize("case", list(GAP_CASES))
def test_gap_to_the_flow_halves_with_the_learning_rate(gap_flows, gap_runs, case):
    i = list(GAP_CASES).index(case)
    sol = jax.tree.map(operator.itemgetter(i), gap_flows)
    assert bool(sol.ok)
    members = [jax.tree.map(lambda leaf, j=j: leaf[i, j], gap_runs) for j in range(len(GAP_LRS))]
    pairs = zip(members, GAP_LRS, strict=True)
    gaps = np.array([trajectory_gap(run, sol, lr) for run, lr in pairs])
    # measured: GD 0.0107, 0.0054, 0.0027; smoothed sign 0.0099, 0.0049, 0.0025;
    # q = 1.5 with decay 0.0038, 0.0019, 0.00094
    np.testing.assert_allclose(gaps[:-1] / gaps[1:], 2.0, rtol=0.1)
    assert gaps[-1] < 0.005


def test_exact_sign_descent_converges_in_x_but_not_in_the_factors():
    """Exact sign descent against the sign flow (ε = 1e-7 ≪ every η, solved by `Rodas4`).

    Once a coordinate's gradient reaches 0 the 2L factor entries of that coordinate all have
    zero partial derivative at once, and the sign flow's Filippov solution does not say how the
    sliding motion is shared among them: the factors are not determined, and sign descent picks
    a split that depends on η. So the gap in x shrinks with η (not evenly: ratios 1.4–2.5 per
    halving), while the gap in the factors stalls. The smoothed discrete map (test above) has
    no such freedom and its gap halves exactly."""
    problem = small_regression()
    model = mf.SignedDeepDiagonal.scaled(0.5, depth=3, dim=problem.dim)
    t1 = 2.0
    ts = jnp.linspace(0.0, t1, 5)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-7), smoothing_at="naive")
    sol = mf.solve_flow(
        flow, model, problem, t1, saveat=ts, solver=mf.Rodas4(), stepsize_controller=CONTROLLER
    )
    assert bool(sol.ok)
    lrs = 0.02 / 2.0 ** jnp.arange(7.0)

    def run(lr):
        steps = steps_at_times(ts, lr)
        num_steps = int(t1 / float(lrs[-1])) + 1
        return run_optimizer(optax.sign_sgd(lr), model, problem, num_steps, save_steps=steps)

    runs = jax.vmap(run)(lrs)
    members = [jax.tree.map(operator.itemgetter(i), runs) for i in range(len(lrs))]

    def gaps(space):
        pairs = zip(members, lrs, strict=True)
        return np.array([float(trajectory_gap(r, sol, lr, space=space)) for r, lr in pairs])

    x_gaps, factor_gaps = gaps("x"), gaps("params")
    # measured x: 0.343 0.214 0.153 0.089 0.061 0.025 0.010; factors: 0.170 0.120 0.083 0.038
    # 0.024 0.023 0.022
    assert np.all(np.diff(x_gaps) < 0)
    order = np.polyfit(np.log(np.asarray(lrs)), np.log(x_gaps), 1)[0]
    assert 0.6 < order < 1.1  # measured 0.82
    assert x_gaps[-1] < x_gaps[0] / 16
    assert factor_gaps[-1] > 0.8 * factor_gaps[-3] > 0.01  # no longer shrinking


def test_gap_checks_that_times_match(gap_flows):
    model, problem = _gap_setup()
    sol = jax.tree.map(operator.itemgetter(0), gap_flows)  # gradient flow, saved at t = k/2
    run = run_optimizer(optax.sgd(0.5), model, problem, 4, save_steps=np.arange(5))
    gap = trajectory_gap(run, sol, 0.5, space="params")
    expected = max(
        np.max(np.abs(run.params.u - sol.params.u)), np.max(np.abs(run.params.v - sol.params.v))
    )
    assert float(gap) == expected > 0
    with pytest.raises(ValueError, match=r"`sol.ts` must equal η·run.steps"):
        trajectory_gap(run, sol, 0.05)
    with pytest.raises(ValueError, match=r"`space` must be one of"):
        trajectory_gap(run, sol, 0.1, space="m")


# ----------------------------------------------------------------------------- escape


def _escape_steps(make_optimizer, values, model):
    """Steps for the toy f(x) = (x − 1)²/2 to reach |x| ≥ 1/2, one vmapped call over values."""

    def steps(value):
        optimizer = make_optimizer(value)
        return steps_to_escape(optimizer, model, mf.ScalarToy(), ESCAPE, max_steps=10**6).steps

    return np.asarray(jax.vmap(steps)(jnp.asarray(values)))


def test_gd_escape_steps_scale_like_flow_time_over_lr_and_sign_descent_is_far_faster():
    alpha, depth = 0.1, 3
    model = mf.DeepDiagonal.scaled(alpha, depth=depth, dim=1)
    lrs = np.array([1e-2, 5e-3, 2.5e-3])
    gd = _escape_steps(optax.sgd, lrs, model)
    sign = _escape_steps(optax.sign_sgd, lrs, model)
    # measured: GD 917, 1831, 3660 steps; sign descent 70, 139, 278 steps
    t_gf = toy_escape_time(alpha, 2.0, depth)  # 9.14, quadrature of the flow
    relative = np.abs(gd * lrs / t_gf - 1)  # measured 2.8e-3, 1.1e-3, 5.7e-4
    assert np.all(relative < lrs)
    assert np.all(np.diff(relative) < 0)
    # sign descent moves every factor by η per step: w_k = α + kη until w_k^L ≥ 1/2
    expected = np.ceil((0.5 ** (1 / depth) - alpha) / lrs)
    np.testing.assert_allclose(sign, expected, atol=1)
    np.testing.assert_allclose(sign * lrs, toy_escape_time(alpha, 1.0, depth), rtol=0.02)
    assert np.all(gd > 10 * sign)


def test_adam_eps_interpolates_between_sign_descent_and_slowed_gd():
    """Adam's ε is the naive smoothing (docs/theory.md §1): ε ≫ |∇F| gives GD with step η/ε,
    ε ≪ |∇F| sign-descent-like escape, independent of ε."""
    alpha, lr = 0.1, 1e-2  # |∂F/∂w| = α²(1 − α³) ≈ 1e-2 at the init, ≤ 0.33 on the way
    model = mf.DeepDiagonal.scaled(alpha, depth=3, dim=1)
    epss = np.array([1e-6, 1e-5, 1e-4, 10.0, 100.0])
    adam = _escape_steps(lambda eps: optax.adam(lr, eps=eps), epss, model)
    slowed_gd = _escape_steps(optax.sgd, lr / epss[3:], model)
    (sign,) = _escape_steps(optax.sign_sgd, [lr], model)
    (gd,) = _escape_steps(optax.sgd, [lr], model)
    # measured: Adam 56, 56, 56, 9228, 91547; GD(η/ε) 9147, 91450; sign 70; GD(η) 917
    np.testing.assert_allclose(adam[3:] / slowed_gd, 1.0, rtol=0.02)
    assert np.ptp(adam[:3]) <= 1
    assert 0.6 * sign <= adam[0] <= 1.25 * sign
    assert adam[0] * 10 < gd


def test_adam_without_memory_or_eps_approaches_sign_descent():
    """On the toy from an uneven init (no gradient changes sign within 40 steps), the gap
    between Adam(β1 = β2 = β, ε) and sign descent shrinks like β + ε."""
    problem = mf.ScalarToy()
    model = mf.DeepDiagonal(jnp.array([[0.2, 0.3, 0.5], [0.4, 0.25, 0.35], [0.3, 0.6, 0.2]]))
    save_steps = np.arange(0, 41, 4)
    sign = run_optimizer(optax.sign_sgd(1e-2), model, problem, 40, save_steps=save_steps)

    def gap(beta, eps):
        adam = optax.adam(1e-2, b1=beta, b2=beta, eps=eps)
        run = run_optimizer(adam, model, problem, 40, save_steps=save_steps)
        return jnp.max(jnp.abs(run.params.factors - sign.params.factors))

    betas = jnp.array([1e-1, 1e-2, 1e-3, 1e-4, 0.0])
    gaps = np.asarray(jax.vmap(gap)(betas, betas * 1e-2 + 1e-14))
    # measured: 2.9e-3, 2.9e-4, 2.9e-5, 2.9e-6, 5e-13
    np.testing.assert_allclose(gaps[:-2] / gaps[1:-1], 10.0, rtol=0.1)
    assert gaps[-1] < 1e-10


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: steepest_descent(0.0), r"`learning_rate` must lie in \(0.0, inf\)"),
        (lambda: steepest_descent(0.1, q=2.5), r"`q` must lie in \[1.0, 2.0\]"),
        (lambda: steepest_descent(0.1, eps=-1.0), r"`eps` must lie in \[0.0, inf\)"),
        (lambda: steepest_descent(0.1, decoupled_wd=-1.0), r"`decoupled_wd` must lie in"),
        (lambda: _run(num_steps=0), r"`num_steps` must be an integer >= 1"),
        (lambda: _run(save_steps=np.array([0, 11])), r"`save_steps` must be non-decreasing"),
        (lambda: _run(save_steps=np.array([3, 2])), r"`save_steps` must be non-decreasing"),
        (lambda: _run(save_steps=np.array([0.5])), r"`save_steps` must be a non-empty 1-d"),
        (lambda: _run(optimizer=optax.sgd), r"`optimizer` must be an optax"),
        (lambda: _run(params0={"w": jnp.array([jnp.nan])}), r"`params0 \(leaf 0\)` must be"),
        (lambda: _run(params0={"w": jnp.array([1])}), r"`params0` must be a PyTree of float"),
        (
            lambda: steps_to_escape(optax.sgd(0.1), *_toy(), lambda x: x, max_steps=5),
            r"`escape` must be an AbstractEscape",
        ),
        (
            lambda: steps_to_escape(optax.sgd(0.1), *_toy(), ESCAPE, max_steps=0),
            r"`max_steps` must be an integer >= 1",
        ),
        (lambda: step_times(np.arange(3), -0.1), r"`learning_rate` must lie in \(0.0"),
        (lambda: steps_at_times(np.array([-1.0]), 0.1), r"`ts` must lie in \[0.0"),
    ],
)
def test_bad_setup_raises_before_compiling(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def _toy():
    return mf.DeepDiagonal.scaled(0.5, depth=2, dim=1), mf.ScalarToy()


def _run(optimizer=None, params0=None, num_steps=10, save_steps=None):
    model, problem = _toy()
    optimizer = optax.sgd(0.1) if optimizer is None else optimizer
    params0 = model if params0 is None else params0
    return run_optimizer(optimizer, params0, problem, num_steps, save_steps=save_steps)
