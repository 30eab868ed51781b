"""A sweep split over the tasks of a job array: each shard computes every n-th chunk into a
shared checkpoint directory, and a last run without `shard` assembles the result.

Here the three shards run one after another in this process; on a cluster each is its own job
(e.g. `shard=(int(os.environ["SLURM_ARRAY_TASK_ID"]), 3)`) and the assembling run a job that
starts when they have ended."""

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
with tempfile.TemporaryDirectory() as shared:
    for i in range(3):  # one job each
        part = mf.sweep(run, grid, chunk_size=2, checkpoint_dir=shared, shard=(i, 3))
        print(f"shard {i}/3: {int(part.ok.sum())} members computed")
    merged = mf.sweep(run, grid, chunk_size=2, checkpoint_dir=shared)  # the last job
    single = mf.sweep(run, grid, chunk_size=2)  # the same sweep in one run, for comparison

print(f"chunks: {merged.attrs['num_chunks']}, read back: {merged.attrs['chunks_resumed']}")
print("same result:", bool((merged.loss == single.loss).all() and merged.ok.all()))
