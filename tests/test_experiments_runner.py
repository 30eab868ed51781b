"""The experiment framework: configs, the ``mirrorflow run``/``list`` commands, and each
experiment's run → checks → figures on tiny grids."""

import dataclasses
import json
import pathlib
import sys
import types

import numpy as np
import pytest
import xarray as xr
import yaml
from matplotlib.figure import Figure

import mirrorflow_jax as mf
from mirrorflow_jax.cli import CONFIGS, main
from mirrorflow_jax.experiments import (
    EXPERIMENTS,
    _runner,
    balance,
    regime_map,
    saddle_escape,
    saddle_to_saddle,
)
from mirrorflow_jax.experiments._base import Check

TINY_ESCAPE = """\
experiment: saddle_escape
depths: [2, 3]
qs: [1.0, 1.5, 2.0]
alphas: [1.0e-4, 1e-3, 1.0e-2]
families: [balanced, saddle]
quick:
  qs: [1.0, 2.0]
"""


def _write(tmp_path: pathlib.Path, text: str, name: str = "tiny.yaml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_list_names_every_experiment_and_its_config(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert name in out
    assert "configs/saddle_escape.yaml" in out
    assert "Saddle escape: escape time vs init scale" in out


@pytest.mark.parametrize("name", list(EXPERIMENTS))
@pytest.mark.parametrize("quick", [False, True])
def test_shipped_configs_load(name, quick):
    loaded = _runner.load_config(CONFIGS / f"{name}.yaml", quick=quick)
    assert loaded.name == name
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert raw["experiment"] == name and isinstance(raw.get("quick"), dict)
    # the full config spells out every field, so the YAML is the whole experiment
    assert set(raw) - {"experiment", "quick"} == set(loaded.as_dict())


def test_run_writes_results_figures_and_summary_then_resumes(tmp_path, capsys):
    config, out = _write(tmp_path, TINY_ESCAPE), tmp_path / "out"
    argv = ["run", str(config), "--quick", "--out", str(out), "--set", "tolerance=0.05"]
    assert main(argv) == 0
    files = {p.name for p in out.iterdir() if p.is_file()}
    figures = {f"{n}.{s}" for n in ("escape_time", "exponents") for s in ("png", "pdf")}
    assert files == {"results.nc", "summary.json", "summary.md", "config.yaml"} | figures

    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "saddle_escape" and summary["quick"] is True
    assert summary["config"]["qs"] == [1.0, 2.0]  # the quick block
    assert summary["config"]["tolerance"] == 0.05  # --set
    assert summary["config"]["alphas"] == [1e-4, 1e-3, 1e-2]  # "1e-3" read as a number
    assert summary["run_seconds"] > 0 and summary["checkpoint_files_resumed"] == 0
    # 1 solve check + per (family, q, L): p, and dT/dlog(1/α) where m = 1 (q = 2, L = 2)
    assert summary["checks_total"] == 1 + 2 * (4 + 1) == len(summary["checks"])
    assert summary["all_held"] and summary["checks_held"] == summary["checks_total"]
    for check in summary["checks"]:
        assert set(check) == {"name", "measured", "predicted", "tolerance", "held", "detail"}
    p = {c["name"]: c for c in summary["checks"]}["exponent p, saddle q=2 L=3"]
    assert p["predicted"] == pytest.approx(-1.0) and abs(p["measured"] + 1.0) < 0.05

    markdown = (out / "summary.md").read_text()
    assert "| check | measured | predicted | tolerance | held |" in markdown
    assert all(c["name"] in markdown for c in summary["checks"])
    ds = mf.load_dataset(out / "results.nc")
    assert json.loads(ds.attrs["config"]) == summary["config"]
    assert ds.attrs["experiment"] == "saddle_escape"
    assert ds.escape_time.dims == ("start", "depth", "q", "alpha")
    assert yaml.safe_load((out / "config.yaml").read_text())["qs"] == [1.0, 2.0]
    assert "checks held" in capsys.readouterr().out

    # a second run of the same config into the same folder resumes from the checkpoints
    assert main(argv) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["checkpoint_files_resumed"] >= 1
    assert [c["measured"] for c in again["checks"]] == [c["measured"] for c in summary["checks"]]


def _fake_experiment() -> types.ModuleType:
    """A registered experiment with one check, to test the runner without solving anything."""
    module = types.ModuleType("fake_experiment", "Fake: one check that holds or not.")

    @dataclasses.dataclass(frozen=True)
    class Config:
        gap: float = 0.5

    def run(config, *, workdir, progress):
        # progress is on by default, also when stderr is not a terminal (then as log lines)
        assert pathlib.Path(workdir).parent.name == "checkpoints" and progress is True
        return xr.Dataset({"gap": config.gap})

    def checks(ds):
        gap = float(ds.gap)
        return [Check("gap closes", gap, 0.0, 0.1, gap <= 0.1, "fake")]

    def figures(ds):
        fig = Figure()
        fig.subplots().plot([0, 1], [float(ds.gap)] * 2)
        return {"gap": fig}

    module.__dict__.update(Config=Config, run=run, checks=checks, figures=figures)
    return module


@pytest.fixture
def fake_experiment(monkeypatch):
    monkeypatch.setitem(sys.modules, "fake_experiment", _fake_experiment())
    monkeypatch.setitem(EXPERIMENTS, "fake", "fake_experiment")


def test_failing_check_is_reported_and_strict_exits_nonzero(fake_experiment, tmp_path, capsys):
    config, out = _write(tmp_path, "experiment: fake\n"), tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 0  # a failed check is a result
    assert "1 of 1 checks FAILED" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checks"] == [
        {
            "name": "gap closes",
            "measured": 0.5,
            "predicted": 0.0,
            "tolerance": 0.1,
            "held": False,
            "detail": "fake",
        }
    ]
    assert not summary["all_held"] and summary["checks_held"] == 0
    assert "**FAILED**" in (out / "summary.md").read_text()
    assert {"gap.png", "gap.pdf"} <= {p.name for p in out.iterdir()}
    assert main(["run", str(config), "--out", str(out), "--strict"]) == 1
    assert main(["run", str(config), "--out", str(out), "--strict", "--set", "gap=0.05"]) == 0
    assert json.loads((out / "summary.json").read_text())["all_held"]


