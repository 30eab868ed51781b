"""Resume a killed sweep: finished chunks are read back from `checkpoint_dir`."""

import pathlib
import tempfile

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
import mirrorflow_jax as mf  # noqa: E402

problem = mf.sparse_regression(jax.random.key(0), n=8, d=12, k=3)


def run(alpha):
    model = mf.SignedDeepDiagonal.scaled(alpha, depth=2, dim=12)
    return mf.solve_flow(mf.SteepestFlow(mf.Lp(2.0)), model, problem, 5.0)


grid = mf.Grid(alpha=np.linspace(0.1, 0.8, 8))
with tempfile.TemporaryDirectory() as checkpoints:
    full = mf.sweep(run, grid, chunk_size=2, checkpoint_dir=checkpoints)  # 4 chunk files
    # A run killed while computing chunk 2 leaves exactly the files of chunks 0 and 1:
    for path in sorted(pathlib.Path(checkpoints).glob("chunk_*.nc"))[2:]:
        path.unlink()
    resumed = mf.sweep(run, grid, chunk_size=2, checkpoint_dir=checkpoints)  # the same call

print(f"chunks: {resumed.attrs['num_chunks']}, read back: {resumed.attrs['chunks_resumed']}")
print("same result:", bool((resumed.loss == full.loss).all()))
