"""Saddle escape: escape time vs init scale α for depths L and steepness q, from balanced, random
and saddle inits, against the predicted exponent p = L − q(L−1).

The flow dw/dt = −φ_q(∇_w F) on x = w_1⋯w_L with f(x) = (x − 1)²/2 starts near the saddle at
the origin and *escapes* when x reaches 1/2 (theory §5). With m = q(L−1)/L the escape time is

    m < 1:  T(α) → T(0) (constant),   m = 1:  T ~ log(1/α),   m > 1:  T ~ α^p,  p = L(1 − m).

All three regimes are one statement about the derivative **(derived)**: from w_i = α the time
to reach 1/2 is T(α) = ∫_{α^L}^{1/2} dx / (h(x)·φ_q(1 − x)) with h(x) = L|x|^m, so

    dT/dα = −α^(p−1)·(1 + O(α^L)),    p = L − q(L − 1)

(T − T(0) ∝ α^p for p > 0, T ≈ log(1/α) for p = 0, T ∝ α^p for p < 0). A random init α·z
(z fixed, lognormal) or the saddle init w_1 = 0, w_i = α (i ≥ 2) rescales the same way
(w = α·u, t = α^p·τ), so p is predicted for every family. The run measures p as
1 + the log-log slope of the finite differences ΔT/Δα on the geometric α grid, which is exact
for a pure power law, and checks it per (family, q, L); in the log regime it also checks
dT/d log(1/α) = 1 **(derived)**.

Depths are swept in one compilation with `Padded`; the sign flow q = 1 uses the
structure-preserving smoothing with a small ε (docs/smoothing.md).
"""

import dataclasses
from typing import Literal

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import xarray as xr

import mirrorflow_jax as mf

from ._base import Check, check_int, check_range, checkpoint_dir, loglog_slope, within

