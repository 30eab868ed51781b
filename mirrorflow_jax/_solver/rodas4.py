"""A Rosenbrock solver (Rodas4) for the stiff regularized sign flow, with a structured Jacobian.

Near a minimum the regularized sign flow dθ/dt = −φ_1^ε(∇F) has Jacobian entries of size
1/ε, so explicit steps shrink like ε. A Rosenbrock method is linearly implicit: each step
factors I − γhJ once and reuses it for all stages. For deep diagonal models under a
linear-model loss, J = blockdiag(K_j) + U Vᵀ (one R×R block per coordinate plus the rank-n
loss Hessian), which `WoodburySolver` factors in O(d R³ + d R² n + n³) instead of O((Rd)³).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from diffrax import AbstractLocalInterpolation
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

from .._flow import FlowArgs, SteepestFlow
from .._validate import check_choice, check_range
from .base import AbstractFlowSolver
from .linear import WoodburySolver, relative_residual
from .rows import rows, structured_capable, supports_structured, unrows, velocity_and_jacobian

STRUCTURES = ("auto", "structured", "dense")

# RODAS (order 4, embedded order 3, stiffly accurate, L-stable) in the transformed form of
# Hairer & Wanner, Solving ODEs II (1996), §IV.7: stage k_i solves
# (I/(γh) − J) k_i = f(t + c_i h, y + Σ a_ij k_j) + Σ (C_ij / h) k_j + d_i h ∂f/∂t.
_GAMMA = 0.25
# Row i of _A gives stage i's argument y0 + Σ_j a_ij k_j; row 6 gives y1 (stiffly accurate:
# y1 = the last stage's argument plus k_6).
_A = (
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (1.544, 0.0, 0.0, 0.0, 0.0, 0.0),
    (0.9466785280815826, 0.2557011698983284, 0.0, 0.0, 0.0, 0.0),
    (3.314825187068521, 2.896124015972201, 0.9986419139977817, 0.0, 0.0, 0.0),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 0.0, 0.0),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 1.0, 0.0),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 1.0, 1.0),
)
_C = (
    (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (-5.6688, 0.0, 0.0, 0.0, 0.0, 0.0),
    (-2.430093356833875, -0.2063599157091915, 0.0, 0.0, 0.0, 0.0),
    (-0.1073529058151375, -9.594562251023355, -20.47028614809616, 0.0, 0.0, 0.0),
    (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.7089089320616, 0.0, 0.0),
    (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136,
     -6.058818238834054, 0.0),
)  # fmt: skip
_STAGE_TIMES = (0.0, 0.386, 0.21, 0.63, 1.0, 1.0)
_D = (0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0)
# Dense output: y(θ) = (1 − θ) y0 + θ (y1 + (1 − θ)(k1' + θ k2')), k' = Σ H_i k_i.
_H = (
    (10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823,
     1.025137723295662),
    (-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386,
     -6.594389125716872),
)  # fmt: skip


class Rodas4Interpolation(AbstractLocalInterpolation):
    """Rodas4's third-order dense output on one step (used for SaveAt and events).

        y(t0 + θh) = (1 − θ)·y0 + θ·(y1 + (1 − θ)·(k1 + θ·k2)),    θ = (t − t0)/(t1 − t0)

    **Fields:** ``t0``, ``t1`` the step's ends; ``y0``, ``y1`` the states there (PyTrees);
    ``k1``, ``k2`` the dense-output coefficients, shaped like the state.
    """

    t0: Array
    t1: Array
    y0: object
    y1: object
    k1: object
    k2: object

    def evaluate(self, t0, t1=None, left=True):
        del left
        if t1 is not None:
            return jax.tree.map(jnp.subtract, self.evaluate(t1), self.evaluate(t0))
        theta = (t0 - self.t0) / (self.t1 - self.t0)

        def point(y0, y1, k1, k2):
            return (1 - theta) * y0 + theta * (y1 + (1 - theta) * (k1 + theta * k2))

        return jax.tree.map(point, self.y0, self.y1, self.k1, self.k2)


def _autonomous(args) -> bool:
    """True when the solve's field does not depend on t (a SteepestFlow with constant decay),
    so the ∂f/∂t terms of the stages vanish."""
    return (
        isinstance(args, FlowArgs)
        and isinstance(args.flow, SteepestFlow)
        and not callable(args.flow.decoupled_wd)
    )


class Rodas4(AbstractFlowSolver):
    r"""Rodas4: a 4th-order, L-stable, stiffly accurate Rosenbrock method with an embedded
    3rd-order error estimate and 3rd-order dense output (Hairer & Wanner 1996), as a diffrax
    solver. Use it for the regularized sign flow (q near 1, small ε), which is stiff near a
    minimum; pass it as ``solver=`` to `solve_flow`, `sweep` functions or ``diffeqsolve``.

    Each step evaluates the Jacobian J at the step's start, factors I − γhJ once and solves
    six stages with it. ``structure`` chooses the linear algebra:

    - ``"structured"``: J = blockdiag + rank n (`structured_jacobian`) factored by
      `WoodburySolver`; needs a `SteepestFlow` on a toolkit model under a loss with
      ``hessian_factor`` (`LeastSquares`, `LinearClassification`, `ScalarToy`), inside
      `solve_flow`;
    - ``"dense"``: J by ``jax.jacfwd`` and ``lineax.LU``, for any flow, model and loss;
    - ``"auto"`` (default): structured where possible, else dense.

    If the first stage's solve has relative residual ‖(I − γhJ)k − b‖/‖b‖ above
    ``residual_tol`` (a near-singular block or capacitance matrix; all six stages share that
    factorization), or the step is not finite, the step fails: an adaptive controller
    rejects it and retries with a smaller h, and under a constant step size the solve stops
    with the result ``singular`` or ``nonfinite``. It integrates in either direction of time
    (t1 < t0 too, as diffrax's backward solves and ``BacksolveAdjoint`` need), and evaluates
    ∂f/∂t only for fields that depend on t.

    It follows the field as given: where the structure-preserving sign flow's factors collapse
    to 0 together (a shrinking part at even depth from a balanced init, or a part held at 0 by
    coupled decay) the field is discontinuous and the steps shrink without end; use
    `SignFlowKvaerno3` there (docs/smoothing.md).
    """

    structure: str = eqx.field(static=True, default="auto")
    residual_tol: float = eqx.field(static=True, default=1e-6)

    term_structure = diffrax.AbstractTerm
    interpolation_cls = Rodas4Interpolation

    def __check_init__(self):
        check_choice("structure", self.structure, STRUCTURES)
        check_range("residual_tol", self.residual_tol, 0.0, lo_open=True)

    def unsupported(self, flow, params, loss) -> str | None:
        if self.structure == "structured" and not structured_capable(flow, params, loss):
            return (
                "structure='structured' needs a SteepestFlow on a separable toolkit model "
                "(AbstractReparam) under an AbstractFactoredLoss (LeastSquares, "
                "LinearClassification, ScalarToy); pass structure='dense' or 'auto'."
            )
        return None

    def resolve(self, flow, params, loss, controller) -> "Rodas4":
        return self

    def order(self, terms):
        return 4

    def error_order(self, terms):
        # The embedded estimate is of order 3, so the local error it measures is O(h⁴).
        return 4

    def init(self, terms, t0, t1, y0, args):
        return None

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def _linearization(self, terms, t0, y0, args, scale, direction):
        """Flattening maps, the field F = direction·f at (t0, y0) and ∂F/∂t there (None
        where F does not depend on t), the stage matrix I − scale·∂F/∂y and its
        factorization. ``direction`` is −1 when diffrax integrates backwards in time (its
        terms then flip t, and the control, not the field, carries the sign)."""
        structured = supports_structured(args, y0)
        if self.structure == "structured" and not structured:
            raise ValueError(self.unsupported(None, y0, None))
        if self.structure != "dense" and structured:
            dim = y0().shape[0]
            field0, jacobian = velocity_and_jacobian(args.flow, y0, args.loss, direction * t0)
            field0 = direction * field0
            operator = jacobian.shifted(direction * scale)
            solver = WoodburySolver()
            flatten, unflatten = (lambda y: rows(y, dim)), (lambda r: unrows(r, y0))
            dfdt = None
            if not _autonomous(args):
                dfdt = jax.jvp(
                    lambda t: direction * flatten(terms.vf(t, y0, args)),
                    (t0,),
                    (jnp.ones_like(t0),),
                )[1]
        else:
            flat0, unflatten = ravel_pytree(y0)
            flatten = lambda y: ravel_pytree(y)[0]  # noqa: E731
            # One linearization in (y, t): the t tangent is a symbolic zero, free, for a field
            # that does not depend on t.
            field0, linear = jax.linearize(
                lambda f, t: direction * flatten(terms.vf(t, unflatten(f), args)), flat0, t0
            )
            eye = jnp.eye(flat0.shape[0], dtype=flat0.dtype)
            zero_t = jnp.zeros_like(t0)
            jacobian = jax.vmap(lambda e: linear(e, zero_t), out_axes=1)(eye)
            dfdt = None if _autonomous(args) else linear(jnp.zeros_like(flat0), jnp.ones_like(t0))
            operator = lx.MatrixLinearOperator(eye - scale * jacobian)
            solver = lx.LU()
        factorization = solver.init(operator, {})
        return flatten, unflatten, field0, dfdt, operator, solver, factorization

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        h = t1 - t0
        scale = _GAMMA * h
        # diffrax solves t1 < t0 as t ↦ −t with the sign in the control: follow the control.
        direction = jnp.where(terms.contr(t0, t1) < 0, -1.0, 1.0)
        flatten, unflatten, field0, dfdt, operator, solver, state = self._linearization(
            terms, t0, y0, args, scale, direction
        )

        def field(t, flat):
            return direction * flatten(terms.vf(t, unflatten(flat), args))

        y0_flat = flatten(y0)
        a, c, d, times = (jnp.asarray(m, y0_flat.dtype) for m in (_A, _C, _D, _STAGE_TIMES))

        def solve(i, ks, velocity):
            rhs = velocity + jnp.tensordot(c[i], ks, 1) / h
            if dfdt is not None:
                rhs = rhs + d[i] * h * dfdt
            rhs = scale * rhs
            k, _, _ = solver.compute(state, rhs, {})
            return ks.at[i].set(k), rhs

        def stage(i, ks):
            # One traced stage inside a loop (not five unrolled ones) keeps compile time low.
            velocity = field(t0 + times[i] * h, y0_flat + jnp.tensordot(a[i], ks, 1))
            return solve(i, ks, velocity)[0]

        # Stage 1 evaluates the field at (t0, y0): the linearization already holds it. Its
        # solve's residual guards the factorization that all six stages share.
        ks, rhs = solve(0, jnp.zeros((6, *y0_flat.shape), y0_flat.dtype), field0)
        residual = relative_residual(operator, ks[0], rhs)
        ks = jax.lax.fori_loop(1, 6, stage, ks)
        y1_flat = y0_flat + jnp.tensordot(a[6], ks, 1)
        singular = ~(residual <= self.residual_tol)
        nonfinite = ~jnp.all(jnp.isfinite(y1_flat))
        failed = singular | nonfinite
        # A failed step reports it: an adaptive controller rejects the step (its error is
        # inf) and diffrax then ignores the code; under a constant step it ends the solve.
        result = diffrax.RESULTS.where(
            nonfinite,
            diffrax.RESULTS.nonfinite,
            diffrax.RESULTS.where(singular, diffrax.RESULTS.singular, diffrax.RESULTS.successful),
        )
        y_error = jnp.where(failed, jnp.inf, ks[5])
        y1 = unflatten(jnp.where(failed, y0_flat, y1_flat))
        dense_info = dict(
            y0=y0,
            y1=y1,
            k1=unflatten(jnp.tensordot(jnp.asarray(_H[0], ks.dtype), ks[:5], 1)),
            k2=unflatten(jnp.tensordot(jnp.asarray(_H[1], ks.dtype), ks[:5], 1)),
        )
        return y1, unflatten(y_error), dense_info, None, result
