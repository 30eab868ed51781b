"""Set-up checks that raise ValueError *before* any compilation.

Each check inspects only concrete values: under ``jit``/``vmap``/``grad`` the values are
tracers and the check is skipped (value-dependent failures inside a trace are reported through
result codes instead).
"""

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(value) -> bool:
    """True when every leaf of ``value`` is a concrete (non-traced) value."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def check_range(name: str, value, lo: float, hi: float = np.inf, *, lo_open: bool = False):
    """Raise ValueError unless every element of ``value`` lies in [lo, hi] (or (lo, hi])."""
    if not is_concrete(value):
        return
    arr = np.asarray(value, dtype=float)
    below = arr <= lo if lo_open else arr < lo
    if np.any(below) or np.any(arr > hi) or np.any(np.isnan(arr)):
        left = "(" if lo_open else "["
        right = "]" if np.isfinite(hi) else ")"
        raise ValueError(f"`{name}` must lie in {left}{lo}, {hi}{right}; got {_show(arr)}.")


def check_finite(name: str, value):
    """Raise ValueError if a concrete array holds NaN or inf."""
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"`{name}` must be finite; it holds {bad} non-finite entries.")


def check_int(name: str, value, lo: int):
    """Raise ValueError unless ``value`` is a Python/NumPy integer ≥ lo."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ValueError(f"`{name}` must be an integer >= {lo}; got {value!r}.")


def check_choice(name: str, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}; got {value!r}.")


def as_float(value):
    """Convert to a JAX array of the default floating dtype (keeps tracers as they are)."""
    return jnp.asarray(value, dtype=jnp.result_type(float))


def _show(arr):
    return (
        f"{arr.item():g}"
        if arr.size == 1
        else f"values in [{np.nanmin(arr):g}, {np.nanmax(arr):g}]"
    )


def check_params(name: str, params):
    """Raise ValueError unless ``params`` is a non-empty PyTree of finite floating arrays."""
    leaves = jax.tree.leaves(params)
    if not leaves or not all(
        hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact) for leaf in leaves
    ):
        raise ValueError(
            f"`{name}` must be a PyTree of floating-point arrays (use eqx.partition to split "
            "off non-array fields of a model)."
        )
    for i, leaf in enumerate(leaves):
        check_finite(f"{name} (leaf {i})", leaf)
