"""The unknowns of `SignFlowKvaerno3`'s stages, as strategies: one velocity per coordinate,
one per factor entry, or one per factor entry with entries parked at Filippov sliding points.

A stage Z = s·(B − a·σ·u) of the ESDIRK method (a = γh, s = 1/(1 + a·α), base point B) solves
u = φ^ε(g(Z(u))) for its velocity u. A strategy says what g is (`AbstractUnknowns.argument`),
how one Newton iterate linearizes and solves that equation (`AbstractUnknowns.linearize`), and
how a stage decides its signs σ and parked entries around the Newton solve
(`AbstractUnknowns.solve_stage`); the Newton iteration itself and the step are
`SignFlowKvaerno3`'s, shared by all three.

- `PerCoordinate`: the structure-preserving smoothing without coupled decay, where every
  factor of coordinate j moves with one velocity u_j = φ^ε(∂f/∂x_j); the linear system is
  diag + rank r (r = rank of ∇²f), one r×r Cholesky factor per iterate. Its stages park
  collapsing parts (`stage_signs`).
- `PerEntry`: the naive smoothing, u_i = φ^ε(∂F/∂w_i); block diagonal plus rank r, solved by
  Woodbury (`BlockLowRankOperator`). Smooth in w: nothing parks.
- `ParkedPerEntry`: the structure-preserving smoothing per entry (coupled decay β),
  u_i = φ^ε((∂F/∂w_i)/|∂x/∂w_i|), the same linear algebra as `PerEntry`, with the stages
  parking entries as `entry_stage` decides.
"""

import abc
import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from .._flow import FlowArgs, SteepestFlow
from .._models import AbstractReparam
from .._validate import is_concrete
from .linear import BlockLowRankOperator, woodbury_solve
from .rows import linearized_rows, rows as _rows, unrows as _unrows
from .sliding import entry_stage, stage_signs

# The per-entry argument where ∂x/∂w_i = 0 (the structure-preserving smoothing's scale ε|P_i|
# vanishes): far beyond any ε, so φ^ε gives the sign.
_UNBOUNDED = 1e30
# A gradient entry below this many rounding spacings of |∇²f|·|x| restarts no resting part.
_NOISE = 100.0


def entry_argument(flow: SteepestFlow, model: AbstractReparam, loss):
    """Per factor entry, the argument whose φ^ε is its velocity (a PyTree like ``model``):
    ∂F/∂w_i for the naive smoothing; (∂F/∂w_i)/|∂x/∂w_i| for the structure-preserving one
    (at q = 1, φ^{ε|P|}(y) = φ^ε(y/|P|)), ±_UNBOUNDED where ∂x/∂w_i = 0 (φ^{0} is the sign)."""
    grads = jax.grad(flow.objective)(model, loss)
    if flow.smoothing_for(model) == "naive":
        return grads

    def scaled(grad, slope):
        size = jnp.abs(slope)
        safe = jnp.where(size > 0, size, 1.0)
        return jnp.where(size > 0, grad / safe, jnp.sign(grad) * _UNBOUNDED)

    return jax.tree.map(scaled, grads, model.factor_jacobian())


def _entry_rows(flow: SteepestFlow, model: AbstractReparam, loss):
    """`entry_argument` in the (R, d) row layout."""
    return _rows(entry_argument(flow, model, loss), model().shape[0])


class Stage(eqx.Module):
    """Stage i's equation Z = s·(B − a·σ·u), u = φ^ε(g(Z)), with s = 1/(1 + a·α); per entry
    σ = 1 and u has one entry per factor entry. A parked entry has B = σ = 0 (Z = 0 whatever
    u)."""

    base: jax.Array  # B, (R, d)
    sign: jax.Array  # σ = sign(∂x/∂w) at B, (R, d); ones per entry; 0 where parked
    step: jax.Array  # a = γh
    shrink: jax.Array  # s

    def point(self, u):
        return self.shrink * (self.base - self.step * self.sign * u)


