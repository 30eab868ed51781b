"""mirrorflow_jax: continuous-time steepest flows on reparameterized models, in JAX.

Simulates dθ/dt = −φ_q(∇F(θ)) − α(t)·θ (q = 2 gradient flow … q = 1 sign flow) on deep
diagonal reparameterizations with diffrax, following Jacobs, Zhou & Burkholz, "Never Saddle
for Reparameterized Steepest Descent as Mirror Flow" (ICLR 2026).
"""

import typing

__version__ = "0.1.0"

# The public API. Each name is imported from its module on first use (see `__getattr__` below),
# so that `import mirrorflow_jax` and the `mirrorflow` command start without loading JAX; the
# imports below are also what type checkers and the API docs read. To export a name, add it here.
if typing.TYPE_CHECKING:
    from ._adam_flow import AdamFlow as AdamFlow, AdamState as AdamState
    from ._cache import enable_compilation_cache as enable_compilation_cache
    from ._checkpoints import CheckpointWarning as CheckpointWarning
    from ._discrete import (
        DiscreteEscape as DiscreteEscape,
        DiscreteRun as DiscreteRun,
        run_optimizer as run_optimizer,
        scale_by_steepest as scale_by_steepest,
        steepest_descent as steepest_descent,
        step_times as step_times,
        steps_at_times as steps_at_times,
        steps_to_escape as steps_to_escape,
        trajectory_gap as trajectory_gap,
    )
    from ._flow import (
        AbstractFlow as AbstractFlow,
        FlowArgs as FlowArgs,
        SteepestFlow as SteepestFlow,
    )
    from ._geometry import Lp as Lp, steepest_map as steepest_map
    from ._guard import RESULTS as RESULTS
    from ._hessian import (
        HessianSpectrum as HessianSpectrum,
        hessian_eigenvalues as hessian_eigenvalues,
    )
    from ._margins import (
        MaxMargin as MaxMargin,
        max_margin as max_margin,
        min_l1_interpolant as min_l1_interpolant,
    )
    from ._mirror import (
        AbstractMirror as AbstractMirror,
        BiasSolution as BiasSolution,
        DeepDiagonalMirror as DeepDiagonalMirror,
        MirrorFlow as MirrorFlow,
        SquareDiffMirror as SquareDiffMirror,
        implicit_bias as implicit_bias,
        solve_mirror_flow as solve_mirror_flow,
    )
    from ._models import (
        AbstractReparam as AbstractReparam,
        DeepDiagonal as DeepDiagonal,
        Padded as Padded,
        PaddedDeepDiagonal as PaddedDeepDiagonal,
        PaddedSignedDeepDiagonal as PaddedSignedDeepDiagonal,
        SignedDeepDiagonal as SignedDeepDiagonal,
        SquareDiff as SquareDiff,
        effective_weights as effective_weights,
    )
    from ._problems import (
        AbstractFactoredLoss as AbstractFactoredLoss,
        AbstractLoss as AbstractLoss,
        LeastSquares as LeastSquares,
        LinearClassification as LinearClassification,
        ScalarToy as ScalarToy,
        sparse_classification as sparse_classification,
        sparse_regression as sparse_regression,
    )
    from ._results import load_dataset as load_dataset, save_dataset as save_dataset
    from ._sensitivity import (
        eps_sensitivity as eps_sensitivity,
        layer_transitions as layer_transitions,
    )
    from ._solve import (
        AbstractEscape as AbstractEscape,
        EventNewton as EventNewton,
        FlowSolution as FlowSolution,
        LossBelow as LossBelow,
        NormAbove as NormAbove,
        solve_flow as solve_flow,
    )
    from ._solver.base import AbstractFlowSolver as AbstractFlowSolver
    from ._solver.exact_kvaerno3 import (
        PowerFlowKvaerno3 as PowerFlowKvaerno3,
        PowerFlowKvaerno5 as PowerFlowKvaerno5,
    )
    from ._solver.linear import (
        BlockLowRankOperator as BlockLowRankOperator,
        WoodburySolver as WoodburySolver,
    )
    from ._solver.rodas4 import Rodas4 as Rodas4, Rodas4Interpolation as Rodas4Interpolation
    from ._solver.rows import structured_jacobian as structured_jacobian
    from ._solver.sign_kvaerno3 import SignFlowKvaerno3 as SignFlowKvaerno3
    from ._sweep import Grid as Grid, sweep as sweep
    from ._theory import (
        coupled_penalty as coupled_penalty,
        escape_regime as escape_regime,
        manifold_regularizer as manifold_regularizer,
        metric_exponent as metric_exponent,
        penalty_exponent as penalty_exponent,
        saddle_speed as saddle_speed,
        stationarity_residual as stationarity_residual,
    )


def _read_exports() -> dict[str, str]:
    """Public name → the module defining it, read from the imports under ``TYPE_CHECKING``."""
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(__file__).read_text(encoding="utf-8"))
    (block,) = (
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
    )
    return {
        alias.asname or alias.name: f"{__name__}.{node.module}"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


_EXPORTS = _read_exports()
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
