"""Sweeps: run one function over a grid of hyperparameters as one compiled program, on one
device or many, checkpointed chunk by chunk, and label the results as an `xarray.Dataset`."""

import collections
import dataclasses
import inspect
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import xarray as xr
from jax.experimental import multihost_utils
from jax.extend.core import ClosedJaxpr, jaxpr_as_fun, jaxprs_in_params
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _distributed, _grouping, _guard, _resources
from ._checkpoints import _ChunkStore, _fingerprint
from ._progress import Progress
from ._results import provenance
from ._solve import FlowSolution
from ._validate import brief, check_choice, check_int

STRATEGIES = ("auto", "vmap", "map", "batched", "grouped")
MEMBERS = "members"  # the mesh axis that the sweep's members are sharded over
STATUS_NAMES = ("ok", "finite")
RESULT_NAMES = (
    "successful",
    "event_occurred",
    "max_steps_reached",
    "dt_min_reached",
    "nonfinite",
    "invalid_hyperparameter",
    "stiff",
    "singular",
    "nonlinear_divergence",
)


# ----------------------------------------------------------------------------- grid


def _axis(name: str, values) -> tuple[str, np.ndarray]:
    if not name.isidentifier():
        raise ValueError(
            f"grid axis names must be Python identifiers (they are passed to `fn` as keywords); "
            f"got {name!r}."
        )
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"grid axis `{name}` must be 1-D; got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"grid axis `{name}` is empty; give it at least one value.")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"grid axis `{name}` must hold numbers; got dtype {array.dtype}.")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(f"grid axis `{name}` must be finite; got {brief(array)}.")
    return name, array


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Grid:
    r"""Named axes of hyperparameter values: a Cartesian product of *blocks*, each block one
    axis or several axes walked together (zipped).

    - ``Grid(alpha=[...], q=[...])``: the product of the axes (``len(alpha)·len(q)`` members).
    - ``Grid.zip(q=[1, 1.5, 2], eps=[1e-3, 0, 0])``: axes of equal length, walked together.
    - ``grid_a * grid_b``: the product of two grids.

    Values are real numbers, booleans or integers (a ``seed`` axis of integers is how seeds are
    swept: ``fn`` builds ``jax.random.key(seed)`` itself). Each block is one dimension of the
    result; a zipped block is named after its first axis and carries the others as
    coordinates along it.

    **Example:**

    ```python
    import numpy as np

    grid = mf.Grid(alpha=np.logspace(-3, -1, 8), seed=np.arange(4)) * mf.Grid.zip(
        q=[1.0, 1.5, 2.0], eps=[1e-3, 0.0, 0.0]
    )  # 8 · 4 · 3 = 96 members, dims (alpha, seed, q)
    ```

    Raises ValueError, naming the axis, for an empty or non-numeric axis, zipped axes of
    different lengths, or an axis that appears twice.
    """

    blocks: tuple[tuple[tuple[str, np.ndarray], ...], ...]

    def __init__(self, **axes):
        self._set(tuple((_axis(name, values),) for name, values in axes.items()))

    @classmethod
    def zip(cls, **axes) -> "Grid":
        """One block whose axes (of equal lengths) are walked together."""
        block = tuple(_axis(name, values) for name, values in axes.items())
        lengths = {name: len(values) for name, values in block}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"zipped grid axes must have equal lengths; got {lengths}.")
        grid = cls.__new__(cls)
        grid._set((block,) if block else ())
        return grid

    def _set(self, blocks):
        if not blocks:
            raise ValueError("a Grid needs at least one axis, e.g. Grid(alpha=[0.1, 0.2]).")
        names = [name for block in blocks for name, _ in block]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"grid axis `{name}` appears twice.")
        object.__setattr__(self, "blocks", blocks)

    def __mul__(self, other: "Grid") -> "Grid":
        if not isinstance(other, Grid):
            return NotImplemented
        grid = Grid.__new__(Grid)
        grid._set(self.blocks + other.blocks)
        return grid

    @property
    def names(self) -> tuple[str, ...]:
        """Every axis name, block by block."""
        return tuple(name for block in self.blocks for name, _ in block)

    @property
    def dims(self) -> tuple[str, ...]:
        """One dimension per block, named after its first axis."""
        return tuple(block[0][0] for block in self.blocks)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(block[0][1]) for block in self.blocks)

    @property
    def size(self) -> int:
        """The number of members."""
        return math.prod(self.shape)

    def members(self) -> dict[str, np.ndarray]:
        """Each axis's value for every member, flattened in C order over ``dims``."""
        index = np.unravel_index(np.arange(self.size), self.shape)
        return {
            name: values[index[i]] for i, block in enumerate(self.blocks) for name, values in block
        }

    def coords(self) -> dict[str, tuple[str, np.ndarray]]:
        """xarray coordinates: every axis along its block's dimension."""
        return {name: (block[0][0], values) for block in self.blocks for name, values in block}

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (recorded in the result's attrs)."""
        return {
            "dims": list(self.dims),
            "axes": {name: values.tolist() for name, (_, values) in self.coords().items()},
        }


# ----------------------------------------------------------------------------- checks


def _check_signature(fn: Callable, grid: Grid):
    """Every axis must be a keyword of ``fn``, and every required keyword an axis."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without a signature: nothing to check
        return
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for name in grid.names:
        if not takes_any and (name not in parameters or parameters[name].kind not in keywords):
            raise ValueError(
                f"grid axis `{name}` is not a parameter of `fn`, which takes "
                f"({', '.join(parameters)})."
            )
    for name, p in parameters.items():
        required = p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        if required and name not in grid.names:
            raise ValueError(
                f"`fn` parameter `{name}` has no grid axis and no default; add an axis "
                f"`{name}` or bind it with functools.partial."
            )


def _check_devices(devices) -> list:
    devices = jax.devices() if devices is None else list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ValueError("`devices` must be a non-empty sequence of jax devices, or None.")
    if len(set(devices)) != len(devices):
        raise ValueError("`devices` must not repeat a device.")
    return devices


def _check_sizes(strategy: str, batch_size, chunk_size):
    check_choice("strategy", strategy, STRATEGIES)
    if (strategy == "batched" and batch_size is None) or (
        batch_size is not None and strategy not in ("batched", "grouped")
    ):
        raise ValueError(
            "`batch_size` (an integer >= 1) goes with strategy='batched' (required) or "
            "'grouped' (optional) only."
        )
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, 1)


def _check_group_by(group_by, grid: Grid, strategy: str) -> tuple[str, ...] | None:
    if group_by is None:
        return None
    if strategy not in ("grouped", "auto"):
        raise ValueError("`group_by` goes with strategy='grouped' (or 'auto') only.")
    if isinstance(group_by, str) or not all(name in grid.names for name in group_by):
        raise ValueError(
            f"`group_by` must be a sequence of grid axis names (of {list(grid.names)}); "
            f"got {group_by!r}."
        )
    return tuple(dict.fromkeys(group_by))


def _check_names(grid: Grid, records: dict[str, tuple], template):
    """Result variables and dimensions must not clash with each other or with grid axes."""
    names = list(records) + list(STATUS_NAMES)
    names += ["ts"] if isinstance(template, FlowSolution) else []
    dims = {dim for dims, _ in records.values() for dim in dims}
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"`fn` returns two outputs that would both be named `{name}`.")
    for name in grid.names:
        if name in names or name in dims:
            raise ValueError(
                f"grid axis `{name}` clashes with a result variable or dimension of that "
                f"name ({sorted(set(names) | set(dims))}); rename the axis."
            )


# ----------------------------------------------------------------------------- tracing


@dataclasses.dataclass(frozen=True)
class _Traced:
    """``fn`` traced once for one member: its jaxpr, and its output as ShapeDtypeStructs."""

    jaxpr: ClosedJaxpr
    template: Any

    @property
    def treedef(self):
        return jax.tree.structure(self.template)


def _member_dtype(values: np.ndarray):
    return jax.dtypes.canonicalize_dtype(values.dtype)


def _member_elements(template) -> int:
    """Numbers one member's outputs hold."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(template))


def _trace(fn: Callable, grid: Grid) -> _Traced:
    example = {
        name: jax.ShapeDtypeStruct((), _member_dtype(values))
        for name, values in grid.members().items()
    }
    jaxpr, template = jax.make_jaxpr(lambda values: fn(**values), return_shape=True)(example)
    return _Traced(jaxpr, template)


def _has_while(jaxpr) -> bool:
    return any(
        eqn.primitive.name == "while" or any(map(_has_while, jaxprs_in_params(eqn.params)))
        for eqn in jaxpr.eqns
    )


def _auto_strategy(traced: _Traced, platform: str, group_axes: tuple[str, ...]) -> str:
    """On CPU, ``lax.map`` when a member runs a data-dependent loop (an adaptive solve), since
    vmapped loops run in lockstep until the slowest member is done. Otherwise (accelerators,
    or CPU without such a loop): grouped when some grid axes decide a branch of ``fn`` (a
    batched ``lax.cond`` would run both branches), else vmap."""
    if platform == "cpu" and _has_while(traced.jaxpr.jaxpr):
        return "map"
    return "grouped" if group_axes else "vmap"


# ----------------------------------------------------------------------------- program


def _program(traced: _Traced, strategy: str, batch_size, mesh: Mesh) -> Callable:
    """jit(shard_map(strategy over members)): consts replicated, members split over ``mesh``."""

    def local(consts, values):
        member_fn = jaxpr_as_fun(ClosedJaxpr(traced.jaxpr.jaxpr, consts))

        def member(value):
            return member_fn(*jax.tree.leaves(value))

        if strategy == "vmap":
            return jax.vmap(member)(values)
        return jax.lax.map(member, values, batch_size=batch_size)

    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(MEMBERS)),
        out_specs=PartitionSpec(MEMBERS),
        check_vma=False,
    )
    return jax.jit(sharded)