class StepContext(eqx.Module):
    """What a stage needs of its step: the model and `FlowArgs` the step started from, its
    factor rows ``start``, the stage length a = γh, and the padding entries ``fixed``."""

    like: AbstractReparam
    args: FlowArgs
    start: jax.Array
    step: jax.Array
    fixed: jax.Array
    dim: int = eqx.field(static=True)

    def signs_of(self, rows):
        """sign(∂x/∂w) at factor rows."""
        return jnp.sign(_rows(_unrows(rows, self.like).factor_jacobian(), self.dim))

    def velocity_at(self, rows):
        """The per-entry velocity φ^ε(`entry_argument`) at factor rows."""
        flow = self.args.flow
        return flow.geometry.map(_entry_rows(flow, _unrows(rows, self.like), self.args.loss))

    def restart_velocity(self, base, u, g):
        """u, with 0 where |g| lies within the rounding noise of g (``_NOISE`` spacings of
        |∇²f|·|x|): a part resting at 0 restarts only on a gradient the precision
        resolves. Near a minimum g is rounding noise (about 1e-7 in float32), and resting
        parts would restart and collapse on it at every step."""
        x = _unrows(base, self.like)()
        factor = jnp.abs(self.args.loss.hessian_factor(x))
        noise = _NOISE * jnp.finfo(base.dtype).eps * (factor @ (factor.T @ jnp.abs(x)))
        return jnp.where(jnp.abs(g) > noise, u, 0.0)


# newton(equation, u, g, active) -> (u, g, converged): `SignFlowKvaerno3`'s Newton iteration
# for one stage equation, from the guess (u, g̃), iterating only if ``active``.
Newton = Callable[[Stage, jax.Array, jax.Array, jax.Array], tuple]


