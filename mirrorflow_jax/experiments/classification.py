"""Classification: normalized margins of gradient flow and sign flow on separable data against
the ℓ2 / ℓ1 / ℓ∞ / ℓ_{2/L} max-margin values, across depth (docs/theory.md §7, §8).

Steepest descent on separable data drives the direction x/‖x‖ to a max-margin solution: the
flow dw/dt = −φ_q(∇_w F) on the factors of the signed model x = ∏u_i − ∏v_i is steepest descent
for the ℓ_r norm of the factors, r = q/(q − 1), and min Σ_i |w_i|^r over factors with product
x_j is L·|x_j|^(r/L), so the predicted margin is the ℓ_{r/L} one (**derived**, following the
homogeneous-network results that docs/theory.md §7 summarizes):

| flow | L = 1 | L = 2 | L ≥ 3 |
|---|---|---|---|
| gradient flow (q = 2) | ℓ2 | ℓ1 | ℓ_{2/L} (a quasi-norm: only a KKT point is predicted) |
| sign flow (q = 1) | ℓ∞ | ℓ∞ | ℓ∞ (r = ∞ for every depth) |

The normalized margin of x in ℓ_p is γ_p(x) = min_i y_i⟨a_i, x⟩ / ‖x‖_p. Its maximum γ_p* is
computed independently of the flows: ℓ2 as the least-distance QP min ‖x‖₂ s.t. y_i⟨a_i, x⟩ ≥ 1
(Lawson–Hanson: one non-negative least-squares solve), ℓ1 and ℓ∞ as linear programs (HiGHS).
For p = 2/L < 1 the problem is non-convex: the run reports (i) the ℓ1 optimum as an upper
bound (‖x‖_p ≥ ‖x‖₁), (ii) the best value found by iteratively reweighted ℓ1 (a sequence of
LPs, a local method) started from the ℓ1 solution, and (iii) the same local method started from
the flow's own endpoint: if it barely improves the flow's margin, the endpoint is a local
maximum (a KKT point), which is what the theory predicts.

**Time change.** The margins converge like 1/log t along the flow on f: a direction within 1%
of its limit needs ‖x‖ ≈ 100/γ, i.e. log t ≈ 100. For any increasing g, the exact flow on
g∘f has velocity g'(f)^(q−1) times the flow on f (φ_q(c·v) = c^(q−1)·φ_q(v)), so both trace the
same path, with times related by dt/ds = g'(f)^(q−1). The run solves the flow on log f
(s-time; for the exponential loss log f is a log-sum-exp with O(1) gradients) and stops at
‖x‖_∞ = R for each R in ``radii`` (``sign_radii`` for the sign flow). For q = 1 the two flows
are the same ODE, and the smoothing φ_1^ε then acts on ∇log f, whose scale does not decay,
instead of on ∇f, which decays like e^(−margin) and would turn the smoothed sign flow into a
slowed gradient flow. The run checks the time change directly: gradient flow on f itself (the
"margin over time" curves, against t) is stopped at ‖x‖_∞ = min(radii) and compared with the
time-changed path at the same point.

The init is the signed saddle u_1 = v_1 = 0, other factors λ (``alpha``; at L = 1, u = v = λ),
so x(0) = 0 and the first factor crosses zero transversally (see `sparse_regression`).
"""

import dataclasses
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import xarray as xr

import mirrorflow_jax as mf

from ._base import (
    Check,
    check_int,
    check_range,
    checkpoint_dir,
    min_weighted_l1_separator,
    within,
)

P = {"l2": 2.0, "l1": 1.0, "linf": np.inf}  # the convex geometries, by name


