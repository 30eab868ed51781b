"""The fine-tuning experiment: its optimizer family against optax, a tiny run end to end
(variables, reproducibility, resuming from checkpoints, the SGD-vs-Adam gap, checks and
figures) and Config validation."""

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest
import xarray as xr

import mirrorflow_jax as mf
from mirrorflow_jax.experiments import finetune as ft
from mirrorflow_jax.experiments._base import Check

matplotlib.use("Agg")

TINY = ft.Config(
    num_seeds=2,
    width=16,
    hidden_layers=1,
    pretrain_steps=60,
    finetune_steps=60,
    finetune_train=100,
    sgd_rates=(1e-3, 0.5),
    init_scales=(0.0, 1.0),
    hessian_k=2,
    lanczos_iters=12,
    num_saves=4,
)


@pytest.mark.parametrize(
    ("method", "reference"),
    [
        ("sgd", lambda lr, wd: optax.sgd(lr)),
        ("sign", lambda lr, wd: optax.sign_sgd(lr)),
        ("adam", lambda lr, wd: optax.adam(lr)),
        ("adamw", lambda lr, wd: optax.adamw(lr, weight_decay=wd)),
    ],
)
def test_optimizer_family_equals_optax(method, reference):
    lr, wd = 0.05, 0.3
    params = {"a": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array([[1.0, -2.0], [0.3, 0.1]])}

    def grad(p):
        return jax.grad(lambda p: jnp.sum(jnp.sin(3 * p["a"])) + jnp.sum(p["b"] ** 3))(p)

    hyper = ft.hyperparameters(method, lr, wd if method == "adamw" else 0.0)

    @jax.jit
    def four_steps(hyper):
        ours, theirs = ft.adam_or_steepest(*hyper), reference(lr, wd)
        p1 = p2 = params
        s1, s2 = ours.init(params), theirs.init(params)
        with jax.numpy_dtype_promotion("standard"):
            for _ in range(4):
                u1, s1 = ours.update(grad(p1), s1, p1)
                u2, s2 = theirs.update(grad(p2), s2, p2)
                p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
        return p1, p2

    p1, p2 = four_steps(hyper)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)
    assert not np.allclose(p1["a"], params["a"])  # the steps moved the parameters


def test_tiny_run_variables_reproducibility_resume_and_sgd_gap(tmp_path):
    ds = ft.run(TINY)
    seeds, saves = TINY.num_seeds, TINY.num_saves
    shapes = {
        "test_accuracy": (5, seeds),
        "accuracy_mean": (5,),
        "accuracy_ci": (5,),
        "loss_curve": (5, seeds, saves),
        "accuracy_curve": (5, seeds, saves),
        "hessian_eigenvalues": (5, seeds, 2 * TINY.hessian_k),
        "rate_sweep_accuracy": (len(TINY.sgd_rates), seeds),
        "init_sweep_accuracy": (len(TINY.init_scales), seeds),
        "factor_sparsity": (2, 2, seeds),
        "factor_head": (2, 2, seeds, 5 * TINY.width),
    }
    for name, shape in shapes.items():
        assert ds[name].shape == shape, name
        assert np.all(np.isfinite(ds[name].values)), name
    assert list(ds.optimizer.values) == list(ft.OPTIMIZERS)
    assert np.all((ds.test_accuracy >= 0) & (ds.test_accuracy <= 1))
    assert np.all(ds.accuracy_ci > 0)
    eig = ds.hessian_eigenvalues.values
    assert np.all(np.diff(eig, axis=-1) >= 0)  # ascending: smallest first
    assert ds.attrs["tuned_sgd_rate"] in TINY.sgd_rates
    assert float(ds.learning_rate.sel(optimizer="sgd_tuned")) == ds.attrs["tuned_sgd_rate"]
    # the loss curve starts where every optimizer starts: the same pretrained model and head
    start = ds.loss_curve.isel(step=0).values
    np.testing.assert_array_equal(start, np.broadcast_to(start[0], start.shape))

    # the effect itself: at the same small rate Adam gets further than SGD, on every seed
    loss = ds.final_loss
    assert np.all(loss.sel(optimizer="adam_small") < loss.sel(optimizer="sgd_small") - 0.1)

    # reproducible, and a rerun from the checkpoints of a first run gives the same Dataset
    xr.testing.assert_identical(ds, ft.run(TINY, workdir=tmp_path))
    files = sorted(tmp_path.rglob("*.nc"))
    assert len(files) == len(ft.STAGES) == 4  # one self-checking file per stage
    xr.testing.assert_identical(ds, ft.run(TINY, workdir=tmp_path))
    # a damaged stage file is named in a warning and its stage recomputed, to the same result
    files[1].write_bytes(files[1].read_bytes()[:-100])
    with pytest.warns(mf.CheckpointWarning, match=files[1].name):
        xr.testing.assert_identical(ds, ft.run(TINY, workdir=tmp_path))
    xr.testing.assert_identical(ds, ft.run(TINY, workdir=tmp_path))  # rewritten: no warning

    checks = ft.checks(ds)
    assert checks and all(isinstance(c, Check) and isinstance(c.held, bool) for c in checks)
    stall = next(c for c in checks if c.name == "sgd_small_rate_stalls")
    assert ("did NOT stall" in stall.detail) != stall.held
    figures = ft.figures(ds)
    assert set(figures) == {"accuracy_table", "curves", "hessian", "stall", "sparsity"}
    assert "| Adam, small η | 0.001 |" in ft.table(ds)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_seeds", 1),
        ("pretrain_classes", 9),
        ("finetune_train", 5),
        ("small_lr", 0.0),
        ("sgd_rates", ()),
        ("sgd_rates", (1e-3, -1.0)),
        ("init_scales", (float("nan"),)),
        ("factor_depths", (1, 0)),
        ("lanczos_iters", 5),  # fewer than 2·hessian_k
        ("sparsity_threshold", 2.0),
        ("weight_decay", -1.0),
        ("width", 2.5),
    ],
)
def test_bad_config_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}` must"):
        dataclasses.replace(ft.Config(), **{field: value})


def test_confidence_interval_uses_the_t_distribution():
    mean, half = ft.confidence_interval(np.array([[1.0, 2.0, 3.0]]))
    # t_{0.975, 2} = 4.302653 and the standard error of (1, 2, 3) is 1/sqrt(3)
    np.testing.assert_allclose(mean, [2.0])
    np.testing.assert_allclose(half, [4.302652729749464 / np.sqrt(3)], rtol=1e-9)