BAD = [
    ("experiment: saddle_escape\nfoo: 1\n", [], "unknown key `foo`"),
    ("experiment: saddle_escape\ndepths: two\n", [], "`depths` must be a list of integers"),
    ("experiment: saddle_escape\nqs: [1.0, x]\n", [], "`qs[1]` must be a number"),
    ("experiment: saddle_escape\nqs: [1.0, 3.0]\n", [], "`qs` must lie in [1.0, 2.0]"),
    ("experiment: saddle_escape\nrandom_seeds: 0\n", [], "`random_seeds` must be an integer >= 1"),
    ("experiment: saddle_escape\nfamilies: [tilted]\n", [], "`families[0]` must be one of"),
    ("experiment: saddle_escape\nquick:\n  bar: 2\n", [], "unknown key `bar` in the quick block"),
    ("experiment: nope\n", [], "`experiment` must be one of ['balance'"),
    ("depths: [2]\n", [], "needs a key `experiment`"),
    ("experiment: balance\n", ["decays"], "--set takes key=value"),
    ("experiment: balance\n", ["bogus=1"], "unknown key `bogus` in --set"),
    ("experiment: balance\n", ["depth=2.5"], "`depth` must be an integer; got 2.5"),
    ("experiment: balance\n", ["decays=[0.1, -1]"], "`decays` must lie in [0.0, inf)"),
    ("experiment: regime_map\ninitial_products: [0.1]\n", [], "`initial_products` must hold"),
    ("experiment: saddle_to_saddle\nchunk_size: 0\n", [], "`chunk_size` must be an integer"),
]


