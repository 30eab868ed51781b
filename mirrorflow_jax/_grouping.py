"""The ``"grouped"`` sweep strategy: vmap within groups of similar members.

Vmapped adaptive solves run in lockstep: a batch costs its size times the steps of its slowest
member, and a ``lax.cond`` on a batched value evaluates both branches for every member. A
grid that mixes members of different kinds (a stiff solver for some geometries, an explicit one
for others) pays for all of them in every member. The grouped strategy splits each chunk into
*groups* of members that share the values of the ``group_by`` axes, runs ``lax.map`` over the
groups and ``vmap`` within each, with the ``group_by`` axes passed unbatched: a ``lax.cond``
that depends on them only stays a real branch, and the members of a batch are alike.

By default the group axes are found in ``fn`` itself: the axes that decide a ``lax.cond`` /
``lax.switch`` before any loop runs (a solver choice made from q and ε, say).
"""

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.extend.core import ClosedJaxpr, Literal, jaxpr_as_fun, jaxprs_in_params
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_LOOPS = ("while", "scan")
_SLOT = "__slot"  # a batched dummy input, so that vmap has one even if every axis is grouped


# ----------------------------------------------------------------------------- group axes


def _deps(var, deps) -> frozenset:
    return frozenset() if isinstance(var, Literal) else deps.get(var, frozenset())


def _walk(jaxpr, deps: dict, tainted: set, found: set):
    """Forward dependency of every variable on the grid axes; ``tainted`` marks values that a
    loop computed. Collects in ``found`` the axes that decide an untainted branch index."""
    for eqn in jaxpr.eqns:
        ins = frozenset().union(*(_deps(v, deps) for v in eqn.invars))
        loop_made = any(not isinstance(v, Literal) and v in tainted for v in eqn.invars)
        name = eqn.primitive.name
        if name == "cond" and not isinstance(eqn.invars[0], Literal):
            index = eqn.invars[0]
            if index not in tainted:
                found |= _deps(index, deps)
        inner = list(jaxprs_in_params(eqn.params))
        if name not in _LOOPS + ("cond",) and len(inner) == 1:
            sub = inner[0]
            sub = sub.jaxpr if isinstance(sub, ClosedJaxpr) else sub
            if len(sub.invars) == len(eqn.invars):
                sub_deps = {a: _deps(v, deps) for a, v in zip(sub.invars, eqn.invars, strict=True)}
                sub_tainted = {
                    a
                    for a, v in zip(sub.invars, eqn.invars, strict=True)
                    if not isinstance(v, Literal) and v in tainted
                }
                _walk(sub, sub_deps, sub_tainted, found)
        for out in eqn.outvars:
            deps[out] = ins
            if name in _LOOPS or loop_made:
                tainted.add(out)


def branch_axes(jaxpr: ClosedJaxpr, names: list[str]) -> tuple[str, ...]:
    """The grid axes (``names``, in the order of ``jaxpr``'s inputs) that decide a branch of
    ``jaxpr`` before any loop has run."""
    inner = jaxpr.jaxpr
    deps = {v: frozenset([n]) for v, n in zip(inner.invars, names, strict=True)}
    found: set = set()
    _walk(inner, deps, set(), found)
    return tuple(n for n in names if n in found)


# ----------------------------------------------------------------------------- layout


def groups(members: dict[str, np.ndarray], group_by: tuple[str, ...]) -> list[np.ndarray]:
    """Member indices (ascending) of each group: members with equal values on ``group_by``."""
    size = len(next(iter(members.values())))
    if not group_by:
        return [np.arange(size)]
    codes = np.stack([np.unique(members[n], return_inverse=True)[1] for n in group_by], 1)
    _, label = np.unique(codes, axis=0, return_inverse=True)
    label = label.reshape(-1)
    return [np.flatnonzero(label == g) for g in range(label.max() + 1)]


def batches(members: dict[str, np.ndarray], group_by, batch_size: int) -> list[np.ndarray]:
    """Each group split into batches of at most ``batch_size`` member indices."""
    return [
        group[start : start + batch_size]
        for group in groups(members, group_by)
        for start in range(0, len(group), batch_size)
    ]


def default_batch_size(chunks: list[dict[str, np.ndarray]], group_by) -> int:
    """The largest group of any chunk."""
    return max(len(g) for chunk in chunks for g in groups(chunk, group_by))


# ----------------------------------------------------------------------------- program


def _program(traced, group_by: tuple[str, ...], mesh: Mesh, axis: str, batch_size: int):
    """jit(shard_map(lax.map over batches of vmap within a batch)); group axes unbatched. A
    batch of one member is called directly: a vmapped adaptive loop, even of one member, turns
    the solver's internal branches into selects that evaluate both sides."""

    def local(consts, grouped, others):
        member_fn = jaxpr_as_fun(ClosedJaxpr(traced.jaxpr.jaxpr, consts))

        def member(group_values, values):
            values = {k: v for k, v in values.items() if k != _SLOT}
            return member_fn(*jax.tree.leaves(group_values | values))

        def batch(args):
            group_values, values = args
            if batch_size == 1:
                one = member(group_values, jax.tree.map(lambda v: v[0], values))
                return jax.tree.map(lambda leaf: leaf[None], one)
            return jax.vmap(member, in_axes=(None, 0))(group_values, values)

        return jax.lax.map(batch, (grouped, others))

    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axis), PartitionSpec(axis)),
        out_specs=PartitionSpec(axis),
        check_vma=False,
    )
    return jax.jit(sharded)


