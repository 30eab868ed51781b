"""The sparse-regression and classification experiments on tiny configs: dataset layout, checks,
figures, and independent checks of their LP/QP references."""

import dataclasses

import numpy as np
import pytest
from matplotlib.figure import Figure

from mirrorflow_jax.experiments import classification, sparse_regression
from mirrorflow_jax.experiments._base import Check

TINY_REGRESSION = sparse_regression.Config(
    n=10,
    d=20,
    k=2,
    alphas=(0.3, 0.1, 0.03),
    depths=(2,),
    qs=(1.0, 2.0),
    eps=(1e-3, 0.0),
    t1=2000.0,
    fit_fraction=1e-5,
    num_saves=6,
    max_steps=20_000,
    discrete_depth=2,
    discrete_alpha=0.1,
    horizon=2.0,
    learning_rates=(1e-2, 5e-3),
    num_compare=4,
)

TINY_CLASSIFICATION = classification.Config(
    n=20,
    d=8,
    k=2,
    depths=(1, 2, 3),
    radii=(5.0, 20.0),
    sign_radii=(5.0, 10.0),
    direct_t1=1e8,
    num_saves=8,
    max_steps=20_000,
    irl1_iterations=5,
    margin_tolerance=0.2,
)


def _assert_checks(checks):
    assert checks and all(isinstance(c, Check) for c in checks)
    for c in checks:
        if isinstance(c.measured, float):
            assert np.isfinite(c.measured), c.name


def test_sparse_regression_tiny_run():
    ds = sparse_regression.run(TINY_REGRESSION)
    assert set(ds.x_end.dims) == {"alpha", "depth", "flow", "coordinate"}
    assert set(ds.x_discrete.dims) == {"optimizer", "lr", "time", "coordinate"}
    assert list(ds.optimizer.values) == ["gd", "sign_descent", "adam"]
    assert ds.q.values.tolist() == [1.0, 2.0] and ds.eps.values.tolist() == [1e-3, 0.0]
    for name in ("recovery_error", "l1_distance", "support_recovered", "support_margin", "gap"):
        assert name in ds

    # the LP's solution interpolates, and no fitted endpoint has a smaller ℓ1 norm (minus the
    # slack that its residual allows): the LP is the minimum
    A, b = _regression_data(TINY_REGRESSION)
    np.testing.assert_allclose(A @ ds.x_l1.values, b, atol=1e-8)
    fitted = ds.fitted.values.astype(bool)
    assert fitted.sum() >= 4
    lp = np.abs(ds.x_l1.values).sum()
    assert np.all((ds.l1_norm + ds.l1_slack).values[fitted] >= lp * (1 - 1e-9))
    # gradient flow's endpoint approaches x_l1 as the init scale shrinks (ℓ1 implicit bias)
    gf = ds.sel(flow=1, depth=2)
    assert gf.fitted.values.all()
    distance = gf.l1_distance.values
    assert np.all(np.diff(distance) < 0) and distance[-1] < 0.5 * distance[0]
    # gradient descent at the smaller learning rate tracks gradient flow more closely
    gaps = ds.gap.sel(optimizer="gd").values
    assert gaps[1] < gaps[0]

    checks = sparse_regression.checks(ds)
    _assert_checks(checks)
    names = [c.name for c in checks]
    assert any("min-l1 interpolant (LP) is the planted truth" in n for n in names)
    assert any(n.startswith("gd vs gf") for n in names)
    figs = sparse_regression.figures(ds)
    assert set(figs) == {"sparse_regression_recovery", "sparse_regression_discrete"}
    assert all(isinstance(f, Figure) for f in figs.values())


def _regression_data(config):
    import jax

    import mirrorflow_jax as mf

    problem = mf.sparse_regression(jax.random.key(config.seed), n=config.n, d=config.d, k=config.k)
    return np.asarray(problem.A), np.asarray(problem.b)