@dataclasses.dataclass(frozen=True)
class Config:
    """Separable sparse classification (defaults: d = 80 as in the paper's experiment).

    - ``n``, ``d``, ``k``, ``seed``, ``loss``: the seeded data (y = sign(A·x*), x* k-sparse ±1)
      and the loss ("exponential" or "logistic");
    - ``alpha``: init scale λ in (0, 1]; ``depths``: depths ≥ 1 (include 1 and 2 for the ℓ2
      and ℓ1 predictions); ``qs``: 1.0 and/or 2.0; ``sign_eps``: ε of the sign flow's
      structure-preserving smoothing;
    - ``radii``: increasing values R of ‖x‖_∞ at which the time-changed gradient flow is
      stopped (dimension ``level``); ``sign_radii``: the same for the sign flow (as many
      values; its smoothed map is stiff where coordinates slide, so its steps grow like R/ε);
    - ``direct_t1``, ``num_saves``: horizon and log-spaced saves of gradient flow on f itself;
    - ``rtol``, ``max_steps``: solver; ``irl1_iterations``: LPs per local ℓ_{2/L} solve;
    - ``margin_tolerance``: allowed relative gap 1 − γ(x)/γ* at the largest radius;
      ``path_tolerance``: allowed max |Δx|/R between the direct and time-changed paths;
    - ``chunk_size``: sweep members per compiled call.
    """

    n: int = 100
    d: int = 80
    k: int = 4
    seed: int = 0
    loss: Literal["exponential", "logistic"] = "exponential"
    alpha: float = 0.1
    depths: tuple[int, ...] = (1, 2, 3)
    qs: tuple[float, ...] = (1.0, 2.0)
    sign_eps: float = 1e-2
    radii: tuple[float, ...] = (10.0, 100.0, 1000.0, 10_000.0)
    sign_radii: tuple[float, ...] = (10.0, 100.0, 300.0, 1000.0)
    direct_t1: float = 1e12
    num_saves: int = 61
    rtol: float = 1e-6
    max_steps: int = 2_000_000
    irl1_iterations: int = 40
    margin_tolerance: float = 0.01
    path_tolerance: float = 1e-3
    chunk_size: int | None = None

    def __post_init__(self):
        for name, lo in (("n", 1), ("d", 1), ("k", 1), ("seed", 0), ("num_saves", 2)):
            check_int(name, getattr(self, name), lo)
        for name in ("max_steps", "irl1_iterations"):
            check_int(name, getattr(self, name), 1)
        if self.k > self.d:
            raise ValueError(f"`k` must lie in [1, d] = [1, {self.d}]; got {self.k}.")
        if self.loss not in ("exponential", "logistic"):
            raise ValueError(f"`loss` must be 'exponential' or 'logistic'; got {self.loss!r}.")
        check_range("alpha", self.alpha, 0.0, 1.0, lo_open=True)
        if not self.depths or len(set(self.depths)) < len(self.depths):
            raise ValueError(f"`depths` must be distinct integers >= 1; got {self.depths}.")
        for depth in self.depths:
            check_int("depths", depth, 1)
        if not self.qs or len(set(self.qs)) < len(self.qs) or set(self.qs) - {1.0, 2.0}:
            raise ValueError(f"`qs` must hold 1.0 and/or 2.0, each once; got {self.qs}.")
        check_range("sign_eps", self.sign_eps, 0.0, lo_open=True)
        for name in ("radii", "sign_radii"):
            values = getattr(self, name)
            check_range(name, values, 0.0, lo_open=True)
            if not values or np.any(np.diff(values) <= 0):
                raise ValueError(f"`{name}` must be increasing and non-empty; got {values}.")
        if len(self.sign_radii) != len(self.radii):
            raise ValueError(
                f"`sign_radii` must have as many values as radii ({len(self.radii)}); got "
                f"{len(self.sign_radii)}."
            )
        check_range("direct_t1", self.direct_t1, 0.0, lo_open=True)
        check_range("rtol", self.rtol, 0.0, 1e-3, lo_open=True)
        check_range("margin_tolerance", self.margin_tolerance, 0.0, 1.0)
        check_range("path_tolerance", self.path_tolerance, 0.0)
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)


# ----------------------------------------------------------------------------- losses


def _log_softplus(u):
    """log(log(1 + e^u)), stable for u → −∞ (≈ u) and with finite gradients everywhere."""
    negative = u <= 0
    v = jnp.exp(jnp.where(negative, u, 0.0))
    safe = jnp.where(v > 1e-8, v, 1.0)
    ratio = jnp.where(v > 1e-8, jnp.log1p(safe) / safe, 1.0 - v / 2)  # log(1 + v)/v
    return jnp.where(
        negative, u + jnp.log(ratio), jnp.log(jax.nn.softplus(jnp.where(negative, 1.0, u)))
    )


