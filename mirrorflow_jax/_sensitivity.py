"""How a regularized flow's endpoint and implicit bias move with the smoothing scale ε."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jaxtyping import ArrayLike

from ._custom_types import Loss, Params, ScalarLike
from ._flow import SteepestFlow
from ._rosenbrock import Rodas4
from ._solve import solve_flow
from ._validate import as_float, check_range


def eps_sensitivity(
    flow: SteepestFlow,
    params0: Params,
    loss: Loss,
    t1: ScalarLike,
    eps: ArrayLike,
    **solve_kwargs,
) -> xr.Dataset:
    r"""Solve one configuration at several smoothing scales ε and compare the endpoints.

    The flow dθ/dt = −φ_q^ε(∇F) − α θ is solved from ``params0`` to ``t1`` once per ε (one
    compiled ``lax.map`` over ε; `Rodas4` unless ``solver=`` is given, since small ε is
    stiff). Reported per ε: the endpoint x_ε(t1), its loss, ‖x_ε‖₁ and ‖x_ε‖₂ (the
    implicit-bias norms), and ‖x_ε − x_ε₀‖_∞ against the smallest ε₀ — the closest to the
    unregularized flow.

    **Arguments:** ``flow`` a `SteepestFlow` (its own ε is replaced); ``params0``, ``loss``,
    ``t1`` as in `solve_flow`; ``eps`` a 1-d array of ε > 0; ``solve_kwargs`` any other
    keyword of `solve_flow` (``saveat`` is fixed to the endpoint).

    **Returns:** an ``xarray.Dataset`` with coordinates ``eps`` and ``coordinate``.
    """
    if not isinstance(flow, SteepestFlow):
        raise ValueError(f"`flow` must be a SteepestFlow; got {type(flow).__name__}.")
    eps = np.atleast_1d(np.asarray(eps, dtype=float))
    if eps.ndim != 1 or eps.size == 0:
        raise ValueError(f"`eps` must be a non-empty 1-d array; got shape {eps.shape}.")
    check_range("eps", eps, 0.0, lo_open=True)
    if "saveat" in solve_kwargs:
        raise ValueError("`saveat` is fixed to the endpoint by `eps_sensitivity`; drop it.")
    solve_kwargs.setdefault("solver", Rodas4())

    def endpoint(e):
        flow_e = eqx.tree_at(lambda f: f.geometry.eps, flow, e)
        sol = solve_flow(flow_e, params0, loss, t1, **solve_kwargs)
        return sol.x[-1], sol.loss[-1], sol.num_steps, sol.ok

    x, final_loss, steps, ok = jax.lax.map(endpoint, as_float(eps))
    x = np.asarray(x)
    reference = x[np.argmin(eps)]
    return xr.Dataset(
        {
            "x_final": (("eps", "coordinate"), x),
            "loss_final": ("eps", np.asarray(final_loss)),
            "l1_norm": ("eps", np.abs(x).sum(axis=1)),
            "l2_norm": ("eps", np.sqrt((x * x).sum(axis=1))),
            "distance_to_smallest_eps": ("eps", np.abs(x - reference).max(axis=1)),
            "num_steps": ("eps", np.asarray(steps)),
            "ok": ("eps", np.asarray(ok)),
        },
        coords={"eps": eps, "coordinate": np.arange(x.shape[1])},
        attrs={
            "q": float(jnp.asarray(flow.geometry.q)),
            "smoothing": flow.geometry.smoothing,
            "smoothing_at": flow.smoothing_for(params0),
            "t1": float(t1),
        },
    )
