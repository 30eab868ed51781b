"""Quick demo: saddle escape of steepest flows, and their loss curves on a sparse regression.

Two panels, both from real solves:

1. escape time of x = w^L on f(x) = (x − 1)²/2 from the uniform init w_i = α, versus α, for
   sign flow (q = 1), q = 1.5 and gradient flow (q = 2) at depth 3, one vmapped solve per flow,
   next to the predicted exponents of docs/theory.md §5;
2. loss curves on a seeded sparse regression with the signed deep diagonal model.

It follows the experiment contract (`Config`, `run`, `figures`, `checks`); ``mirrorflow demo``
runs it with the defaults and prints `summary`.
"""

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import mirrorflow_jax as mf

from ._base import Check, loglog_slope, within


@dataclasses.dataclass(frozen=True)
class Config:
    depth: int = 3
    alphas: tuple[float, ...] = tuple(np.logspace(-3, -1, 9).tolist())
    qs: tuple[float, ...] = (1.0, 1.5, 2.0)
    eps: float = 1e-3  # smoothing scale for q = 1 on the regression
    n: int = 20
    d: int = 40
    k: int = 3
    init_scale: float = 1e-2
    t1: float = 50.0
    num_saves: int = 101
    seed: int = 0


def _escape_times(q: float, config: Config) -> mf.FlowSolution:
    flow = mf.SteepestFlow(mf.Lp(q))

    def solve(alpha):
        model = mf.DeepDiagonal.scaled(alpha, depth=config.depth, dim=1)
        return mf.solve_flow(flow, model, mf.ScalarToy(), 1e9, event=mf.NormAbove(0.5))

    return jax.vmap(solve)(jnp.asarray(config.alphas))


def _regression_curve(q: float, problem, config: Config) -> mf.FlowSolution:
    eps = config.eps if q == 1.0 else 0.0
    flow = mf.SteepestFlow(mf.Lp(q, eps))
    model = mf.SignedDeepDiagonal.scaled(config.init_scale, depth=config.depth, dim=config.d)
    ts = jnp.linspace(0.0, config.t1, config.num_saves)
    return mf.solve_flow(
        flow,
        model,
        problem,
        config.t1,
        saveat=ts,
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-9),
        max_steps=400_000,
    )


def run(config: Config = Config(), *, workdir=None, progress: bool = False) -> xr.Dataset:
    """Solve both panels and return them as one labelled Dataset (a few solves, no
    checkpoints: ``workdir`` and ``progress`` are accepted for the contract and unused)."""
    problem = mf.sparse_regression(jax.random.key(config.seed), n=config.n, d=config.d, k=config.k)
    escapes = [_escape_times(q, config) for q in config.qs]
    curves = [_regression_curve(q, problem, config) for q in config.qs]
    return xr.Dataset(
        {
            "escape_time": (("q", "alpha"), np.stack([np.asarray(s.event_time) for s in escapes])),
            "escape_ok": (("q", "alpha"), np.stack([np.asarray(s.ok) for s in escapes])),
            "loss": (("q", "t"), np.stack([np.asarray(s.loss) for s in curves])),
            "x_final": (("q", "coordinate"), np.stack([np.asarray(s.x[-1]) for s in curves])),
            "num_steps": ("q", np.array([int(s.num_steps) for s in curves])),
            "regression_ok": ("q", np.array([bool(s.ok) for s in curves])),
            "solver": ("q", np.array([s.solver for s in curves])),
            "eps": ("q", np.array([float(s.eps) for s in curves])),
            "x_true": ("coordinate", np.asarray(problem.truth)),
        },
        coords={
            "q": list(config.qs),
            "alpha": list(config.alphas),
            "t": np.asarray(curves[0].ts),
            "coordinate": np.arange(config.d),
        },
        attrs={
            "experiment": "demo",
            "config": repr(config),
            "smoothing_at": curves[0].smoothing_at,
            "smoothing": curves[0].smoothing,
            "depth": config.depth,
        },
    )


# Loss values below this are at the solves' accuracy (x to about atol = 1e-9, so f to about
# 1e-18): the plot draws them at this floor.
LOSS_FLOOR = 1e-18


def predicted_curve(q: float, depth: int, alpha: np.ndarray, t_first: float) -> np.ndarray:
    """The predicted escape-time shape through the first point (docs/theory.md §5)."""
    regime, exponent = mf.escape_regime(q, depth)
    if regime == "log":
        return t_first * np.log(1 / alpha) / np.log(1 / alpha[0])
    return t_first * (alpha / alpha[0]) ** exponent