class LogLoss(eqx.Module):
    r"""log f(x) of a `LinearClassification` f: the same flow path as f, reparameterized in
    time (module docstring). Exponential loss: log f = logsumexp(−z) − log n;
    logistic: log f = logsumexp(log log(1 + e^(−z))) − log n, with z the margins."""

    problem: mf.LinearClassification

    def __call__(self, x):
        z = self.problem.margins(x)
        terms = -z if self.problem.loss == "exponential" else _log_softplus(-z)
        return jax.nn.logsumexp(terms) - jnp.log(jnp.asarray(z.shape[0], z.dtype))


# ----------------------------------------------------------------------------- references


def normalized_margin(G: np.ndarray, x: np.ndarray, p: float) -> np.ndarray:
    """γ_p(x) = min_i (Gx)_i / ‖x‖_p along the last axis of x (G: rows y_i·a_i; p may be
    inf or a quasi-norm exponent in (0, 1))."""
    magnitude = np.abs(x)
    norm = magnitude.max(-1) if np.isinf(p) else (magnitude**p).sum(-1) ** (1 / p)
    return np.einsum("nd,...d->...n", G, x).min(-1) / norm


def local_max_margin(G: np.ndarray, x0: np.ndarray, p: float, iterations: int) -> np.ndarray:
    """A local maximizer of γ_p for p < 1 near x0, by iteratively reweighted ℓ1: each step
    solves min Σ_j w_j|x_j| s.t. Gx ≥ 1 with w_j = (|x_j| + δ)^(p−1), δ = 1e-6·‖x‖_∞, a
    majorize–minimize step for Σ_j (|x_j| + δ)^p."""
    x = x0 / np.min(G @ x0)
    for _ in range(iterations):
        magnitude = np.abs(x)
        x = min_weighted_l1_separator(G, (magnitude + 1e-6 * magnitude.max()) ** (p - 1))
    return x


def predicted_geometry(q: float, depth: int) -> float:
    """The exponent p of the predicted ℓ_p margin: r/L with r = q/(q − 1) (∞ for q = 1)."""
    return np.inf if q == 1 else q / (q - 1) / depth


# ----------------------------------------------------------------------------- flows


def _saddle(lam, depth, dim, max_depth):
    """u_1 = v_1 = 0 (λ at depth 1), other factors λ, padded to ``max_depth``."""
    rows = jnp.arange(max_depth)[:, None]
    first = jnp.where(depth >= 2, 0.0, lam)
    u = jnp.where(rows == 0, first, lam) * jnp.ones((max_depth, dim))
    return mf.Padded(mf.SignedDeepDiagonal(u, u), depth)


def _controller(config: Config):
    return diffrax.PIDController(rtol=config.rtol, atol=1e-3 * config.rtol, norm=optx.max_norm)


def _end(sol):
    """Index of the final state (after an event diffrax writes it at the first unreached save)."""
    return jnp.sum(jnp.isfinite(sol.ts)) - 1


def _path_sweep(problem, config: Config, workdir, progress) -> xr.Dataset:
    """The flow on log f from the saddle until ‖x‖_∞ = R, for every (R, depth, q)."""
    max_depth = max(config.depths)
    loss = LogLoss(problem)

    table = jnp.asarray([config.radii if q == 2 else config.sign_radii for q in config.qs])

    def solve(level, depth, flow, q, eps):
        radius = table[flow, level]
        sol = mf.solve_flow(
            mf.SteepestFlow(mf.Lp(q, eps)),
            _saddle(config.alpha, depth, config.d, max_depth),
            loss,
            1e12,
            stepsize_controller=_controller(config),
            event=mf.NormAbove(radius),
            max_steps=config.max_steps,
        )
        end = _end(sol)
        return {
            "radius": radius,
            "x_end": sol.x[end],
            "s_end": sol.ts[end],
            "reached": jnp.isfinite(sol.event_time),
            "num_steps": sol.num_steps,
        }

    eps = [config.sign_eps if q < 2 else 0.0 for q in config.qs]
    grid = mf.Grid(level=np.arange(len(config.radii)), depth=list(config.depths)) * mf.Grid.zip(
        flow=np.arange(len(config.qs)), q=list(config.qs), eps=eps
    )
    ds = mf.sweep(
        solve,
        grid,
        chunk_size=config.chunk_size,
        checkpoint_dir=checkpoint_dir(workdir, "paths"),
        progress=progress,
    )
    return ds.rename({"x_end_dim0": "coordinate"})


