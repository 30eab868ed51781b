"""What every experiment module provides, and the record of one checked prediction.

An experiment is a module in `mirrorflow_jax.experiments`, registered by one line in
`mirrorflow_jax.experiments.EXPERIMENTS` and configured by one YAML file in the package's
``configs/`` folder, package data named after the experiment (the
full-size run, with a ``quick:`` block of overrides for ``--quick``). It provides

- ``Config``: a frozen dataclass of typed fields with defaults (the full-size run), validated in
  ``__post_init__`` (ValueError naming the field and its valid range). The YAML loader derives
  each key's expected type from the field annotations: ``bool``, ``int``, ``float``, ``str``,
  ``Literal[...]``, ``pathlib.Path`` (must exist), ``tuple[T, ...]`` and ``T | None``;
- ``run(config, *, workdir, progress) -> xarray.Dataset``: the computation. ``workdir`` is a
  folder for checkpoints (None: no checkpoints); pass ``checkpoint_dir(workdir, "name")`` to
  `mirrorflow_jax.sweep` so that an interrupted run resumes. ``progress`` turns progress bars on;
- ``figures(ds) -> dict[str, matplotlib.figure.Figure]``: named figures of the result (build them
  with ``matplotlib.figure.Figure``, not pyplot, so that no global state is touched);
- ``checks(ds) -> list[Check]``: every prediction the run tested, measured against predicted.

Configs validate their fields with `check_int`, `check_range` and `check_numbers` from here,
one path for every experiment: each raises ValueError naming the field and its valid range.
"""

import dataclasses
import os
import pathlib

import numpy as np

from mirrorflow_jax._validate import brief, check_int as _check_int_from, check_range

__all__ = ["Check", "check_int", "check_numbers", "check_range", "checkpoint_dir", "within"]


def check_int(name: str, value, lo: int, hi: int | None = None):
    """Raise ValueError unless ``value`` is an integer in [lo, hi] (hi None: ≥ lo)."""
    _check_int_from(name, value, lo)
    if hi is not None and value > hi:
        raise ValueError(f"`{name}` must be an integer in [{lo}, {hi}]; got {brief(value)}.")


def check_numbers(
    name: str, values, lo: float, hi: float = np.inf, *, lo_open: bool = False, integer=False
):
    """Raise ValueError unless ``values`` is a non-empty sequence of finite numbers (integers
    where ``integer``) in [lo, hi] (or (lo, hi] where ``lo_open``)."""
    kind = int | np.integer if integer else int | float | np.integer | np.floating
    fine = [isinstance(v, kind) and not isinstance(v, bool) for v in values]
    if not values or not all(fine) or not np.all(np.isfinite(np.asarray(values, float))):
        what = "integers" if integer else "finite numbers"
        raise ValueError(f"`{name}` must be a non-empty list of {what}; got {brief(values)}.")
    check_range(name, values, lo, hi, lo_open=lo_open)


@dataclasses.dataclass(frozen=True)
class Check:
    """One prediction tested by an experiment: what was measured, against what, and whether it
    held within the stated tolerance. A failing check is a result, not an error."""

    name: str
    measured: float | str
    predicted: float | str
    tolerance: float | str
    held: bool
    detail: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def within(name: str, measured: float, predicted: float, tolerance: float, detail: str = ""):
    """The `Check` that |measured − predicted| ≤ tolerance (NaN never holds)."""
    measured, predicted = float(measured), float(predicted)
    held = bool(abs(measured - predicted) <= tolerance)
    return Check(name, measured, predicted, float(tolerance), held, detail)


def checkpoint_dir(workdir: str | os.PathLike | None, name: str) -> pathlib.Path | None:
    """The checkpoint folder of one sweep of a run (None when the run keeps no checkpoints)."""
    return None if workdir is None else pathlib.Path(workdir) / name


def loglog_slope(x, y) -> float:
    """Least-squares slope of log|y| against log x: the exponent p of y ∝ x^p."""
    return float(np.polyfit(np.log(np.asarray(x)), np.log(np.abs(np.asarray(y))), 1)[0])
