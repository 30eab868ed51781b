"""Bad set-ups raise ValueError naming the argument and its valid range, before compiling."""

import diffrax
import jax.numpy as jnp
import pytest

import mirrorflow_jax as mf

from .helpers import small_regression

TRACES = {"count": 0}


class CountingLoss(mf.AbstractLoss):
    """A loss that counts how often it is traced or run eagerly (an `AbstractLoss`, so that
    `solve_flow` checks its `dim` against the model's)."""

    problem: mf.LeastSquares

    @property
    def dim(self):
        return self.problem.dim

    def __call__(self, x):
        TRACES["count"] += 1
        return self.problem(x)


def _good():
    problem = small_regression()
    return mf.SteepestFlow(mf.Lp(1.5)), mf.DeepDiagonal.scaled(0.1, depth=3, dim=problem.dim)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: mf.Lp(q=2.5), r"`q` must lie in \[1.0, 2.0\]; got 2.5"),
        (lambda: mf.Lp(q=0.5), r"`q` must lie in \[1.0, 2.0\]"),
        (lambda: mf.Lp(q=1.0, eps=-1e-3), r"`eps` must lie in \[0.0, inf\)"),
        (lambda: mf.Lp(q=1.0, smoothing="cubic"), r"`smoothing` must be one of"),
        (lambda: mf.SteepestFlow(coupled_wd=-1.0), r"`coupled_wd` must lie in \[0.0, inf\)"),
        (lambda: mf.SteepestFlow(decoupled_wd=-0.1), r"`decoupled_wd` must lie in \[0.0"),
        (lambda: mf.SteepestFlow(smoothing_at="inside"), r"`smoothing_at` must be one of"),
        (lambda: mf.DeepDiagonal.scaled(0.1, depth=0, dim=3), r"`depth` must be an integer >= 1"),
        (lambda: mf.DeepDiagonal.scaled(0.1, depth=2.5, dim=3), r"`depth` must be an integer"),
        (lambda: mf.DeepDiagonal(jnp.ones(3)), r"`factors` must have shape \(depth, dim\)"),
        (lambda: mf.DeepDiagonal(jnp.full((2, 2), jnp.nan)), r"`factors` must be finite"),
        (
            lambda: mf.DeepDiagonal.balanced(jnp.array([0.1]), -1.0, q=2.0, depth=3),
            r"`c` must satisfy \|w1\|\^q \+ c >= 0",
        ),
        (lambda: mf.LeastSquares(jnp.ones((3, 2)), jnp.ones(4)), r"`b` must have shape \(n,\)"),
        (
            lambda: mf.LeastSquares(jnp.ones((3, 2)), jnp.array([1.0, jnp.inf, 0.0])),
            r"`b` must be finite",
        ),
        (lambda: mf.LeastSquares(jnp.full((3, 2), jnp.nan), jnp.ones(3)), r"`A` must be finite"),
        (lambda: mf.sparse_regression(None, n=4, d=3, k=5), r"`k` must lie in \[0, d\]"),
        (lambda: mf.sparse_regression(None, n=0, d=3, k=1), r"`n` must be an integer >= 1"),
        (lambda: mf.LossBelow(1.5), r"`fraction` must lie in \(0, 1\)"),
        (lambda: mf.NormAbove(0.0), r"`threshold` must lie in \(0, inf\)"),
    ],
)
def test_constructors_reject_bad_input(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def _solve_raises(pattern, **overrides):
    flow, model = _good()
    loss = CountingLoss(small_regression())
    kwargs = dict(flow=flow, params0=model, loss=loss, t1=1.0) | overrides
    before = TRACES["count"]
    with pytest.raises(ValueError, match=pattern):
        mf.solve_flow(**kwargs)
    assert TRACES["count"] == before, "the error must come before any tracing"


def test_interval():
    _solve_raises(r"`t1` must lie in \(t0, inf\) = \(0, inf\); got 0", t1=0.0)
    _solve_raises(r"`t1` must lie in \(t0, inf\) = \(2, inf\); got 1", t0=2.0)


def test_shape_mismatch():
    wrong = mf.DeepDiagonal.scaled(0.1, depth=3, dim=5)
    _solve_raises(r"shape \(5,\) but `loss` expects shape \(12,\)", params0=wrong)


def test_non_finite_params():
    _solve_raises(r"`params0 \(leaf 0\)` must be finite", params0={"x": jnp.array([jnp.nan, 1.0])})


def test_non_array_params():
    _solve_raises(r"`params0` must be a PyTree of floating-point arrays", params0={"x": "a"})


def test_structured_needs_a_reparam():
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at="structured")
    _solve_raises(r"needs a separable model", flow=flow, params0={"x": jnp.zeros(12)})


def test_saveat_outside_interval():
    _solve_raises(r"`saveat` times must be non-decreasing and lie in", saveat=[0.0, 2.0])
    _solve_raises(r"`saveat` must save one set of times", saveat=diffrax.SaveAt(dense=True))


def test_max_steps():
    _solve_raises(r"`max_steps` must be an integer >= 1", max_steps=0)


def test_failures_are_result_codes_not_exceptions():
    flow, model = _good()
    sol = mf.solve_flow(flow, model, small_regression(), 50.0, max_steps=3)
    assert not bool(sol.ok)
    assert sol.result == mf.RESULTS.max_steps_reached
