"""A later `sweep` call of the same program in the same process reuses its executable."""

import numpy as np

import mirrorflow_jax as mf

from .helpers import small_regression

PROBLEM = small_regression(seed=0, n=6, d=8, k=2)


def _run(alpha, q):
    flow = mf.SteepestFlow(mf.Lp(q, 0.0))
    model = mf.SignedDeepDiagonal.scaled(alpha, depth=2, dim=8)
    return mf.solve_flow(flow, model, PROBLEM, 1.0)


def test_second_call_reuses_the_compiled_program_and_new_values_too():
    grid = mf.Grid(alpha=[0.1, 0.2], q=[1.5, 2.0])
    first = mf.sweep(_run, grid, progress=False)
    again = mf.sweep(_run, grid, progress=False)
    compile_seconds = float(first.attrs["compile_seconds"])
    assert compile_seconds > 0.2
    assert float(again.attrs["compile_seconds"]) < 0.1 * compile_seconds
    np.testing.assert_array_equal(again.x.values, first.x.values)
    # New values on the same axes: the same program, and the results of a fresh solve.
    other = mf.sweep(_run, mf.Grid(alpha=[0.3, 0.05], q=[1.25, 2.0]), progress=False)
    assert float(other.attrs["compile_seconds"]) < 0.1 * compile_seconds
    member = other.sel(alpha=0.05, q=1.25)
    np.testing.assert_allclose(member.x.isel(t=-1).values, _run(0.05, 1.25).x[-1], rtol=1e-12)
    # Another program (another function of the members) compiles.
    shifted = mf.sweep(lambda alpha, q: _run(alpha, q).x[-1] + 1.0, grid, progress=False)
    assert float(shifted.attrs["compile_seconds"]) > 0.2
