"""The fine-tuning experiment's Dataset, table, checks and figures."""

import math

import jax.numpy as jnp
import numpy as np
import xarray as xr

from mirrorflow_jax.experiments._base import Check

from ._config import NUM_DIGITS, OPTIMIZERS, Config, _save_steps
from ._training import sparsity


def confidence_interval(values, axis: int = -1, level: float = 0.95):
    """(mean, half-width) of the t-distribution confidence interval over ``axis``."""
    from scipy import stats

    values = np.asarray(values)
    count = values.shape[axis]
    sem = values.std(axis=axis, ddof=1) / math.sqrt(count)
    return values.mean(axis=axis), stats.t.ppf(0.5 + level / 2, count - 1) * sem


def _num_params(config: Config) -> int:
    """The number of fine-tuned parameters with a depth-1 head."""
    sizes = [64] + [config.width] * config.hidden_layers + [NUM_DIGITS - config.pretrain_classes]
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def _eig_labels(k: int) -> list[str]:
    return [f"smallest_{i + 1}" for i in range(k)] + [f"largest_{k - i}" for i in range(k)]


def _dataset(config, *, tuned, pretrain_accuracy, sweep, main, init, factor, settings):
    def by_optimizer(field, *dims):
        values = np.stack([main[f"{name}__{field}"] for name in OPTIMIZERS])
        return ("optimizer", "seed", *dims), values

    def by_depth(field):
        values = np.stack([factor[f"{depth}__{field}"] for depth in config.factor_depths])
        return ("depth", "factor_wd", "seed", "head")[: values.ndim], values

    mean, half = confidence_interval(by_optimizer("accuracy")[1])
    heads = by_depth("head")
    data = {
        "pretrain_accuracy": (("seed",), pretrain_accuracy),
        "learning_rate": (("optimizer",), np.array([settings[n][1] for n in OPTIMIZERS])),
        "test_accuracy": by_optimizer("accuracy"),
        "accuracy_mean": (("optimizer",), mean),
        "accuracy_ci": (("optimizer",), half),
        "train_accuracy": by_optimizer("train_accuracy"),
        "final_loss": by_optimizer("loss"),
        "grad_norm": by_optimizer("grad_norm"),
        "loss_curve": by_optimizer("loss_curve", "step"),
        "accuracy_curve": by_optimizer("accuracy_curve", "step"),
        "hessian_eigenvalues": by_optimizer("eigenvalues", "eig"),
        "hessian_residuals": by_optimizer("residuals", "eig"),
        "rate_sweep_loss": (("sgd_rate", "seed"), sweep["loss"]),
        "rate_sweep_accuracy": (("sgd_rate", "seed"), sweep["accuracy"]),
        "init_sweep_loss": (("init_scale", "seed"), init["loss"]),
        "init_sweep_accuracy": (("init_scale", "seed"), init["accuracy"]),
        "factor_head": heads,
        "factor_sparsity": (heads[0][:-1], sparsity(heads[1], config.sparsity_threshold)),
        "factor_accuracy": by_depth("accuracy"),
    }
    classes = NUM_DIGITS - config.pretrain_classes
    coords = {
        "optimizer": list(OPTIMIZERS),
        "seed": np.arange(config.num_seeds),
        "step": _save_steps(config),
        "eig": _eig_labels(config.hessian_k),
        "sgd_rate": list(config.sgd_rates),
        "init_scale": list(config.init_scales),
        "depth": list(config.factor_depths),
        "factor_wd": [0.0, config.factor_weight_decay],
        "head": np.arange(classes * config.width),
    }
    attrs = {
        "experiment": "finetune",
        "config": repr(config),
        "tuned_sgd_rate": tuned,
        "chance_accuracy": 1.0 / classes,
        "sparsity_threshold": config.sparsity_threshold,
        "num_params": _num_params(config),
        "float_dtype": str(jnp.result_type(float)),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


LABELS = {
    "sgd_small": "SGD, small η",
    "sgd_tuned": "SGD, tuned η",
    "adam_small": "Adam, small η",
    "adamw_small": "AdamW, small η",
    "sign_small": "sign descent, small η",
}
CURVATURE_THRESHOLD = -0.05  # λ_min/λ_max at or below this is clear negative curvature


def _mean(da) -> float:
    return float(da.mean())


def curvature_ratio(ds: xr.Dataset) -> xr.DataArray:
    """λ_min/λ_max of the Hessian at the end of fine-tuning, per optimizer and seed."""
    eig = ds.hessian_eigenvalues
    return eig.isel(eig=0) / eig.isel(eig=-1)


def _gain(ds: xr.Dataset, accuracy) -> xr.DataArray:
    """(accuracy − chance)/(Adam-at-the-small-rate accuracy − chance)."""
    chance = ds.attrs["chance_accuracy"]
    return (accuracy - chance) / (ds.accuracy_mean.sel(optimizer="adam_small") - chance)


def table(ds: xr.Dataset) -> str:
    """The accuracy table (mean ± 95% t-interval over seeds) as Markdown."""
    rows = [
        "| optimizer | η | test accuracy | train loss | λ_min | λ_max |",
        "|---|---|---|---|---|---|",
    ]
    for name in ds.optimizer.values:
        sel = ds.sel(optimizer=name)
        eig = sel.hessian_eigenvalues.mean("seed").values
        rows.append(
            f"| {LABELS[name]} | {float(sel.learning_rate):g} | "
            f"{float(sel.accuracy_mean):.1%} ± {float(sel.accuracy_ci):.1%} | "
            f"{_mean(sel.final_loss):.3g} | {eig[0]:.3g} | {eig[-1]:.3g} |"
        )
    return "\n".join(rows)


def _stall_detail(ds: xr.Dataset) -> str:
    gains = _gain(ds, ds.rate_sweep_accuracy.mean("seed"))
    recovered = ds.sgd_rate.values[gains.values >= 0.9]
    rate_accuracy = ds.rate_sweep_accuracy.mean("seed").values
    init_accuracy = ds.init_sweep_accuracy.mean("seed").values
    rates = ", ".join(
        f"η={r:g}: {a:.1%}" for r, a in zip(ds.sgd_rate.values, rate_accuracy, strict=True)
    )
    scales = ", ".join(
        f"{s:g}: {a:.1%}" for s, a in zip(ds.init_scale.values, init_accuracy, strict=True)
    )
    first = f"from η={recovered.min():g} on" if recovered.size else "at no rate tried"
    return (
        f"Rate sweep (SGD test accuracy): {rates}; SGD reaches 90% of Adam's gain over chance "
        f"{first}. Head-init sweep at the small rate (scale: accuracy): {scales}."
    )


def checks(ds: xr.Dataset) -> list[Check]:
    """The fine-tuning predictions of docs/theory.md §5, §6 and §8, as measured."""
    acc, ci = ds.accuracy_mean, ds.accuracy_ci
    chance = ds.attrs["chance_accuracy"]

    def shown(name):
        return f"{float(acc.sel(optimizer=name)):.1%} ± {float(ci.sel(optimizer=name)):.1%}"

    def accuracy_of(name):
        return float(acc.sel(optimizer=name))

    def loss_of(name):
        return float(ds.final_loss.sel(optimizer=name).mean())

    pretrain = _mean(ds.pretrain_accuracy)
    gain = float(_gain(ds, acc.sel(optimizer="sgd_small")))
    ratio = curvature_ratio(ds).mean("seed")
    grad = ds.grad_norm.mean("seed")
    eig = ds.hessian_eigenvalues.mean("seed")
    residual = float(ds.hessian_residuals.max() / np.abs(ds.hessian_eigenvalues).max())
    sparse = ds.factor_sparsity.mean("seed")
    deep = sparse.isel(depth=-1, factor_wd=1)
    others = float(sparse.where(sparse != deep).max())
    lr_small = float(ds.learning_rate.sel(optimizer="sgd_small"))
    stalled = gain < 0.5
    return [
        Check(
            "pretraining_learned",
            pretrain,
            ">= 0.9",
            0.0,
            pretrain >= 0.9,
            "Pretraining accuracy on the pretraining digits (the backbone that is fine-tuned).",
        ),
        Check(
            "sgd_small_rate_stalls",
            gain,
            "< 0.5 (fraction of Adam's accuracy gain over chance)",
            0.5,
            stalled,
            f"SGD at η={lr_small:g} {'stalled' if stalled else 'did NOT stall'}: test accuracy "
            f"{shown('sgd_small')} (chance {chance:.0%}) against Adam at the same rate "
            f"{shown('adam_small')}; final training loss {loss_of('sgd_small'):.3g} against "
            f"{loss_of('adam_small'):.3g}. " + _stall_detail(ds),
        ),
        Check(
            "sgd_tuned_rate_recovers",
            accuracy_of("sgd_tuned") - accuracy_of("adam_small"),
            ">= -0.05 (accuracy minus Adam's)",
            0.05,
            accuracy_of("sgd_tuned") >= accuracy_of("adam_small") - 0.05,
            f"SGD at the tuned rate η={ds.attrs['tuned_sgd_rate']:g} (lowest training loss in the "
            f"rate sweep): {shown('sgd_tuned')}; Adam at η={lr_small:g}: {shown('adam_small')}.",
        ),
        Check(
            "sign_descent_learns_like_adam",
            accuracy_of("sign_small") - accuracy_of("adam_small"),
            "|accuracy minus Adam's| <= 0.05",
            0.05,
            abs(accuracy_of("sign_small") - accuracy_of("adam_small")) <= 0.05,
            f"Sign descent (the discrete sign flow, the paper's proxy for Adam) at "
            f"η={lr_small:g}: {shown('sign_small')}; AdamW: {shown('adamw_small')}.",
        ),
        Check(
            "sgd_small_negative_curvature",
            float(ratio.sel(optimizer="sgd_small")),
            f"<= {CURVATURE_THRESHOLD} (λ_min/λ_max)",
            abs(CURVATURE_THRESHOLD),
            float(ratio.sel(optimizer="sgd_small")) <= CURVATURE_THRESHOLD,
            f"Hessian of the training loss after small-rate SGD: λ_min = "
            f"{float(eig.sel(optimizer='sgd_small').isel(eig=0)):.3g}, λ_max = "
            f"{float(eig.sel(optimizer='sgd_small').isel(eig=-1)):.3g} (seed means), with "
            f"gradient norm {float(grad.sel(optimizer='sgd_small')):.3g}: negative curvature "
            "with a gradient that has not vanished, i.e. still in the saddle's neighbourhood "
            "rather than at a stationary point.",
        ),
        Check(
            "adam_no_clear_negative_curvature",
            float(ratio.sel(optimizer="adam_small")),
            f"> {CURVATURE_THRESHOLD} (λ_min/λ_max)",
            abs(CURVATURE_THRESHOLD),
            float(ratio.sel(optimizer="adam_small")) > CURVATURE_THRESHOLD,
            "λ_min/λ_max per optimizer: "
            + ", ".join(f"{n}: {float(ratio.sel(optimizer=n)):.3g}" for n in ds.optimizer.values)
            + ".",
        ),
        Check(
            "lanczos_converged",
            residual,
            "<= 1e-2 (largest Ritz residual / largest |λ|)",
            1e-2,
            residual <= 1e-2,
            "Each reported eigenvalue lies within its Ritz residual of a Hessian eigenvalue.",
        ),
        Check(
            "adamw_sparse_only_with_depth_and_decay",
            float(deep) - others,
            ">= 0.5 (sparsity gain over the other three settings)",
            0.5,
            float(deep) - others >= 0.5,
            f"Fraction of head weights with |x| <= {_threshold(ds):g}·max|x| after AdamW: "
            + ", ".join(
                f"L={int(d)}, wd={float(w):g}: {float(sparse.sel(depth=d, factor_wd=w)):.1%}"
                for d in ds.depth.values
                for w in ds.factor_wd.values
            )
            + ".",
        ),
    ]


def _threshold(ds: xr.Dataset) -> float:
    return float(ds.attrs["sparsity_threshold"])


def _band(ax, x, values, label, **kwargs):
    """Mean over the last axis with its 95% t-interval as a shaded band."""
    mean, half = confidence_interval(values)
    (line,) = ax.plot(x, mean, label=label, **kwargs)
    ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2)


