"""One sweep run by two processes under `jax.distributed`, each with two CPU devices.

`python examples/multi_host_sweep.py` starts two copies of itself (process 0 and 1) that
meet at a coordinator on localhost; on a cluster the scheduler starts one per host instead
(`srun python my_sweep.py`) and a bare `jax.distributed.initialize()` finds its settings.
Every process runs the same sweep and returns the whole Dataset; process 0 alone reads and
writes the checkpoints (it decides which chunks are finished and tells the others)."""

import os
import socket
import subprocess
import sys
import tempfile

if len(sys.argv) == 1:  # the launcher: start both processes, then check their results
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    with tempfile.TemporaryDirectory() as out:
        processes = [
            subprocess.Popen([sys.executable, __file__, str(i), port, out], env=env)
            for i in range(2)
        ]
        codes = [p.wait(timeout=300) for p in processes]
        print("exit codes:", codes)
        import xarray as xr

        a, b = (xr.load_dataset(os.path.join(out, f"process-{i}.nc")) for i in range(2))
        print("both processes hold the same Dataset:", bool((a.loss == b.loss).all()))
    sys.exit(max(codes))

process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")  # collectives across processes
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=2,
    process_id=process_id,
    initialization_timeout=60,
)
import mirrorflow_jax as mf  # noqa: E402

problem = mf.sparse_regression(jax.random.key(0), n=8, d=12, k=3)


def run(alpha):
    model = mf.SignedDeepDiagonal.scaled(alpha, depth=2, dim=12)
    return mf.solve_flow(mf.SteepestFlow(mf.Lp(2.0)), model, problem, 5.0)


grid = mf.Grid(alpha=np.linspace(0.1, 0.8, 8))
ds = mf.sweep(run, grid, chunk_size=4, checkpoint_dir=os.path.join(out, "checkpoints"))
devices, ok = ds.attrs["num_devices"], bool(ds.ok.all())
print(f"process {jax.process_index()}: {devices} devices, all ok: {ok}")
mf.save_dataset(ds, os.path.join(out, f"process-{process_id}.nc"))
jax.distributed.shutdown()