class AbstractUnknowns(eqx.Module):
    """The unknowns of `SignFlowKvaerno3`'s stage equations: what the smoothed map's
    argument is, how a Newton iterate solves the linearized equation, and how a stage chooses
    its signs and parked entries around the Newton solve."""

    @abc.abstractmethod
    def argument(self, flow: SteepestFlow, model: AbstractReparam, loss) -> jax.Array:
        """The argument g of φ^ε at ``model``, in the unknowns' layout ((d,) or (R, d))."""

    @abc.abstractmethod
    def linearize(
        self, stage: Stage, like: AbstractReparam, args: FlowArgs, u, g_guess, rtol, atol
    ) -> tuple:
        """One Newton iterate at (u, g̃): (g at the stage point, r_u = φ^ε(g̃) − u,
        φ^ε'(g̃), the update Δg̃, and each unknown's weight in the convergence test: how
        far a unit change of it moves Z, in units of the tolerance ``atol + rtol·|Z|``)."""

    @abc.abstractmethod
    def solve_stage(
        self, context: StepContext, newton: Newton, base, shrink, u, g, ok
    ) -> tuple[Stage, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        """The stage from ``base``: (its equation, Z, u, g̃, parked entries, whether the stage
        passed), from the guess (u, g̃) (the previous stage's); the Newton solve iterates
        only while ``ok``."""


class PerCoordinate(AbstractUnknowns):
    """One velocity per coordinate, u = φ^ε(∇f(x)): the structure-preserving smoothing
    without coupled decay. The Newton iterate solves (I + C Cᵀ diag(saκφ'(g̃))) Δg̃ = rhs,
    κ_j = Σ_i |P_ij|, ∇²f = C Cᵀ, with one r×r Cholesky factor (Woodbury)."""

    def argument(self, flow, model, loss):
        return jax.grad(loss)(model())

    def linearize(self, stage, like, args, u, g_guess, rtol, atol):
        loss, geometry = args.loss, args.flow.geometry
        dim = stage.base.shape[-1]  # the rows are (R, d)
        z = stage.point(u)
        model = _unrows(z, like)
        x = model()
        g = jax.grad(loss)(x)
        kappa = jnp.maximum(jnp.sum(stage.sign * _rows(model.factor_jacobian(), dim), 0), 0)
        factor = loss.hessian_factor(x)
        phi, dphi = jax.jvp(geometry.map, (g_guess,), (jnp.ones_like(g_guess),))
        slope = stage.shrink * stage.step * kappa  # −∂x_j/∂u_j
        r_g, r_u = g - g_guess, phi - u
        rhs = r_g - factor @ (factor.T @ (slope * r_u))
        weight = slope * dphi
        capacitance = jnp.eye(factor.shape[1], dtype=u.dtype) + factor.T @ (
            weight[:, None] * factor
        )
        operator = lx.MatrixLinearOperator(capacitance, lx.positive_semidefinite_tag)
        inner = lx.linear_solve(
            operator, factor.T @ (weight * rhs), lx.Cholesky(), throw=False
        ).value
        scale = atol + rtol * jnp.max(jnp.abs(z), axis=0)
        return g, r_u, dphi, rhs - factor @ inner, slope / scale

    def solve_stage(self, context, newton, base, shrink, u, g, ok):
        """The signs (which resting parts restart, which entries park) are decided on a
        velocity guess; where the solved velocity contradicts them (a resting part restarted
        on a guess whose sign the solve reverses: its stage point lands on the wrong side,
        for every step size, as the solve tends to φ^ε(g(y0)) while the guess carries the
        previous step's velocity), they are decided again on the solved velocity and the
        stage solved once more from it. A second pass that is not needed iterates no
        further (a fixed count of passes keeps the stage differentiable in reverse mode)."""
        step, signs_of, fixed = context.step, context.signs_of, context.fixed

        def attempt(index, carry):
            u, g, sign, parked, converged, consistent = carry
            again = (index == 0) | (converged & ~consistent)

            def point(sign):
                return Stage(base, sign, step, shrink).point(u)

            def restart():
                return context.restart_velocity(base, u, g)

            new_sign, new_parked = stage_signs(base, restart, point, signs_of, fixed)
            sign = jnp.where(again, new_sign, sign)
            parked = jnp.where(again, new_parked, parked)
            equation = Stage(
                jnp.where(parked, 0.0, base), jnp.where(parked, 0.0, sign), step, shrink
            )
            u, g, solved = newton(equation, u, g, ok & again)
            z = equation.point(u)
            # The stage's velocity with the signs at its base point: they are the signs at z
            # too, or the step is rejected. A parked entry (z = 0, its own sign 0) must be one
            # that the full velocity |u| carries to 0 within the stage.
            reaches = (base * sign * u > 0) & (jnp.abs(base) <= step * jnp.abs(u))
            agrees = jnp.all(signs_of(z) == equation.sign) & jnp.all(~parked | reaches)
            converged = jnp.where(again, solved, converged)
            consistent = jnp.where(again, agrees, consistent)
            return u, g, sign, parked, converged, consistent

        unknown = jnp.asarray(False)
        start = (u, g, jnp.zeros_like(base), jnp.zeros(base.shape, bool), unknown, unknown)
        u, g, sign, parked, converged, consistent = jax.lax.fori_loop(0, 2, attempt, start)
        equation = Stage(jnp.where(parked, 0.0, base), jnp.where(parked, 0.0, sign), step, shrink)
        return equation, equation.point(u), u, g, parked, converged & consistent


class AbstractPerEntry(AbstractUnknowns):
    """One velocity per factor entry, u_i = φ^ε(`entry_argument`): the Newton iterate solves
    (I + s·a·J D) Δg̃ = r_g − s·a·J σ r_u with J the argument's Jacobian in the factors at
    the iterate (block diagonal plus rank r, `BlockLowRankOperator`; taken once per step
    instead, its O(h) error times φ^ε' ~ 1/ε failed most Newton solves at ε = 1e-10) and
    D = diag(σ φ^ε'(g̃)), by Woodbury with d small block inverses and one r×r solve. A parked
    or resting entry (σ = 0) does not move with its u."""

    def argument(self, flow, model, loss):
        return _entry_rows(flow, model, loss)

    def linearize(self, stage, like, args, u, g_guess, rtol, atol):
        flow, geometry = args.flow, args.flow.geometry
        z = stage.point(u)
        g, jacobian = linearized_rows(
            functools.partial(entry_argument, flow), _unrows(z, like), args.loss
        )
        phi, dphi = jax.jvp(geometry.map, (g_guess,), (jnp.ones_like(g_guess),))
        slope = stage.shrink * stage.step
        r_g, r_u = g - g_guess, phi - u
        moving = stage.sign * dphi
        scaled = BlockLowRankOperator(
            jacobian.blocks * moving.T[:, None, :],
            jacobian.left,
            jacobian.right * moving,
            jacobian.factor,
        )
        rhs = r_g - slope * jacobian.mv(stage.sign * r_u)
        dg = woodbury_solve(scaled.shifted(-slope), rhs)
        weight = slope * jnp.abs(stage.sign) / (atol + rtol * jnp.abs(z))
        return g, r_u, dphi, dg, weight


class PerEntry(AbstractPerEntry):
    """Per-entry unknowns of the naive smoothing, which is smooth in w: σ = 1 throughout and
    nothing parks."""

    def solve_stage(self, context, newton, base, shrink, u, g, ok):
        parked = jnp.zeros(base.shape, bool)
        equation = Stage(base, jnp.ones_like(base), context.step, shrink)
        u, g, converged = newton(equation, u, g, ok)
        return equation, equation.point(u), u, g, parked, converged


class ParkedPerEntry(AbstractPerEntry):
    """Per-entry unknowns of the structure-preserving smoothing (coupled decay β): the stage
    parks at 0 the entries that `entry_stage` finds at a sliding point and restarts resting
    parts from its guess; a parked entry must reach 0 within the stage, and keeps the
    velocity on its base's side as the next stage's guess."""

    def solve_stage(self, context, newton, base, shrink, u, g, ok):
        step = context.step

        def point(u):
            return Stage(base, jnp.ones_like(base), step, shrink).point(u)

        guess, parked, reaches = entry_stage(
            context.start,
            base,
            u,
            step,
            point,
            context.velocity_at,
            context.signs_of,
            context.fixed,
        )
        equation = Stage(
            jnp.where(parked, 0.0, base),
            jnp.where(parked, 0.0, jnp.ones_like(base)),
            step,
            shrink,
        )
        u, g, converged = newton(equation, guess, g, ok)
        z = equation.point(u)
        passed = converged & jnp.all(~parked | reaches)
        return equation, z, jnp.where(parked, guess, u), g, parked, passed


def per_entry(flow: SteepestFlow, params, unknowns: str) -> bool:
    """Whether the stages' unknowns are one velocity per factor entry rather than one per
    coordinate: always for the naive smoothing; for the structure-preserving one as
    ``unknowns`` says, "auto" meaning per entry when coupled decay β is concrete and non-zero
    (a traced β cannot be seen here: "auto" then takes one per coordinate, and the solver
    stops a non-zero β at run time)."""
    if flow.smoothing_for(params) == "naive" or unknowns == "entry":
        return True
    beta = flow.coupled_wd
    return unknowns == "auto" and is_concrete(beta) and bool(np.any(np.asarray(beta) != 0))


def unknowns_for(flow: SteepestFlow, params, unknowns: str) -> AbstractUnknowns:
    """The stage strategy for ``flow`` on ``params`` with `SignFlowKvaerno3`'s ``unknowns``
    field ("auto", "coordinate" or "entry")."""
    if not per_entry(flow, params, unknowns):
        return PerCoordinate()
    if flow.smoothing_for(params) == "structured":
        return ParkedPerEntry()
    return PerEntry()