def _direct_sweep(problem, config: Config, workdir, progress) -> xr.Dataset:
    """Gradient flow on f itself, saved at log-spaced t, stopped at ‖x‖_∞ = min(radii)."""
    max_depth = max(config.depths)
    ts = np.minimum(np.geomspace(1e-2, config.direct_t1, config.num_saves - 1), config.direct_t1)
    saveat = diffrax.SaveAt(ts=np.concatenate([[0.0], ts]), t1=True)

    def solve(depth):
        sol = mf.solve_flow(
            mf.SteepestFlow(mf.Lp(2.0)),
            _saddle(config.alpha, depth, config.d, max_depth),
            problem,
            config.direct_t1,
            saveat=saveat,
            stepsize_controller=_controller(config),
            event=mf.NormAbove(min(config.radii)),
            max_steps=config.max_steps,
        )
        end = _end(sol)
        return {
            "t": sol.ts,
            "x": sol.x,
            "x_end": sol.x[end],
            "t_end": sol.ts[end],
            "reached": jnp.isfinite(sol.event_time),
        }

    ds = mf.sweep(
        solve,
        mf.Grid(depth=list(config.depths)),
        checkpoint_dir=checkpoint_dir(workdir, "direct"),
        progress=progress,
    )
    names = {"t_dim0": "save", "x_dim0": "save", "x_dim1": "coordinate"}
    names |= {"x_end_dim0": "coordinate"}
    ds = ds.rename(names)
    return ds.rename({name: f"direct_{name}" for name in ("t", "x", "x_end", "t_end", "ok")})


# ----------------------------------------------------------------------------- run


def _references(G: np.ndarray) -> dict[str, np.ndarray]:
    """The max-margin solutions in ℓ2 (QP), ℓ1 and ℓ∞ (LPs) by `max_margin`: for ℓ2 and ℓ1
    the minimum-norm x with Gx ≥ 1, for ℓ∞ the maximizer with ‖x‖_∞ = 1."""
    labels = np.ones(G.shape[0])
    references = {}
    for name, p in P.items():
        value, direction = mf.max_margin(G, labels, p)
        references[name] = direction if np.isinf(p) else direction / value
    return references


def _quasi_norm_margins(ds: xr.Dataset, G, x_l1, iterations) -> dict[str, tuple]:
    """For every depth L: γ_{2/L} of the endpoints, of the local polish of each gradient-flow
    endpoint (L ≥ 3) and of the best local solution started from the ℓ1 optimum."""
    shape = ds.x_end.shape[:-1]
    margin, polished = np.full(shape, np.nan), np.full(shape, np.nan)
    best = np.full(ds.depth.size, np.nan)
    for j, depth in enumerate(ds.depth.values):
        p = 2.0 / depth
        margin[:, j] = normalized_margin(G, ds.x_end.values[:, j], p)
        if depth < 3:
            continue
        best[j] = normalized_margin(G, local_max_margin(G, x_l1, p, iterations), p)
        for f in np.flatnonzero(ds.q.values == 2.0):
            for r in range(ds.level.size):
                x = local_max_margin(G, ds.x_end.values[r, j, f], p, iterations)
                polished[r, j, f] = normalized_margin(G, x, p)
    dims = ds.x_end.dims[:-1]
    return {
        "margin_l2L": (dims, margin),
        "polished_l2L": (dims, polished),
        "best_l2L": ("depth", best),
    }


