"""Regime map: the (q, L) plane coloured by the metric exponent m = q(L−1)/L, with the mirror
map's Legendre validity (m ≤ 1) and the measured escape-time exponent.

At c = 0 the mirror metric is ∇²R(x) ∝ 1/|x|^m (theory §4): R is of Legendre type exactly
when m ≤ 1, and the escape time from the balanced init w_i = α (theory §5) is bounded
(m < 1), logarithmic (m = 1) or a power α^p, p = L(1 − m) (m > 1). The run measures p on a finer
(q, L) grid with the machinery of `saddle_escape` (balanced inits only, parameterized by
x(0) = α^L so that every depth stays within float64's time resolution) and checks, per regime,
the largest |measured − predicted| p, and that the mirror map is Legendre
(`DeepDiagonalMirror.is_legendre`) exactly where the measured p ≥ 0, i.e. where escaping takes
at most log(1/α) time.
"""

import dataclasses

import numpy as np
import xarray as xr

import mirrorflow_jax as mf

from . import saddle_escape
from ._base import Check, check_range, within


@dataclasses.dataclass(frozen=True)
class Config:
    """The (q, L) grid and the escape solves (see `saddle_escape.Config` for the solver keys).

    - ``qs``: values in [1, 2]; ``depths``: integers ≥ 2;
    - ``initial_products``: ≥ 3 values x0 ∈ (0, 1) of x(0) = α^L (α = x0^(1/L) per depth, so
      that T ∝ x0^(1−m) stays below ~1e12, which float64 time still resolves);
    - ``tolerance``: allowed |measured − predicted| of p.
    """

    qs: tuple[float, ...] = tuple(np.linspace(1.0, 2.0, 21).round(6).tolist())
    depths: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    initial_products: tuple[float, ...] = (1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6)
    sign_eps: float = 1e-6
    threshold: float = 0.5
    rtol: float = 1e-10
    max_steps: int = 100_000
    tolerance: float = 0.02
    chunk_size: int | None = None

    def __post_init__(self):
        self.escape_config()  # validates the shared keys, naming them
        check_range("tolerance", self.tolerance, 0.0)

    def escape_config(self) -> saddle_escape.Config:
        keys = ("qs", "depths", "sign_eps", "threshold", "rtol", "max_steps")
        shared = {key: getattr(self, key) for key in keys}
        try:
            return saddle_escape.Config(
                **shared,
                alphas=self.initial_products,
                families=("balanced",),
                tolerance=self.tolerance,
                chunk_size=self.chunk_size,
            )
        except ValueError as error:
            raise ValueError(str(error).replace("`alphas`", "`initial_products`")) from None


def run(config: Config, *, workdir=None, progress: bool = False) -> xr.Dataset:
    """Escape times over (depth, q, x0) from w_i = x0^(1/L), the measured p and the Legendre
    flags."""
    escape = config.escape_config()
    ds = saddle_escape.solve_escapes(escape, by_product=True, workdir=workdir, progress=progress)
    ds = ds.isel(start=0, drop=True)
    legendre = [
        [bool(mf.DeepDiagonalMirror(q, int(d), 1.0).is_legendre) for q in config.qs]
        for d in config.depths
    ]
    ds["is_legendre"] = (("depth", "q"), np.array(legendre))
    return ds.assign_attrs(tolerance=config.tolerance)


def _regimes(ds: xr.Dataset) -> np.ndarray:
    return np.array(
        [[mf.escape_regime(float(q), int(d))[0] for q in ds.q.values] for d in ds.depth.values]
    )


def checks(ds: xr.Dataset) -> list[Check]:
    tolerance = float(ds.attrs["tolerance"])
    escaped = np.isfinite(ds.escape_time.values)
    out = [Check("every init escaped", int(escaped.sum()), escaped.size, 0, bool(escaped.all()))]
    error = np.abs(ds.measured_exponent.values - ds.predicted_exponent.values)
    regimes = _regimes(ds)
    for regime in ("constant", "log", "power"):
        cells = regimes == regime
        if cells.any():
            worst = float(np.nanmax(np.where(cells, error, np.nan)))
            if np.isnan(error[cells]).any():
                worst = float("nan")
            detail = f"max over {int(cells.sum())} (q, L) cells"
            out.append(within(f"exponent p, {regime} regime", worst, 0.0, tolerance, detail))
    bounded = ds.measured_exponent.values >= -tolerance
    agree = int((bounded == ds.is_legendre.values).sum())
    out.append(
        Check(
            "Legendre (m <= 1) exactly where measured p >= 0",
            agree,
            bounded.size,
            0,
            agree == bounded.size,
            "cells where DeepDiagonalMirror.is_legendre matches escape in O(log 1/α) time",
        )
    )
    return out


def _heatmap(ax, ds: xr.Dataset, values: np.ndarray, title: str, cmap: str, **kwargs):
    q, depth = ds.q.values, ds.depth.values
    mesh = ax.pcolormesh(q, depth, values, cmap=cmap, shading="nearest", **kwargs)
    m = ds.metric_exponent.values
    ax.contour(q, depth, m, levels=[1.0], colors="k", linewidths=1.5)
    ax.contourf(q, depth, m, levels=[1.0, np.inf], colors="none", hatches=["//"])
    ax.set(xlabel="q (1: sign flow, 2: gradient flow)", ylabel="depth L", title=title)
    ax.set_yticks(depth)
    return mesh


def figures(ds: xr.Dataset) -> dict:
    """m, measured p and measured − predicted over the (q, L) plane; the black line is m = 1
    and the hatched side (m > 1) is where R is not Legendre."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.5), layout="constrained")
    left, middle, right = fig.subplots(1, 3)
    mesh = _heatmap(left, ds, ds.metric_exponent.values, "metric exponent m = q(L−1)/L", "viridis")
    fig.colorbar(mesh, ax=left)
    p = ds.measured_exponent.values
    bound = float(np.nanmax(np.abs(p)))
    mesh = _heatmap(
        middle, ds, p, "measured escape exponent p", "coolwarm_r", vmin=-bound, vmax=bound
    )
    fig.colorbar(mesh, ax=middle, label="T − T(0) ∝ α^p  (p < 0: T grows as α → 0)")
    error = p - ds.predicted_exponent.values
    mesh = _heatmap(right, ds, error, "measured − predicted p, p = L(1 − m)", "PiYG")
    fig.colorbar(mesh, ax=right)
    fig.suptitle("Regimes of steepest flows on x = w_1⋯w_L (hatched: m > 1, R not Legendre)")
    return {"regime_map": fig}
