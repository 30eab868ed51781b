import numpy as np
import pytest

import mirrorflow_jax as mf
from mirrorflow_jax.cli import main
from mirrorflow_jax.experiments import demo

SMALL = demo.Config(alphas=(1e-3, 1e-2, 1e-1), n=6, d=8, k=2, t1=5.0, num_saves=6)


@pytest.fixture(scope="module")
def small_demo():
    return demo.run(SMALL)


def test_demo_dataset(small_demo):
    ds = small_demo
    assert set(ds.dims) == {"q", "alpha", "t", "coordinate"}
    assert bool(ds.escape_ok.all()) and bool(ds.regression_ok.all())
    # SignGF escapes in O(1) from every α; GF at depth 3 takes ~1/α
    sign, gf = ds.escape_time.sel(q=1.0).values, ds.escape_time.sel(q=2.0).values
    assert sign.max() < 1.0
    assert gf[0] > 50 * gf[-1]
    assert ds.attrs["smoothing_at"] == "structured"
    # The sign flow is a descent flow: its loss curve falls monotonically (to the solver's
    # rtol 1e-6) down to the accuracy floor, with the solver "auto" chose for it.
    loss = np.maximum(ds.loss.sel(q=1.0).values, demo.LOSS_FLOOR)
    assert np.all(np.diff(loss) <= 1e-6 * loss[:-1])
    assert ds.solver.sel(q=1.0).item() == "SignFlowKvaerno3"


def test_netcdf_round_trip(small_demo, tmp_path):
    path = mf.save_dataset(small_demo, tmp_path / "demo.nc")
    loaded = mf.load_dataset(path)
    np.testing.assert_array_equal(loaded.escape_time.values, small_demo.escape_time.values)
    assert loaded.attrs["jax_version"]
    assert loaded.attrs["mirrorflow_jax_version"] == mf.__version__
    assert not list(tmp_path.glob("*.tmp")), "no temporary files left behind"


def test_figures_checks_and_summary(small_demo):
    """The demo follows the experiment contract: named figures, and checks of its predictions
    (each a `Check` that holds on the small config)."""
    (fig,) = demo.figures(small_demo).values()
    assert len(fig.axes) == 2
    checks = demo.checks(small_demo)
    assert len(checks) == 5  # ok, three escape regimes, the monotone sign-flow loss
    assert all(c.held for c in checks), [c for c in checks if not c.held]
    text = demo.summary(small_demo)
    assert "~log(1/alpha)" in text and "constant (0)" in text


def test_theory_regimes():
    assert mf.escape_regime(1.0, 4) == ("constant", 0.0)
    assert mf.escape_regime(2.0, 2) == ("log", 0.0)
    assert mf.escape_regime(1.5, 3) == ("log", 0.0)
    assert mf.escape_regime(2.0, 4) == ("power", -2.0)
    assert mf.metric_exponent(1.0, 2) == 0.5
    assert mf.saddle_speed(0.5, 2.0, 3) == pytest.approx(0.0625)
    with pytest.raises(ValueError, match="`q` must lie in"):
        mf.escape_regime(3.0, 2)


def test_cli_requires_a_command(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "demo" in capsys.readouterr().err
