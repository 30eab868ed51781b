import collections
import json
import os
import subprocess
import sys
import time

import pytest

# ------------------------------------------------------------------- XLA's CPU code generation
#
# Compiling dominates this suite. XLA's CPU fusion emitters (its default) take 1.2–1.7× longer
# to compile the toolkit's solver programs than its loop emitters, whose results are equal to
# rounding (`benchmarks/bench_compile.py` measures both). The suite
# therefore compiles with the loop emitters, in this process, its pytest-xdist workers and the
# subprocesses it starts (they inherit the environment). A user's ``XLA_FLAGS`` naming the
# option wins, and a jaxlib that no longer knows it (XLA aborts on an unknown flag) is left on
# its default: the flag is tried in a subprocess first.
_LOOP_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _with_loop_emitters() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_use_fusion_emitters" in flags or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    candidate = f"{flags} {_LOOP_EMITTERS}".strip()
    probe = "import jax; jax.numpy.zeros(1).block_until_ready()"
    env = dict(os.environ, XLA_FLAGS=candidate, JAX_PLATFORMS="cpu")
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        return
    if done.returncode == 0:
        os.environ["XLA_FLAGS"] = candidate


_with_loop_emitters()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


# A worker keeps the programs it compiled for the modules after (about 40% of the suite's
# programs recur: the same solves, helpers and array operations), until its memory passes this;
# then it drops them. Without a limit a worker grew to 4.6 GB by the end of the suite.
_KEEP_PROGRAMS_BELOW_BYTES = 3 * 2**30


def _resident_bytes() -> int:
    """This process's resident memory (Linux; elsewhere 0, so programs are kept)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop the compiled programs when a module ends with the worker's memory above
    `_KEEP_PROGRAMS_BELOW_BYTES`."""
    yield
    if _resident_bytes() > _KEEP_PROGRAMS_BELOW_BYTES:
        jax.clear_caches()


# ----------------------------------------------------------- --compile-times: the compile budget

# JAX's duration events for the three stages of making a program, and the column of each.
_STAGES = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


class _CompileTimes:
    """Seconds spent tracing, lowering and compiling, per test module (fixtures included);
    under pytest-xdist each worker sends its totals to the controller, which adds them."""

    def __init__(self):
        self.module = None
        self.totals = collections.defaultdict(lambda: collections.defaultdict(float))
        self.wall = collections.defaultdict(float)
        # (module, function) -> [programs compiled, seconds compiling them]
        self.programs = collections.defaultdict(lambda: [0, 0.0])
        jax.monitoring.register_event_duration_secs_listener(self.listen)

    def listen(self, event, duration, **kwargs):
        stage = _STAGES.get(event)
        if stage is not None and self.module is not None:
            self.totals[self.module][stage] += duration
            if stage == "compile":
                program = self.programs[f"{self.module}::{kwargs.get('fun_name', '?')}"]
                program[0] += 1
                program[1] += duration

    def add(self, totals: dict, wall: dict, programs: dict):
        for module, stages in totals.items():
            for stage, seconds in stages.items():
                self.totals[module][stage] += seconds
        for module, seconds in wall.items():
            self.wall[module] += seconds
        for name, (count, seconds) in programs.items():
            self.programs[name][0] += count
            self.programs[name][1] += seconds

    def report(self, write, top=25):
        counts = collections.Counter()
        for name, (count, _) in self.programs.items():
            counts[name.split("::")[0]] += count
        rows = sorted(self.wall, key=self.wall.get, reverse=True)
        header = f"{'wall':>8} {'trace':>7} {'lower':>7} {'compile':>8} {'programs':>8}"
        write(f"{header}  module (seconds)\n")
        for module in rows:
            stages = self.totals.get(module, {})
            columns = [stages.get(stage, 0.0) for stage in ("trace", "lower", "compile")]
            write(f"{self.wall[module]:8.1f} " + " ".join(f"{c:7.1f}" for c in columns))
            write(f" {counts[module]:8d}   {module}\n")
        total = [sum(s.get(k, 0.0) for s in self.totals.values()) for k in _STAGES.values()]
        write(f"{sum(self.wall.values()):8.1f} " + " ".join(f"{c:7.1f}" for c in total))
        write(f" {sum(counts.values()):8d}   all modules")
        write(" (worker seconds; subprocesses not counted)\n")
        write(f"\nthe {top} costliest compiled functions (compile seconds, programs):\n")
        costliest = sorted(self.programs.items(), key=lambda item: item[1][1], reverse=True)
        for name, (count, seconds) in costliest[:top]:
            write(f"{seconds:8.1f} {count:5d}   {name}\n")


def pytest_addoption(parser):
    parser.addoption(
        "--compile-times",
        action="store_true",
        help="report the seconds each test module spends tracing, lowering and compiling "
        "JAX programs (the suite's compile budget)",
    )


def pytest_configure(config):
    if config.getoption("--compile-times"):
        config._compile_times = _CompileTimes()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    times = getattr(item.config, "_compile_times", None)
    if times is None:
        yield
        return
    times.module = item.nodeid.split("::")[0]
    start = time.perf_counter()
    yield
    times.wall[times.module] += time.perf_counter() - start


def pytest_sessionfinish(session):
    times = getattr(session.config, "_compile_times", None)
    if times is not None and hasattr(session.config, "workeroutput"):  # an xdist worker
        output = [times.totals, times.wall, times.programs]
        session.config.workeroutput["compile_times"] = json.dumps(output)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist's hook on the controller when a worker ends: add the worker's totals."""
    times = getattr(node.config, "_compile_times", None)
    output = getattr(node, "workeroutput", {})
    if times is not None and "compile_times" in output:
        times.add(*json.loads(output["compile_times"]))


def pytest_terminal_summary(terminalreporter, config):
    times = getattr(config, "_compile_times", None)
    if times is not None and not hasattr(config, "workeroutput"):
        terminalreporter.section("compile times per module")
        times.report(terminalreporter.write)
