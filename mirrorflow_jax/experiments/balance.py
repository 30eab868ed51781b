"""Balance laws: |w_i|^q − |w_1|^q along steepest flows, conserved without weight decay and
decaying like exp(−q∫α) with decoupled weight decay α.

For x = w_1⋯w_L and the flow dw_i/dt = −φ_q(∂F/∂w_i) − α·w_i (theory §1, §3), the
quantities B_i = |w_i|^q − |w_1|^q obey

    dB_i/dt = −q·α·B_i    ⇒    B_i(t) = B_i(0)·exp(−q∫₀ᵗ α(s) ds),

because |w_i|^(q−1)·φ_q(∂F/∂w_i) = φ_q(g·∏_j w_j) is the same for every factor. The run solves
a sparse regression from a random (unbalanced) init for several q, with and without a constant
decoupled decay α, and checks the largest deviation from the law, relative to max|B(0)|. The
flows with q < 2 use the structure-preserving smoothing φ_q^ε, which keeps the law exact
(docs/smoothing.md).
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
    """Balance curves (defaults: the paper-scale regression, d = 300, n = 100, L = 3).

    - ``qs``: steepness values in [1, 2]; ``eps``: ε of the smoothed map for q < 2 (near the
      minimum ∇f → 0, where φ_q is discontinuous (q = 1) or non-Lipschitz (1 < q < 2));
    - ``decays``: decoupled weight decays α ≥ 0 (include 0 for the conservation law);
    - ``depth``, ``n``, ``d``, ``k``, ``seed``: model and seeded sparse regression;
    - ``init_scale``: the random init's factors are N(0, init_scale²);
    - ``t1``, ``num_saves``: time span and saved points; ``rtol``, ``max_steps``: solver;
    - ``tolerance``: allowed relative deviation from the law.
    """

    qs: tuple[float, ...] = (1.0, 1.25, 1.5, 1.75, 2.0)
    decays: tuple[float, ...] = (0.0, 0.1)
    depth: int = 3
    n: int = 100
    d: int = 300
    k: int = 5
    seed: int = 0
    init_scale: float = 0.5
    eps: float = 1e-3
    t1: float = 10.0
    num_saves: int = 101
    rtol: float = 1e-10
    max_steps: int = 200_000
    tolerance: float = 1e-6
    chunk_size: int | None = None

    def __post_init__(self):
        check_range("qs", self.qs, 1.0, 2.0)
        check_range("decays", self.decays, 0.0)
        for name in ("depth", "n", "d", "num_saves", "max_steps"):
            check_int(name, getattr(self, name), 2 if name in ("depth", "num_saves") else 1)
        check_int("k", self.k, 0)
        if self.k > self.d:
            raise ValueError(f"`k` must lie in [0, d] = [0, {self.d}]; got {self.k}.")
        check_int("seed", self.seed, 0)
        check_range("init_scale", self.init_scale, 0.0, lo_open=True)
        check_range("eps", self.eps, 0.0, lo_open=True)
        check_range("t1", self.t1, 0.0, lo_open=True)
        check_range("rtol", self.rtol, 0.0, 1e-3, lo_open=True)
        check_range("tolerance", self.tolerance, 0.0)
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)


def run(config: Config, *, workdir=None, progress: bool = False) -> xr.Dataset:
    """Solve the regression for every (q, α) and record the balance quantities over time."""
    problem = mf.sparse_regression(jax.random.key(config.seed), n=config.n, d=config.d, k=config.k)
    model = mf.DeepDiagonal.random(
        jax.random.key(config.seed + 1), depth=config.depth, dim=config.d, scale=config.init_scale
    )
    ts = np.linspace(0.0, config.t1, config.num_saves)
    controller = diffrax.PIDController(rtol=config.rtol, atol=config.rtol * 1e-2)

    def solve(q, eps, decay):
        flow = mf.SteepestFlow(mf.Lp(q, eps), decoupled_wd=decay)
        return mf.solve_flow(
            flow,
            model,
            problem,
            config.t1,
            saveat=jnp.asarray(ts),
            stepsize_controller=controller,
            max_steps=config.max_steps,
        )

    eps = [config.eps if q < 2.0 else 0.0 for q in config.qs]
    grid = mf.Grid.zip(q=list(config.qs), eps=eps) * mf.Grid(decay=list(config.decays))
    ds = mf.sweep(
        solve,
        grid,
        chunk_size=config.chunk_size,
        checkpoint_dir=checkpoint_dir(workdir, "balance"),
        progress=progress,
    )
    ds = ds.rename({"balance_dim0": "pair"}).assign_coords(pair=np.arange(2, config.depth + 1))
    predicted = ds.balance.isel(t=0) * np.exp(-ds.q * ds.decay * ds.t)
    scale = np.abs(ds.balance.isel(t=0)).max(("pair", "coordinate"))
    ds["deviation"] = np.abs(ds.balance - predicted).max(("pair", "coordinate")) / scale
    return ds.assign_attrs(tolerance=config.tolerance, depth=config.depth)


def checks(ds: xr.Dataset) -> list[Check]:
    """Per (q, α): the largest relative deviation from B(0)·exp(−qαt) over the run."""
    out = []
    for decay in ds.decay.values:
        law = "conserved" if decay == 0 else f"B(0)·exp(−q·{decay:g}·t)"
        for q in ds.q.values:
            member = ds.sel(q=q, decay=decay)
            detail = f"{law}; ε = {float(member.eps):g}, {ds.attrs['smoothing_at']} smoothing"
            if not bool(member.ok):
                detail += "; the solve did not finish (result code in `result`)"
            name = f"balance law, q={q:g}, alpha={decay:g}"
            deviation = float(member.deviation.max()) if bool(member.ok) else float("nan")
            out.append(within(name, deviation, 0.0, float(ds.attrs["tolerance"]), detail))
    return out


def figures(ds: xr.Dataset) -> dict:
    """|w_1|^q − |w_2|^q of a few coordinates over time (left: no decay, right: decay, with the
    predicted exp(−qαt) dotted) and the relative deviation from the law (log scale)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * (ds.sizes["decay"] + 1), 4), layout="constrained")
    axes = fig.subplots(1, ds.sizes["decay"] + 1)
    coordinates = ds.coordinate.values[:3]
    t = ds.t.values
    for ax, decay in zip(axes, ds.decay.values, strict=False):
        for i, q in enumerate(ds.q.values):
            member = ds.sel(q=q, decay=decay, pair=2)
            for j in coordinates:
                curve = -member.balance.sel(coordinate=j).values  # |w_1|^q − |w_2|^q
                label = f"q = {q:g}" if j == coordinates[0] else None
                ax.plot(t, curve, color=f"C{i}", label=label)
                ax.plot(t, curve[0] * np.exp(-q * decay * t), ":", color="k", lw=0.8)
        ax.set(xlabel="t", ylabel="|w_1|^q − |w_2|^q", title=f"decoupled decay α = {decay:g}")
    axes[0].legend(title=f"{len(coordinates)} coordinates each")
    ax = axes[-1]
    for i, q in enumerate(ds.q.values):
        for decay, style in zip(ds.decay.values, ["-", "--", "-.", ":"], strict=False):
            deviation = np.maximum(ds.deviation.sel(q=q, decay=decay).values, 1e-17)
            ax.semilogy(t, deviation, style, color=f"C{i}", label=f"q = {q:g}, α = {decay:g}")
    ax.axhline(float(ds.attrs["tolerance"]), color="k", lw=0.8, label="tolerance")
    ax.set(xlabel="t", ylabel="max |B − B(0)e^(−qαt)| / max |B(0)|", title="deviation from law")
    ax.legend(fontsize="small")
    fig.suptitle(f"Balance law, depth {ds.attrs['depth']} (dotted: predicted)")
    return {"balance": fig}
