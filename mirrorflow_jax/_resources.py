"""Resource limits, checked before anything is allocated or compiled.

A sweep or an experiment config whose arrays would hold more than ``MIRRORFLOW_MAX_ELEMENTS``
numbers (default 2²⁹, 4 GiB in float64), or an experiment deeper than
``MIRRORFLOW_MAX_DEPTH`` factors (default 64), is refused with a ValueError that gives the
estimate and names the environment variable that raises the limit.
"""

import math
import os

import jax

ELEMENTS_VARIABLE = "MIRRORFLOW_MAX_ELEMENTS"
DEPTH_VARIABLE = "MIRRORFLOW_MAX_DEPTH"
DEFAULT_MAX_ELEMENTS = 2**29
DEFAULT_MAX_DEPTH = 64


def _limit(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable {variable} must be an integer >= 1.")
    return value


def check_elements(what: str, count: int, detail: str = ""):
    """Raise ValueError if ``count`` numbers (for ``what``) exceed the element limit."""
    limit = _limit(ELEMENTS_VARIABLE, DEFAULT_MAX_ELEMENTS)
    if count > limit:
        raise ValueError(
            f"{what} would hold about {count:.3g} numbers{f' ({detail})' if detail else ''}, "
            f"above the limit of {limit:.3g}; reduce it, or set the environment variable "
            f"{ELEMENTS_VARIABLE} to raise the limit."
        )


def check_depth(name: str, depth: int):
    """Raise ValueError if a depth exceeds the depth limit."""
    limit = _limit(DEPTH_VARIABLE, DEFAULT_MAX_DEPTH)
    if depth > limit:
        raise ValueError(
            f"`{name}` = {depth} exceeds the depth limit {limit} (compile time grows with "
            f"depth); set the environment variable {DEPTH_VARIABLE} to raise it."
        )


def check_sweep(grid_size: int, num_axes: int, member_elements: int | None = None):
    """A sweep's grid (before its members are listed: a value and an index per member and
    axis) and, once traced, its outputs."""
    check_elements("the sweep's grid", 2 * grid_size * num_axes, f"{grid_size} members")
    if member_elements is not None:
        detail = f"{grid_size} members × {member_elements} output numbers each"
        check_elements("the sweep's outputs", grid_size * member_elements, detail)


def check_solve(save_ts, params) -> None:
    """A solve's saved trajectory: (save times) × (numbers in the parameters) × 3 (the
    parameters, the effective weights and the balance are saved at each time)."""
    if save_ts is None:
        return
    state = sum(math.prod(_shape(leaf)) for leaf in jax.tree.leaves(params))
    saves = math.prod(_shape(save_ts))
    detail = f"{saves} save times × {state} parameters × 3"
    check_elements("the solve's saved trajectory", 3 * saves * state, detail)


def _shape(value) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", ()))


_DEPTHS = ("depth", "depths", "factor_depths", "discrete_depth", "hidden_layers")
_STATES = ("d", "dim", "width")
_SEEDS = ("random_seeds", "num_seeds")


def check_config(config):
    """An estimate of an experiment config's largest arrays: (members of its grid: the
    product of its list lengths and seed counts) × saves × state (dimension × depth), plus
    its data (n × d); and every depth against the depth limit."""
    fields = vars(config) if hasattr(config, "__dict__") else {}
    depth = 1
    for name in _DEPTHS:
        values = fields.get(name)
        for value in values if isinstance(values, tuple) else (values,):
            if isinstance(value, int) and not isinstance(value, bool):
                check_depth(name, value)
                depth = max(depth, value)
    members = math.prod(len(v) for v in fields.values() if isinstance(v, tuple))
    members *= math.prod(max(int(fields.get(name) or 1), 1) for name in _SEEDS)
    state = max([int(fields[name]) for name in _STATES if isinstance(fields.get(name), int)] + [1])
    saves = fields.get("num_saves") if isinstance(fields.get("num_saves"), int) else 1
    data = int(fields.get("n") or 0) * state if isinstance(fields.get("n"), int) else 0
    count = members * max(saves, 1) * state * depth + data
    detail = f"{members} members × {saves} saves × {state} coordinates × depth {depth}"
    check_elements("this config's results", count, detail + (f" + data {data}" if data else ""))
