"""layer_transitions: entries into and exits from the smoothing layer of a saved trajectory.

Independent references: a hand-made sequence for the hysteresis rule, and the closed-form
entry time of a sign flow whose entries move at unit speed until they reach the layer.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mirrorflow_jax as mf
from mirrorflow_jax._sensitivity import _count_transitions, _layer_states


def test_hysteresis_counts_entries_and_exits_not_edge_noise():
    nan = np.nan
    ratio = np.array(
        [
            [5.0, 0.5, 2.0],
            [0.5, 2.0, 2.0],  # column 0 enters; column 1 started inside (not an entry)
            [2.0, 0.9, 2.0],  # between the thresholds: states kept
            [0.5, 2.9, 2.0],
            [4.0, 0.1, 2.0],  # column 0 exits
            [0.2, nan, 2.0],  # column 0 enters again; nan keeps column 1's state
            [-5.0, 7.0, 2.0],  # both exit (the sign does not matter)
            [0.1, 2.0, 2.0],  # column 0 enters a third time
        ]
    )
    states = _layer_states(ratio, 1.0, 3.0)
    np.testing.assert_array_equal(states[:, 1], [1, 1, 1, 1, 1, 1, -1, -1])
    entries, exits, first_entry, inside_at_end = _count_transitions(states)
    np.testing.assert_array_equal(entries, [3, 0, 0])
    np.testing.assert_array_equal(exits, [2, 1, 0])
    np.testing.assert_array_equal(first_entry, [1, -1, -1])
    np.testing.assert_array_equal(inside_at_end, [True, False, False])


def test_unit_speed_sign_flow_enters_once_at_the_closed_form_time():
    # f(x) = ‖x − b‖²/(2n) with A = I, x = w (depth 1): at q = 1 every entry moves towards
    # b_j at speed ≈ 1 until |∂f/∂x_j| = |x_j − b_j|/n ≈ ε, then stays in the layer. So each
    # entry enters once, at t ≈ |x_j(0) − b_j| up to O(nε) (the smoothing slows it near the
    # layer) and the save spacing.
    dim, eps = 3, 1e-4
    target = jnp.array([0.5, 1.0, -0.7])
    loss = mf.LeastSquares(jnp.eye(dim), target)
    model = mf.DeepDiagonal.scaled(0.1, depth=1, dim=dim)
    flow = mf.SteepestFlow(mf.Lp(1.0, eps))
    ts = jnp.linspace(0.0, 1.2, 2401)
    sol = mf.solve_flow(flow, model, loss, 1.2, saveat=ts, solver=mf.SignFlowKvaerno3())
    assert bool(sol.ok)
    events = mf.layer_transitions(flow, loss, sol.ts, sol.params, timeline=True)
    np.testing.assert_array_equal(events.entries, [1, 1, 1])
    np.testing.assert_array_equal(events.exits, [0, 0, 0])
    assert bool(events.inside_at_end.all())
    distance = np.abs(0.1 - np.asarray(target))
    spacing = float(ts[1] - ts[0])
    np.testing.assert_allclose(events.first_entry_time, distance, atol=spacing + 10 * dim * eps)
    np.testing.assert_array_equal(events.coordinate, [0, 1, 2])
    # The timeline: outside before the first entry, inside from it on.
    after = events.time >= events.first_entry_time
    np.testing.assert_array_equal(events.inside, after.transpose("time", "entry"))
    assert events.attrs["eps"] == eps and events.attrs["num_saves"] == ts.size


def test_saved_steps_with_unused_slots_and_coordinate_labels():
    problem = mf.sparse_regression(jax.random.key(0), n=5, d=6, k=2)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=6)
    flow = mf.SteepestFlow(mf.Lp(1.0, eps=1e-4))
    sol = mf.solve_flow(
        flow,
        model,
        problem,
        5.0,
        solver=mf.SignFlowKvaerno3(),
        saveat=diffrax.SaveAt(steps=True),
        max_steps=5_000,
    )
    assert bool(sol.ok) and not np.all(np.isfinite(sol.ts))
    events = mf.layer_transitions(flow, problem, sol.ts, sol.params)
    assert events.attrs["num_saves"] == int(np.isfinite(sol.ts).sum())
    # Six factor entries per coordinate (three factors of u and of v): the structure-
    # preserving smoothing gives them one scaled gradient, so they enter and leave together.
    assert events.sizes["entry"] == 6 * 6
    for name in ("entries", "exits"):
        assert all(np.unique(group).size == 1 for _, group in events[name].groupby("coordinate"))
    assert int(events.entries.sum()) > 0 and int(events.exits.sum()) > 0


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(inside=0.0), "inside"),
        (dict(inside=2.0, outside=2.0), "outside"),
        (dict(ts=np.zeros((2, 3))), "`ts` must be 1-d"),
        (dict(ts=np.array([0.0, np.inf, np.inf])), "at least 2 finite"),
        (dict(ts=np.array([0.0, 1.0])), "leading axis 2"),
        (dict(flow=mf.AdamFlow(10.0, 1.0)), "SteepestFlow"),
    ],
)
def test_bad_input_names_the_argument(change, match):
    loss = mf.LeastSquares(jnp.eye(2), jnp.ones(2))
    model = mf.DeepDiagonal.scaled(0.1, depth=1, dim=2)
    params = jax.tree.map(lambda leaf: jnp.stack([leaf] * 3), model)  # three saved states
    kwargs = dict(flow=mf.SteepestFlow(mf.Lp(1.0, 1e-3)), ts=np.array([0.0, 1.0, 2.0]))
    kwargs.update(change)
    flow, ts = kwargs.pop("flow"), kwargs.pop("ts")
    with pytest.raises(ValueError, match=match):
        mf.layer_transitions(flow, loss, ts, params, **kwargs)


def test_scaled_gradient_is_the_gradient_over_the_smoothing_scale():
    # Structure-preserving placement: ∂F/∂w_i = g_j·∂x_j/∂w_i and the scale is ε·|∂x_j/∂w_i|,
    # so every factor entry of coordinate j has |r_i| = |g_j|/ε. Naive: r = ∇_w F / ε.
    problem = mf.sparse_regression(jax.random.key(1), n=6, d=4, k=2)
    model = mf.SignedDeepDiagonal(
        jax.random.uniform(jax.random.key(2), (3, 4), minval=0.1, maxval=1.0),
        jax.random.uniform(jax.random.key(3), (3, 4), minval=0.1, maxval=1.0),
    )
    eps = 1e-3
    g = jax.grad(problem)(model())
    structured = mf.SteepestFlow(mf.Lp(1.0, eps)).scaled_gradient(model, problem)
    for leaf in jax.tree.leaves(structured):
        np.testing.assert_allclose(np.abs(leaf), np.broadcast_to(np.abs(g) / eps, leaf.shape))
    naive_flow = mf.SteepestFlow(mf.Lp(1.0, eps), smoothing_at="naive")
    naive = naive_flow.scaled_gradient(model, problem)
    grads = jax.grad(lambda m: problem(m()))(model)
    for r, grad in zip(jax.tree.leaves(naive), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(r, grad / eps)