def _predicted_ratio(ds: xr.Dataset) -> np.ndarray:
    """γ_p(x)/γ_p* in each member's predicted geometry (for p < 1: against the best value
    known, the local solve from the ℓ1 optimum or from any endpoint)."""
    ratio = np.full(ds.x_end.shape[:-1], np.nan)
    for j, depth in enumerate(ds.depth.values):
        for f, q in enumerate(ds.q.values):
            p = predicted_geometry(float(q), int(depth))
            if p < 1:
                best = np.nanmax([ds.best_l2L.values[j], *ds.polished_l2L.values[:, j, f]])
                ratio[:, j, f] = ds.margin_l2L.values[:, j, f] / best
            else:
                name = {2.0: "l2", 1.0: "l1", np.inf: "linf"}[p]
                ratio[:, j, f] = ds[f"margin_{name}"].values[:, j, f]
    return ratio


def run(config: Config, *, workdir=None, progress: bool = False) -> xr.Dataset:
    """The time-changed paths for every (R, depth, q), gradient flow on f itself, the LP/QP
    references, and every normalized margin."""
    problem = mf.sparse_classification(
        jax.random.key(config.seed), n=config.n, d=config.d, k=config.k, loss=config.loss
    )
    G = np.asarray(problem.y)[:, None] * np.asarray(problem.A)
    truth = np.asarray(problem.truth)
    references = _references(G)
    optimum = {g: float(normalized_margin(G, x, P[g])) for g, x in references.items()}

    paths = _path_sweep(problem, config, workdir, progress)
    direct = _direct_sweep(problem, config, workdir, progress)
    direct = direct.rename(reached="direct_reached", finite="direct_finite")
    ds = xr.merge([paths, direct], combine_attrs="drop_conflicts")
    x = ds.x_end.values
    for name, p in P.items():
        ds[f"margin_{name}"] = (ds.x_end.dims[:-1], normalized_margin(G, x, p) / optimum[name])
    ds = ds.assign(_quasi_norm_margins(ds, G, references["l1"], config.irl1_iterations))
    ds["margin_ratio"] = (ds.x_end.dims[:-1], _predicted_ratio(ds))
    ds["cos_truth"] = (
        ds.x_end.dims[:-1],
        x @ truth / np.linalg.norm(x, axis=-1) / np.linalg.norm(truth),
    )
    ds["direct_margin_ratio"] = (("depth", "save"), _direct_ratio(ds, G, optimum))
    ds["x_true"] = ("coordinate", truth)
    for name, value in references.items():
        ds[f"x_{name}"] = ("coordinate", value)
    return ds.assign_coords(coordinate=np.arange(config.d)).assign_attrs(
        {f"max_margin_{name}": value for name, value in optimum.items()}
        | {
            "loss": config.loss,
            "model": f"signed deep diagonal, saddle init (u_1 = v_1 = 0, others {config.alpha})",
            "margin_tolerance": config.margin_tolerance,
            "path_tolerance": config.path_tolerance,
        }
    )


def _direct_ratio(ds: xr.Dataset, G, optimum) -> np.ndarray:
    """γ_p(x(t))/γ_p* along gradient flow on f, p = 2/L (the best known value for L ≥ 3)."""
    ratio = np.full(ds.direct_x.shape[:-1], np.nan)
    for j, depth in enumerate(ds.depth.values):
        p = 2.0 / depth
        reached = np.isfinite(ds.direct_t.values[j]) & (ds.direct_t.values[j] > 0)
        x = ds.direct_x.values[j, reached]
        if p < 1:
            best = np.nanmax([ds.best_l2L.values[j], *ds.polished_l2L.values[:, j].ravel()])
        else:
            best = optimum["l2" if p == 2 else "l1"]
        ratio[j, reached] = normalized_margin(G, x, p) / best
    return ratio


# ----------------------------------------------------------------------------- checks


def _case(ds: xr.Dataset, depth, flow) -> str:
    q, eps = float(ds.q.sel(flow=flow)), float(ds.eps.sel(flow=flow))
    name = "GF" if q == 2 else "SignGF"
    return f"{name} L={depth}" + (f" (eps={eps:g})" if eps else "")


def _geometry_name(p: float) -> str:
    return {2.0: "l2", 1.0: "l1", np.inf: "linf"}.get(p, f"l_{p:.3g}")


