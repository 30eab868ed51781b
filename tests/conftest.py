import collections
import json
import time

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop each module's compiled programs when it ends: a worker otherwise keeps every
    executable of the run in memory (gigabytes by the end of the suite), and modules share
    almost none of them."""
    yield
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
        jax.monitoring.register_event_duration_secs_listener(self.listen)

    def listen(self, event, duration, **kwargs):
        stage = _STAGES.get(event)
        if stage is not None and self.module is not None:
            self.totals[self.module][stage] += duration

    def add(self, totals: dict, wall: dict):
        for module, stages in totals.items():
            for stage, seconds in stages.items():
                self.totals[module][stage] += seconds
        for module, seconds in wall.items():
            self.wall[module] += seconds

    def report(self, write):
        rows = sorted(self.wall, key=self.wall.get, reverse=True)
        write(f"{'wall':>8} {'trace':>7} {'lower':>7} {'compile':>8}  module (seconds)\n")
        for module in rows:
            stages = self.totals.get(module, {})
            columns = [stages.get(stage, 0.0) for stage in ("trace", "lower", "compile")]
            write(f"{self.wall[module]:8.1f} " + " ".join(f"{c:7.1f}" for c in columns))
            write(f"   {module}\n")
        total = [sum(s.get(k, 0.0) for s in self.totals.values()) for k in _STAGES.values()]
        write(f"{sum(self.wall.values()):8.1f} " + " ".join(f"{c:7.1f}" for c in total))
        write("   all modules (worker seconds; subprocesses not counted)\n")


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
        session.config.workeroutput["compile_times"] = json.dumps([times.totals, times.wall])


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
