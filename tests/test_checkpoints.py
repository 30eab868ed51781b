"""Self-checking sweep checkpoints: a killed, then damaged checkpoint directory resumes to the
bit-identical Dataset of an uninterrupted run; every unusable file is named in one warning line
and its chunk recomputed, never loaded into the wrong members."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr

import mirrorflow_jax as mf
from mirrorflow_jax import CheckpointWarning, Grid, sweep
from mirrorflow_jax._checkpoints import _ChunkStore

from . import sweep_script as script

SCRIPT = os.path.join(os.path.dirname(__file__), "sweep_script.py")
CHUNKS = [f"chunk_{k:06d}.nc" for k in range(5)]  # 10 members in chunks of 2


def _assert_bit_identical(a: xr.Dataset, b: xr.Dataset):
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    for name in a.variables:
        assert a[name].values.tobytes() == b[name].values.tobytes(), name


def _resume(out: pathlib.Path) -> tuple[xr.Dataset, int, list[str]]:
    """Rerun the checkpointed sweep on ``out``: (Dataset, members computed, warning lines)."""
    script.COMPUTED["members"] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = script.checkpointed(out)
    lines = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    return ds, script.COMPUTED["members"], lines


def _assert_reported(lines: list[str], out: pathlib.Path, expected: dict[int, str]):
    """One one-line warning per damaged chunk, naming its file and the reason."""
    assert len(lines) == len(expected), lines
    for line, (k, reason) in zip(sorted(lines), sorted(expected.items()), strict=True):
        assert "\n" not in line
        assert line.startswith(f"checkpoint {out / CHUNKS[k]} ") and reason in line, line
        assert line.endswith(f"recomputing chunk {k}.")


@pytest.fixture(scope="module")
def uninterrupted():
    return sweep(script.descent, script.CHECKPOINT_GRID, strategy="map", chunk_size=2)


def test_kill_corrupt_and_resume_is_bit_identical(tmp_path, uninterrupted):
    out = tmp_path / "checkpoints"
    out.mkdir()
    killed = subprocess.run(
        [sys.executable, SCRIPT, "checkpoint", str(out)],
        env=dict(os.environ, SWEEP_KILL="1"),
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == CHUNKS[:3], "killed inside chunk 3"

    # a killed write's leftover, and a truncated chunk 0: chunks 0, 3, 4 are computed
    (out / "tmpkilled.nc.tmp").write_bytes(b"")
    data = (out / CHUNKS[0]).read_bytes()
    (out / CHUNKS[0]).write_bytes(data[: len(data) // 2])
    ds, computed, lines = _resume(out)
    _assert_reported(lines, out, {0: "unreadable"})
    assert computed == 6 and ds.attrs["chunks_resumed"] == 2
    assert sorted(p.name for p in out.iterdir()) == CHUNKS, "the stale .tmp file is removed"
    _assert_bit_identical(ds, uninterrupted)

    # zero bytes, random bytes, two swapped chunks, one altered value: all five recomputed
    (out / CHUNKS[0]).write_bytes(b"")
    (out / CHUNKS[1]).write_bytes(np.random.default_rng(0).bytes(len(data)))
    os.replace(out / CHUNKS[2], out / "swap")
    os.replace(out / CHUNKS[3], out / CHUNKS[2])
    os.replace(out / "swap", out / CHUNKS[3])
    with xr.open_dataset(out / CHUNKS[4], engine="h5netcdf") as chunk:
        altered = chunk.load()
    altered["leaf_0"][0] = altered["leaf_0"][0] + 1e-15  # a bit flip with intact attrs
    altered.to_netcdf(out / CHUNKS[4], engine="h5netcdf")
    ds, computed, lines = _resume(out)
    expected = {0: "unreadable", 1: "unreadable", 2: "holds chunk 3, not chunk 2"}
    expected |= {3: "holds chunk 2, not chunk 3", 4: "fails its checksum"}
    _assert_reported(lines, out, expected)
    assert computed == 10 and ds.attrs["chunks_resumed"] == 0
    _assert_bit_identical(ds, uninterrupted)

    # a chunk of another sweep among this one's: recomputed, the others resumed
    other = tmp_path / "other"
    sweep(script.descent, Grid(alpha=[0.5, 0.7]), strategy="map", checkpoint_dir=other)
    shutil.copyfile(other / CHUNKS[0], out / CHUNKS[1])
    ds, computed, lines = _resume(out)
    _assert_reported(lines, out, {1: "different sweep"})
    assert computed == 2 and ds.attrs["chunks_resumed"] == 4
    _assert_bit_identical(ds, uninterrupted)

    # a directory that holds only another sweep's chunks is refused and left alone
    stamp = (other / CHUNKS[0]).stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"holds chunks of a different sweep"):
        script.checkpointed(other)
    assert (other / CHUNKS[0]).stat().st_mtime_ns == stamp


def test_chunk_files_round_trip_every_bit(tmp_path):
    """NaN payloads and signs, infinities, booleans and integers come back bit for bit; a
    file under another chunk's name or with other members is refused, with one line."""
    grid = Grid(alpha=[0.1, 0.2, 0.3, 0.4])
    store = _ChunkStore(tmp_path, "fingerprint", grid, 2)
    floats = np.array([[-np.nan, np.inf], [np.nan, -0.0]])
    leaves = [floats, np.array([True, False]), np.array([[1, 2], [3, 4]], np.int32)]
    store.save(1, leaves)
    for a, b in zip(store.load(1), leaves, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # chunk 0 is absent: nothing to report
        assert list(store.resume(2)) == [1]

    shutil.copyfile(store.path(1), store.path(0))
    with pytest.warns(CheckpointWarning, match=r"holds chunk 1, not chunk 0; recomputing"):
        assert store.load(0) is None
    old = xr.Dataset(
        {"leaf_0": ("member", np.zeros(2))}, attrs={"sweep_fingerprint": "fingerprint"}
    )
    mf.save_dataset(old, store.path(0))  # a chunk as written before files recorded their chunk
    with pytest.warns(CheckpointWarning, match=r"has no chunk record .* older version"):
        assert store.load(0) is None
    moved = _ChunkStore(tmp_path, "fingerprint", Grid(alpha=[0.1, 0.2, 0.3, 0.5]), 2)
    other_members = r"chunk_000001.nc holds other members \(grid axis `alpha` differs\)"
    with pytest.warns(CheckpointWarning, match=other_members):
        assert moved.load(1) is None
