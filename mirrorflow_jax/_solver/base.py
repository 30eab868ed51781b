"""The interface of the toolkit's flow solvers: diffrax solvers that exploit the structure of a
steepest flow, and say before anything is compiled whether they can take a solve."""

import abc

import diffrax
from jaxtyping import PyTree

from .._custom_types import Loss, Params


class AbstractFlowSolver(diffrax.AbstractAdaptiveSolver):
    """A diffrax solver for the flows of `solve_flow`, which reads the flow, model and loss
    from ``args`` (`FlowArgs`) to exploit their structure.

    Subclasses declare what they can solve (`unsupported`) and how their options are settled
    from a solve (`resolve`); `solve_flow` asks both before compiling, and the automatic
    solver choice asks `supports`. A subclass is still a diffrax solver: ``step``, ``init``,
    ``order``, ``error_order``, ``term_structure`` and ``interpolation_cls`` as diffrax
    defines them.
    """

    @abc.abstractmethod
    def unsupported(self, flow, params: Params, loss: Loss) -> str | None:
        """Why this solver cannot take the solve of ``flow`` from ``params`` under ``loss``
        (one sentence that names what to pass instead), or None if it can. Values that are
        traced (swept) are not judged here: the solver checks them at run time."""

    @abc.abstractmethod
    def resolve(
        self, flow, params: Params, loss: Loss, controller: diffrax.AbstractStepSizeController
    ) -> "AbstractFlowSolver":
        """This solver with its options settled for the solve (e.g. tolerances taken from the
        step-size ``controller``, choices that depend on the flow); called after `check_setup`
        and before compiling."""

    def supports(self, flow, params: Params, loss: Loss) -> bool:
        """Whether this solver can take the solve (`unsupported` is None)."""
        return self.unsupported(flow, params, loss) is None

    def check_setup(self, flow, params: Params, loss: Loss) -> None:
        """Raise ValueError, naming the fix, unless this solver can take the solve."""
        reason = self.unsupported(flow, params, loss)
        if reason is not None:
            raise ValueError(f"`{type(self).__name__}`: {reason}")


# The Newton tests' tolerances where neither the solver nor the step-size controller gives any
# (e.g. a constant step).
NEWTON_RTOL, NEWTON_ATOL = 1e-8, 1e-10


def newton_tolerances(solver, args) -> tuple:
    """The (rtol, atol) of a Newton-based solver's iteration test: the solver's own ``rtol`` /
    ``atol`` where set, else the step-size controller's from ``args`` (`FlowArgs`; traced ones
    too, e.g. a swept tolerance), else `NEWTON_RTOL` / `NEWTON_ATOL`."""
    rtol = solver.rtol if solver.rtol is not None else args.rtol
    atol = solver.atol if solver.atol is not None else args.atol
    return (NEWTON_RTOL if rtol is None else rtol), (NEWTON_ATOL if atol is None else atol)


def unset_tolerances(solver, controller: PyTree) -> dict[str, float]:
    """The ``rtol`` and ``atol`` of a step-size controller, where it has concrete ones (a
    `diffrax.PIDController`), for those of ``solver``'s ``rtol``/``atol`` fields left None:
    the changes that take a solver's tolerances from the controller."""
    values = {name: getattr(controller, name, None) for name in ("rtol", "atol")}
    try:
        found = {name: float(value) for name, value in values.items() if value is not None}
    except TypeError:  # traced
        return {}
    return {name: value for name, value in found.items() if getattr(solver, name) is None}
