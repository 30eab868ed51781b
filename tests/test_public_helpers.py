"""Public helpers on user-defined parameters: events and `trajectory_gap` on plain PyTrees, the
`separable` capability of `AbstractReparam`, and losses given as closures."""

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mirrorflow_jax as mf

from .helpers import rolled

PARAMS = {"a": jnp.array([0.1, 0.3]), "b": jnp.array([[0.2]])}


def _linear_loss(params):
    """f = −Σ of every entry: gradient flow moves every entry at unit speed."""
    return -sum(jnp.sum(leaf) for leaf in jax.tree.leaves(params))


def _coupled_loss(params):
    return (params["a"][0] * params["b"][0, 0] - 1.0) ** 2 + jnp.sum(params["a"] ** 2)


def _flat(params):
    return jnp.concatenate([params["a"], params["b"].ravel()])


# ----------------------------------------------------------------------------- PyTree params


def test_norm_above_on_a_pytree_fires_at_the_closed_form_time():
    """x(t) = x(0) + t entrywise, so max |x| = 0.3 + t reaches 0.5 at t = 0.2."""
    sol = mf.solve_flow(mf.SteepestFlow(), PARAMS, _linear_loss, 1.0, event=mf.NormAbove(0.5))
    np.testing.assert_allclose(sol.event_time, 0.2, rtol=1e-9)
    assert bool(sol.ok)


def _flat_coupled_loss(x):
    return _coupled_loss({"a": x[:2], "b": x[2:].reshape(1, 1)})


@pytest.mark.parametrize("event", [mf.NormAbove(0.5), mf.LossBelow(0.25)])
def test_events_on_a_pytree_match_the_same_flow_on_a_flat_array(event):
    # the exact map (ε = 0): `auto` solves it with Tsit5, the cheapest program to compile
    flow = mf.SteepestFlow(mf.Lp(1.5))
    flat_loss = _flat_coupled_loss
    params = {"a": jnp.array([0.1, -0.3]), "b": jnp.array([[0.2]])}
    tree = mf.solve_flow(flow, params, _coupled_loss, 20.0, event=event)
    flat = mf.solve_flow(flow, _flat(params), flat_loss, 20.0, event=event)
    assert np.isfinite(float(flat.event_time))
    np.testing.assert_allclose(tree.event_time, flat.event_time, rtol=1e-9)


def test_steps_to_escape_on_a_pytree():
    """SGD with step η on the linear loss: x_k = x_0 + kη, so max |x_k| ≥ 0.5 first at k = 20."""
    escape = mf.steps_to_escape(
        optax.sgd(1e-2), PARAMS, _linear_loss, mf.NormAbove(0.5 - 1e-9), max_steps=100
    )
    assert int(escape.steps) == 20
    assert bool(escape.escaped)


@pytest.mark.parametrize("space", ["x", "params"])
def test_trajectory_gap_on_a_pytree_is_the_largest_entry_difference(space):
    lr, steps = 1e-2, jnp.array([0, 50, 100])
    run = mf.run_optimizer(optax.sgd(lr), PARAMS, _coupled_loss, 100, save_steps=steps)
    sol = mf.solve_flow(
        mf.SteepestFlow(), PARAMS, _coupled_loss, 1.0, saveat=mf.step_times(steps, lr)
    )
    by_hand = max(
        float(np.max(np.abs(np.asarray(run.params[k]) - np.asarray(sol.params[k]))))
        for k in PARAMS
    )
    gap = mf.trajectory_gap(run, sol, lr, space=space)
    np.testing.assert_allclose(gap, by_hand, rtol=1e-14)
    assert 1e-6 < float(gap) < 1e-1  # O(η), and not trivially zero


def test_trajectory_gap_refuses_different_structures():
    """A run on the flat array against the PyTree flow (the program of the test above)."""
    lr, steps = 1e-2, jnp.array([0, 50, 100])
    flat = mf.run_optimizer(
        optax.sgd(lr), _flat(PARAMS), _flat_coupled_loss, 100, save_steps=steps
    )
    sol = mf.solve_flow(
        mf.SteepestFlow(), PARAMS, _coupled_loss, 1.0, saveat=mf.step_times(steps, lr)
    )
    with pytest.raises(ValueError, match="`run` and `sol` must hold the same kind of 'x'"):
        mf.trajectory_gap(flat, sol, lr)


# ----------------------------------------------------------------------------- separable


def _rolled(declared: bool):
    return rolled([0.3, -0.2, 0.5], [0.1, 0.4, -0.2], declared=declared)


