"""Saddle-to-saddle: gradient flow at depth 2 from a small init α on a sparse regression jumps
between plateaus at times that line up in t/log(1/α).

For x = u_1u_2 − v_1v_2 from u_i = v_i = α, gradient flow (q = 2, m = 1) moves a coordinate
like α²·e^(2|g_j|t): it leaves zero after a time ∝ log(1/α). In the rescaled time
τ = t / log(1/α) the trajectory converges, as α → 0, to a piecewise-constant path that visits
a sequence of saddles and ends at the minimum-ℓ1 interpolator (Pesme & Flammarion 2023;
theory §5): the loss shows plateaus separated by sharp drops, and coordinate j becomes active
at a time τ_j that does not depend on α in the limit.

The run records τ_j(α), the first rescaled time at which |x_j| reaches ``activation``, for
every coordinate active at the smallest α, and checks (i) that every α activates the
coordinates in the same order, (ii) that the τ_j coincide across α within ``time_tolerance``
and (iii) that their α-dependence is the expected O(1/log(1/α)) correction: the fit
τ_j(α) = τ_j* + c_j/log(1/α) leaves residuals below ``time_tolerance``/4.
"""

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import mirrorflow_jax as mf

from ._base import Check, check_int, check_range, checkpoint_dir, within


@dataclasses.dataclass(frozen=True)
class Config:
    """Gradient flow on a seeded sparse regression (n, d, k) from the signed depth-2 model.

    - ``alphas``: ≥ 3 init scales in (0, 1); ``tau_max``, ``num_saves``: the rescaled time span
      [0, tau_max] of t/log(1/α) and its resolution;
    - ``activation``: |x_j| that marks coordinate j as active;
    - ``time_tolerance``: allowed spread of the activation times in τ across α;
    - ``rtol``, ``max_steps``: solver (atol = rtol·α²).
    """

    alphas: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-12)
    n: int = 10
    d: int = 20
    k: int = 3
    seed: int = 0
    tau_max: float = 3.0
    num_saves: int = 601
    activation: float = 0.1
    time_tolerance: float = 0.1
    rtol: float = 1e-8
    max_steps: int = 100_000
    chunk_size: int | None = None

    def __post_init__(self):
        check_range("alphas", self.alphas, 0.0, 1.0, lo_open=True)
        if len(self.alphas) < 3 or len(set(self.alphas)) < len(self.alphas):
            raise ValueError(f"`alphas` must hold at least 3 distinct values; got {self.alphas}.")
        for name, lo in (("n", 1), ("d", 1), ("k", 1), ("seed", 0), ("num_saves", 2)):
            check_int(name, getattr(self, name), lo)
        if self.k > self.d:
            raise ValueError(f"`k` must lie in [1, d] = [1, {self.d}]; got {self.k}.")
        check_int("max_steps", self.max_steps, 1)
        check_range("tau_max", self.tau_max, 0.0, lo_open=True)
        check_range("activation", self.activation, 0.0, lo_open=True)
        check_range("time_tolerance", self.time_tolerance, 0.0)
        check_range("rtol", self.rtol, 0.0, 1e-3, lo_open=True)
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)


def run(config: Config, *, workdir=None, progress: bool = False) -> xr.Dataset:
    """Loss and x against τ = t/log(1/α) for every α, and the activation times."""
    problem = mf.sparse_regression(jax.random.key(config.seed), n=config.n, d=config.d, k=config.k)
    taus = np.linspace(0.0, config.tau_max, config.num_saves)

    def solve(alpha):
        scale = jnp.log(1 / alpha)
        model = mf.SignedDeepDiagonal.scaled(alpha, depth=2, dim=config.d)
        controller = diffrax.PIDController(rtol=config.rtol, atol=config.rtol * alpha**2)
        sol = mf.solve_flow(
            mf.SteepestFlow(mf.Lp(2.0)),
            model,
            problem,
            scale * config.tau_max,
            saveat=scale * jnp.asarray(taus),
            stepsize_controller=controller,
            max_steps=config.max_steps,
        )
        return {"loss": sol.loss, "x": sol.x, "num_steps": sol.num_steps, "solved": sol.ok}

    ds = mf.sweep(
        solve,
        mf.Grid(alpha=list(config.alphas)),
        chunk_size=config.chunk_size,
        checkpoint_dir=checkpoint_dir(workdir, "paths"),
        progress=progress,
    )
    ds = ds.rename({"loss_dim0": "tau", "x_dim0": "tau", "x_dim1": "coordinate"})
    ds = ds.assign_coords(tau=taus, coordinate=np.arange(config.d))
    ds["x_true"] = ("coordinate", np.asarray(problem.truth))
    ds["activation_time"] = activation_times(ds, config.activation)
    return ds.assign_attrs(
        activation=config.activation, time_tolerance=config.time_tolerance, model="signed, L=2"
    )