def _margin_checks(ds: xr.Dataset) -> list[Check]:
    tolerance = float(ds.attrs["margin_tolerance"])
    out = []
    for depth in ds.depth.values:
        for flow in ds.flow.values:
            member = ds.sel(depth=depth, flow=flow)
            p = predicted_geometry(float(member.q), int(depth))
            ratio = member.margin_ratio.values
            reached = np.abs(member.x_end.values).max(-1)
            trend = ", ".join(f"R={r:.3g}: {v:.4f}" for r, v in zip(reached, ratio, strict=True))
            case = _case(ds, depth, flow)
            if p >= 1:
                name = f"{case}: {_geometry_name(p)} margin / max-margin (QP/LP) at the largest R"
                out.append(within(name, ratio[-1], 1.0, tolerance, trend))
                continue
            polished = member.polished_l2L.values
            kkt = member.margin_l2L.values[-1] / polished[-1]
            name = f"{case}: l_{p:.3g} margin / its local polish (KKT point) at the largest R"
            detail = f"polish: iteratively reweighted l1 from the endpoint; {trend}"
            out.append(within(name, kkt, 1.0, tolerance, detail))
            upper = float(ds.attrs["max_margin_l1"])
            name = f"{case}: l_{p:.3g} margin / best value found (global, non-convex)"
            detail = (
                f"best found {float(member.best_l2L):.4g} (local solve from the l1 optimum), "
                f"flow {member.margin_l2L.values[-1]:.4g}, upper bound (l1 optimum) "
                f"{upper:.4g}; only a KKT point is predicted; "
                f"{_support_size(member.x_end.values[-1])} nonzeros"
            )
            out.append(within(name, ratio[-1], 1.0, tolerance, detail))
    return out


def _support_size(x: np.ndarray) -> int:
    return int((np.abs(x) > 1e-3 * np.abs(x).max()).sum())


def _trend_check(ds: xr.Dataset) -> list[Check]:
    if ds.level.size < 2:
        return []
    gap = 1 - ds.margin_ratio
    shrinks = (gap.isel(level=-1) < gap.isel(level=0)).values
    return [
        Check(
            "the margin gap 1 − γ/γ* shrinks from the smallest to the largest R (cases)",
            int(shrinks.sum()),
            int(shrinks.size),
            0,
            bool(shrinks.all()),
            "slow (log t) convergence of the normalized margin",
        )
    ]


def _path_checks(ds: xr.Dataset) -> list[Check]:
    flow = int(ds.flow.values[np.flatnonzero(ds.q.values == 2.0)[0]]) if 2.0 in ds.q else None
    out = []
    reached = ds.reached.values
    out.append(
        Check(
            "every time-changed solve reached its radius R",
            int(reached.sum()),
            int(reached.size),
            0,
            bool(reached.all()),
            "members that did not are measured at the ‖x‖_∞ they reached",
        )
    )
    if flow is None:
        return out
    radius = float(ds.radius.sel(flow=flow).values.min())
    for depth in ds.depth.values:
        direct = ds.direct_x_end.sel(depth=depth).values
        changed = ds.x_end.sel(level=0, depth=depth, flow=flow).values
        gap = float(np.abs(direct - changed).max() / radius)
        t_end = float(ds.direct_t_end.sel(depth=depth))
        name = f"GF L={depth}: flows on f and on log f share one path (max |Δx|/R at R={radius:g})"
        detail = f"flow on f reached ‖x‖_∞ = R at t = {t_end:.4g}"
        if not bool(ds.direct_reached.sel(depth=depth)):
            detail = "the flow on f did not reach R within direct_t1"
        out.append(within(name, gap, 0.0, float(ds.attrs["path_tolerance"]), detail))
    return out


def _sparsity_check(ds: xr.Dataset) -> list[Check]:
    if 1.0 not in ds.q or ds.depth.size < 2:
        return []
    flow = int(ds.flow.values[np.flatnonzero(ds.q.values == 1.0)[0]])
    cos = ds.cos_truth.sel(flow=flow).isel(level=-1)
    depths = ds.depth.values
    change = float(cos.sel(depth=depths.max()) - cos.sel(depth=depths.min()))
    detail = ", ".join(f"L={d}: {c:.4f}" for d, c in zip(depths, cos.values, strict=True))
    return [
        Check(
            "SignGF: alignment cos(x, x*) with the sparse truth gains with depth "
            f"(L={depths.max()} minus L={depths.min()})",
            change,
            "> 0",
            0.0,
            bool(change > 0),
            f"theory §7–8: depth lets SignGF recover the sparse truth; {detail}",
        )
    ]


