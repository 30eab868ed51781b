"""Sweeps across processes: which chunks a process computes, and one decision for all hosts.

Two ways of spreading a sweep over machines share the chunk files of ``checkpoint_dir``:

- **Multi-host** (`jax.distributed`): every process runs the same compiled program on its
  devices. Process 0 alone reads the checkpoint directory, decides which chunks are finished
  and broadcasts that decision together with their data, so the hosts always run the same
  chunks in the same order (a host that saw a different directory would otherwise wait in a
  collective that the others never enter).
- **Job arrays** (``shard=(i, n)``): independent processes, e.g. the tasks of a scheduler's
  job array. Shard ``i`` of ``n`` computes chunks ``i, i + n, i + 2n, ...`` (round robin, so
  that expensive neighbouring chunks are spread) and writes them; a run without ``shard``
  afterwards loads every finished chunk and computes the rest.
"""

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

_SHARD: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "mirrorflow_shard", default=None
)


def check_shard(shard) -> tuple[int, int] | None:
    """``shard`` as ``(i, n)`` with 0 <= i < n, or None; ValueError naming it otherwise."""
    if shard is None:
        return None
    ok = isinstance(shard, tuple | list) and len(shard) == 2
    ok = ok and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in shard)
    if not ok or not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(
            f"`shard` must be a pair (i, n) of integers with n >= 1 and 0 <= i < n; got {shard!r}."
        )
    return int(shard[0]), int(shard[1])


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (as on the command line) as ``(I, N)``; ValueError naming the range."""
    index, sep, count = text.partition("/")
    try:
        shard = (int(index), int(count)) if sep else None
    except ValueError:
        shard = None
    if shard is None:
        raise ValueError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4); got {text!r}.")
    try:
        return check_shard(shard)
    except ValueError:
        raise ValueError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4); got {text!r}.") from None


@contextlib.contextmanager
def sharded(shard: tuple[int, int] | None) -> Iterator[None]:
    """Within the block, every `sweep` that has a ``checkpoint_dir`` and no ``shard`` of its
    own runs as shard ``(i, n)`` (``None``: no effect). This is how ``mirrorflow run --shard``
    reaches the sweeps inside an experiment."""
    token = _SHARD.set(check_shard(shard))
    try:
        yield
    finally:
        _SHARD.reset(token)


def current_shard() -> tuple[int, int] | None:
    return _SHARD.get()


def shard_chunks(num_chunks: int, shard: tuple[int, int] | None) -> list[int]:
    """The chunks that ``shard`` computes (every chunk without one)."""
    if shard is None:
        return list(range(num_chunks))
    i, n = shard
    return list(range(i, num_chunks, n))


def _load_local(store, chunks: list[int], everything: bool) -> dict[int, list[np.ndarray]]:
    """The usable finished chunks among ``chunks``, read on this process."""
    if everything and hasattr(store, "resume"):
        return store.resume(max(chunks) + 1 if chunks else 0)
    found = {}
    for k in chunks:
        if store.done(k):
            leaves = store.load(k)
            if leaves is not None:
                found[k] = leaves
    return found


def resume(
    store, chunk_lengths: list[int], templates: list[jax.ShapeDtypeStruct], chunks: list[int]
) -> dict[int, list[np.ndarray]]:
    """{k: leaves} of the finished chunks among ``chunks``, the same on every process.

    Process 0 reads ``store``; with several processes it broadcasts which chunks it found and
    their data (``templates``: one member's output leaves; ``chunk_lengths``: members per
    chunk), so the other hosts neither read the directory nor can disagree about it."""
    everything = chunks == list(range(len(chunk_lengths)))
    if jax.process_count() == 1:
        return _load_local(store, chunks, everything)
    found = _load_local(store, chunks, everything) if jax.process_index() == 0 else {}
    mask = np.zeros(len(chunk_lengths), np.int32)
    mask[list(found)] = 1
    mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
    result = {}
    for k in np.flatnonzero(mask):
        k = int(k)
        leaves = found.get(k) or [
            np.zeros((chunk_lengths[k],) + t.shape, t.dtype) for t in templates
        ]
        # booleans travel as int8: the broadcast is a sum over processes
        sent = [a.astype(np.int8) if a.dtype == bool else a for a in leaves]
        got = multihost_utils.broadcast_one_to_all(sent)
        result[k] = [np.asarray(g).astype(t.dtype) for g, t in zip(got, templates, strict=True)]
    return result


def placeholder(templates: list[jax.ShapeDtypeStruct], length: int) -> list[np.ndarray]:
    """Leaves for ``length`` members that this shard did not compute: NaN for floating
    outputs, the smallest integer for integers, False for booleans."""

    def fill(t):
        dtype = np.dtype(t.dtype)
        if np.issubdtype(dtype, np.inexact):
            value = np.nan
        elif np.issubdtype(dtype, np.integer):
            value = np.iinfo(dtype).min
        else:
            value = False
        return np.full((length,) + tuple(t.shape), value, dtype)

    return [fill(t) for t in templates]
