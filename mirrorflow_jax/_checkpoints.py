"""Self-checking checkpoints of a sweep: one netCDF file per finished chunk of members.

Each file records the sweep's fingerprint, its chunk index, the grid coordinates of the members
it holds and a SHA-256 checksum of its data. On resume every file is verified; a damaged
(unreadable, truncated, altered), foreign (another sweep's) or misplaced (another chunk's) file
is reported in one warning line naming it, and that chunk is recomputed and rewritten. Stale
temporary files of killed writes are removed.
"""

import dataclasses
import hashlib
import json
import pathlib
import warnings

import jax
import numpy as np
import xarray as xr

from ._results import load_dataset, save_dataset

_TMP_SUFFIX = ".nc.tmp"  # what `save_dataset` writes before its atomic rename


class CheckpointWarning(UserWarning):
    """A sweep's checkpoint file that could not be used: unreadable, altered, misplaced
    (another chunk's) or another sweep's. The one-line message names the file; its chunk is
    recomputed and the file rewritten."""


class _Invalid(Exception):
    """Why a chunk file cannot be used (the message is one line)."""


class _Foreign(_Invalid):
    """An intact chunk file of another sweep."""


def _fingerprint(grid, chunk_size: int, traced) -> str:
    """The sweep's identity as far as the files can tell: grid, chunk size, output shapes."""
    leaves = [[list(leaf.shape), str(leaf.dtype)] for leaf in jax.tree.leaves(traced.template)]
    return json.dumps({"grid": grid.describe(), "chunk_size": chunk_size, "outputs": leaves})


def _checksum(fingerprint: str, k: int, arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256(f"{fingerprint}\n{k}\n".encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class _ChunkStore:
    """Finished chunks as netCDF files (written atomically by `save_dataset`) in ``directory``.

    ``fingerprint`` identifies the sweep; ``grid`` and ``chunk_size`` (when given) tell which
    members chunk ``k`` holds, which the file records and `load` checks. Without a grid a
    "chunk" is any list of arrays (an experiment's stage, `experiments._base.stage_checkpoints`).
    """

    directory: pathlib.Path
    fingerprint: str
    grid: object = None
    chunk_size: int | None = None

    def path(self, k: int) -> pathlib.Path:
        return self.directory / f"chunk_{k:06d}.nc"

    def done(self, k: int) -> bool:
        """Whether a file for chunk ``k`` exists (`load` tells whether it can be used)."""
        return self.path(k).exists()

    def members(self, k: int) -> dict[str, np.ndarray]:
        """The grid coordinates of the members of chunk ``k`` (empty without a grid)."""
        if self.grid is None:
            return {}
        start = k * self.chunk_size
        return {
            name: values[start : start + self.chunk_size]
            for name, values in self.grid.members().items()
        }

    def clean(self):
        """Remove temporary files that killed writes left behind (process 0 only)."""
        if jax.process_index() != 0:
            return
        for tmp in self.directory.glob(f"*{_TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)

    def _read(self, k: int) -> list[np.ndarray]:
        """The leaves of chunk ``k``; raises `_Invalid` (one-line reason) if unusable."""
        try:
            ds = load_dataset(self.path(k))
        except Exception as error:  # h5py/netCDF raise OSError, ValueError, KeyError, ...
            why = f"is unreadable ({type(error).__name__}: truncated or not netCDF)"
            raise _Invalid(why) from None
        attrs = ds.attrs
        if attrs.get("sweep_fingerprint") != self.fingerprint:
            raise _Foreign("holds chunks of a different sweep (grid, chunk_size or outputs)")
        if "chunk_index" not in attrs or "checksum" not in attrs:
            raise _Invalid("has no chunk record or checksum (written by an older version)")
        if attrs.get("chunk_index") != k:
            raise _Invalid(f"holds chunk {attrs.get('chunk_index')!s:.20}, not chunk {k}")
        try:
            count = int(attrs["num_leaves"])
            leaves = [ds[f"leaf_{i}"].values for i in range(count)]
            grid = {name: ds[f"member_{name}"].values for name in self.members(k)}
        except (KeyError, ValueError, TypeError):
            raise _Invalid("lacks its data variables or member coordinates") from None
        if attrs.get("checksum") != _checksum(self.fingerprint, k, leaves + list(grid.values())):
            raise _Invalid("fails its checksum (data altered or damaged)")
        for name, values in self.members(k).items():
            if not np.array_equal(grid[name], values):
                raise _Invalid(f"holds other members (grid axis `{name}` differs)")
        return leaves

    def _warn(self, k: int, why: str):
        warnings.warn(
            f"checkpoint {self.path(k)} {why}; recomputing chunk {k}.",
            CheckpointWarning,
            stacklevel=3,
        )

    def load(self, k: int) -> list[np.ndarray] | None:
        """The leaves of chunk ``k``, or None when its file is missing or unusable (then a
        one-line `CheckpointWarning` names the file, and the chunk is to be recomputed)."""
        if not self.done(k):
            return None
        try:
            return self._read(k)
        except _Invalid as why:
            self._warn(k, str(why))
            return None

    def resume(self, num_chunks: int) -> dict[int, list[np.ndarray]]:
        """{k: leaves} of every usable chunk file, after removing stale temporary files.

        Raises ValueError when the directory holds intact chunk files of another sweep and
        none of this one (the wrong directory: its files are left alone)."""
        self.clean()
        found, problems, foreign = {}, {}, 0
        for k in range(num_chunks):
            if not self.done(k):
                continue
            try:
                found[k] = self._read(k)
            except _Invalid as why:
                problems[k] = str(why)
                foreign += isinstance(why, _Foreign)
        if foreign and not found:
            raise ValueError(
                f"`checkpoint_dir` {self.directory} holds chunks of a different sweep (grid, "
                "chunk_size or outputs differ); use a new directory."
            )
        for k, why in problems.items():
            self._warn(k, why)
        return found

    def save(self, k: int, leaves: list[np.ndarray]):
        if jax.process_index() != 0:
            return
        leaves = [np.asarray(a) for a in leaves]
        members = self.members(k)
        # A sweep's leaves share their leading axis, the chunk's members; without a grid the
        # leaves are independent arrays, each with axes of its own.
        first = 0 if self.grid is None else 1
        data = {
            f"leaf_{i}": (
                ("member",) * first + tuple(f"leaf_{i}_{j}" for j in range(first, a.ndim)),
                a,
            )
            for i, a in enumerate(leaves)
        }
        data |= {f"member_{name}": ("member", values) for name, values in members.items()}
        checksum = _checksum(self.fingerprint, k, leaves + list(members.values()))
        attrs = {
            "sweep_fingerprint": self.fingerprint,
            "chunk_index": k,
            "num_leaves": len(leaves),
            "checksum": checksum,
        }
        ds = xr.Dataset(data, attrs=attrs)
        for variable in ds.data_vars.values():  # store every bit as is, NaN included
            variable.encoding["_FillValue"] = None
        save_dataset(ds, self.path(k))
