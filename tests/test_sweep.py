"""sweep: grids, one trace per sweep, padded depth, strategies, devices, checkpoints, failures."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import mirrorflow_jax as mf
from mirrorflow_jax import Grid, sweep
from mirrorflow_jax._sweep import _time_coordinate

from . import sweep_script as script

SCRIPT = os.path.join(os.path.dirname(__file__), "sweep_script.py")
DEVICES_4 = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
RUNS = {  # fresh-process sweeps: mode of sweep_script.py, extra environment
    "killed": ("checkpoint", {"SWEEP_KILL": "1"}),
    "single": ("single", {}),
    "sharded": ("sharded", {"XLA_FLAGS": DEVICES_4.strip()}),  # the suite's XLA_FLAGS kept
}


class _Run:
    """A sweep_script.py process shared by all pytest-xdist workers: the first worker to
    create its folder starts it and records its exit code there; any worker can wait for it."""

    def __init__(self, root, name: str):
        self.directory = root / f"sweep_{name}"
        self.waiter = None
        try:
            self.directory.mkdir()
        except FileExistsError:  # another worker started it
            return
        mode, env = RUNS[name]
        (self.directory / "out").mkdir()
        command = [sys.executable, SCRIPT, mode, str(self.directory / "out")]
        with open(self.directory / "stderr.log", "wb") as log:
            process = subprocess.Popen(command, env=dict(os.environ, **env), stderr=log)
        self.waiter = threading.Thread(target=self._record, args=(process,))
        self.waiter.start()

    def _record(self, process):
        code = process.wait()
        (self.directory / "code.tmp").write_text(str(code))
        os.replace(self.directory / "code.tmp", self.directory / "returncode")

    def finished(self, returncode: int, timeout: float = 600.0):
        """The process's output folder, once it has exited with ``returncode``."""
        path, deadline = self.directory / "returncode", time.monotonic() + timeout
        while not path.exists():
            assert time.monotonic() < deadline, f"{self.directory} did not finish"
            time.sleep(0.1)
        log = (self.directory / "stderr.log").read_text()[-3000:]
        assert int(path.read_text()) == returncode, log
        return self.directory / "out"