def _put(tree, sharding: NamedSharding):
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda index: x[index]),
        tree,
    )


@dataclasses.dataclass
class GroupedRunner:
    """Runs chunks of members with the grouped strategy (compiled on first use).

    Every chunk is laid out as ``num_batches`` batches of ``batch_size`` members, each batch
    from one group (a group's last batch, and the list of batches, padded with copies), so
    that one compilation serves every chunk."""

    traced: Any
    group_by: tuple[str, ...]
    batch_size: int
    num_batches: int  # per call, a multiple of the device count
    mesh: Mesh
    axis: str
    dtypes: dict
    compiled: Any = None
    consts: Any = None
    compile_seconds: float = 0.0

    @classmethod
    def build(cls, traced, group_by, batch_size, chunks, mesh: Mesh, axis: str, dtypes):
        batch_size = batch_size or default_batch_size(chunks, group_by)
        most = max(len(batches(chunk, group_by, batch_size)) for chunk in chunks)
        devices = mesh.devices.size
        num_batches = -(-most // devices) * devices
        return cls(traced, tuple(group_by), batch_size, num_batches, mesh, axis, dtypes)

    def layout(self, members: dict[str, np.ndarray]) -> np.ndarray:
        """(num_batches, batch_size) member indices of the chunk, padded with copies."""
        rows = []
        for b in batches(members, self.group_by, self.batch_size):
            rows.append(np.concatenate([b, np.full(self.batch_size - len(b), b[-1])]))
        rows += [rows[-1]] * (self.num_batches - len(rows))
        return np.stack(rows)

    def __call__(self, members: dict[str, np.ndarray]) -> list[np.ndarray]:
        index = self.layout(members)
        size = len(next(iter(members.values())))
        grouped = {n: np.asarray(members[n][index[:, 0]], self.dtypes[n]) for n in self.group_by}
        others = {
            n: np.asarray(v[index], self.dtypes[n])
            for n, v in members.items()
            if n not in self.group_by
        }
        others[_SLOT] = np.zeros(index.shape, np.int32)
        sharding = NamedSharding(self.mesh, PartitionSpec(self.axis))
        grouped, others = _put(grouped, sharding), _put(others, sharding)
        if self.compiled is None:
            start = time.perf_counter()
            replicated = NamedSharding(self.mesh, PartitionSpec())
            self.consts = _put(list(self.traced.jaxpr.consts), replicated)
            program = _program(self.traced, self.group_by, self.mesh, self.axis, self.batch_size)
            self.compiled = program.trace(self.consts, grouped, others).lower().compile()
            self.compile_seconds = time.perf_counter() - start
        out = self.compiled(self.consts, grouped, others)
        leaves = [np.asarray(a) for a in multihost_utils.process_allgather(out, True)]
        first = np.full(size, -1)
        flat = index.reshape(-1)
        first[flat[::-1]] = np.arange(flat.size)[::-1]  # the first copy of every member
        return [a.reshape((-1,) + a.shape[2:])[first] for a in leaves]

    def lockstep_batches(self, members: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The chunk-local member indices that ran in lockstep, batch by batch."""
        return batches(members, self.group_by, self.batch_size)


# ----------------------------------------------------------------------------- waste


def lockstep_efficiency(steps: np.ndarray, runs: list[np.ndarray]) -> float:
    """Σ steps / Σ over lockstep batches of (members × the batch's most steps): 1 when every
    member of a batch takes as many steps as the slowest (no waste)."""
    steps = np.asarray(steps, float).reshape(-1)
    paid = sum(len(r) * steps[r].max() for r in runs if len(r))
    return float(steps.sum() / paid) if paid > 0 else 1.0


def default_runs(
    strategy: str, chunk_lengths: list[int], per_device: int, batch_size: int | None
) -> list[np.ndarray]:
    """Global member indices run in lockstep by the vmap, map and batched strategies: a
    device's share of a chunk (vmap), each member alone (map), or ``batch_size`` members of a
    share (batched). Padding copies are left out."""
    runs, start = [], 0
    for length in chunk_lengths:
        for lo in range(0, length, per_device):
            share = np.arange(start + lo, start + min(lo + per_device, length))
            if strategy == "vmap":
                runs.append(share)
            elif strategy == "map":
                runs += [share[i : i + 1] for i in range(len(share))]
            else:
                runs += [share[i : i + batch_size] for i in range(0, len(share), batch_size)]
        start += length
    return runs
