"""Multi-host sweeps: 2 local processes × 2 CPU devices under `jax.distributed` (localhost
coordinator, gloo collectives) give the single-process Dataset, and process 0 alone decides
which checkpointed chunks are finished, so hosts that see different directories agree.

Run as a script (``python tests/test_distributed.py PROCESS PORT OUT CHECKPOINTS``) it is one
of the two processes; it writes its Dataset to OUT/process-PROCESS.nc.
"""

import os
import socket
import subprocess
import sys

import pytest

TIMEOUT = 150  # seconds for both processes together (they take ~15 s on 2 busy cores)
SETUP_TIMEOUT = 60  # jax.distributed: connecting to the coordinator, and shutdown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(tmp_path, directories: tuple[str, str]) -> list:
    port = _free_port()
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env = dict(os.environ, XLA_FLAGS=flags.strip())  # the suite's flags kept
    env.pop("JAX_PLATFORMS", None)
    return [
        subprocess.Popen(
            [sys.executable, __file__, str(i), str(port), str(tmp_path), directories[i]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]


def _wait(processes):
    """Wait for both (killing both once TIMEOUT is spent), then fail on a bad exit."""
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=TIMEOUT)[0].decode())
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
                p.communicate()
            pytest.fail(f"a distributed process did not finish in {TIMEOUT} s")
    for i, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"process {i}:\n{output[-3000:]}"


def _grid_and_member():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mirrorflow_jax import Grid

    grid = Grid(alpha=np.linspace(0.1, 1.0, 7), beta=[0.5, 2.0])  # 14 members

    def member(alpha, beta):
        def step(_, x):
            return x - 0.01 * (x**3 - beta * jnp.arange(1.0, 4.0))

        x = jax.lax.fori_loop(0, 200, step, alpha * jnp.ones(3))
        return {"x": x, "count": jnp.sum(x > 1.0), "above": jnp.all(x > 0.0)}

    return grid, member


CHUNK_SIZE = 3  # 5 chunks, the last one short: padded to 4 members = one per global device


def _sweep(checkpoint_dir=None, shard=None):
    from mirrorflow_jax import sweep

    grid, member = _grid_and_member()
    return sweep(
        member,
        grid,
        strategy="map",
        chunk_size=CHUNK_SIZE,
        checkpoint_dir=checkpoint_dir,
        shard=shard,
    )


def _assert_same(ds, reference):
    import numpy as np

    for name in reference.data_vars:
        np.testing.assert_array_equal(ds[name].values, reference[name].values, err_msg=name)


def test_two_processes_equal_one(tmp_path):
    from mirrorflow_jax import load_dataset

    processes = _start_pair(tmp_path, ("", ""))
    reference = _sweep()
    _wait(processes)
    for i in range(2):
        ds = load_dataset(tmp_path / f"process-{i}.nc")
        assert ds.attrs["num_devices"] == 4 and ds.attrs["process_count"] == 2
        _assert_same(ds, reference)


def test_process_zero_decides_which_chunks_are_done(tmp_path):
    """Process 0's directory holds chunks 0, 2, 4; process 1's is empty. Both load those three
    (from process 0's broadcast), compute chunks 1 and 3 together, and return the same
    Dataset as one process; only process 0 writes."""
    from mirrorflow_jax import load_dataset

    seen, unseen = tmp_path / "seen", tmp_path / "unseen"
    _sweep(seen, shard=(0, 2))
    processes = _start_pair(tmp_path, (str(seen), str(unseen)))
    reference = _sweep()
    _wait(processes)
    for i in range(2):
        ds = load_dataset(tmp_path / f"process-{i}.nc")
        assert ds.attrs["chunks_resumed"] == 3, i
        _assert_same(ds, reference)
    assert len(list(seen.glob("chunk_*.nc"))) == 5
    assert list(unseen.glob("chunk_*.nc")) == []


if __name__ == "__main__":
    process, port, out, directory = sys.argv[1:]
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=int(process),
        initialization_timeout=SETUP_TIMEOUT,
        shutdown_timeout_seconds=SETUP_TIMEOUT,
    )
    from mirrorflow_jax import save_dataset

    ds = _sweep(directory or None)
    ds.attrs["process_count"] = jax.process_count()
    save_dataset(ds, os.path.join(out, f"process-{process}.nc"))
    jax.distributed.shutdown()
