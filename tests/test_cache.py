"""The persistent compilation cache: `enable_compilation_cache` stores compiled programs where
it is told, a second process loads them instead of compiling, and an empty
MIRRORFLOW_CACHE_DIR leaves it off. Each case runs in a fresh process (the cache is a
process-wide JAX option)."""

import json
import os
import subprocess
import sys

import pytest

import mirrorflow_jax as mf

PROGRAM = """
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import mirrorflow_jax as mf
folder = mf.enable_compilation_cache(sys.argv[1] or None, min_compile_seconds=0.0)
problem = mf.sparse_regression(jax.random.key(0), n=6, d=8, k=2)
model = mf.SignedDeepDiagonal.scaled(0.1, depth=2, dim=8)
flow = mf.SteepestFlow(mf.Lp(1.0, 1e-3))
start = time.perf_counter()
sol = mf.solve_flow(flow, model, problem, 1.0)
print(json.dumps({"folder": None if folder is None else str(folder), "ok": bool(sol.ok),
                  "seconds": time.perf_counter() - start}))
"""


def run(folder: str, env_value: str | None = None) -> dict:
    env = dict(os.environ, EQX_ON_ERROR="nan")  # no host callbacks: cacheable programs
    if env_value is not None:
        env["MIRRORFLOW_CACHE_DIR"] = env_value
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, folder],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cache_stores_and_reuses_compiled_programs(tmp_path):
    folder = tmp_path / "cache"
    first = run(str(folder))
    entries = sorted(p.name for p in folder.iterdir())
    assert first["ok"] and first["folder"] == str(folder)
    assert any(name.startswith("jit__solve-") for name in entries)  # the solve itself
    second = run(str(folder))
    assert second["ok"] and sorted(p.name for p in folder.iterdir()) == entries  # reused
    assert second["seconds"] < first["seconds"]


def test_empty_environment_variable_leaves_the_cache_off(tmp_path):
    assert run("", env_value="")["folder"] is None


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="min_compile_seconds"):
        mf.enable_compilation_cache(tmp_path, min_compile_seconds=-1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="`path`: cannot create"):
        mf.enable_compilation_cache(blocker / "cache")
