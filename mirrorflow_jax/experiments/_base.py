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

This module is the experiments' one door into the package's private modules: besides the
checks it offers `Progress` (the sweeps' progress reporter), `stage_checkpoints` (the sweeps'
self-checking checkpoint files for runs made of stages) and `min_weighted_l1_separator` (the
reweighted-ℓ1 linear program behind `max_margin`); the experiments import nothing else that
the public API `mirrorflow_jax` does not offer.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from mirrorflow_jax._checkpoints import _ChunkStore
from mirrorflow_jax._margins import min_weighted_l1_separator
from mirrorflow_jax._progress import Progress
from mirrorflow_jax._validate import brief, check_int as _check_int_from, check_range

__all__ = [
    "Check",
    "Progress",
    "check_int",
    "check_numbers",
    "check_range",
    "checkpoint_dir",
    "min_weighted_l1_separator",
    "stage_checkpoints",
    "within",
]


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


StageCache = Callable[[str, Callable[[], dict]], dict[str, np.ndarray]]


def stage_checkpoints(workdir, name: str, config, stages: tuple[str, ...]) -> StageCache:
    """``cached(stage, compute)``: the result of ``compute()`` (a dict of arrays) as NumPy
    arrays, for runs made of stages other than sweeps. With a ``workdir`` each stage is kept
    in the sweeps' self-checking checkpoint file (one per stage, with a checksum) under
    ``checkpoint_dir(workdir, f"{name}-<hash of config>")`` and read back when the same
    ``config`` runs again at the same float precision; a damaged or foreign file is named in a
    `CheckpointWarning` and its stage recomputed and rewritten. ``stages`` names them all, in
    order."""

    def as_numpy(result):
        return {key: np.asarray(value) for key, value in result.items()}

    if workdir is None:
        return lambda stage, compute: as_numpy(compute())
    tag = json.dumps(
        {"config": repr(config), "float": str(jnp.result_type(float)), "stages": stages}
    )
    folder = checkpoint_dir(workdir, f"{name}-{hashlib.sha256(tag.encode()).hexdigest()[:12]}")
    folder.mkdir(parents=True, exist_ok=True)
    store = _ChunkStore(folder, tag)
    store.clean()

    def cached(stage, compute):
        k = stages.index(stage)
        leaves = store.load(k)
        if leaves is not None:  # the first leaf lists the keys (JSON, as bytes)
            keys = json.loads(leaves[0].tobytes().decode())
            return dict(zip(keys, leaves[1:], strict=True))
        result = as_numpy(compute())
        keys = np.frombuffer(json.dumps(list(result)).encode(), np.uint8)
        store.save(k, [keys, *result.values()])
        return result

    return cached


def loglog_slope(x, y) -> float:
    """Least-squares slope of log|y| against log x: the exponent p of y ∝ x^p."""
    return float(np.polyfit(np.log(np.asarray(x)), np.log(np.abs(np.asarray(y))), 1)[0])
