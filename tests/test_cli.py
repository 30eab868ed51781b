"""The ``mirrorflow`` command: experiments by name, one-line errors, Ctrl-C, file modes, progress
on a terminal and in a log, and a start that does not load JAX."""

import io
import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

import mirrorflow_jax as mf
from mirrorflow_jax import cli
from mirrorflow_jax._progress import Progress
from mirrorflow_jax.experiments import EXPERIMENTS

# the balance experiment, small enough to run in seconds
TINY = ["--set", "qs=[2.0]", "--set", "decays=[0.0]", "--set", "n=6", "--set", "d=8"]
TINY += ["--set", "k=2", "--set", "t1=1.0", "--set", "num_saves=5"]
RESUME_LINE = "mirrorflow run: interrupted; rerun the same command to resume"


def _modes(folder: pathlib.Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*")}


# ----------------------------------------------------------------------------- by name


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_has_a_shipped_config_found_by_name(name):
    with cli._config_file(name) as path:
        assert path.is_file() and path.parent.name == "configs"
        assert path.parent.parent == pathlib.Path(mf.__file__).parent  # inside the package
        assert yaml.safe_load(path.read_text())["experiment"] == name


def test_unknown_name_is_one_line_naming_the_experiments(capsys):
    assert cli.main(["run", "balanse"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'balanse' is neither a config file nor an experiment" in err
    assert all(name in err for name in EXPERIMENTS)


@pytest.mark.slow
def test_run_by_name_writes_files_readable_by_others(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", "balance", "--quick", "--out", str(out), "--no-progress", *TINY]
    previous = os.umask(0o022)
    try:
        assert cli.main(argv) == 0
    finally:
        os.umask(previous)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "balance" and summary["quick"] is True
    assert pathlib.Path(summary["config_file"]).parent.parent == pathlib.Path(mf.__file__).parent
    assert summary["config"]["qs"] == [2.0] and summary["config"]["n"] == 6
    modes = _modes(out)
    checkpoints = [name for name in modes if name.endswith(".nc") and "checkpoints" in name]
    assert checkpoints and "results.nc" in modes and "summary.json" in modes
    for name, mode in modes.items():
        expected = 0o755 if (out / name).is_dir() else 0o644
        assert mode == expected, f"{name}: {oct(mode)}"
    assert "checks held" in capsys.readouterr().out


def test_saved_files_respect_the_umask(tmp_path):
    import xarray as xr

    ds = xr.Dataset({"a": ("x", np.arange(3.0))})
    for umask, expected in [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)]:
        previous = os.umask(umask)
        try:
            path = mf.save_dataset(ds, tmp_path / f"umask_{umask:o}.nc")
        finally:
            os.umask(previous)
        assert stat.S_IMODE(path.stat().st_mode) == expected, oct(umask)


# ----------------------------------------------------------------------------- --out


@pytest.mark.parametrize("command", ["run", "demo"])
@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_unusable_out_is_one_line_and_exit_2(tmp_path, capsys, command, where):
    (tmp_path / "taken").write_text("not a folder")
    out = tmp_path / "taken" if where == "is_a_file" else tmp_path / "taken" / "sub"
    argv = ["run", "balance", "--quick"] if command == "run" else ["demo"]
    assert cli.main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mirrorflow {command}: error: --out {out}")
    reason = "a file of that name exists" if where == "is_a_file" else "Not a directory"
    assert reason in lines[0] and captured.out == ""
    assert (tmp_path / "taken").read_text() == "not a folder"


# ----------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_exits_130_with_the_resume_hint(tmp_path):
    argv = [sys.executable, "-m", "mirrorflow_jax", "run", "balance", "--quick"]
    argv += ["--out", str(tmp_path / "out"), *TINY]
    process = subprocess.Popen(
        argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(50):  # the run prints this line once it has started
            line = process.stderr.readline()
            if "balance (quick): running" in line or not line:
                break
        assert "balance (quick): running" in line, line
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == RESUME_LINE
    assert "Traceback" not in err


UNRAISABLE = """
import threading
from mirrorflow_jax import cli

cli._exit_promptly_on_interrupt("interrupted", threading.Event())

class Raises:
    def __init__(self, error):
        self.error = error

    def __del__(self):
        raise self.error

Raises(KeyboardInterrupt())  # as when Ctrl-C lands in a garbage-collection callback
Raises(RuntimeError("kept"))
"""


def test_interrupt_in_a_callback_prints_no_traceback_but_other_errors_still_show():
    """A Ctrl-C that Python cannot raise (it lands in a callback, such as JAX's garbage
    collection hook) is left to the watcher's one-line message; other unraisable errors are
    still printed."""
    done = subprocess.run(
        [sys.executable, "-c", UNRAISABLE], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "KeyboardInterrupt" not in done.stderr
    assert "RuntimeError: kept" in done.stderr


# ----------------------------------------------------------------------------- progress


def _grid_fn(a, b):
    return {"y": a * np.float64(2.0) + b}


@pytest.mark.parametrize("chunk_size", [1, None])
def test_sweep_progress_is_plain_lines_when_not_a_terminal(capsys, chunk_size):
    grid = mf.Grid(a=[1.0, 2.0, 3.0], b=[0.0])
    ds = mf.sweep(_grid_fn, grid, chunk_size=chunk_size, progress=True)
    np.testing.assert_allclose(ds.y.values.ravel(), [2.0, 4.0, 6.0])
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.strip().splitlines()
    chunks = 3 if chunk_size == 1 else 1
    assert all(line.startswith("sweep: ") and "[elapsed " in line for line in lines), lines
    plural = "s" if chunks > 1 else ""
    assert lines[0].startswith(f"sweep: {chunks} chunk{plural}; running chunk 1")
    assert lines[-2].startswith(f"sweep: chunk {chunks}/{chunks} done; compile ")
    assert lines[-1].startswith(f"sweep: finished: {chunks} chunks computed, 0 resumed")


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_eta_leaves_out_compile_time(terminal):
    clock, file = _Clock(), (_Terminal() if terminal else io.StringIO())
    with Progress(4, desc="sweep", show=True, file=file, min_interval=0.0, clock=clock) as p:
        clock.now += 30.0  # 28 s compiling, 2 s running
        p.step_done(compile_seconds=28.0)
        assert p.eta() == pytest.approx(3 * 2.0)  # not 3 * 30 s
        clock.now += 4.0
        p.step_done()
        assert p.eta() == pytest.approx(2 * 3.0)
    text = file.getvalue()
    if terminal:
        assert "1/4 chunks" in text and "2/4 chunks" in text and "\r" in text
        assert "compile 28.0 s, ETA 0:06" in text
    else:
        assert "sweep: chunk 1/4 done; compile 28.0 s, ETA 0:06 [elapsed 0:30]" in text
        assert "sweep: chunk 2/4 done; compile 28.0 s, ETA 0:06 [elapsed 0:34]" in text


def test_stages_reported_without_a_with_block():
    clock, file = _Clock(), io.StringIO()
    bar = Progress(2, desc="finetune", unit="stage", show=True, file=file, clock=clock)
    bar.min_interval = 0.0
    bar.start()
    clock.now += 1.0
    bar.update()
    clock.now += 1.0
    bar.update()
    bar.close()
    lines = file.getvalue().splitlines()
    assert lines[0] == "finetune: 2 stages; running stage 1 [elapsed 0:00]"
    assert lines[1:] == [
        "finetune: stage 1/2 done; ETA 0:01 [elapsed 0:01]",
        "finetune: stage 2/2 done [elapsed 0:02]",
        "finetune: finished: 2 stages computed, 0 resumed [elapsed 0:02]",
    ]


def test_progress_by_default_only_after_a_few_seconds():
    clock, file = _Clock(), io.StringIO()
    with Progress(2, desc="sweep", file=file, clock=clock, delay=3.0) as p:
        clock.now += 1.0
        p.step_done()
        clock.now += 1.0
        p.step_done()
    assert file.getvalue() == ""  # 2 s in all: silent
    with Progress(1, desc="sweep", file=file, clock=clock, delay=3.0, min_interval=0.0) as p:
        clock.now += 5.0
        time.sleep(1.5)  # the heartbeat notices the long step and starts the log
        p.step_done()
    lines = file.getvalue().splitlines()
    assert lines[0].startswith("sweep: 1 chunk; running chunk 1") and len(lines) == 3


# ----------------------------------------------------------------------------- start-up


def test_help_and_import_load_neither_jax_nor_the_data_stack():
    code = (
        "import sys, contextlib, io\n"
        "import mirrorflow_jax, mirrorflow_jax.cli as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as text:\n"
        "    try:\n"
        "        cli.main(['run', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'NAME|CONFIG.yaml' in text.getvalue()\n"
        "heavy = ('jax', 'xarray', 'pandas', 'matplotlib', 'scipy', 'sklearn', 'yaml', 'tqdm')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_experiments_extra_is_one_line_naming_the_install():
    code = (
        "import sys\n"
        "sys.modules['yaml'] = None  # as if PyYAML were not installed\n"
        "from mirrorflow_jax.cli import main\n"
        "sys.exit(main(['list']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "mirrorflow list: error: yaml is missing; pip install 'mirrorflow_jax[experiments]'"
    )