@pytest.fixture(scope="module", autouse=True)
def runs(tmp_path_factory):
    """Start the fresh-process sweeps first, so that they run alongside the tests here."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: shared
    started = {name: _Run(root, name) for name in RUNS}
    yield started
    for run in started.values():  # the other workers may be waiting for its exit code
        if run.waiter is not None:
            run.waiter.join()


@pytest.fixture(scope="module")
def depth_sweep(runs):
    """α × q × depth × ε on one device with the auto strategy, in 4 checkpointed chunks (run
    in another process): (as saved there, as resumed here from its checkpoints)."""
    out = runs["single"].finished(0)
    resumed = sweep(
        script.padded_member, script.DEPTH_GRID, chunk_size=5, checkpoint_dir=out / "checkpoints"
    )
    return mf.load_dataset(out / "single.nc"), resumed


def _depth2_reference(runs) -> dict[str, np.ndarray]:
    """The unpadded depth-2 model at every (α, q, ε) of DEPTH2 (plain vmap, another process)."""
    with np.load(runs["sharded"].finished(0) / "depth2.npz") as saved:
        reference = dict(saved)
    assert reference["ok"].all()
    return reference


# ----------------------------------------------------------------------------- grids


def test_grid_product_and_zip():
    grid = Grid(alpha=[0.1, 0.2], seed=np.arange(3)) * Grid.zip(q=[1.0, 2.0], eps=[1e-3, 0.0])
    assert grid.dims == ("alpha", "seed", "q") and grid.shape == (2, 3, 2) and grid.size == 12
    members = grid.members()
    assert members["seed"].dtype.kind == "i"
    combos = set(zip(*(members[k].tolist() for k in ("alpha", "seed", "q", "eps")), strict=True))
    expected = {(a, s, q, e) for a in (0.1, 0.2) for s in range(3) for q, e in ((1, 1e-3), (2, 0))}
    assert combos == expected
    assert grid.coords()["eps"][0] == "q"


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: Grid(alpha=[]), r"grid axis `alpha` is empty"),
        (lambda: Grid(alpha=[0.1], q=np.ones((2, 2))), r"grid axis `q` must be 1-D"),
        (lambda: Grid(alpha=["a", "b"]), r"grid axis `alpha` must hold numbers"),
        (lambda: Grid(alpha=[0.1, np.nan]), r"grid axis `alpha` must be finite"),
        (lambda: Grid.zip(q=[1.0, 2.0], eps=[0.0]), r"equal lengths; got \{'q': 2, 'eps': 1\}"),
        (lambda: Grid(alpha=[1.0]) * Grid(alpha=[2.0]), r"grid axis `alpha` appears twice"),
        (lambda: Grid(), r"needs at least one axis"),
    ],
)
def test_bad_grids(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def _generic(a, b, seed):
    script.TRACES["count"] += 1
    noise = jax.random.normal(jax.random.key(seed), ())
    return {"y": a * jnp.arange(3.0) + b, "log_a": jnp.log(a), "noise": noise}


@pytest.mark.parametrize(
    "grid, kwargs, pattern",
    [
        (Grid(a=[1.0], b=[0.0], seed=[0], c=[1.0]), {}, r"grid axis `c` is not a parameter"),
        (Grid(a=[1.0], b=[0.0]), {}, r"`fn` parameter `seed` has no grid axis"),
        (Grid(a=[1.0], b=[0.0], seed=[0]), {"strategy": "pmap"}, r"`strategy` must be one of"),
        (
            Grid(a=[1.0], b=[0.0], seed=[0]),
            {"batch_size": 2},
            r"`batch_size` .*strategy='batched' \(required\) or 'grouped'",
        ),
        (Grid(a=[1.0], b=[0.0], seed=[0]), {"chunk_size": 0}, r"`chunk_size` must be an integer"),
        (Grid(a=[1.0], b=[0.0], seed=[0]), {"devices": []}, r"`devices` must be a non-empty"),
    ],
)
def test_bad_sweeps_raise_before_tracing(grid, kwargs, pattern):
    before = script.TRACES["count"]
    with pytest.raises(ValueError, match=pattern):
        sweep(_generic, grid, **kwargs)
    assert script.TRACES["count"] == before


def test_axis_clashing_with_a_result_raises_before_compiling():
    def fn(a, y):
        return {"y": a * y}

    with pytest.raises(ValueError, match=r"grid axis `y` clashes with a result"):
        sweep(fn, Grid(a=[1.0], y=[2.0]))


# ----------------------------------------------------------------------------- strategies


@pytest.mark.parametrize(
    "strategy, batch_size", [("vmap", None), ("map", None), ("batched", 2), ("auto", None)]
)
def test_strategies_on_a_pytree_output(strategy, batch_size):
    grid = Grid(a=[0.5, -1.0, 2.0], seed=[0, 7]) * Grid.zip(b=[0.0, 1.0])
    script.TRACES["count"] = 0
    ds = sweep(_generic, grid, strategy=strategy, batch_size=batch_size, chunk_size=4)
    assert script.TRACES["count"] == 1
    assert ds.attrs["strategy"] == ("vmap" if strategy == "auto" else strategy)  # no while loop
    for a in (0.5, -1.0, 2.0):
        for seed in (0, 7):
            for b in (0.0, 1.0):
                member = ds.sel(a=a, seed=seed, b=b)
                np.testing.assert_array_equal(member.y, a * np.arange(3.0) + b)
                assert float(member.noise) == float(jax.random.normal(jax.random.key(seed), ()))
                assert bool(member.ok) == (a > 0), "log(-1) is NaN: that member fails alone"
    assert ds.y.dims == ("a", "seed", "b", "y_dim0")


def test_progress_bar_counts_chunks(capsys):
    sweep(_generic, Grid(a=[1.0, 2.0, 3.0], b=[0.0], seed=[0]), chunk_size=1, progress=True)
    err = capsys.readouterr().err
    assert "sweep" in err and "3/3" in err and "chunk" in err


def test_save_times_that_round_above_t1_do_not_stop_a_sweep_over_t1():
    """``arange(k) * (t1 / (k − 1))`` ends a hair above t1 for t1 = 3.1 or 3.9 (k = 4). With
    t1 swept it cannot be checked before tracing; such times count as t1 (and a concrete t1
    gets the same slack), while times clearly outside still raise."""
    problem = mf.ScalarToy()
    model = mf.DeepDiagonal.scaled(0.1, depth=2, dim=1)

    def member(t1):
        ts = jnp.arange(4.0) * (t1 / 3)
        return mf.solve_flow(mf.SteepestFlow(mf.Lp(2.0)), model, problem, t1, saveat=ts)

    t1s = [2.0, 3.1, 3.9]
    assert float(np.arange(4.0)[-1] * (3.1 / 3)) > 3.1  # the rounding this test is about
    ds = sweep(member, Grid(t1=t1s), strategy="vmap")
    assert ds.ok.values.all()
    for t1 in t1s:
        single = member(t1)
        np.testing.assert_allclose(ds.x.sel(t1=t1).values, single.x, rtol=1e-12)
        assert float(single.ts[-1]) == t1

    def fixed_times(t1):  # concrete save times, traced t1: checked at run time only
        flow = mf.SteepestFlow(mf.Lp(2.0))
        return mf.solve_flow(flow, model, problem, t1, saveat=jnp.array([0.0, 3.1])).x

    np.testing.assert_allclose(
        jax.jit(fixed_times)(3.1), member(3.1).x[jnp.array([0, -1])], rtol=1e-12
    )
    with pytest.raises(ValueError, match="`saveat` times must be non-decreasing and lie in"):
        mf.solve_flow(mf.SteepestFlow(mf.Lp(2.0)), model, problem, 3.1, saveat=[0, 3.1 + 1e-9])


# ----------------------------------------------------------------------------- depth sweep


@jax.jit
def _velocities(factors):
    """Structured and naive velocities (with weight decay) of the depth-2 model, padded to 4."""
    padded = mf.Padded(mf.DeepDiagonal(factors), 2)
    plain = mf.DeepDiagonal(factors[:2])
    loss = mf.sparse_regression(jax.random.key(2), n=8, d=5, k=2)
    out = {"x": (padded(), plain()), "depth": padded.depth}
    for smoothing_at in ("naive", "structured"):
        flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2), smoothing_at=smoothing_at, **script.WEIGHT_DECAY)
        velocities = flow(0.0, padded, loss).model.factors, flow(0.0, plain, loss).factors
        out[smoothing_at] = velocities
    return out


def test_padded_model_velocity_and_errors():
    full = mf.DeepDiagonal.random(jax.random.key(1), depth=4, dim=5, scale=0.7)
    out = _velocities(full.factors)
    assert int(out["depth"]) == 2
    np.testing.assert_allclose(*out["x"], rtol=1e-15)
    for smoothing_at in ("naive", "structured"):
        padded, plain = out[smoothing_at]
        np.testing.assert_allclose(padded[:2], plain, rtol=1e-14)
        assert np.all(padded[2:] == 0.0), "the padding has zero velocity"
    with pytest.raises(ValueError, match=r"`depth` must lie in \[1, 4\]; got 5"):
        mf.Padded(full, 5)
    with pytest.raises(ValueError, match=r"`depth` must be an integer >= 1; got 0"):
        mf.Padded(full, 0)
    with pytest.raises(ValueError, match=r"depth-3 factor must not be identically zero"):
        mf.Padded(mf.DeepDiagonal.scaled(0.0, depth=4, dim=5), 3)


def test_depth_grid_is_traced_once_and_runs_in_chunks(depth_sweep):
    single, resumed = depth_sweep
    assert single.attrs["fn_traces"] == 1, "one trace for 16 members in 4 chunks"
    assert single.attrs["num_chunks"] == 4 and single.attrs["chunks_resumed"] == 0
    assert single.attrs["strategy"] == "map", "auto on CPU: an adaptive solve runs as lax.map"
    assert bool(single.ok.all()) and bool((single.result == 0).all())
    np.testing.assert_array_equal(single.t, script.SAVES)
    assert resumed.attrs["chunks_resumed"] == 4 and resumed.attrs["compile_seconds"] == 0.0


def test_netcdf_round_trip(depth_sweep):
    single, resumed = depth_sweep  # saved and loaded; rebuilt here from checkpoints
    xr.testing.assert_equal(single, resumed)
    assert json.loads(single.attrs["grid"]) == resumed.attrs["grid"]
    assert single.attrs["jax_version"] == jax.__version__
    assert single.attrs["mirrorflow_jax_version"] == mf.__version__
    assert single.attrs["smoothing_at"] == "structured"


def test_checkpoints_of_another_sweep_are_refused(runs):
    with pytest.raises(ValueError, match=r"holds chunks of a different sweep"):
        sweep(
            script.padded_member,
            script.DEPTH_GRID,
            chunk_size=4,
            checkpoint_dir=runs["single"].finished(0) / "checkpoints",
        )


def test_time_is_a_variable_when_members_saved_at_different_times():
    ts = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, np.inf]])  # the second stopped at an event
    t, variable = _time_coordinate(ts)
    np.testing.assert_array_equal(t, [0.0, 1.0, 2.0])
    assert variable is None
    t, variable = _time_coordinate(np.array([[0.0, 1.0], [0.0, 2.0]]))
    assert t is None and variable.shape == (2, 2)


# ------------------------------------------------------- against the processes started by `runs`


def _explicit_member(alpha, q, eps):
    """`script.depth2_member` on the explicit solver alone: one program for every (q, ε), no
    switch over solve_flow's automatic candidates (its members at q = 2 take that solver)."""
    flow = mf.SteepestFlow(mf.Lp(q, eps), **script.WEIGHT_DECAY)
    model = mf.SignedDeepDiagonal.scaled(alpha, depth=2, dim=script.DIM)
    return mf.solve_flow(
        flow,
        model,
        script.PROBLEM,
        script.T1,
        saveat=script.SAVES,
        solver=diffrax.Tsit5(),
        stepsize_controller=script.CONTROLLER,
        max_steps=script.MAX_STEPS,
    )