FAMILIES = ("balanced", "random", "saddle")
Family = Literal["balanced", "random", "saddle"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Saddle-escape sweep (defaults: the full run).

    - ``depths``, ``qs``, ``alphas``: the grid (L ≥ 2, q ∈ [1, 2], 0 < α < 1; α on a
      geometric grid, at least 3 values);
    - ``families``: inits — ``balanced`` w_i = α; ``random`` w_i = α·exp(σ·z_i), z ~ N(0, 1)
      (``random_seeds`` draws, σ = ``random_spread``); ``saddle`` w_1 = 0, w_i = α (i ≥ 2);
    - ``sign_eps``: ε of the smoothed sign flow at q = 1 (structure-preserving);
    - ``threshold``: escape when |x| reaches it; ``rtol``: solver tolerance (atol = rtol·α^L);
    - ``tolerance``: allowed |measured − predicted| of the exponent p;
    - ``chunk_size``: members per checkpointed chunk (None: one chunk).
    """

    depths: tuple[int, ...] = (2, 3, 4)
    qs: tuple[float, ...] = (1.0, 1.25, 1.5, 1.75, 2.0)
    alphas: tuple[float, ...] = tuple(np.logspace(-6, -2, 9).tolist())
    families: tuple[Family, ...] = FAMILIES
    random_seeds: int = 4
    random_spread: float = 0.5
    sign_eps: float = 1e-6
    threshold: float = 0.5
    rtol: float = 1e-10
    max_steps: int = 100_000
    tolerance: float = 0.02
    chunk_size: int | None = None

    def __post_init__(self):
        for depth in self.depths:
            check_int("depths", depth, 2)
        check_range("qs", self.qs, 1.0, 2.0)
        check_range("alphas", self.alphas, 0.0, 1.0, lo_open=True)
        if len(self.alphas) < 3 or len(set(self.alphas)) < len(self.alphas):
            raise ValueError(f"`alphas` must hold at least 3 distinct values; got {self.alphas}.")
        if not self.families or len(set(self.families)) < len(self.families):
            raise ValueError(f"`families` must be distinct values of {list(FAMILIES)}.")
        check_int("random_seeds", self.random_seeds, 1)
        check_range("random_spread", self.random_spread, 0.0)
        check_range("sign_eps", self.sign_eps, 0.0, lo_open=True)
        check_range("threshold", self.threshold, 0.0, 1.0, lo_open=True)
        check_range("rtol", self.rtol, 0.0, 1e-3, lo_open=True)
        check_int("max_steps", self.max_steps, 1)
        check_range("tolerance", self.tolerance, 0.0)
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)


def predicted_exponent(q: float, depth: int) -> float:
    """p = L(1 − m) = L − q(L − 1): dT/dα ∝ α^(p−1) (the power-regime exponent of
    `mirrorflow_jax.escape_regime` when m > 1)."""
    return depth * (1 - mf.metric_exponent(q, depth))


def _starts(config: Config) -> mf.Grid:
    """One zipped block of initial conditions: family code and seed per start."""
    families, seeds = [], []
    for family in config.families:
        count = config.random_seeds if family == "random" else 1
        families += [FAMILIES.index(family)] * count
        seeds += list(range(count))
    return mf.Grid.zip(start=np.arange(len(families)), family=families, seed=seeds)


def _escape_fn(config: Config, by_product: bool):
    """The sweep's member function: escape time from scale ``alpha``, or (``by_product``)
    from the scale α = x0^(1/L) at which the balanced init has x(0) = ``x0``."""
    max_depth = max(config.depths)

    def escape(start, family, seed, depth, q, eps, alpha):
        """Escape time of one member (``start`` only labels the init)."""
        del start
        z = jnp.exp(config.random_spread * jax.random.normal(jax.random.key(seed), (max_depth, 1)))
        ones = jnp.ones((max_depth, 1))
        shape = jnp.select([family == 0, family == 1], [ones, z], ones.at[0].set(0.0))
        model = mf.Padded(mf.DeepDiagonal(alpha * shape), depth)
        controller = diffrax.PIDController(
            rtol=config.rtol,
            atol=config.rtol * alpha ** depth.astype(alpha.dtype),
            norm=optx.max_norm,
        )
        sol = mf.solve_flow(
            mf.SteepestFlow(mf.Lp(q, eps)),
            model,
            mf.ScalarToy(),
            1e30,
            event=mf.NormAbove(config.threshold),
            stepsize_controller=controller,
            max_steps=config.max_steps,
        )
        return {"escape_time": sol.event_time, "num_steps": sol.num_steps, "solved": sol.ok}

    def escape_from_product(start, family, seed, depth, q, eps, x0):
        return escape(start, family, seed, depth, q, eps, x0 ** (1 / depth.astype(x0.dtype)))

    return escape_from_product if by_product else escape


def solve_escapes(
    config: Config, *, by_product: bool = False, workdir=None, progress: bool = False
) -> xr.Dataset:
    """Escape times over (start, depth, q, alpha), with the measured and predicted exponents.

    With ``by_product`` the last axis is ``x0`` = α^L (``config.alphas`` are read as x0), so
    that every depth starts from the same x(0) and escape times stay within what float64 time
    resolves (T ∝ x0^(1−m)); p is then measured as L · the exponent in x0."""
    axis = "x0" if by_product else "alpha"
    eps = [config.sign_eps if q == 1.0 else 0.0 for q in config.qs]
    grid = (
        _starts(config)
        * mf.Grid(depth=list(config.depths))
        * mf.Grid.zip(q=list(config.qs), eps=eps)
        * mf.Grid(**{axis: list(config.alphas)})
    )
    ds = mf.sweep(
        _escape_fn(config, by_product),
        grid,
        chunk_size=config.chunk_size,
        checkpoint_dir=checkpoint_dir(workdir, "escape"),
        progress=progress,
    )
    names = np.array(FAMILIES)[ds.family.values]
    ds = ds.assign_coords(family=("start", names))
    exponents = [[predicted_exponent(q, d) for q in config.qs] for d in config.depths]
    metric = [[mf.metric_exponent(q, d) for q in config.qs] for d in config.depths]
    ds["predicted_exponent"] = (("depth", "q"), np.array(exponents))
    ds["metric_exponent"] = (("depth", "q"), np.array(metric))
    scales = ds[axis].values
    measured = [
        [
            [
                (d if by_product else 1)
                * escape_exponent(scales, ds.escape_time.sel(depth=d, q=q).values[[s]])
                for q in config.qs
            ]
            for d in config.depths
        ]
        for s in range(ds.sizes["start"])
    ]
    ds["measured_exponent"] = (("start", "depth", "q"), np.array(measured))
    return ds


def escape_exponent(alpha, times) -> float:
    """p from escape times ``times`` (rows: inits, columns: ``alpha``): 1 + the log-log slope of
    |ΔT/Δα| against the geometric midpoints √(α_k α_(k+1)), pooled over rows."""
    alpha, times = np.asarray(alpha), np.atleast_2d(times)
    order = np.argsort(alpha)
    alpha, times = alpha[order], times[:, order]
    slopes = np.diff(times, axis=1) / np.diff(alpha)
    mid = np.broadcast_to(np.sqrt(alpha[1:] * alpha[:-1]), slopes.shape)
    return 1.0 + loglog_slope(mid.ravel(), slopes.ravel())


def log_coefficient(alpha, times) -> float:
    """dT/d log(1/α): the least-squares slope of T against log(1/α), pooled over rows."""
    times = np.atleast_2d(times)
    x = np.broadcast_to(np.log(1 / np.asarray(alpha)), times.shape)
    return float(np.polyfit(x.ravel(), times.ravel(), 1)[0])


def run(config: Config, *, workdir=None, progress: bool = False) -> xr.Dataset:
    """Solve every escape of the grid and measure the exponents."""
    ds = solve_escapes(config, workdir=workdir, progress=progress)
    return ds.assign_attrs(tolerance=config.tolerance)


def family_checks(ds: xr.Dataset, tolerance: float) -> list[Check]:
    """Per (family, q, L): measured p against L − q(L−1); in the log regime (m = 1) also
    dT/d log(1/α) against 1."""
    out = []
    for family in dict.fromkeys(ds.family.values):
        members = ds.sel(start=ds.family == family)
        for depth in ds.depth.values:
            for q in ds.q.values:
                times = members.escape_time.sel(depth=depth, q=q).values
                regime, _ = mf.escape_regime(float(q), int(depth))
                label = f"{family} q={q:g} L={depth}"
                detail = f"{regime} regime, m = {mf.metric_exponent(float(q), int(depth)):.4g}"
                measured = escape_exponent(ds.alpha.values, times)
                predicted = float(ds.predicted_exponent.sel(depth=depth, q=q))
                out.append(within(f"exponent p, {label}", measured, predicted, tolerance, detail))
                if regime == "log":
                    coefficient = log_coefficient(ds.alpha.values, times)
                    name = f"dT/dlog(1/alpha), {label}"
                    out.append(within(name, coefficient, 1.0, tolerance, "derived, m = 1"))
    return out


def solved_check(ds: xr.Dataset) -> Check:
    """Every member reached the threshold (a failed solve would bias the exponents).

    For escape times T ≫ 1 the root finder's tolerance on the event function can fall below
    what float64 resolves at t = T, so it reports a failure after locating the time to the
    last bit; those members count as escaped and are counted in the detail."""
    escaped = np.isfinite(ds.escape_time.values)
    limited = int((escaped & ~ds.solved.values.astype(bool)).sum())
    detail = (
        f"max solver steps {int(ds.num_steps.max())}; {limited} root finds stopped at float64 "
        f"resolution (T up to {np.nanmax(np.where(escaped, ds.escape_time.values, np.nan)):.3g})"
    )
    held = bool(escaped.all())
    return Check("every init escaped", int(escaped.sum()), escaped.size, 0, held, detail)


def checks(ds: xr.Dataset) -> list[Check]:
    return [solved_check(ds), *family_checks(ds, float(ds.attrs["tolerance"]))]


def predicted_times(q: float, depth: int, alpha: np.ndarray, anchor: float) -> np.ndarray:
    """The predicted shape of T(α) through ``anchor`` = T(α_min): flat (m < 1), log(1/α) plus a
    constant (m = 1), or ∝ α^p (m > 1)."""
    regime, exponent = mf.escape_regime(q, depth)
    start = alpha.min()
    if regime == "log":
        return anchor + np.log(start / alpha)
    if regime == "constant":
        return np.full_like(alpha, anchor)
    return anchor * (alpha / start) ** exponent


MARKERS = {"balanced": "o-", "random": "x", "saddle": "s--"}
MARKER_NAMES = {"balanced": "circles, solid", "random": "crosses", "saddle": "squares, dashed"}


def escape_time_figure(ds: xr.Dataset):
    """T(α) per depth (panels), q (colours) and init family (markers), predicted dotted."""
    from matplotlib.figure import Figure

    depths = ds.depth.values
    fig = Figure(figsize=(4.2 * len(depths), 4), layout="constrained")
    axes = fig.subplots(1, len(depths), squeeze=False)[0]
    alpha = ds.alpha.values
    colors = {q: f"C{i}" for i, q in enumerate(ds.q.values)}
    for ax, depth in zip(axes, depths, strict=True):
        for q in ds.q.values:
            for start in ds.start.values:
                family = str(ds.family.values[start])
                times = ds.escape_time.sel(start=start, depth=depth, q=q).values
                label = f"q = {q:g}" if start == 0 and depth == depths[0] else None
                ax.loglog(alpha, times, MARKERS[family], color=colors[q], ms=4, label=label)
            anchor = float(ds.escape_time.sel(start=0, depth=depth, q=q).values[np.argmin(alpha)])
            shape = predicted_times(float(q), int(depth), alpha, anchor)
            ax.loglog(alpha, shape, ":", color="k", lw=1)
        ax.set(xlabel="init scale α", ylabel="escape time T (|x| reaches 1/2)")
        ax.set_title(f"L = {depth}")
    families = dict.fromkeys(ds.family.values)
    title = "\n".join(f"{f}: {MARKER_NAMES[f]}" for f in families) + "\ndotted: predicted"
    fig.legend(loc="outside right upper", title=title)
    fig.suptitle("Saddle escape of x = w_1⋯w_L on f(x) = (x − 1)²/2")
    return fig


def exponent_figure(ds: xr.Dataset):
    """Measured p against predicted p = L − q(L−1), one marker per init family."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.subplots()
    predicted = ds.predicted_exponent.values
    for i, family in enumerate(dict.fromkeys(ds.family.values)):
        measured = ds.measured_exponent.sel(start=ds.family == family).values
        for row in measured:
            style = dict(ls="", mfc="none", color=f"C{i}", label=family)
            ax.plot(predicted.ravel(), row.ravel(), "osx^"[i], **style)
    lo, hi = float(predicted.min()) - 0.2, float(predicted.max()) + 0.2
    ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="measured = predicted")
    ax.axvline(0.0, color="grey", lw=0.5)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys())
    ax.set(
        xlabel="predicted p = L − q(L−1)  (p > 0: constant, 0: log, < 0: power)",
        ylabel="measured p (1 + slope of log|ΔT/Δα|)",
        title="Escape-time exponent",
    )
    return fig


def figures(ds: xr.Dataset) -> dict:
    return {"escape_time": escape_time_figure(ds), "exponents": exponent_figure(ds)}
