"""Hostile inputs, each with its exact outcome: a named ValueError before tracing (API), a
result code for the one member concerned (traced values, sweeps), or a one-line config error
with exit status 2 (CLI)."""

import os
import pathlib
import subprocess
import sys
import textwrap
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mirrorflow_jax as mf
from mirrorflow_jax import Grid, _guard, sweep
from mirrorflow_jax.cli import main

from .helpers import small_regression

PROBLEM = mf.LeastSquares(jnp.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]]), jnp.ones(2))
MODEL = mf.DeepDiagonal.scaled(0.1, depth=2, dim=3)
FLOW = mf.SteepestFlow(mf.Lp(1.5))
CODES = {name: int(getattr(mf.RESULTS, name)._value) for name in ("successful", "nonfinite")}
CODES |= {
    name: int(getattr(mf.RESULTS, name)._value)
    for name in ("invalid_hyperparameter", "dt_min_reached", "max_steps_reached")
}


def _solve(**kwargs):
    args = {"flow": FLOW, "params0": MODEL, "loss": PROBLEM, "t1": 1.0} | kwargs
    return mf.solve_flow(args.pop("flow"), args.pop("params0"), args.pop("loss"), **args)


# ----------------------------------------------------------------- API: named errors, no trace

API = {
    "SteepestFlow(2.0)": (lambda: mf.SteepestFlow(2.0), r"`geometry` must be an Lp geometry"),
    'solver="tsit5"': (lambda: _solve(solver="tsit5"), r"`solver` must be .*got 'tsit5'"),
    "2-D saveat": (
        lambda: _solve(saveat=jnp.zeros((2, 2))),
        r"`saveat` times must be a 1-D array; got shape \(2, 2\)",
    ),
    "complex factors": (
        lambda: _solve(params0=mf.DeepDiagonal(jnp.ones((2, 3), complex))),
        r"`params0` must be a PyTree of floating-point arrays, real not complex",
    ),
    "Lp(q=[1, 1.5])": (lambda: mf.Lp(q=[1.0, 1.5]), r"`q` must be a real scalar; got list"),
    "dt0=-0.1": (lambda: _solve(dt0=-0.1), r"`dt0` must lie in \(0.0, inf\); got -0.1"),
    "lists as data": (
        lambda: mf.LeastSquares([[1.0, 2.0]], [1.0]),
        r"`A` must be a JAX or NumPy array .*; got list",
    ),
    "t1=[5.]": (lambda: _solve(t1=[5.0]), r"`t1` must be a real scalar; got list of shape \(1,\)"),
    "t1=inf": (lambda: _solve(t1=np.inf), r"`t1` must be finite"),
    "t1 < t0": (lambda: _solve(t1=-1.0), r"`t1` must lie in \(t0, inf\)"),
    "NaN save time": (
        lambda: _solve(saveat=jnp.array([0.0, jnp.nan, 1.0])),
        r"`saveat` must be finite; it holds 1 non-finite entries",
    ),
    "empty data": (
        lambda: mf.LeastSquares(jnp.zeros((0, 3)), jnp.zeros(0)),
        r"`A` must hold at least one sample \(n >= 1\); got n = 0",
    ),
    "labels 0/1": (
        lambda: mf.LinearClassification(jnp.ones((2, 3)), jnp.array([0.0, 1.0])),
        r"`y` must hold labels -1 or \+1; 1 of 2 entries are not \(e.g. 0\)",
    ),
    "q = 2.5": (lambda: mf.Lp(2.5), r"`q` must lie in \[1.0, 2.0\]; got 2.5"),
    "negative decay": (
        lambda: mf.SteepestFlow(decoupled_wd=-50.0),
        r"`decoupled_wd` must lie in \[0.0, inf\); got -50",
    ),
}


@pytest.mark.parametrize("case", API)
def test_api_refuses_before_tracing(case):
    call, pattern = API[case]
    with pytest.raises(ValueError, match=pattern):
        call()


BOUNDED = {
    "a grid axis of 10^6 NaNs": lambda: Grid(a=np.full(10**6, np.nan)),
    "a 10^6-character strategy": lambda: sweep(lambda a: a, Grid(a=[1.0]), strategy="x" * 10**6),
    "a 10^6-item max_steps": lambda: _solve(max_steps=list(range(10**6))),
    "a 5000-digit max_steps": lambda: _solve(max_steps=-(10**5000)),
}