@pytest.mark.parametrize(("text", "overrides", "message"), BAD)
def test_bad_config_fails_before_computing(tmp_path, capsys, text, overrides, message):
    config, out = _write(tmp_path, text), tmp_path / "out"
    sets = [arg for item in overrides for arg in ("--set", item)]
    assert main(["run", str(config), "--quick", "--out", str(out), *sets]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml' does not exist" in capsys.readouterr().err


def test_path_fields_must_exist(tmp_path):
    with pytest.raises(_runner.ConfigError, match="`data` must be the path of an existing"):
        _runner._coerce("data", pathlib.Path, str(tmp_path / "missing.npz"))
    (tmp_path / "there.npz").write_bytes(b"")
    assert _runner._coerce("data", pathlib.Path | None, str(tmp_path / "there.npz")).is_file()
    assert _runner._coerce("data", pathlib.Path | None, None) is None


def test_exponent_estimators_are_exact_on_their_laws():
    alpha = np.logspace(-6, -1, 6)
    for p in (-2.0, -0.5, 0.25, 1.0):  # T − T(0) = 3 α^p
        assert saddle_escape.escape_exponent(alpha, 7.0 + 3 * alpha**p) == pytest.approx(p)
    log_law = 2.0 + np.log(1 / alpha)
    assert saddle_escape.escape_exponent(alpha, log_law) == pytest.approx(0.0, abs=1e-12)
    assert saddle_escape.log_coefficient(alpha, log_law) == pytest.approx(1.0)
    tau = 0.8 - 0.5 / np.log(1 / alpha)
    assert saddle_to_saddle.limit_fit(alpha, tau)[:2] == pytest.approx((0.8, -0.5))


def test_balance_laws_hold_and_figure():
    config = balance.Config(qs=(1.0, 2.0), decays=(0.0, 0.2), n=4, d=6, k=2, t1=1.0, num_saves=5)
    ds = balance.run(config)
    checks = balance.checks(ds)
    assert len(checks) == 4 and all(c.held for c in checks), checks
    assert max(c.measured for c in checks) < 1e-6
    # decay visibly shrinks the balance quantities: B(1) = B(0)·e^(−0.2q)
    ratio = ds.balance.sel(decay=0.2, q=2.0).isel(t=-1) / ds.balance.sel(decay=0.2, q=2.0).isel(
        t=0
    )
    np.testing.assert_allclose(ratio.values, np.exp(-0.4), rtol=1e-6)
    assert isinstance(balance.figures(ds)["balance"], Figure)


def test_regime_map_measures_every_regime():
    config = regime_map.Config(
        qs=(1.0, 1.5, 2.0), depths=(2, 3), initial_products=(1e-8, 1e-6, 1e-4)
    )
    ds = regime_map.run(config)
    checks = {c.name: c for c in regime_map.checks(ds)}
    assert set(checks) >= {f"exponent p, {r} regime" for r in ("constant", "log", "power")}
    assert all(c.held for c in checks.values()), checks
    assert ds.is_legendre.sel(q=2.0, depth=3).item() is False
    assert ds.measured_exponent.sel(q=2.0, depth=3).item() == pytest.approx(-1.0, abs=0.02)
    assert isinstance(regime_map.figures(ds)["regime_map"], Figure)


def test_saddle_to_saddle_plateaus():
    config = saddle_to_saddle.Config(alphas=(1e-3, 1e-5, 1e-8), num_saves=151)
    ds = saddle_to_saddle.run(config)
    checks = saddle_to_saddle.checks(ds)
    names = [c.name for c in checks]
    assert names[:2] == ["every solve finished", "same saddle sequence for every alpha"]
    assert checks[0].held and checks[1].held
    # three coordinates jump, each with a spread and a convergence check
    assert sum("spread" in n for n in names) == 3 == sum("convergence" in n for n in names)
    first_jump = ds.activation_time.isel(alpha=-1).min().item()
    plateau = ds.loss.isel(alpha=-1).sel(tau=slice(0, 0.8 * first_jump)).values
    assert np.ptp(plateau) < 0.01 * plateau[0]  # flat before the first jump
    assert ds.loss.isel(alpha=-1, tau=-1) < 0.1 * plateau[0]
    assert isinstance(saddle_to_saddle.figures(ds)["saddle_to_saddle"], Figure)