def test_a_model_must_declare_whether_it_is_separable():
    class Undeclared(mf.AbstractReparam):
        w: jax.Array

        def __call__(self):
            return self.w

        def balance(self, q):
            return jnp.zeros((0, 1))

    class Declared(mf.AbstractReparam):
        separable: ClassVar[bool] = True
        w: jax.Array

        def __call__(self):
            return self.w

        def balance(self, q):
            return jnp.zeros((0, 1))

    with pytest.raises(TypeError, match="separable"):
        Undeclared(jnp.ones(1))
    assert Declared(jnp.ones(1)).separable
    assert all(cls.separable for cls in (mf.DeepDiagonal, mf.SignedDeepDiagonal, mf.SquareDiff))
    # Padded is as separable as the model it wraps (a property of the instance)
    padded = mf.Padded(mf.DeepDiagonal.scaled(0.1, depth=3, dim=2), 2)
    assert padded.separable is True


def test_non_separable_model_gets_the_naive_smoothing_and_refuses_the_structured_one():
    model, problem = _rolled(False), mf.LeastSquares(jnp.eye(3), jnp.array([1.0, 0.5, -1.0]))
    auto = mf.SteepestFlow(mf.Lp(1.0, 0.1))
    assert auto.smoothing_for(model) == "naive"
    # the naive flow, written out: −φ_1^ε(∇_θ f(x(θ)))
    grads = jax.grad(lambda m: problem(m()))(model)
    naive = jax.tree.map(lambda g: -mf.Lp(1.0, 0.1)(g), grads)
    velocity = auto(0.0, model, problem)
    for got, want in zip(jax.tree.leaves(velocity), jax.tree.leaves(naive), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-14)
    # declared separable it would get the structured flow, a different vector field
    wrong = auto(0.0, _rolled(True), problem)
    assert auto.smoothing_for(_rolled(True)) == "structured"
    assert (
        max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(wrong), jax.tree.leaves(velocity), strict=True)
        )
        > 1e-2
    )
    # a solve records the choice (a static field of the solution: its shape is enough, no
    # compiled program), and the structured request is refused before compiling
    sol = jax.eval_shape(lambda: mf.solve_flow(auto, model, problem, 1.0))
    assert sol.smoothing_at == "naive"
    structured = mf.SteepestFlow(mf.Lp(1.0, 0.1), smoothing_at="structured")
    with pytest.raises(ValueError, match=r"`smoothing_at='structured'` needs a separable model.*"
                       r"Rolled declares separable = False.*smoothing_at='naive'"):  # fmt: skip
        mf.solve_flow(structured, model, problem, 1.0)


# ----------------------------------------------------------------------------- closures


def _mse(A, b, x):
    residual = A @ x - b
    return 0.5 * jnp.mean(residual * residual)


def test_a_new_closure_over_new_data_does_not_recompile():
    """Each call builds a new closure over another data set: the loss is traced for the first
    call only, and every solve matches the same loss given as a ``jax.tree_util.Partial`` (whose
    data are traced arguments by construction)."""
    traces = []

    def make_loss(A, b):
        def loss(x):
            traces.append(None)  # runs once per trace, never inside the compiled program
            return _mse(A, b, x)

        return loss

    # the exact map: `auto` solves it with Tsit5, the cheapest program to compile
    flow, model = mf.SteepestFlow(mf.Lp(1.5)), mf.DeepDiagonal.scaled(0.1, depth=2, dim=6)
    finals = []
    for seed in range(3):
        problem = mf.sparse_regression(jax.random.key(seed), n=4, d=6, k=2)
        sol = mf.solve_flow(flow, model, make_loss(problem.A, problem.b), 5.0)
        if seed == 0:
            first_traces = len(traces)
        partial = jax.tree_util.Partial(_mse, problem.A, problem.b)
        reference = mf.solve_flow(flow, model, partial, 5.0)
        np.testing.assert_allclose(sol.x, reference.x, rtol=1e-12, atol=1e-15)
        finals.append(np.asarray(sol.x[-1]))
    assert first_traces > 0 and len(traces) == first_traces
    assert np.max(np.abs(finals[0] - finals[1])) > 1e-2  # the data did change

    counts, sgd = [], optax.sgd(1e-2)  # one optimizer: optax's functions compare by identity
    for seed in range(2):
        problem = mf.sparse_regression(jax.random.key(seed), n=4, d=6, k=2)
        run = mf.run_optimizer(sgd, model, make_loss(problem.A, problem.b), 10)
        counts.append(len(traces))
        reference = mf.run_optimizer(sgd, model, problem, 10)
        np.testing.assert_allclose(run.x, reference.x, rtol=1e-13)
    assert counts[0] > first_traces and counts[1] == counts[0]


def test_closures_over_numpy_arrays_or_no_arrays_are_left_as_they_are():
    from mirrorflow_jax._loss import traced_closure

    A = np.eye(2)

    def numpy_loss(x):
        return jnp.sum((A @ x) ** 2)

    def plain(x):
        return jnp.sum(x**2)

    assert traced_closure(numpy_loss) is numpy_loss
    assert traced_closure(plain) is plain
    problem = mf.ScalarToy()
    assert traced_closure(problem) is problem
    B = jnp.ones(2)
    lifted = traced_closure(lambda x: jnp.sum(B * x))
    assert lifted is not None and float(lifted(jnp.array([1.0, 2.0]))) == 3.0