def activation_times(ds: xr.Dataset, level: float) -> xr.DataArray:
    """First τ at which |x_j| ≥ ``level``, per (alpha, coordinate); NaN if never."""
    active = np.abs(ds.x.values) >= level
    first = np.argmax(active, axis=1)
    times = np.where(active.any(axis=1), ds.tau.values[first], np.nan)
    return xr.DataArray(times, dims=("alpha", "coordinate"))


def _sequence(times: np.ndarray) -> tuple[int, ...]:
    """Active coordinates in order of activation."""
    active = np.flatnonzero(np.isfinite(times))
    return tuple(active[np.argsort(times[active], kind="stable")].tolist())


def limit_fit(alphas: np.ndarray, times: np.ndarray) -> tuple[float, float, float]:
    """Fit τ(α) = τ* + c/log(1/α); returns (τ*, c, largest |residual|)."""
    u = 1 / np.log(1 / alphas)
    (c, tau_star), residuals = np.polyfit(u, times, 1), None
    residuals = times - (tau_star + c * u)
    return float(tau_star), float(c), float(np.abs(residuals).max())


def checks(ds: xr.Dataset) -> list[Check]:
    tolerance = float(ds.attrs["time_tolerance"])
    alphas = ds.alpha.values
    times = ds.activation_time.values
    smallest = int(np.argmin(alphas))
    order = _sequence(times[smallest])
    solved = int(ds.solved.sum())
    out = [Check("every solve finished", solved, alphas.size, 0, solved == alphas.size)]
    same = sum(_sequence(row)[: len(order)] == order for row in times)
    detail = f"activation order at the smallest α: {list(order)}"
    out.append(
        Check(
            "same saddle sequence for every alpha",
            same,
            alphas.size,
            0,
            same == alphas.size,
            detail,
        )
    )
    for j in order:
        tau = times[:, j]
        spread = float(np.nanmax(tau) - np.nanmin(tau)) if np.isfinite(tau).all() else np.nan
        values = ", ".join(f"{t:.3f}" for t in tau)
        name = f"jump of x_{j}: spread of t/log(1/alpha) across alpha"
        out.append(within(name, spread, 0.0, tolerance, f"τ = {values}"))
        if np.isfinite(tau).all():
            tau_star, c, residual = limit_fit(alphas, tau)
            detail = f"τ* = {tau_star:.3f}, c = {c:.3f}"
            name = f"jump of x_{j}: O(1/log(1/alpha)) convergence, fit residual"
            out.append(within(name, residual, 0.0, tolerance / 4, detail))
    return out


def figures(ds: xr.Dataset) -> dict:
    """Loss against τ = t/log(1/α) for every α (left), the active coordinates |x_j| (middle)
    and the activation times against 1/log(1/α) with their fits (right)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.5), layout="constrained")
    left, middle, right = fig.subplots(1, 3)
    tau = ds.tau.values
    order = _sequence(ds.activation_time.values[int(np.argmin(ds.alpha.values))])
    for i, alpha in enumerate(ds.alpha.values):
        member = ds.sel(alpha=alpha)
        left.semilogy(tau, member.loss.values, color=f"C{i}", label=f"α = {alpha:.0e}")
        for j in order:
            middle.plot(tau, np.abs(member.x.sel(coordinate=j).values), color=f"C{i}", lw=1)
    left.set(xlabel="t / log(1/α)", ylabel="loss", title="plateaus line up in t / log(1/α)")
    left.legend()
    middle.axhline(float(ds.attrs["activation"]), color="k", ls=":", lw=0.8)
    middle.set(xlabel="t / log(1/α)", ylabel="|x_j|", title=f"active coordinates {list(order)}")
    u = 1 / np.log(1 / ds.alpha.values)
    grid = np.linspace(0, u.max() * 1.05, 50)
    for j in order:
        times = ds.activation_time.sel(coordinate=j).values
        (line,) = right.plot(u, times, "o", label=f"x_{j}")
        if np.isfinite(times).all():
            tau_star, c, _ = limit_fit(ds.alpha.values, times)
            right.plot(grid, tau_star + c * grid, ":", color=line.get_color())
    right.set(
        xlabel="1 / log(1/α)  (0: the α → 0 limit)",
        ylabel="activation time t / log(1/α)",
        title="jump times and their O(1/log(1/α)) fits",
    )
    right.legend()
    fig.suptitle("Saddle-to-saddle dynamics of gradient flow, signed depth-2 model")
    return {"saddle_to_saddle": fig}
