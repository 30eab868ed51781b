"""Job arrays: ``sweep(..., shard=(i, n))`` computes only its share of the chunks into a shared
checkpoint directory; a run without ``shard`` then assembles them and computes the rest.

Run as a script (``python tests/test_distributed_shard.py I N DIR``) it is one shard of
`SWEEP`, started by the test as a separate process; it writes which members it computed to
DIR/shard-I.npz.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mirrorflow_jax import Grid, sweep  # noqa: E402
from mirrorflow_jax._distributed import parse_shard, shard_chunks, sharded  # noqa: E402

GRID = Grid(alpha=np.linspace(0.1, 1.0, 5), beta=[0.5, 2.0])  # 10 members
CHUNK_SIZE = 2  # 5 chunks
TIMEOUT = 120  # seconds for a shard process; far above its ~5 s


def member(alpha, beta):
    """300 steps of x ← x − h·(x³ − β) from x = α: floats, an integer and a boolean out."""

    def step(_, x):
        return x - 0.01 * (x**3 - beta)

    x = jax.lax.fori_loop(0, 300, step, alpha * jnp.ones(3))
    return {"x": x, "count": jnp.sum(x > 1.0), "above": jnp.all(x > 0.0)}


def run(directory, shard=None, strategy="map"):
    return sweep(
        member,
        GRID,
        strategy=strategy,
        chunk_size=CHUNK_SIZE,
        checkpoint_dir=directory,
        shard=shard,
    )


def assert_bit_identical(a, b):
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), name  # NaN, -0.0 included


def shard_members(i: int, n: int) -> np.ndarray:
    """Member indices (grid order) of the chunks of shard i of n."""
    mask = np.zeros(GRID.size, bool)
    for k in shard_chunks(5, (i, n)):
        mask[k * CHUNK_SIZE : (k + 1) * CHUNK_SIZE] = True
    return mask


def test_shards_in_separate_processes_then_merge_equal_one_run(tmp_path):
    shared = tmp_path / "checkpoints"
    n = 3
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, str(i), str(n), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(n)
    ]
    for i, process in enumerate(processes):
        try:
            output, _ = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail(f"shard {i} did not finish in {TIMEOUT} s")
        assert process.returncode == 0, output.decode()[-2000:]
    for i in range(n):
        record = np.load(tmp_path / f"shard-{i}.npz")
        mine = shard_members(i, n)
        assert np.array_equal(record["ok"], mine)  # exactly its own chunks are computed
        assert int(record["missing"]) == 5 - mine.sum() // CHUNK_SIZE
    files = sorted(p.name for p in shared.glob("chunk_*.nc"))
    assert files == [f"chunk_{k:06d}.nc" for k in range(5)]

    merged = run(shared)
    assert merged.attrs["chunks_resumed"] == 5 and "shard" not in merged.attrs
    assert bool(merged.ok.all())
    assert_bit_identical(merged, run(tmp_path / "one-run"))


def test_merge_computes_the_chunks_no_shard_did(tmp_path):
    partial = run(tmp_path / "shared", shard=(1, 2))  # chunks 1 and 3 of 5
    assert partial.attrs["shard"] == [1, 2] and partial.attrs["chunks_missing"] == 3
    assert np.array_equal(partial.ok.values.ravel(), shard_members(1, 2))
    assert np.isnan(partial.x.values.reshape(GRID.size, 3)[~shard_members(1, 2)]).all()
    merged = run(tmp_path / "shared")
    assert merged.attrs["chunks_resumed"] == 2
    assert_bit_identical(merged, run(tmp_path / "one-run"))


def test_a_shard_reruns_only_its_missing_chunks(tmp_path):
    run(tmp_path / "shared", shard=(0, 2))
    again = run(tmp_path / "shared", shard=(0, 2))
    assert again.attrs["chunks_resumed"] == 3  # chunks 0, 2, 4
    assert np.array_equal(again.ok.values.ravel(), shard_members(0, 2))


def test_sharded_context_reaches_only_checkpointed_sweeps(tmp_path):
    with sharded((1, 5)):
        inside = run(tmp_path / "shared")
        unsharded = sweep(member, GRID, strategy="map", chunk_size=CHUNK_SIZE)
    assert inside.attrs["shard"] == [1, 5] and int(inside.ok.sum()) == CHUNK_SIZE
    assert "shard" not in unsharded.attrs and bool(unsharded.ok.all())
    assert "shard" not in run(tmp_path / "other").attrs  # outside the block


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0), (0.0, 2), (True, 2), "0/2", (0,)])
def test_bad_shard_raises(tmp_path, shard):
    with pytest.raises(ValueError, match="`shard` must be a pair"):
        run(tmp_path, shard=shard)


def test_shard_needs_a_checkpoint_dir():
    with pytest.raises(ValueError, match="`shard` needs a `checkpoint_dir`"):
        sweep(member, GRID, shard=(0, 2))


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "1/0", "-1/3", ""])
def test_bad_shard_text(text):
    with pytest.raises(ValueError, match="--shard takes I/N"):
        parse_shard(text)
    assert parse_shard("3/4") == (3, 4)


# ----------------------------------------------------------------------------- command line


def test_cli_shards_then_merge(tmp_path, capsys):
    from mirrorflow_jax.cli import main

    out = tmp_path / "balance"
    argv = ["run", "balance", "--quick", "--out", str(out), "--no-progress"]
    sets = ["chunk_size=1", "qs=[2.0]", "n=8", "d=12", "k=2", "num_saves=11"]
    argv += [arg for item in sets for arg in ("--set", item)]  # 2 members (decays), 2 chunks
    assert main([*argv, "--shard", "1/2"]) == 0
    assert "mirrorflow merge" in capsys.readouterr().out
    assert not (out / "results.nc").exists()
    record = json.loads((out / "shards" / "shard-1-of-2.json").read_text())
    assert record["shard"] == [1, 2] and record["checkpoint_files"] == 1
    assert main(["merge", str(out), "--strict"]) == 0  # computes chunk 0, loads chunk 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all_held"] and summary["checkpoint_files_resumed"] == 1
    assert summary["quick"] is True and (out / "results.nc").exists()


def test_cli_bad_shard_and_merge_folder(tmp_path, capsys):
    from mirrorflow_jax.cli import main

    assert main(["run", "balance", "--quick", "--shard", "2/2", "--out", str(tmp_path)]) == 2
    assert "--shard takes I/N" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "nothing")]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err


if __name__ == "__main__":
    index, count, folder = sys.argv[1:]
    ds = run(os.path.join(folder, "checkpoints"), shard=(int(index), int(count)))
    np.savez(
        pathlib.Path(folder) / f"shard-{index}.npz",
        ok=ds.ok.values.ravel(),
        missing=ds.attrs["chunks_missing"],
    )