def test_failed_member_is_marked_and_others_match_a_clean_run(runs):
    # the exact sign flow (ε = 0, on the explicit solver) chatters where factors meet 0 and
    # needs far more than MAX_STEPS; the other two are DEPTH2 members (gradient flow)
    grid = Grid.zip(alpha=[0.3, 0.4, 0.5], q=[2.0, 1.0, 2.0], eps=[1e-2, 0.0, 1e-1])
    ds = sweep(_explicit_member, grid, strategy="vmap")  # lockstep with the failing member
    assert ds.ok.values.tolist() == [True, False, True]
    failed = ds.isel(alpha=1)
    assert int(failed.result) == ds.attrs["result_codes"]["max_steps_reached"]
    assert int(failed.num_steps) == script.MAX_STEPS and bool(failed.finite)
    reference = _depth2_reference(runs)
    for alpha, q, eps in ((0.3, 2.0, 1e-2), (0.5, 2.0, 1e-1)):
        i = script.DEPTH2.tolist().index([alpha, q, eps])
        member = ds.sel(alpha=alpha)
        np.testing.assert_allclose(member.x, reference["x"][i], rtol=0, atol=1e-12)
        assert int(member.num_steps) == int(reference["num_steps"][i]), alpha


def test_padded_depth_equals_unpadded(depth_sweep, runs):
    ds, _ = depth_sweep
    depth, reference = 2, _depth2_reference(runs)  # padded to MAX_DEPTH = 3
    for i, (alpha, q, eps) in enumerate(script.DEPTH2):
        member = ds.sel(alpha=alpha, q=q, eps=eps, depth=depth)
        np.testing.assert_allclose(member.x, reference["x"][i], rtol=0, atol=1e-12)
        assert int(member.num_steps) == int(reference["num_steps"][i])
        u = member.params_model_u.values
        np.testing.assert_allclose(u[:, :depth], reference["u"][i], rtol=0, atol=1e-12)
        assert np.all(u[:, depth:] == 0.0), "padding stays exactly in place"
        balance = member.balance.values  # (t, 2, MAX_DEPTH - 1, DIM)
        assert np.all(np.isnan(balance[:, :, depth - 1 :]))
        np.testing.assert_allclose(
            balance[:, :, : depth - 1], reference["balance"][i], rtol=0, atol=1e-12
        )


