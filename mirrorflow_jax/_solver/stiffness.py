"""Stiffness detection for explicit Runge–Kutta solvers (Hairer & Wanner, Solving ODEs I, §II.10
and DOPRI5's test): an explicit method whose steps are held at the edge of its stability
region by the error control, step after step, is solving a stiff problem it should not be
given, and near a smoothed sign flow's layer its result can be far off although each step
passed the error test."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

# |h·λ| above which a step of Tsit5 or Dopri5 counts as held by stability (the regions cross
# the negative real axis at about −3.5 and −3.3). Measured with Tsit5: on y' = −1000(y − cos t)
# the controller holds h·λ at 3.0–3.2; the smoothed sign flow (q = 1, ε = 1e-3) on a 40×100
# regression passes 2.5 for 100 accepted steps in a row within its first 2126 steps, gradient
# flow on it never does, and the exact q = 1.5 flow (non-Lipschitz, not stiff) does not either.
STABILITY_EDGE = 2.5
# Accepted steps in a row at the edge before the solve is called stiff.
PATIENCE = 100


def _last_stage_rows(solver) -> np.ndarray | None:
    """For an FSAL explicit Runge–Kutta method whose last two stages are both taken at the
    step's end (Tsit5, Dopri5), the coefficients of the stage increments in the second to
    last stage's argument; None for other solvers."""
    tableau = getattr(solver, "tableau", None)
    if not isinstance(solver, diffrax.AbstractERK) or tableau is None or not tableau.fsal:
        return None
    c = np.asarray(tableau.c)
    if c.size < 2 or c[-1] != 1.0 or c[-2] != 1.0:
        return None
    return np.asarray(tableau.a_lower[-2])


def checkable(solver) -> bool:
    """Whether `StiffnessCheck` can watch ``solver`` (an FSAL explicit Runge–Kutta method
    with two stages at the step's end, such as Tsit5 and Dopri5)."""
    return _last_stage_rows(solver) is not None


class StiffnessCheck(diffrax.AbstractAdaptiveSolver, diffrax.AbstractWrappedSolver):
    """Wraps an explicit solver (`checkable`) and counts the accepted steps in a row whose
    |h·λ| lies at the edge of the solver's stability region, λ estimated from the two stages
    at the step's end (Hairer's test): h·λ ≈ ‖k_s − k_{s−1}‖ / ‖y1 − Y_{s−1}‖. Once the
    count reaches ``patience`` the step fails, ending the solve; the final solver state
    (``count``) tells `solve_flow` to report the result ``stiff``.

    A stiff stretch that ends resets the count, so a solve that passes through one (a
    transient near a saddle) is not flagged; a solve whose steps stay stability-bound, as an
    explicit method's do in the smoothing layer of a sign flow, is. ``active`` (a bool, traced
    or not) turns the count off: `solve_flow` watches only smoothed flows (q < 2, ε > 0) and
    flows without a geometry, since the exact maps' non-Lipschitz point also makes the
    estimate large (measured: Tsit5 on the exact q = 1.5 flow was flagged at rtol 1e-8 although
    it ended 1.4e-5 from the reference).
    """

    solver: diffrax.AbstractSolver
    active: bool | jax.Array = True
    threshold: float = eqx.field(static=True, default=STABILITY_EDGE)
    patience: int = eqx.field(static=True, default=PATIENCE)

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args), jnp.array(0, jnp.int32)

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, count = solver_state
        y1, y_error, dense_info, inner, result = self.solver.step(
            terms, t0, t1, y0, args, inner, made_jump
        )
        ks = jax.vmap(lambda k: ravel_pytree(k)[0])(dense_info["k"])
        row = jnp.asarray(_last_stage_rows(self.solver), ks.dtype)
        before_end = ravel_pytree(y0)[0] + jnp.tensordot(row, ks[: row.shape[0]], 1)
        gap = jnp.linalg.norm(ravel_pytree(y1)[0] - before_end)
        change = jnp.linalg.norm(ks[-1] - ks[-2])
        at_edge = self.active & (change > self.threshold * gap)
        count = jnp.where(at_edge, count + 1, 0)
        # The carrier code ends the solve; `solve_flow` reads `count` and reports `stiff`.
        result = diffrax.RESULTS.where(
            count >= self.patience, diffrax.RESULTS.max_steps_rejected, result
        )
        return y1, y_error, dense_info, (inner, count), result


def is_stiff(solver, final_state) -> jax.Array:
    """Whether a solve by ``solver`` (a `StiffnessCheck`) ended because it was stiff, from
    its final solver state."""
    return final_state[1] >= solver.patience