def figures(ds: xr.Dataset) -> dict:
    """``accuracy_table``, ``curves``, ``hessian``, ``stall`` and ``sparsity`` figures."""
    import matplotlib.pyplot as plt

    out = {}
    names = list(ds.optimizer.values)
    chance = ds.attrs["chance_accuracy"]

    fig, (text, bars) = plt.subplots(
        2, 1, figsize=(9, 6), gridspec_kw={"height_ratios": [1, 1.3]}, constrained_layout=True
    )
    rows = [line.strip("|").split("|") for line in table(ds).splitlines()]
    text.axis("off")
    cells = text.table(cellText=rows[2:], colLabels=rows[0], loc="center")
    cells.auto_set_column_width(list(range(len(rows[0]))))
    cells.auto_set_font_size(False)
    cells.set_fontsize(9)
    cells.scale(1, 1.3)
    y = np.arange(len(names))
    bars.barh(y, ds.accuracy_mean.values, xerr=ds.accuracy_ci.values, capsize=3)
    bars.axvline(chance, color="gray", ls=":", label="chance")
    bars.set(yticks=y, yticklabels=[LABELS[n] for n in names], xlabel="test accuracy", xlim=(0, 1))
    bars.invert_yaxis()
    bars.legend(loc="lower right")
    fig.suptitle(f"Fine-tuning on new digits, mean ± 95% CI over {ds.seed.size} seeds")
    out["accuracy_table"] = fig

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name in names:
        curve = ds.sel(optimizer=name)
        _band(loss_ax, ds.step.values, curve.loss_curve.values.T, LABELS[name])
        _band(acc_ax, ds.step.values, curve.accuracy_curve.values.T, LABELS[name])
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log")
    acc_ax.set(xlabel="step", ylabel="test accuracy", ylim=(0, 1))
    acc_ax.axhline(chance, color="gray", ls=":")
    loss_ax.legend()
    out["curves"] = fig

    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for i, name in enumerate(names):
        eig = ds.hessian_eigenvalues.sel(optimizer=name).values
        ax.scatter(np.full(eig[:, 0].size, i), eig[:, 0], marker="v", color="C3")
        ax.scatter(np.full(eig[:, -1].size, i), eig[:, -1], marker="^", color="C0")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xticks(range(len(names)), [LABELS[n] for n in names], rotation=20)
    ax.set(ylabel="Hessian eigenvalue", title="λ_min (▼) and λ_max (▲) after fine-tuning")
    out["hessian"] = fig

    fig, (rate_ax, init_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    _band(rate_ax, ds.sgd_rate.values, ds.rate_sweep_accuracy.values, "SGD", marker="o")
    init_x = np.arange(ds.init_scale.size)
    _band(init_ax, init_x, ds.init_sweep_accuracy.values, "SGD, small η", marker="o")
    for ax in (rate_ax, init_ax):
        ax.axhline(float(ds.accuracy_mean.sel(optimizer="adam_small")), color="C1", ls="--")
        ax.axhline(chance, color="gray", ls=":")
        ax.set(ylabel="test accuracy", ylim=(0, 1))
    rate_ax.set(xscale="log", xlabel="SGD learning rate η", title="Adam at the small η: dashed")
    init_ax.set_xticks(init_x, [f"{s:g}" for s in ds.init_scale.values])
    init_ax.set(xlabel="new head's init scale", title="SGD at the small η vs the head's init")
    out["stall"] = fig

    fig, (bar_ax, hist_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    settings = [(d, w) for d in ds.depth.values for w in ds.factor_wd.values]
    for i, (d, w) in enumerate(settings):
        label = f"L={int(d)}, wd={float(w):g}"
        values = ds.factor_sparsity.sel(depth=d, factor_wd=w).values
        mean, half = confidence_interval(values)
        bar_ax.bar(i, mean, yerr=half, capsize=3, color=f"C{i}")
        size = np.abs(ds.factor_head.sel(depth=d, factor_wd=w).values).ravel()
        hist_ax.hist(np.log10(np.maximum(size, 1e-12)), bins=60, histtype="step", label=label)
    bar_ax.set_xticks(range(len(settings)), [f"L={int(d)}\nwd={float(w):g}" for d, w in settings])
    bar_ax.set(ylabel=f"fraction |x| ≤ {_threshold(ds):g}·max|x|", title="AdamW head sparsity")
    hist_ax.set(xlabel="log10 |x|", ylabel="count", title="Head weights after AdamW")
    hist_ax.legend()
    out["sparsity"] = fig
    return out