def figures(ds: xr.Dataset) -> dict:
    """``{"demo": figure}``: escape time vs α (log-log, with the predicted slopes) and the
    regression loss curves."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    alpha = ds.alpha.values
    for q in ds.q.values:
        times = ds.escape_time.sel(q=q).values
        (line,) = left.loglog(alpha, times, "o-", label=f"q = {q:g}")
        predicted = predicted_curve(float(q), int(ds.attrs["depth"]), alpha, times[0])
        left.loglog(alpha, predicted, ":", color=line.get_color())
        label = f"q = {q:g}" + (f", ε = {ds.eps.sel(q=q).item():g}" if ds.eps.sel(q=q) else "")
        floored = np.maximum(ds.loss.sel(q=q).values, LOSS_FLOOR)
        right.semilogy(ds.t.values, floored, label=label)
    left.set(xlabel="init scale α", ylabel="escape time (x reaches 1/2)")
    left.set_title(f"Saddle escape, depth {ds.attrs['depth']} (dotted: predicted shape)")
    left.legend()
    right.axhline(LOSS_FLOOR, color="gray", linestyle=":", linewidth=1)
    right.annotate(
        "solver accuracy",
        (0.0, LOSS_FLOOR),
        xytext=(2, 3),
        textcoords="offset points",
        color="gray",
        fontsize=8,
    )
    right.set(xlabel="t", ylabel="loss", title="Sparse regression, signed deep diagonal")
    right.legend()
    return {"demo": fig}


def checks(ds: xr.Dataset) -> list[Check]:
    """Every solve finished; the escape time follows the regime `mf.escape_regime` predicts
    (docs/theory.md §5): a log-log slope in α equal to the predicted exponent for the constant
    and power regimes (0 for the sign flow, −1 for gradient flow at depth 3), and a slope of 1
    against log(1/α) for the log regime; the sign flow's loss falls monotonically (to the
    solver's rtol 1e-6) down to the accuracy floor."""
    alpha, depth = ds.alpha.values, int(ds.attrs["depth"])
    out = [
        Check("every solve ok", str(bool(ds.escape_ok.all() & ds.regression_ok.all())), "True",
              "-", bool(ds.escape_ok.all() & ds.regression_ok.all()))
    ]  # fmt: skip
    for q in ds.q.values:
        times = ds.escape_time.sel(q=q).values
        regime, exponent = mf.escape_regime(float(q), depth)
        if regime == "log":
            slope = loglog_slope(np.log(1 / alpha), times)
            out.append(within(f"escape time ∝ log(1/α)^p, q = {q:g}", slope, 1.0, 0.25))
        else:
            slope = loglog_slope(alpha, times)
            out.append(within(f"escape exponent, q = {q:g} ({regime})", slope, exponent, 0.15))
    if 1.0 in ds.q.values:
        loss = np.maximum(ds.loss.sel(q=1.0).values, LOSS_FLOOR)
        rise = float(np.max(np.diff(loss) / loss[:-1]))
        out.append(
            Check("sign-flow loss monotone (largest relative rise)", rise, 0.0, 1e-6, rise <= 1e-6)
        )
    return out


def summary(ds: xr.Dataset) -> str:
    """A short text summary: fitted escape exponents and final losses."""
    header = ("q", "escape slope", "predicted", "final loss", "steps", "solver (auto)")
    lines = ["{:>5} {:>13} {:>20} {:>11} {:>7}  {}".format(*header)]
    log_alpha = np.log(ds.alpha.values)
    for q in ds.q.values:
        slope = np.polyfit(log_alpha, np.log(ds.escape_time.sel(q=q).values), 1)[0]
        regime, exponent = mf.escape_regime(float(q), int(ds.attrs["depth"]))
        predicted = "~log(1/alpha)" if regime == "log" else f"{regime} ({exponent:g})"
        final = ds.loss.sel(q=q).values[-1]
        steps = int(ds.num_steps.sel(q=q))
        solver = ds.solver.sel(q=q).item()
        lines.append(
            f"{q:>5g} {slope:>13.3f} {predicted:>20} {final:>11.3e} {steps:>7d}  {solver}"
        )
    return "\n".join(lines)