@pytest.mark.parametrize("case", BOUNDED)
def test_error_messages_never_repr_unbounded_values(case):
    with pytest.raises(ValueError) as error:
        BOUNDED[case]()
    assert len(str(error.value)) < 300 and "\n" not in str(error.value), str(error.value)[:500]


# ----------------------------------------------------------------- traced values: result codes


def _member(h, q, eps, wd, m):
    """t1 = 1/h (h = 0: inf), save times (0, √m, t1) (m < 0: NaN), all traced."""
    flow = mf.SteepestFlow(mf.Lp(q, eps), decoupled_wd=wd)
    t1 = 1.0 / h
    saveat = jnp.stack([jnp.zeros_like(t1), jnp.sqrt(m), t1])
    return mf.solve_flow(flow, MODEL, PROBLEM, t1, saveat=saveat, solver=diffrax.Tsit5())


TRACED = {  # member: (h, q, eps, wd, m)
    "valid": (1.0, 1.5, 0.0, 0.0, 0.25),
    "t1 < t0": (-1.0, 1.5, 0.0, 0.0, 0.25),
    "t1 = inf": (0.0, 1.5, 0.0, 0.0, 0.25),
    "q = 2.5": (1.0, 2.5, 0.0, 0.0, 0.25),
    "eps < 0": (1.0, 1.5, -1e-3, 0.0, 0.25),
    "decay -50": (1.0, 1.5, 0.0, -50.0, 0.25),
    "NaN save time": (1.0, 1.5, 0.0, 0.0, -1.0),
}


def test_traced_hyperparameters_out_of_range_get_their_own_code_in_a_sweep():
    h, q, eps, wd, m = (list(axis) for axis in zip(*TRACED.values(), strict=True))
    ds = sweep(_member, Grid.zip(h=h, q=q, eps=eps, wd=wd, m=m), strategy="map")
    invalid = CODES["invalid_hyperparameter"]
    assert ds.attrs["result_codes"]["invalid_hyperparameter"] == invalid
    assert ds.result.values.tolist() == [CODES["successful"]] + [invalid] * 6
    assert ds.ok.values.tolist() == [True] + [False] * 6
    assert ds.finite.values.tolist() == [True] + [False] * 6, "finite says what it means"
    assert ds.num_steps.values[1:].tolist() == [0] * 6, "an invalid member is not solved"
    reference = _solve(saveat=jnp.array([0.0, 0.5, 1.0]), solver=diffrax.Tsit5())
    np.testing.assert_allclose(ds.loss.isel(h=0), reference.loss, rtol=1e-12, atol=0)
    assert int(ds.num_steps.isel(h=0)) == int(reference.num_steps)


def test_traced_hyperparameters_are_checked_under_the_users_own_jit_and_vmap():
    h, q, eps, wd, m = (jnp.array(axis) for axis in zip(*TRACED.values(), strict=True))
    out = jax.jit(jax.vmap(_member))(h, q, eps, wd, m)
    assert out.ok.tolist() == [True] + [False] * 6
    invalid = out.result == mf.RESULTS.invalid_hyperparameter
    assert invalid.tolist() == [False] + [True] * 6
    assert np.all(np.isposinf(np.asarray(out.ts)[1:])), "an invalid member reached no time"


@pytest.mark.parametrize(
    ("make", "good", "bad"),
    [
        (lambda v: mf.SteepestFlow(mf.Lp(v)), 1.0, 2.5),
        (lambda v: mf.SteepestFlow(mf.Lp(1.0, v)), 0.0, -1e-3),
        (lambda v: mf.SteepestFlow(coupled_wd=v), 0.0, -0.1),
        (lambda v: mf.AdamFlow(rate1=v, rate2=1.0), 1.0, 0.0),
        (lambda v: mf.AdamFlow(rate1=1.0, rate2=1.0, decoupled_wd=v), 0.0, -1.0),
        (lambda v: mf.MirrorFlow(mf.Lp(1.5), depth=2, c=v), 0.0, -1.0),
        (lambda v: mf.MirrorFlow(mf.Lp(v), depth=2, c=1.0), 2.0, 0.5),
    ],
)
def test_every_flows_traced_hyperparameters_are_range_checked(make, good, bad):
    valid = jax.jit(jax.vmap(lambda v: _guard._flow_valid(make(v))))(jnp.array([good, bad]))
    assert valid.tolist() == [True, False]


