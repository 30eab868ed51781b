r"""``solver="auto"``: the solver for a solve, chosen from what is known before it runs.

The steepest flow dθ/dt = −φ_q^ε(∇F) − α θ changes character with q and ε:

- q = 2 (gradient flow) is as smooth as the loss: an explicit method (Tsit5), except where the
  structured Jacobian applies (a separable toolkit model under an `AbstractFactoredLoss`):
  there `Rodas4`, which ended 4–90× closer to a tight reference at the same tolerance in 10 of
  12 measured cases (the others at rounding level), and far cheaper from large inits, where
  gradient flow of a deep model is stiff (65 steps against Tsit5's 1026 on a depth-3 model
  at scale 1); each of its steps costs about 5× a Tsit5 step, so small-init runs take longer;
- q = 1 with ε > 0 (the smoothed sign flow) is stiff near a minimum, with Jacobian entries of
  size 1/ε: `SignFlowKvaerno3`, whose cost stays bounded as ε → 0 and which passes factors
  that collapse to 0, where it applies (a separable toolkit model under an
  `AbstractFactoredLoss`), else `Rodas4`. With the naive placement (no collapses) and
  ε ≥ `COARSE_EPS`, `Rodas4` instead: there its fourth order takes about half the steps of
  `SignFlowKvaerno3` at the same accuracy, while below about 1e-6 its steps grow without
  bound (benchmarks/README.md, "bench_auto_rules.py");
- 1 < q < 2 with ε > 0 is stiff like ε^(q−2): `Rodas4` (structured where it applies);
- ε = 0 below q = 2 (the exact maps) is not differentiable at ∇F = 0, which a Rosenbrock
  method's Jacobian needs. For 1 < q < 2, `PowerFlowKvaerno5` where it applies (a separable
  toolkit model under an `AbstractFactoredLoss`): its stages are solved in the velocity,
  whose inverse map is C¹ at 0, so it is not held back where a gradient entry passes 0 or
  near the minimum (about 100× fewer steps than Tsit5 on a 40×100 regression), and from a
  saddle init it takes about Tsit5's steps (its order 5 matters there: the order-3
  `PowerFlowKvaerno3` took 20–45× more). Otherwise, and for the exact sign flow (q = 1,
  ε = 0), an explicit method (Tsit5), watched by `StiffnessCheck`.

The same regions decide for other flows with a geometry (`MirrorFlow`), with the solvers
that take them (dense `Rodas4` for the stiff ones, up to `DENSE_LIMIT` states); a flow
without one (`AdamFlow`) gets the watched explicit method.

Values that are traced (a sweep axis, a user's ``jit``) are not known: the choice is then
made per member inside the program, by ``lax.switch`` over the candidates the concrete
values leave open, so each member runs one solver (under ``lax.map``; a vmapped switch runs
every branch, each idle for the members it does not take, and `sweep`'s grouped strategy
batches members of one choice).
"""

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._flow import SteepestFlow
from .._validate import is_concrete
from .base import AbstractFlowSolver
from .exact_kvaerno3 import PowerFlowKvaerno5
from .rodas4 import Rodas4
from .rows import structured_capable
from .sign_kvaerno3 import SignFlowKvaerno3
from .stiffness import StiffnessCheck, checkable

# Largest state Rodas4 factors densely (an (n × n) LU per step) when the structured Jacobian
# does not apply; beyond it the explicit method is used.
DENSE_LIMIT = 1024


# Smallest ε at which the naive sign flow goes to `Rodas4` rather than `SignFlowKvaerno3`.
COARSE_EPS = 1e-4

# The (q, ε) regions, in the order in which they are tried.
_REGIONS = {
    "gf": lambda q, eps: q == 2,
    "coarse_sign": lambda q, eps: (q == 1) & (eps >= COARSE_EPS),
    "sign": lambda q, eps: (q == 1) & (eps > 0),
    "smoothed": lambda q, eps: (q < 2) & (eps > 0),
    "exact_sign": lambda q, eps: (q == 1) & (eps == 0),
    "exact": lambda q, eps: (q < 2) & (eps == 0),
}


def _region(q: float, eps: float) -> str:
    return next(rule for rule, holds in _REGIONS.items() if holds(q, eps))


class SolverChoice(eqx.Module):
    """The candidate solvers of a solve and which one runs for given (q, ε).

    **Fields:** ``solvers`` a tuple of distinct diffrax solvers; ``names`` their names
    (static); ``rules`` the (q, ε) regions the solve can fall in, in the order they are
    tried (static): "gf" (q = 2), "coarse_sign" (q = 1, ε ≥ `COARSE_EPS`), "sign" (q = 1,
    ε > 0), "smoothed" (q < 2, ε > 0), "exact_sign" (q = 1, ε = 0) or "exact" (1 < q < 2,
    ε = 0 after the others); ``takes``
    for each region, the index of its solver (static).
    """

    solvers: tuple
    names: tuple[str, ...] = eqx.field(static=True)
    rules: tuple[str, ...] = eqx.field(static=True)
    takes: tuple[int, ...] = eqx.field(static=True)

    def index(self, q, eps):
        """Which solver takes (q, ε): that of the first region that holds (a traced int for
        traced values)."""
        index = jnp.asarray(0)
        for rule, taker in reversed(list(zip(self.rules, self.takes, strict=True))):
            index = jnp.where(_REGIONS[rule](q, eps), taker, index)
        return index

    @property
    def label(self) -> str:
        """The solver's name, or the candidates' names joined by "|"."""
        return "|".join(self.names)