def test_classification_tiny_run():
    ds = classification.run(TINY_CLASSIFICATION)
    assert set(ds.x_end.dims) == {"level", "depth", "flow", "coordinate"}
    assert set(ds.direct_x.dims) == {"depth", "save", "coordinate"}
    for name in ("margin_l2", "margin_l1", "margin_linf", "margin_l2L", "margin_ratio"):
        assert set(ds[name].dims) == {"level", "depth", "flow"}
    assert bool(ds.reached.all())

    # the QP and LPs are maxima: no endpoint has a larger normalized margin in their geometry
    for name in ("margin_l2", "margin_l1", "margin_linf"):
        assert float(ds[name].max()) <= 1 + 1e-7, name
    # the QP solution is feasible with its smallest margin active, and beats random directions
    G = _classification_rows(TINY_CLASSIFICATION)
    x2 = ds.x_l2.values
    assert np.min(G @ x2) == pytest.approx(1.0, abs=1e-7)
    random = np.random.default_rng(0).normal(size=(2000, G.shape[1]))
    random_margins = (random @ G.T).min(-1) / np.linalg.norm(random, axis=-1)
    assert random_margins.max() <= ds.attrs["max_margin_l2"] + 1e-12
    # gradient flow at depth 1 approaches the ℓ2 max margin along the path
    gf1 = ds.margin_l2.sel(depth=1, flow=1).values
    assert gf1[-1] > gf1[0] and gf1[-1] > 0.9

    checks = classification.checks(ds)
    _assert_checks(checks)
    names = [c.name for c in checks]
    assert any("share one path" in n for n in names)
    assert any("local polish" in n for n in names)
    figs = classification.figures(ds)
    assert set(figs) == {"classification_margins", "classification_directions"}
    assert all(isinstance(f, Figure) for f in figs.values())


def _classification_rows(config):
    import jax

    import mirrorflow_jax as mf

    problem = mf.sparse_classification(
        jax.random.key(config.seed), n=config.n, d=config.d, k=config.k, loss=config.loss
    )
    return np.asarray(problem.y)[:, None] * np.asarray(problem.A)


def test_log_loss_matches_log_of_the_loss():
    import jax
    import jax.numpy as jnp

    import mirrorflow_jax as mf

    @jax.jit
    def values(problem, x):
        log_loss = classification.LogLoss(problem)
        return log_loss(x), jnp.log(problem(x)), jax.grad(log_loss)(x)

    for loss in ("exponential", "logistic"):
        problem = mf.sparse_classification(jax.random.key(1), n=12, d=5, k=2, loss=loss)
        value, reference, _ = values(problem, jnp.linspace(-0.5, 0.7, 5))
        assert float(value) == pytest.approx(float(reference), rel=1e-12)
        # far along a separating direction f underflows, but log f and its gradient do not
        value, reference, grad = values(problem, 1e4 * problem.truth)
        assert float(reference) == -np.inf
        assert np.isfinite(float(value)) and float(value) < -100
        assert np.all(np.isfinite(np.asarray(grad)))


BAD = [
    (sparse_regression.Config, {"alphas": (0.1, 0.01)}, "`alphas`"),
    (sparse_regression.Config, {"depths": (1, 3)}, "`depths`"),
    (sparse_regression.Config, {"qs": (1.0, 2.0), "eps": (0.0, 0.0)}, "`eps`"),
    (sparse_regression.Config, {"qs": (1.0,), "eps": (1e-3, 0.0)}, "`qs` and `eps`"),
    (sparse_regression.Config, {"discrete_alpha": 0.2}, "`discrete_alpha`"),
    (sparse_regression.Config, {"fit_fraction": 1.5}, "`fit_fraction`"),
    (sparse_regression.Config, {"learning_rates": (1e-3,)}, "`learning_rates`"),
    (classification.Config, {"qs": (1.5,)}, "`qs`"),
    (classification.Config, {"radii": (10.0, 5.0, 1.0, 2.0)}, "`radii`"),
    (classification.Config, {"sign_radii": (10.0,)}, "`sign_radii`"),
    (classification.Config, {"alpha": 0.0}, "`alpha`"),
    (classification.Config, {"depths": (0, 1)}, "`depths`"),
    (classification.Config, {"loss": "hinge"}, "`loss`"),
]


@pytest.mark.parametrize(("cls", "change", "field"), BAD)
def test_bad_config_values_name_the_field(cls, change, field):
    with pytest.raises(ValueError, match=field):
        cls(**change)
    assert dataclasses.asdict(cls())  # the defaults are valid