# ----------------------------------------------------------------- non-finite states: early end


def _growth(rate):
    """f(x) = −rate·‖x‖²/2: x(t) = x0·e^(rate·t) overflows float64 at t ≈ 709/rate."""
    return lambda x: -0.5 * rate * jnp.sum(x * x)


def test_overflow_ends_with_nonfinite_long_before_max_steps():
    flow = mf.SteepestFlow(mf.Lp(2.0))
    sol = mf.solve_flow(flow, jnp.ones(2), _growth(1000.0), 1.0, max_steps=100_000)
    assert int(sol.result._value) == CODES["nonfinite"] and not bool(sol.ok)
    assert int(sol.num_steps) < 10_000  # ~8 steps per e-fold up to e^709
    assert 0.70 < float(sol.ts[-1]) < 0.71, "stopped where the state overflowed"


def test_finite_time_blow_up_ends_with_dt_min_reached():
    """x' = 4x³ from 1 blows up at t = 1/8: no step can pass it."""
    flow = mf.SteepestFlow(mf.Lp(2.0))
    sol = mf.solve_flow(flow, jnp.ones(2), lambda x: -jnp.sum(x**4), 1.0, max_steps=100_000)
    assert int(sol.result._value) == CODES["dt_min_reached"]
    assert int(sol.num_steps) < 1_000 and abs(float(sol.ts[-1]) - 0.125) < 1e-6


def test_fixed_steps_into_nan_end_with_nonfinite():
    flow = mf.SteepestFlow(mf.Lp(2.0))
    fixed = diffrax.ConstantStepSize()
    sol = mf.solve_flow(
        flow, jnp.ones(2), lambda x: -jnp.sum(x**4), 1.0, dt0=0.01, stepsize_controller=fixed
    )
    assert int(sol.result._value) == CODES["nonfinite"] and not bool(sol.ok)
    assert int(sol.num_steps) < 100


def test_one_members_bad_padded_depth_fails_alone():
    """A traced depth beyond the padding used to stop the whole sweep with a run-time error."""
    full = mf.DeepDiagonal.scaled(0.5, depth=3, dim=12)

    def run(depth):
        model = mf.Padded(full, depth)
        return mf.solve_flow(FLOW, model, small_regression(), 1.0, solver=diffrax.Tsit5())

    ds = sweep(run, Grid(depth=[2, 4, 3]), strategy="map")
    assert ds.ok.values.tolist() == [True, False, True]
    assert int(ds.result.sel(depth=4)) == CODES["nonfinite"] and not bool(ds.finite.sel(depth=4))


def test_a_grid_too_large_is_refused_before_anything_is_listed_or_traced(monkeypatch):
    calls = []

    def fn(a, b):
        calls.append(1)
        return {"y": a + b}

    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"the sweep's grid would hold about 4e\+09 numbers"):
        sweep(fn, Grid(a=np.arange(40_000.0)) * Grid(b=np.arange(25_000.0)))
    assert time.perf_counter() - start < 1.0 and not calls
    monkeypatch.setenv("MIRRORFLOW_MAX_ELEMENTS", "1000")
    with pytest.raises(ValueError, match=r"sweep's outputs .* raise the limit"):
        sweep(lambda a: {"y": jnp.zeros(100) + a}, Grid(a=np.arange(11.0)))
    monkeypatch.setenv("MIRRORFLOW_MAX_ELEMENTS", "1100")
    assert sweep(lambda a: {"y": jnp.zeros(100) + a}, Grid(a=np.arange(11.0))).y.shape == (
        11,
        100,
    )


def test_a_saved_trajectory_too_large_is_refused_before_compiling(monkeypatch):
    saves = jnp.linspace(0.0, 1.0, 200)  # × 6 parameters × 3 = 3600 numbers
    monkeypatch.setenv("MIRRORFLOW_MAX_ELEMENTS", "3000")
    with pytest.raises(ValueError, match=r"saved trajectory would hold about 3.6e\+03 numbers"):
        _solve(saveat=saves)
    monkeypatch.setenv("MIRRORFLOW_MAX_ELEMENTS", "3600")
    assert bool(_solve(saveat=saves, solver=diffrax.Tsit5()).ok)


