"""solve_flow inside your own JAX code: a PyTree model under jit, vmap and grad."""

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)
import mirrorflow_jax as mf  # noqa: E402

key_data, key_init = jax.random.split(jax.random.key(0))
inputs = jax.random.normal(key_data, (32, 3))
targets = jnp.tanh(inputs @ jnp.array([1.0, -2.0, 0.5]))


def loss(params):  # any PyTree of arrays: here a two-layer tanh network held in a dict
    hidden = jnp.tanh(inputs @ params["W1"] + params["b1"])
    return 0.5 * jnp.mean((hidden @ params["w2"] - targets) ** 2)


def init(scale):
    k1, k2 = jax.random.split(key_init)
    return {
        "W1": scale * jax.random.normal(k1, (3, 8)),
        "b1": jnp.zeros(8),
        "w2": scale * jax.random.normal(k2, (8,)),
    }


def final_loss(scale, q):
    flow = mf.SteepestFlow(mf.Lp(q, eps=1e-2))  # a plain PyTree gets the naive smoothing
    sol = mf.solve_flow(flow, init(scale), loss, t1=2.0)
    return sol.loss[-1]


# One compiled program for every q: q is traced, and each member runs the solver of its q.
qs = jnp.array([1.0, 1.5, 2.0])
print("f(θ(2)) for q = 1, 1.5, 2:", jax.jit(jax.vmap(final_loss, in_axes=(None, 0)))(0.5, qs))
# A concrete q = 2 picks one solver (Tsit5) before tracing, so only it is differentiated.
print("d f(θ(2)) / d scale:", jax.grad(final_loss)(0.5, 2.0))