def test_killed_sweep_resumes_only_unfinished_chunks(runs):
    out = runs["killed"].finished(-signal.SIGKILL)
    finished = sorted(p.name for p in out.iterdir())
    assert finished == [f"chunk_{k:06d}.nc" for k in range(3)], "killed inside chunk 3"
    stamps = {name: (out / name).stat().st_mtime_ns for name in finished}

    script.COMPUTED["members"] = 0
    resumed = script.checkpointed(out)
    assert script.COMPUTED["members"] == 4, "only chunks 3 and 4 (2 members each) run"
    assert resumed.attrs["chunks_resumed"] == 3
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == stamps
    assert len(list(out.iterdir())) == 5

    uninterrupted = sweep(script.descent, script.CHECKPOINT_GRID, strategy="map", chunk_size=2)
    xr.testing.assert_identical(resumed.drop_attrs(), uninterrupted.drop_attrs())
    assert bool(resumed.ok.all())


def test_sharded_over_four_devices_equals_one_device(runs, depth_sweep):
    sharded = mf.load_dataset(runs["sharded"].finished(0) / "sharded.nc")
    single, _ = depth_sweep
    assert sharded.attrs["num_devices"] == 4 and single.attrs["num_devices"] == 1
    assert sharded.attrs["strategy"] == "vmap" and sharded.attrs["num_chunks"] == 3
    assert single.attrs["num_chunks"] == 4
    xr.testing.assert_allclose(sharded.drop_attrs(), single.drop_attrs(), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(sharded.num_steps, single.num_steps)