# ----------------------------------------------------------------- CLI: exit 2, one line


def _laughs(levels: int, width: int = 9) -> str:
    text, previous = "experiment: balance\na0: &a0 [" + ", ".join(["1.0"] * width) + "]\n", "a0"
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [" + ", ".join([f"*{previous}"] * width) + "]\n"
        previous = f"a{i}"
    return text + f"qs: *{previous}\n"


def _many(n: int) -> str:
    return "[" + ", ".join(["1.5"] * n) + "]"


CLI = {  # name: (file text or bytes, --set overrides, message)
    "nested aliases": (_laughs(8), [], "expands (through its aliases) to more than 20000"),
    "list as the experiment": (
        "experiment: [balance, demo]\n",
        [],
        "`experiment` must be one of ['balance'",
    ),
    "invalid UTF-8": (b"experiment: balance\nn: \xff\xfe\n", [], "is not valid UTF-8 text"),
    "20000-deep list": (
        "experiment: balance\nqs: " + "[" * 20_000 + "]" * 20_000 + "\n",
        [],
        "nest",  # libyaml: "exceeded maximum nesting depth"; else "nests ... deeper than 64"
    ),
    "huge int": ("experiment: balance\nn: " + "9" * 5000 + "\n", [], "cannot be read"),
    "oversized file": ("experiment: balance\n#" + "x" * 200_000 + "\n", [], "more than 100000"),
    "--set qs=[]": ("experiment: balance\n", ["qs=[]"], "`qs` must be a non-empty list"),
    "--set eps=.inf": ("experiment: balance\n", ["eps=.inf"], "`eps` must be a finite number"),
    "t1: .inf": ("experiment: balance\nt1: .inf\n", [], "`t1` must be a finite number"),
    "--set n=1000000000": (
        "experiment: balance\n",
        ["n=1000000000"],
        "this config's results would hold about 3e+11 numbers",
    ),
    "num_saves: 1e9": ("experiment: balance\nnum_saves: 1e9\n", [], "must be an integer"),
    "num_saves: 1000000000": (
        "experiment: balance\nnum_saves: 1000000000\n",
        [],
        "raise the limit",
    ),
    "3000 x 3000 grid": (
        f"experiment: balance\nqs: {_many(3000)}\ndecays: {_many(3000)}\n",
        [],
        "9000000 members",
    ),
    "depth: 10000": ("experiment: balance\ndepth: 10000\n", [], "exceeds the depth limit 64"),
    "misspelt key": ("experiment: balance\ndepht: 3\n", [], "did you mean `depth`?"),
    "broken YAML": ("experiment: balance\nqs: [1.0, 2.0\n", [], "is not valid YAML"),
}


@pytest.mark.parametrize("case", CLI)
def test_cli_config_errors_exit_2_with_one_line(case, tmp_path, capsys):
    text, overrides, message = CLI[case]
    config, out = tmp_path / "config.yaml", tmp_path / "out"
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text)
    sets = [arg for item in overrides for arg in ("--set", item)]
    assert main(["run", str(config), "--out", str(out), *sets]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mirrorflow run: error: "), err[:500]
    assert message in err and len(err) < 600, err[:500]
    assert not out.exists()


def test_nested_alias_bomb_is_refused_within_a_second_and_200_mb():
    """A 600-byte file standing for 10¹² values (12 levels of 10 aliases), measured in a fresh
    process: wall time of the load, and growth of its peak resident memory."""
    code = textwrap.dedent(
        """
        import resource, sys, time
        from mirrorflow_jax.experiments._runner import ConfigError, load_config
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            load_config(sys.argv[1])
        except ConfigError as error:
            message = str(error)
        seconds = time.perf_counter() - start
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(seconds, growth, message)
        """
    )
    path = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"laughs-{os.getpid()}.yaml"
    path.write_text(_laughs(12, width=10))
    try:
        assert len(path.read_bytes()) < 1000
        run = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
        )
    finally:
        path.unlink()
    seconds, growth_kb, message = run.stdout.split(" ", 2)
    assert "expands (through its aliases)" in message, run.stdout + run.stderr[-2000:]
    assert float(seconds) < 1.0
    assert int(growth_kb) < 200 * 1024