def checks(ds: xr.Dataset) -> list[Check]:
    """Each (depth, q) against its predicted max-margin geometry, the trend in R, the time
    change, and SignGF's alignment with the sparse truth across depth."""
    return _margin_checks(ds) + _trend_check(ds) + _path_checks(ds) + _sparsity_check(ds)


# ----------------------------------------------------------------------------- figures


def _margin_figure(ds: xr.Dataset):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.5), layout="constrained")
    left, middle, right = fig.subplots(1, 3)
    cases = [(d, f) for d in ds.depth.values for f in ds.flow.values]
    for i, (depth, flow) in enumerate(cases):
        member = ds.sel(depth=depth, flow=flow)
        p = predicted_geometry(float(member.q), int(depth))
        reached = np.abs(member.x_end.values).max(-1)
        label = f"{_case(ds, depth, flow)} → {_geometry_name(p)}"
        left.semilogx(reached, member.margin_ratio.values, "o-", color=f"C{i}", label=label)
    left.axhline(1.0, color="k", lw=0.5)
    left.set(xlabel="‖x‖_∞ along the path", ylabel="γ_p(x) / γ_p*  (predicted p)")
    left.set_title("margin in the predicted geometry")
    left.legend(fontsize=7)
    width = 0.8 / len(P)
    positions = np.arange(len(cases))
    for g, name in enumerate(P):
        values = [
            float(ds[f"margin_{name}"].sel(depth=d, flow=f).isel(level=-1)) for d, f in cases
        ]
        middle.bar(positions + (g - 1) * width, values, width, label=name)
    middle.set_xticks(positions, [_case(ds, d, f) for d, f in cases], rotation=30, fontsize=7)
    middle.set(ylabel="γ_p(x) / γ_p*", title="endpoint margin in each geometry (largest R)")
    middle.set_ylim(0, 1.05)
    middle.legend(fontsize=7)
    for i, depth in enumerate(ds.depth.values):
        t, ratio = ds.direct_t.sel(depth=depth).values, ds.direct_margin_ratio.sel(depth=depth)
        right.semilogx(t, ratio.values, color=f"C{i}", label=f"GF L={depth} → l_{2 / depth:.3g}")
    right.set(xlabel="t (flow on f itself)", ylabel="γ_{2/L}(x(t)) / γ*", ylim=(-0.05, 1.05))
    right.set_title(f"margin over time, until ‖x‖_∞ = {float(ds.radius.values.min()):g}")
    right.legend(fontsize=7)
    fig.suptitle(f"Separable classification ({ds.attrs['loss']} loss): normalized margins")
    return fig


def _direction_figure(ds: xr.Dataset):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax = fig.subplots()
    coordinate = ds.coordinate.values
    ax.plot(coordinate, ds.x_true.values, "ks", mfc="none", ms=7, label="truth x*")
    markers = "o^vD<>"
    for i, (depth, flow) in enumerate((d, f) for d in ds.depth.values for f in ds.flow.values):
        x = ds.x_end.sel(depth=depth, flow=flow).isel(level=-1).values
        marker = markers[i % len(markers)]
        ax.plot(coordinate, x / np.abs(x).max(), marker, ms=4, label=_case(ds, depth, flow))
    ax.set(xlabel="coordinate j", ylabel="x_j / ‖x‖_∞", title="endpoint directions (largest R)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def figures(ds: xr.Dataset) -> dict:
    """Margins in the predicted geometry against ‖x‖, every endpoint's margin in ℓ2/ℓ1/ℓ∞,
    the margin over time of gradient flow on f, and the endpoint directions."""
    return {
        "classification_margins": _margin_figure(ds),
        "classification_directions": _direction_figure(ds),
    }
