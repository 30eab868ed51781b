"""Sweep members shared by tests/test_sweep.py and the fresh processes it starts.

- ``python tests/sweep_script.py checkpoint OUT``: a checkpointed sweep of `descent` (5 chunks
  of 2 members). With SWEEP_KILL=1 the process SIGKILLs itself while computing the member
  with alpha == KILL_AT (in chunk 3), i.e. mid-run, after chunks 0–2 were written.
- ``python tests/sweep_script.py single OUT``: the depth sweep on one device (auto strategy,
  4 chunks checkpointed in OUT/checkpoints), saved as OUT/single.nc with its trace count in
  attrs["fn_traces"].
- ``python tests/sweep_script.py sharded OUT``: the depth sweep vmapped on every device, saved
  as OUT/sharded.nc, and the unpadded depth-2 reference (plain jax.vmap, no sweep) as
  OUT/depth2.npz. Run it with XLA_FLAGS=--xla_force_host_platform_device_count=4 (read when
  jax is imported).
"""

import os
import signal
import sys

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402

import mirrorflow_jax as mf  # noqa: E402
from mirrorflow_jax import Grid, sweep  # noqa: E402

PROBLEM = mf.sparse_regression(jax.random.key(0), n=8, d=12, k=3)
DIM, MAX_DEPTH, T1 = 12, 3, 1.0
SAVES = jnp.linspace(0.0, T1, 4)
# The max norm ignores the padding's zero errors, so padded solves take the unpadded steps.
CONTROLLER = diffrax.PIDController(rtol=1e-9, atol=1e-11, norm=optx.max_norm)
WEIGHT_DECAY = {"coupled_wd": 0.05, "decoupled_wd": 0.1}
MAX_STEPS = 2_000
TRACES = {"count": 0}

# Smoothed maps only: the exact q < 2 map is non-Lipschitz at 0, so it amplifies the rounding
# differences between two differently compiled programs (vmap vs lax.map) far above 1e-12.
DEPTH_GRID = Grid(alpha=[0.3, 0.5], q=[1.5, 2.0], depth=[2, 3], eps=[1e-2, 1e-1])
DEPTH2 = np.stack(np.meshgrid([0.3, 0.5], [1.5, 2.0], [1e-2, 1e-1]), -1).reshape(-1, 3)


def solve(model, q, eps):
    """One solver for every member (the grid is about the sweep, not the solver choice):
    Tsit5, which auto picks for gradient flow and which the smoothed q = 1.5 members at
    ε ≥ 1e-2 do not stiffen over t1 = 1, so the program holds one solver instead of auto's
    switch over three."""
    flow = mf.SteepestFlow(mf.Lp(q, eps), **WEIGHT_DECAY)
    return mf.solve_flow(
        flow,
        model,
        PROBLEM,
        T1,
        solver=diffrax.Tsit5(),
        saveat=SAVES,
        stepsize_controller=CONTROLLER,
        max_steps=MAX_STEPS,
    )


def padded_member(alpha, q, depth, eps):
    """The signed model of depth ``depth`` (traced), padded to MAX_DEPTH."""
    TRACES["count"] += 1
    full = mf.SignedDeepDiagonal.scaled(alpha, depth=MAX_DEPTH, dim=DIM)
    return solve(mf.Padded(full, depth), q, eps)


def depth2_member(alpha, q, eps):
    """The unpadded depth-2 signed model."""
    return solve(mf.SignedDeepDiagonal.scaled(alpha, depth=2, dim=DIM), q, eps)


CHECKPOINT_GRID = Grid(alpha=np.linspace(0.1, 1.0, 10))
CHUNK_SIZE = 2
KILL_AT = CHECKPOINT_GRID.members()["alpha"][6]
COMPUTED = {"members": 0}


def _on_member(alpha):
    """Host callback run once per computed member: counts it, and dies at KILL_AT if asked."""
    COMPUTED["members"] += 1
    if os.environ.get("SWEEP_KILL") and np.any(np.asarray(alpha) == KILL_AT):
        os.kill(os.getpid(), signal.SIGKILL)


def descent(alpha):
    """200 steps of gradient descent on the regression from x = alpha·1 (cheap to compile)."""
    jax.debug.callback(_on_member, alpha)

    def step(_, x):
        return x - 0.05 * jax.grad(PROBLEM)(x)

    x = jax.lax.fori_loop(0, 200, step, jnp.full(DIM, alpha))
    return {"x": x, "loss": PROBLEM(x)}


def checkpointed(directory):
    return sweep(
        descent, CHECKPOINT_GRID, strategy="map", chunk_size=CHUNK_SIZE, checkpoint_dir=directory
    )


def single(out):
    """The depth sweep on one device, checkpointed."""
    TRACES["count"] = 0
    ds = sweep(
        padded_member, DEPTH_GRID, chunk_size=5, checkpoint_dir=os.path.join(out, "checkpoints")
    )
    ds.attrs["fn_traces"] = TRACES["count"]
    mf.save_dataset(ds, os.path.join(out, "single.nc"))


def sharded(out):
    """The depth sweep vmapped on every device in chunks of 6 (padded to 8 on 4 devices), and
    the unpadded depth-2 reference."""
    ds = sweep(padded_member, DEPTH_GRID, strategy="vmap", chunk_size=6)
    mf.save_dataset(ds, os.path.join(out, "sharded.nc"))
    ref = jax.vmap(depth2_member)(*jnp.asarray(DEPTH2.T))
    fields = {"x": ref.x, "u": ref.params.u, "balance": ref.balance, "num_steps": ref.num_steps}
    np.savez(os.path.join(out, "depth2.npz"), ok=ref.ok, **fields)


if __name__ == "__main__":
    mode, path = sys.argv[1:]
    {"checkpoint": checkpointed, "single": single, "sharded": sharded}[mode](path)
