"""A sweep split over several devices: 4 virtual CPU devices stand in for GPUs here."""

import os

# Must be set before jax is imported (kept with any XLA_FLAGS already set); on a machine with
# accelerators leave it out.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    os.environ["XLA_FLAGS"] = flags.strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", True)
import mirrorflow_jax as mf  # noqa: E402

problem = mf.sparse_regression(jax.random.key(0), n=8, d=12, k=3)


def run(alpha, q):  # one member; the axes arrive as traced 0-d arrays
    model = mf.SignedDeepDiagonal.scaled(alpha, depth=3, dim=12)
    flow = mf.SteepestFlow(mf.Lp(q))  # exact maps (ε = 0): Tsit5 for every q, one program
    return mf.solve_flow(flow, model, problem, 2.0, saveat=jnp.linspace(0.0, 2.0, 3))


grid = mf.Grid(alpha=[0.05, 0.1, 0.2, 0.4], q=[1.5, 2.0])  # 8 members, 2 per device
ds = mf.sweep(run, grid, devices=jax.devices())
print(jax.devices())
print(f"{ds.attrs['num_devices']} devices, strategy {ds.attrs['strategy']}")
print("all ok:", bool(ds.ok.all()))
print(ds.loss.sel(t=2.0).to_pandas())
