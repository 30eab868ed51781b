"""The grouped sweep strategy: groups found in ``fn``, real branches, results, lockstep waste."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mirrorflow_jax import Grid, _grouping, sweep
from mirrorflow_jax._sweep import _auto_strategy, _trace

SEEN = {"stiff": []}


def _record(alpha):
    SEEN["stiff"].extend(np.atleast_1d(np.asarray(alpha)).tolist())


def iterate(q, alpha):
    """A loop whose trip count depends on the member (q·alpha·10 + 3 iterations), with the
    update rule chosen by a `lax.cond` on q: the stiff branch reports the α it runs for."""

    def stiff():
        jax.debug.callback(_record, alpha)
        return alpha * 0.5

    def plain():
        return alpha * 2.0

    rate = jax.lax.cond(q == 1.0, stiff, plain)
    limit = jnp.floor(q * alpha * 10.0).astype(int) + 3

    def body(carry):
        i, x = carry
        return i + 1, x + rate * jnp.sin(x + i)

    steps, x = jax.lax.while_loop(lambda c: c[0] < limit, body, (0, alpha))
    return {"x": x, "num_steps": steps}


GRID = Grid(q=[1.0, 2.0, 3.0]) * Grid(alpha=np.linspace(0.1, 1.0, 4))  # 12 members


def expected_steps(grid: Grid) -> np.ndarray:
    m = grid.members()
    return np.floor(m["q"] * m["alpha"] * 10.0).astype(int) + 3


def test_branch_axes_are_the_axes_that_decide_a_cond_before_any_loop():
    def after_loop(q, alpha):  # the cond's index comes out of a loop: not a grouping axis
        x = jax.lax.fori_loop(0, 3, lambda i, x: x * alpha, q)
        return jax.lax.cond(x > 1.0, lambda: x, lambda: -x)

    def two(q, eps, alpha):
        flag = (q == 1.0) & (eps > 0.0)
        return jax.lax.cond(flag, lambda: alpha, lambda: 2 * alpha)

    def none(q, alpha):
        return q * alpha

    grid3 = Grid.zip(q=[1.0, 2.0], eps=[1e-3, 0.0]) * Grid(alpha=[0.1, 0.2])
    assert _grouping.branch_axes(_trace(iterate, GRID).jaxpr, ["alpha", "q"]) == ("q",)
    assert _grouping.branch_axes(_trace(after_loop, GRID).jaxpr, ["alpha", "q"]) == ()
    assert _grouping.branch_axes(_trace(none, GRID).jaxpr, ["alpha", "q"]) == ()
    names = sorted(grid3.names)
    assert _grouping.branch_axes(_trace(two, grid3).jaxpr, names) == ("eps", "q")


def test_grouped_runs_only_the_branch_each_group_takes_and_equals_map():
    SEEN["stiff"].clear()
    grouped = sweep(iterate, GRID, strategy="grouped", batch_size=4)  # vmap over each group
    stiff_alphas = GRID.members()["alpha"][GRID.members()["q"] == 1.0]
    assert sorted(SEEN["stiff"]) == sorted(stiff_alphas.tolist())  # 4 members, not 12
    assert grouped.attrs["strategy"] == "grouped" and grouped.attrs["group_by"] == ["q"]
    assert grouped.attrs["batch_size"] == 4
    assert sweep(iterate, GRID, strategy="grouped").attrs["batch_size"] == 1  # CPU default

    SEEN["stiff"].clear()
    plain = sweep(iterate, GRID, strategy="vmap")
    assert len(SEEN["stiff"]) == GRID.size  # a batched cond runs both branches for everyone

    SEEN["stiff"].clear()
    mapped = sweep(iterate, GRID, strategy="map")
    for ds in (grouped, plain):
        np.testing.assert_allclose(ds.x.values, mapped.x.values, rtol=1e-14, atol=0)
        np.testing.assert_array_equal(ds.num_steps.values, mapped.num_steps.values)
    np.testing.assert_array_equal(mapped.num_steps.values.ravel(), expected_steps(GRID))


def _efficiency(steps: np.ndarray, batches: list[np.ndarray]) -> float:
    return steps.sum() / sum(len(b) * steps[b].max() for b in batches)


def test_lockstep_efficiency_in_attrs():
    steps = expected_steps(GRID)
    by_q = [np.arange(4 * i, 4 * i + 4) for i in range(3)]  # grid order is q-major
    cases = {
        ("map", None): 1.0,
        ("vmap", None): steps.mean() / steps.max(),
        ("grouped", None): 1.0,  # on CPU, with a data-dependent loop: one member per batch
        ("grouped", 4): _efficiency(steps, by_q),
        ("grouped", 2): _efficiency(steps, [b[i : i + 2] for b in by_q for i in (0, 2)]),
        ("batched", 3): _efficiency(steps, [np.arange(i, i + 3) for i in range(0, 12, 3)]),
    }
    for (strategy, batch_size), efficiency in cases.items():
        ds = sweep(iterate, GRID, strategy=strategy, batch_size=batch_size)
        assert ds.attrs["lockstep_efficiency"] == pytest.approx(efficiency, rel=1e-12)
        assert ds.attrs["lockstep_waste"] == pytest.approx(1 - efficiency, rel=1e-12)
    assert cases["grouped", 4] > 1.4 * cases["vmap", None]  # 0.61 against 0.42


def test_groups_cut_by_chunks_and_uneven_groups_equal_map():
    grid = Grid.zip(q=[1.0, 1.0, 2.0, 3.0, 3.0, 3.0], alpha=[0.1, 0.5, 0.2, 0.3, 0.9, 0.4])
    grid = grid * Grid(shift=[0.0, 1.0])  # groups of 4, 2 and 6 members

    def member(q, alpha, shift):
        return iterate(q, alpha + shift)

    mapped = sweep(member, grid, strategy="map")
    for chunk_size, batch_size in [(5, None), (5, 2), (12, 4), (7, 3)]:
        ds = sweep(member, grid, strategy="grouped", chunk_size=chunk_size, batch_size=batch_size)
        assert ds.attrs["group_by"] == ["q"]
        np.testing.assert_allclose(ds.x.values, mapped.x.values, rtol=1e-14, atol=0)
        np.testing.assert_array_equal(ds.num_steps.values, mapped.num_steps.values)


def test_explicit_group_by_and_a_grid_without_branches():
    ds = sweep(iterate, GRID, strategy="grouped", group_by=["alpha"])
    assert ds.attrs["group_by"] == ["alpha"]
    np.testing.assert_array_equal(ds.num_steps.values.ravel(), expected_steps(GRID))

    def smooth(q, alpha):
        return {"y": jnp.sin(q * alpha)}

    ds = sweep(smooth, GRID, strategy="grouped")  # no branch: one group, plain vmap
    assert ds.attrs["group_by"] == [] and "lockstep_efficiency" not in ds.attrs
    np.testing.assert_allclose(
        ds.y.values.ravel(), np.sin(np.prod(list(GRID.members().values()), 0))
    )


def test_auto_strategy_choices():
    traced_loop, grid = _trace(iterate, GRID), GRID

    def branch_only(q, alpha):
        return jax.lax.cond(q == 1.0, lambda: alpha, lambda: -alpha)

    traced_branch = _trace(branch_only, grid)
    assert _auto_strategy(traced_loop, "cpu", ("q",)) == "map"
    assert _auto_strategy(traced_loop, "gpu", ("q",)) == "grouped"
    assert _auto_strategy(traced_loop, "gpu", ()) == "vmap"
    assert _auto_strategy(traced_branch, "cpu", ("q",)) == "grouped"
    assert sweep(branch_only, grid).attrs["strategy"] == "grouped"
    assert sweep(iterate, grid).attrs["strategy"] == "map"


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"strategy": "map", "group_by": ["q"]}, "`group_by` goes with"),
        ({"strategy": "grouped", "group_by": ["nope"]}, "`group_by` must be a sequence"),
        ({"strategy": "grouped", "group_by": "q"}, "`group_by` must be a sequence"),
        ({"strategy": "grouped", "batch_size": 0}, "`batch_size` must be an integer >= 1"),
        ({"strategy": "vmap", "batch_size": 2}, "`batch_size` .* goes with"),
    ],
)
def test_bad_grouped_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        sweep(iterate, GRID, **kwargs)
