"""The built wheel works without the source tree: it carries the configs, and its ``mirrorflow``
command lists them and runs an experiment by name. The dependency floors are consistent."""

import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

import mirrorflow_jax as mf
from mirrorflow_jax.experiments import EXPERIMENTS

ROOT = pathlib.Path(__file__).parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """The wheel, built from this checkout (hatchling from the dev extra: no network)."""
    folder = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*command, "--quiet", "--wheel-dir", str(folder), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (path,) = folder.glob("mirrorflow_jax-*.whl")
    return path


def test_wheel_carries_every_config_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    configs = {n for n in names if n.startswith("mirrorflow_jax/configs/")}
    assert configs == {f"mirrorflow_jax/configs/{name}.yaml" for name in EXPERIMENTS}
    assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))]
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))
    )
    assert b"Provides-Extra: experiments" in metadata


@pytest.mark.slow
def test_installed_wheel_lists_and_runs_an_experiment_by_name(wheel, tmp_path):
    """A fresh venv holding only the wheel (its dependencies come from this environment's
    site-packages through a .pth file, so nothing is downloaded), run from a folder without
    the source tree."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = pathlib.Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (site / "outer_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    subprocess.run([*install, "--no-deps", str(wheel)], check=True)

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    def mirrorflow(*args, timeout=600):
        done = subprocess.run(
            ["mirrorflow", *args],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.check_output(
        [python, "-c", "import mirrorflow_jax; print(mirrorflow_jax.__file__)"],
        cwd=workdir,
        env=env,
        text=True,
    )
    assert pathlib.Path(where.strip()).is_relative_to(site), "the wheel's copy is imported"
    assert not pathlib.Path(where.strip()).is_relative_to(ROOT)

    listing = mirrorflow("list")
    for name in EXPERIMENTS:
        assert f"run: mirrorflow run {name} [--quick]" in listing
    shown = re.findall(r"config: (\S+)", listing)
    assert len(shown) == len(EXPERIMENTS) and "-" not in shown
    assert all(pathlib.Path(path).is_relative_to(site) for path in shown), shown

    tiny = ["--set", "qs=[2.0]", "--set", "decays=[0.0]", "--set", "n=6", "--set", "d=8"]
    out = mirrorflow("run", "balance", "--quick", "--out", "out", "--no-progress", *tiny)
    assert "balance: " in out and "checks held" in out
    assert (workdir / "out" / "results.nc").is_file()
    assert (workdir / "out" / "summary.json").is_file()


def _floors(requirements: list[str]) -> dict[str, str]:
    floors = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([^,;\s]+)", requirement.replace(" ", ""))
        assert match, f"{requirement!r}: each dependency has one plain '>=' floor"
        floors[match[1].lower()] = match[2]
    return floors


def test_floors_are_the_ones_this_code_needs():
    """The floors .ci/min_versions installs: JAX with jax.extend.core.jaxprs_in_params (0.10),
    Python 3.11 (JAX 0.10's own floor), and the experiment-only packages in the extra."""
    project = PYPROJECT["project"]
    core = _floors(project["dependencies"])
    extra = _floors(project["optional-dependencies"]["experiments"])
    assert core["jax"] == core["jaxlib"] == "0.10.0"
    assert project["requires-python"] == ">=3.11"
    assert {"scikit-learn", "matplotlib", "pyyaml", "scipy"} == set(extra)
    assert not {"scikit-learn", "matplotlib", "pyyaml", "scipy"} & set(core)
    assert "mirrorflow_jax[experiments]" in project["optional-dependencies"]["dev"]
    from jax.extend.core import jaxprs_in_params  # noqa: F401  (what sets the JAX floor)

    assert mf.__version__ == project["version"]