def _choice(pairs) -> SolverChoice:
    """A `SolverChoice` from (region, solver) pairs, one branch per distinct solver."""
    solvers, takes = [], []
    for _, solver in pairs:
        if solver not in solvers:
            solvers.append(solver)
        takes.append(solvers.index(solver))
    names = tuple(map(_name, solvers))
    return SolverChoice(tuple(solvers), names, tuple(r for r, _ in pairs), tuple(takes))


def _name(solver) -> str:
    inner = solver.solver if isinstance(solver, StiffnessCheck) else solver
    return type(inner).__name__


def watched(solver):
    """``solver`` wrapped in a `StiffnessCheck` where it can be watched (Tsit5, Dopri5)."""
    return StiffnessCheck(solver) if checkable(solver) else solver


def _stiff_solver(flow, params, loss, controller, sign_flow: bool):
    """The solver for a stiff member: `SignFlowKvaerno3` (sign flow, where it applies),
    structured or small dense `Rodas4`, else the explicit method."""
    if sign_flow and isinstance(flow, SteepestFlow):
        # A traced coupled decay cannot choose the unknowns: one per entry takes any β.
        unknowns = "auto" if is_concrete(flow.coupled_wd) else "entry"
        sign = SignFlowKvaerno3(unknowns=unknowns).resolve(flow, params, loss, controller)
        if sign.supports(flow, params, loss):
            return sign
    if structured_capable(flow, params, loss):
        return Rodas4(structure="structured")
    if ravel_pytree(params)[0].size <= DENSE_LIMIT:
        return Rodas4(structure="dense")
    return watched(diffrax.Tsit5())


def _power_flow(flow, params, loss, controller):
    """`PowerFlowKvaerno5` settled for the solve where it can take the exact maps with
    1 < q < 2 (a separable toolkit model, a factored loss, a tolerance the dtype resolves),
    else None."""
    if not structured_capable(flow, params, loss):
        return None
    solver = PowerFlowKvaerno5().resolve(flow, params, loss, controller)
    return solver if solver.supports(flow, params, loss) else None


def choose_solver(flow, params, loss, controller) -> SolverChoice:
    """The `SolverChoice` of ``solver="auto"`` for `solve_flow`: see the module docstring.

    **Arguments:** as `solve_flow`'s (``controller`` the step-size controller, whose
    tolerances `SignFlowKvaerno3`'s Newton test takes).
    """
    explicit = watched(diffrax.Tsit5())
    if flow.geometry is None:
        return _choice([("gf", explicit)])
    q, eps = flow.geometry.q, flow.geometry.eps
    # The regions the solve can fall in: its own where q and ε are concrete, else those of
    # representative values (q in {1, 1.5, 2}, ε in {0, small, coarse}).
    qs = [float(np.asarray(q))] if is_concrete(q) else [1.0, 1.5, 2.0]
    epss = [float(np.asarray(eps))] if is_concrete(eps) else [0.0, 1e-8, 1.0]
    found = {_region(q_, eps_) for q_ in qs for eps_ in epss}
    rules = [rule for rule in _REGIONS if rule in found]
    naive = isinstance(flow, SteepestFlow) and flow.smoothing_for(params) == "naive"
    pairs = []
    for rule in rules:
        if rule == "gf" and structured_capable(flow, params, loss):
            pairs.append((rule, Rodas4(structure="structured")))
        elif (
            rule == "exact" and (power := _power_flow(flow, params, loss, controller)) is not None
        ):
            pairs.append((rule, power))
        elif rule in ("gf", "exact_sign", "exact"):
            pairs.append((rule, explicit))
        else:
            sign_flow = rule == "sign" or (rule == "coarse_sign" and not naive)
            pairs.append((rule, _stiff_solver(flow, params, loss, controller, sign_flow)))
    return _choice(pairs)


def solver_choice(solver, flow, params, loss, controller) -> SolverChoice:
    """The `SolverChoice` for `solve_flow`'s ``solver`` argument: `choose_solver` for
    ``"auto"`` (or None); a user's solver settled for the solve otherwise: a toolkit solver
    (`AbstractFlowSolver`) takes its options from the solve and checks the setup (ValueError
    naming the fix), and an explicit one is watched for stiffness (`StiffnessCheck`).

    Raises ValueError, before anything is traced, for any other value."""
    if solver is None or (isinstance(solver, str) and solver == "auto"):
        return choose_solver(flow, params, loss, controller)
    if not isinstance(solver, diffrax.AbstractSolver):
        shown = repr(solver) if isinstance(solver, str) else type(solver).__name__
        raise ValueError(
            f"`solver` must be 'auto' or a diffrax solver instance (e.g. diffrax.Tsit5(), "
            f"mf.Rodas4(), mf.SignFlowKvaerno3()); got {shown[:80]}."
        )
    if isinstance(solver, AbstractFlowSolver):
        solver = solver.resolve(flow, params, loss, controller)
        solver.check_setup(flow, params, loss)
    else:
        solver = watched(solver)
    return _choice([("gf", solver)])
