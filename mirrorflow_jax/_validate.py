"""Set-up checks that raise ValueError *before* any compilation.

Each check inspects only concrete values: under ``jit``/``vmap``/``grad`` the values are
tracers and the check is skipped (value-dependent failures inside a trace are reported through
result codes instead).
"""

import reprlib

import jax
import jax.numpy as jnp
import numpy as np

_REPR = reprlib.Repr()  # bounded reprs for error messages
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 4
_REPR.maxstring = _REPR.maxother = 60


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
        raise ValueError(f"`{name}` must be an integer >= {lo}; got {brief(value)}.")


def check_choice(name: str, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}; got {brief(value)}.")


def brief(value) -> str:
    """A repr of ``value`` bounded in length whatever its size (for error messages)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, np.ndarray | jax.Array) and value.size > 6:
        return f"<array of shape {value.shape}, dtype {value.dtype}>"
    return _REPR.repr(value)


def as_float(value):
    """Convert to a JAX array of the default floating dtype (keeps tracers as they are). A
    constant stays concrete inside ``jit`` too (e.g. ``Lp(1.0)`` built in a jitted function),
    so that what depends on its value, such as the automatic solver choice, can read it."""
    with jax.ensure_compile_time_eval():
        return jnp.asarray(value, dtype=jnp.result_type(float))


def _show(arr):
    return (
        f"{arr.item():g}"
        if arr.size == 1
        else f"values in [{np.nanmin(arr):g}, {np.nanmax(arr):g}]"
    )


def check_params(name: str, params):
    """Raise ValueError unless ``params`` is a non-empty PyTree of finite real floating
    arrays (complex ones are refused: the flows are real)."""
    leaves = jax.tree.leaves(params)
    if not leaves or not all(
        hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in leaves
    ):
        raise ValueError(
            f"`{name}` must be a PyTree of floating-point arrays, real not complex (use "
            "eqx.partition to split off non-array fields of a model)."
        )
    for i, leaf in enumerate(leaves):
        check_finite(f"{name} (leaf {i})", leaf)


def check_scalar(name: str, value):
    """Raise ValueError unless ``value`` (concrete or traced) is a real scalar."""
    shape = np.shape(value) if not hasattr(value, "shape") else value.shape
    dtype = getattr(value, "dtype", None)
    if dtype is None and isinstance(value, list | tuple | str | dict):
        dtype = np.dtype(object)
    real = (
        dtype is None or jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    )
    if shape != () or not real or isinstance(value, bool | complex):
        kind = str(value.dtype) if hasattr(value, "dtype") else type(value).__name__
        raise ValueError(f"`{name}` must be a real scalar; got {kind} of shape {shape}.")


def check_times(t0, t1, dt0, save_ts):
    """The time arguments of a solve: real scalars t0, t1 (finite, t0 < t1 when concrete),
    dt0 None or > 0, save times a 1-D array without NaN."""
    check_scalar("t0", t0)
    check_scalar("t1", t1)
    check_finite("t0", t0)
    if is_concrete(t1) and not np.isfinite(float(t1)):
        raise ValueError(
            "`t1` must be finite: an infinite horizon never ends (stop a solve with an "
            "`event` instead)."
        )
    if dt0 is not None:
        check_scalar("dt0", dt0)
        check_range("dt0", dt0, 0.0, lo_open=True)
    if save_ts is not None:
        if np.ndim(save_ts) != 1:
            raise ValueError(f"`saveat` times must be a 1-D array; got shape {np.shape(save_ts)}.")
        if not jnp.issubdtype(jnp.result_type(save_ts), jnp.floating):
            raise ValueError("`saveat` times must be real numbers.")
        check_finite("saveat", save_ts)


def check_array(name: str, value, ndim: int):
    """Raise ValueError unless ``value`` is a real array (jax or numpy) of ``ndim``
    dimensions with at least one entry along its first axis."""
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise ValueError(
            f"`{name}` must be a JAX or NumPy array (e.g. jnp.asarray(...)); got "
            f"{type(value).__name__}."
        )
    real = jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
    if not real:
        raise ValueError(f"`{name}` must hold real numbers; got dtype {value.dtype}.")
    if value.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s); got shape {value.shape}.")
    if value.shape[0] == 0:
        raise ValueError(f"`{name}` must hold at least one sample (n >= 1); got n = 0.")


def check_labels(name: str, labels):
    """Raise ValueError unless concrete ``labels`` are all −1 or +1."""
    if not is_concrete(labels):
        return
    arr = np.asarray(labels)
    bad = ~np.isin(arr, (-1.0, 1.0))
    if np.any(bad):
        raise ValueError(
            f"`{name}` must hold labels -1 or +1; {int(bad.sum())} of {arr.size} entries are "
            f"not (e.g. {arr[bad].flat[0]:g}); map 0/1 labels with 2 * y - 1."
        )