def _put(tree, sharding: NamedSharding):
    """Place host values on the mesh (each process supplies the shards it addresses)."""
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda index: x[index]),
        tree,
    )


# Compiled sweep programs of this process, by program: each sweep call traces its function
# anew into a jaxpr, and the same function and grid axes give the same jaxpr, so a later call
# (a rerun, a resume, a job-array shard, new values on the same axes) reuses the executable
# instead of compiling it again. Keyed on the printed jaxpr, the argument shapes and the
# placement; the few most recent are kept.
_COMPILED: "collections.OrderedDict[tuple, tuple[ClosedJaxpr, Any]]" = collections.OrderedDict()
_COMPILED_LIMIT = 8


def _avals(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((x.shape, str(x.dtype)) for x in leaves)


@dataclasses.dataclass
class _Runner:
    """Compiles the program on first use and runs chunks of members through it."""

    traced: _Traced
    strategy: str
    batch_size: int | None
    mesh: Mesh
    padded_size: int  # members per call: the chunk size rounded up to the device count
    compiled: Any = None
    consts: Any = None
    compile_seconds: float = 0.0

    def _compile(self, values):
        start = time.perf_counter()
        self.consts = _put(
            list(self.traced.jaxpr.consts), NamedSharding(self.mesh, PartitionSpec())
        )
        key = (
            str(self.traced.jaxpr.jaxpr),
            _avals((self.consts, values)),
            self.strategy,
            self.batch_size,
            self.mesh,
        )
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            self.compiled = _COMPILED[key][1]
        else:
            program = _program(self.traced, self.strategy, self.batch_size, self.mesh)
            self.compiled = program.trace(self.consts, values).lower().compile()
            # The entry keeps the jaxpr alive, so every object it refers to stays alive and
            # its printed form can only match the same program.
            _COMPILED[key] = (self.traced.jaxpr, self.compiled)
            while len(_COMPILED) > _COMPILED_LIMIT:
                _COMPILED.popitem(last=False)
        self.compile_seconds = time.perf_counter() - start

    def __call__(self, members: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs (flat leaves, leading axis = member) for a chunk of members."""
        size = len(next(iter(members.values())))
        index = np.minimum(np.arange(self.padded_size), size - 1)  # pad with the last member
        values = {
            name: np.asarray(v[index], dtype=_member_dtype(v)) for name, v in members.items()
        }
        values = _put(values, NamedSharding(self.mesh, PartitionSpec(MEMBERS)))
        if self.compiled is None:
            self._compile(values)
        out = self.compiled(self.consts, values)
        return [np.asarray(leaf)[:size] for leaf in multihost_utils.process_allgather(out, True)]


# ----------------------------------------------------------------------------- checkpoints


def _chunks(members: dict[str, np.ndarray], size: int, chunk_size: int):
    for start in range(0, size, chunk_size):
        yield {name: values[start : start + chunk_size] for name, values in members.items()}


# ----------------------------------------------------------------------------- results


def _leaf_name(path) -> str:
    keys = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    return "_".join(str(key).strip("_") for key in keys) or "value"


def _named_leaves(tree) -> list[tuple[str, Any]]:
    return [(_leaf_name(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _trailing_dims(name: str, shape: tuple[int, ...], coordinate: int | None) -> tuple:
    """Names for a variable's own axes; a last axis of the effective weights' length is
    ``coordinate``."""
    dims = [f"{name}_dim{i}" for i in range(len(shape))]
    if dims and shape[-1] == coordinate:
        dims[-1] = "coordinate"
    return tuple(dims)


def _result_code(result) -> Any:
    """The integer code inside a `RESULTS` item."""
    (code,) = jax.tree.leaves(result)
    return code


def _solution_records(sol: FlowSolution, n: int, grid: Grid) -> dict[str, tuple]:
    """{name: (dims after the grid's, array)} for a FlowSolution whose leaves have ``n`` grid
    axes in front. ``ts`` is left to `_time_coordinate`."""
    x_leaves = jax.tree.leaves(sol.x)
    single = len(x_leaves) == 1 and x_leaves[0].ndim == n + 2
    coordinate = x_leaves[0].shape[-1] if single else None
    trajectories = {"x": sol.x, "loss": sol.loss, "params": sol.params, "balance": sol.balance}
    records = {
        name: (("t",) + _trailing_dims(name, leaf.shape[n + 1 :], coordinate), leaf)
        for name, leaf in _named_leaves(trajectories)
    }
    scalars = {"event_time": sol.event_time, "num_steps": sol.num_steps}
    scalars["solver_index"] = sol.solver_index  # into the "solvers" attribute
    scalars["result"] = _result_code(sol.result)
    if sol.geometry is not None:  # q and ε are recorded unless they are grid axes already
        geometry = {"q": sol.geometry.q, "eps": sol.geometry.eps}
        scalars |= {k: v for k, v in geometry.items() if k not in grid.names}
    return records | {name: ((), value) for name, value in scalars.items()}


def _records(out, n: int, grid: Grid) -> dict[str, tuple]:
    if isinstance(out, FlowSolution):
        return _solution_records(out, n, grid)
    return {
        name: (_trailing_dims(name, leaf.shape[n:], None), leaf)
        for name, leaf in _named_leaves(out)
    }


def _time_coordinate(ts: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(``t`` coordinate, None) when every member saved at the same times (times after an
    event are inf and not compared); otherwise (None, ``ts`` as a variable)."""
    flat = ts.reshape(-1, ts.shape[-1])
    reached = np.isfinite(flat)
    common = np.where(reached, flat, -np.inf).max(axis=0)
    if np.all(~reached | (flat == common)):
        return np.where(np.isfinite(common), common, np.nan), None
    return None, ts


def _all_finite(leaf: np.ndarray, n: int, reached: np.ndarray | None) -> np.ndarray:
    """Per member: every entry finite (entries at times not reached are skipped)."""
    finite = np.isfinite(leaf)
    if reached is not None:
        finite |= ~reached.reshape(reached.shape + (1,) * (leaf.ndim - reached.ndim))
    return finite.reshape(leaf.shape[:n] + (-1,)).all(axis=-1)


def _status(out, n: int, grid_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``finite`` (no NaN/inf in the state and save times, at the times reached; False for a
    solve that ended ``nonfinite`` or was not run, ``invalid_hyperparameter``) and ``ok``
    (finite, and the solve succeeded)."""
    finite = np.ones(grid_shape, bool)
    if isinstance(out, FlowSolution):
        reached = ~np.isposinf(out.ts)  # slots after an event or max_steps hold +inf
        checked = jax.tree.leaves((out.ts, out.x, out.loss, out.params))
        ok = np.asarray(_guard.is_okay(out.result))
        for name in ("nonfinite", "invalid_hyperparameter"):
            finite &= np.asarray(out.result != getattr(_guard.RESULTS, name))
    else:
        reached = None
        checked = jax.tree.leaves(out)
        ok = np.ones(grid_shape, bool)
    for leaf in checked:
        if np.issubdtype(leaf.dtype, np.inexact):
            finite &= _all_finite(leaf, n, reached)
    return {"ok": finite & ok, "finite": finite}


def _solution_attrs(template) -> dict[str, Any]:
    if not isinstance(template, FlowSolution):
        return {}
    codes = {name: int(_result_code(getattr(_guard.RESULTS, name))) for name in RESULT_NAMES}
    attrs = {"result_codes": codes, "solvers": template.solver.split("|")}
    if template.geometry is not None:
        attrs |= {"smoothing": template.smoothing, "smoothing_at": template.smoothing_at}
    return attrs


def _dataset(grid: Grid, traced: _Traced, leaves: list[np.ndarray], attrs: dict) -> xr.Dataset:
    n = len(grid.shape)
    shaped = [leaf.reshape(grid.shape + leaf.shape[1:]) for leaf in leaves]
    out = jax.tree.unflatten(traced.treedef, shaped)
    data = {name: (grid.dims + dims, a) for name, (dims, a) in _records(out, n, grid).items()}
    data |= {name: (grid.dims, a) for name, a in _status(out, n, grid.shape).items()}
    coords = dict(grid.coords())
    if isinstance(out, FlowSolution):
        t, ts = _time_coordinate(out.ts)
        if t is not None:
            coords["t"] = ("t", t)
        else:
            data["ts"] = (grid.dims + ("t",), ts)
    return xr.Dataset(data, coords=coords, attrs=attrs | _solution_attrs(traced.template))


# ----------------------------------------------------------------------------- sweep


def sweep(
    fn: Callable[..., Any],
    grid: Grid,
    *,
    strategy: str = "auto",
    batch_size: int | None = None,
    chunk_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    attrs: Mapping[str, Any] | None = None,
    group_by: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
) -> xr.Dataset:
    r"""Evaluate ``fn(**member)`` for every member of ``grid`` in one compiled program.

    ``fn`` acts on one configuration (each axis arrives as a 0-d array, traced) and returns a
    `FlowSolution` or any PyTree of arrays. It is traced once, whatever the grid: hyperparameters
    must enter as arrays (``Lp(q, eps)``, ``SteepestFlow(decoupled_wd=wd)``, ``jax.random.key(
    seed)``), and depth through `Padded`.

    **Strategies** (how one device evaluates its members):

    - ``"vmap"``: one batched call. Adaptive solves then run in lockstep: every member takes
      as many steps as the slowest one (cheap on GPU, costly on CPU when step counts differ).
    - ``"map"``: ``lax.map``, one member after another inside the compiled program.
    - ``"batched"``: ``lax.map`` over vmapped batches of ``batch_size`` members (chunked vmap).
    - ``"grouped"``: members that share the values of the ``group_by`` axes form a group;
      ``lax.map`` over groups (in batches of ``batch_size``; default: the largest group, and
      one member on CPU when ``fn`` runs a data-dependent loop) and ``vmap`` within, the
      ``group_by`` axes passed unbatched. A ``lax.cond`` that only they
      decide (a solver choice from q and ε, say) then stays a real branch instead of running
      both sides for every member, and the members in lockstep are alike. ``group_by``
      defaults to the axes that decide a ``lax.cond``/``lax.switch`` of ``fn`` before any loop
      runs (found in its jaxpr; none: one group).
    - ``"auto"``: on CPU, map if ``fn`` contains a data-dependent loop (an adaptive solve);
      otherwise (and on GPU/TPU) grouped when such branch-deciding axes exist, else vmap.

    When the output has a ``num_steps``, ``attrs["lockstep_efficiency"]`` is Σ steps / Σ over
    the batches run in lockstep of (members × the batch's most steps), 1 for map, and
    ``attrs["lockstep_waste"]`` is 1 minus that.

    **Devices:** members are split over ``devices`` (default: all devices, every host's once
    `jax.distributed` is initialized) with ``jax.shard_map``; each device runs the strategy on
    its share.

    **Chunks and checkpoints:** the grid runs ``chunk_size`` members per call of the compiled
    program (default: all at once; the last chunk is padded with copies of its last member, so
    there is one compilation). With ``checkpoint_dir`` every finished chunk is written there
    atomically (netCDF), and a rerun with the same grid, chunk_size and output shapes loads
    finished chunks instead of recomputing them; a killed run leaves only whole files. Each
    file records its chunk, the grid coordinates of its members and a checksum of its data,
    all verified on resume: a damaged, misplaced or foreign file is named in a one-line
    ``CheckpointWarning`` and its chunk recomputed (a directory holding only another sweep's
    chunks is refused); stale temporary files are removed. The check cannot see inside
    ``fn``: after changing it, use a new directory. Only process 0
    writes; on several hosts the directory must be shared. ``progress`` reports the chunks on
    stderr, as a bar on a terminal and as plain log lines otherwise, with the compile time apart
    and left out of the ETA (True: from the start; False: never; default: once the sweep has run
    for 3 s).

    **Arguments:**

    - ``fn``: callable taking every grid axis as a keyword (others need defaults).
    - ``grid``: a `Grid`.
    - ``strategy``, ``batch_size``, ``chunk_size``, ``devices``, ``checkpoint_dir``,
      ``progress``: as above.
    - ``attrs``: extra attributes (e.g. the experiment's config) for the result.
    - ``group_by``: grid axis names that define the groups of ``strategy="grouped"``.
    - ``shard``: ``(i, n)`` with 0 <= i < n, for job arrays: compute only chunks
      ``i, i + n, i + 2n, ...`` into ``checkpoint_dir`` (required). The result then holds the
      other chunks as NaN (integers: their minimum, booleans: False) with ``ok`` False, and
      ``attrs["chunks_missing"]`` counts them; a later run without ``shard`` loads every
      finished chunk and computes the rest. Inside `mirrorflow_jax._distributed.sharded`, the
      sweeps that have a ``checkpoint_dir`` run as that shard (``mirrorflow run --shard``).

    **Several hosts:** process 0 alone reads ``checkpoint_dir``, decides which chunks are
    finished and broadcasts that and their data, so every host runs the same chunks.

    **Returns:** an ``xarray.Dataset`` with one dimension per grid block (axes as coordinates)
    and, per member:

    - for a `FlowSolution`: ``x``, ``loss``, ``params_*``, ``balance`` along time ``t`` (a
      coordinate when all members saved at the same times, else a ``ts`` variable),
      ``event_time``, ``num_steps``, ``result`` (a `RESULTS` code; names in
      ``attrs["result_codes"]``), and the geometry's ``q``/``eps`` unless they are axes;
    - for any other PyTree: one variable per leaf, named by its path;
    - ``finite`` (no NaN/inf in the outputs and save times at the times reached; False for a
      member that ended ``nonfinite`` or ``invalid_hyperparameter``) and ``ok`` (finite, and
      the solve succeeded). A failed member (max_steps reached, non-finite, a traced
      hyperparameter out of range) is marked, never dropped, and does not disturb the others.

    ``attrs`` hold the grid, the strategy used, chunk and device counts, trace/compile/run
    seconds, chunks resumed, package and jax versions, and ``attrs``.

    **Example:**

    ```python
    import numpy as np

    problem = mf.LeastSquares(jnp.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]]), jnp.ones(2))

    def run(alpha, q, eps):
        flow = mf.SteepestFlow(mf.Lp(q, eps))
        model = mf.DeepDiagonal.scaled(alpha, depth=2, dim=3)
        return mf.solve_flow(flow, model, problem, 1.0)

    grid = mf.Grid(alpha=[0.01, 0.1]) * mf.Grid.zip(q=[1.0, 1.5, 2.0], eps=[1e-3, 0, 0])
    ds = mf.sweep(run, grid)  # ds.loss.sel(q=1.0, t=1.0), ds.ok, ds.num_steps, ...
    ```

    Raises ValueError before tracing for a bad argument or a grid axis that ``fn`` does not
    take, and before compiling for result names that clash with grid axes.
    """
    if not callable(fn):
        raise ValueError("`fn` must be callable: fn(**member) -> FlowSolution or PyTree.")
    if not isinstance(grid, Grid):
        raise ValueError(f"`grid` must be a Grid; got {type(grid).__name__}.")
    _check_sizes(strategy, batch_size, chunk_size)
    _check_signature(fn, grid)
    devices = _check_devices(devices)
    chunk_size = min(chunk_size or grid.size, grid.size)
    group_by = _check_group_by(group_by, grid, strategy)
    shard = _distributed.check_shard(shard)
    if shard is not None and checkpoint_dir is None:
        raise ValueError("`shard` needs a `checkpoint_dir` (shared by every shard) to write to.")
    if shard is None and checkpoint_dir is not None:
        shard = _distributed.current_shard()  # `mirrorflow run --shard`

    start = time.perf_counter()
    _resources.check_sweep(grid.size, len(grid.names))  # before the members are listed
    traced = _trace(fn, grid)
    trace_seconds = time.perf_counter() - start
    _resources.check_sweep(grid.size, len(grid.names), _member_elements(traced.template))
    _check_names(grid, _records(traced.template, 0, grid), traced.template)

    if group_by is None:
        group_by = _grouping.branch_axes(traced.jaxpr, sorted(grid.names))
    chosen = strategy
    if strategy == "auto":
        chosen = _auto_strategy(traced, devices[0].platform, group_by)
    per_device = math.ceil(chunk_size / len(devices))
    mesh = Mesh(np.array(devices), (MEMBERS,))
    chunks = list(_chunks(grid.members(), grid.size, chunk_size))
    if chosen == "grouped":
        if batch_size is None and devices[0].platform == "cpu" and _has_while(traced.jaxpr.jaxpr):
            batch_size = 1  # CPU lanes run one after another: lockstep would only add waste
        dtypes = {name: _member_dtype(v) for name, v in grid.members().items()}
        runner = _grouping.GroupedRunner.build(
            traced, group_by, batch_size, chunks, mesh, MEMBERS, dtypes
        )
    else:
        batch = None if batch_size is None else min(batch_size, per_device)
        runner = _Runner(traced, chosen, batch, mesh, per_device * len(devices))
    store = None
    if checkpoint_dir is not None:
        pathlib.Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        fingerprint = _fingerprint(grid, chunk_size, traced)
        store = _ChunkStore(pathlib.Path(checkpoint_dir), fingerprint, grid, chunk_size)

    lengths = [len(next(iter(chunk.values()))) for chunk in chunks]
    templates = jax.tree.leaves(traced.template)
    mine = _distributed.shard_chunks(len(chunks), shard)
    # verified (bad ones warned), decided by process 0 for every host
    loaded = {} if store is None else _distributed.resume(store, lengths, templates, mine)
    resumed = sorted(loaded)
    shown = progress if jax.process_index() == 0 else False
    bar = Progress(len(chunks), desc="sweep", done=len(resumed), show=shown)
    start = time.perf_counter()
    results = []
    with bar:
        for k, members in enumerate(chunks):
            if k in loaded:
                results.append(loaded.pop(k))
                continue
            if k not in mine:  # another shard's chunk
                results.append(_distributed.placeholder(templates, lengths[k]))
                continue
            compiled = runner.compile_seconds
            results.append(runner(members))
            if store is not None:
                store.save(k, results[-1])
            bar.step_done(runner.compile_seconds - compiled)
    leaves = [np.concatenate(parts) for parts in zip(*results, strict=True)]
    run_seconds = time.perf_counter() - start - runner.compile_seconds

    info = {
        "grid": grid.describe(),
        "strategy": chosen,
        "requested_strategy": strategy,
        "chunk_size": chunk_size,
        "num_chunks": len(chunks),
        "chunks_resumed": len(resumed),
        "num_devices": len(devices),
        "platform": devices[0].platform,
        "trace_seconds": trace_seconds,
        "compile_seconds": runner.compile_seconds,
        "run_seconds": run_seconds,
    }
    if runner.batch_size is not None:
        info["batch_size"] = runner.batch_size
    if chosen == "grouped":
        info["group_by"] = list(group_by)
    missing = np.zeros(grid.size, bool)
    if shard is not None:
        starts = np.cumsum([0] + lengths)
        others = sorted(set(range(len(chunks))) - set(mine) - set(resumed))
        for k in others:
            missing[starts[k] : starts[k + 1]] = True
        info |= {"shard": list(shard), "chunks_missing": len(others)}
    ds = _dataset(grid, traced, leaves, info | provenance() | dict(attrs or {}))
    if missing.any():  # members another shard computes: not ok
        computed = xr.DataArray(~missing.reshape(grid.shape), dims=grid.dims)
        ds["ok"], ds["finite"] = ds.ok & computed, ds.finite & computed
    steps = ds.get("num_steps")
    if steps is not None and steps.dims == grid.dims and steps.dtype.kind in "iu":
        ds.attrs |= _lockstep(ds, runner, chosen, chunks, lengths, per_device, missing)
    return ds


def _lockstep(ds, runner, strategy, chunks, lengths, per_device, missing) -> dict[str, float]:
    """``lockstep_efficiency`` = Σ steps / Σ over members run in lockstep (one vmapped batch)
    of (members × the batch's most steps), and ``lockstep_waste`` = 1 − that."""
    if strategy == "grouped":
        starts = np.cumsum([0] + lengths)
        runs = [
            batch + start
            for chunk, start in zip(chunks, starts[:-1], strict=True)
            for batch in runner.lockstep_batches(chunk)
        ]
    else:
        runs = _grouping.default_runs(strategy, lengths, per_device, runner.batch_size)
    runs = [r[~missing[r]] for r in runs]
    efficiency = _grouping.lockstep_efficiency(ds.num_steps.values.reshape(-1), runs)
    return {"lockstep_efficiency": efficiency, "lockstep_waste": 1.0 - efficiency}
