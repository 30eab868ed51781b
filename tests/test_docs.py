"""The documentation: examples run, the site builds strictly, every public name is documented."""

import dataclasses
import inspect
import os
import pathlib
import re
import runpy
import subprocess
import sys

import jax
import pytest

import mirrorflow_jax as mf

ROOT = pathlib.Path(__file__).parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
SNIPPET = re.compile(r'^--8<-- "(examples/[\w.]+\.py)"$')
# What each example must print: it ran to the end and its result makes sense.
EXPECTED = {
    "first_flow.py": ["q = 2.0: f(x(5))", "q = 1.0: f(x(5))"],
    "embed_pytree.py": ["for q = 1, 1.5, 2:", "d f(θ(2)) / d scale"],
    "sweep_devices.py": ["4 devices", "all ok: True"],
    "resume_sweep.py": ["chunks: 4, read back: 2", "same result: True"],
    "job_array_sweep.py": ["shard 0/3: 4 members computed", "read back: 4", "same result: True"],
    "multi_host_sweep.py": ["exit codes: [0, 0]", "both processes hold the same Dataset: True"],
    "compare_optax.py": ["sgd:", "sign descent:", "adam:", "flow q = 1.0"],
    "sign_flow_solver.py": [
        "auto chose SignFlowKvaerno3:",
        "steps, stiff, at t",
        "Tsit5:",
        "Rodas4:",
        "SignFlowKvaerno3:",
        "steps, ok, at t = 50",
        "eps = 1e-04",
    ],
    "layer_transitions.py": ["eps = 1e-03:", "eps = 1e-06:", "ok True", "layer entries"],
    "collapsing_factors.py": [
        "depth 2, no decay, Rodas4: ok False",
        "depth 2, no decay, SignFlowKvaerno3: ok True",
        "coupled decay 1e-2, Rodas4: ok False",
        "coupled decay 1e-2, SignFlowKvaerno3: ok True",
    ],
}
# Examples that need a process of their own (run in a subprocess, marked slow).
OWN_PROCESS = {"sweep_devices.py", "multi_host_sweep.py"}
IGNORED_ARGUMENTS = {"self", "args", "kwargs"}
# What every docstring example may assume; it imports anything else it needs itself.
DOCSTRING_PREAMBLE = (
    'import jax; jax.config.update("jax_enable_x64", True); import jax.numpy as jnp; '
    "import mirrorflow_jax as mf"
)


def public_names() -> list[str]:
    """``__all__`` if the package defines it, else its public attributes defined in it."""
    names = getattr(mf, "__all__", None)
    if names is None:
        names = [
            name
            for name, obj in vars(mf).items()
            if not name.startswith("_")
            and not inspect.ismodule(obj)
            and getattr(obj, "__module__", "").startswith("mirrorflow_jax")
        ]
    return sorted(names)


def own_docstring(obj) -> str:
    """The docstring written for ``obj`` itself (for a class, not one inherited)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    return inspect.cleandoc(doc or "")


def arguments(obj) -> set[str]:
    """A function's parameters; a class's ``__init__`` parameters and dataclass fields."""
    names = set()
    function = obj.__init__ if inspect.isclass(obj) else obj
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        names |= {field.name for field in dataclasses.fields(obj)}
    if not inspect.isclass(obj) or "__init__" in vars(obj):
        names |= set(inspect.signature(function).parameters)
    return names - IGNORED_ARGUMENTS


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_public_api_is_found():
    names = public_names()
    assert len(names) >= 40, names
    assert {"solve_flow", "SteepestFlow", "Lp", "sweep", "DeepDiagonalMirror"} <= set(names)


@pytest.mark.parametrize("name", public_names())
def test_public_name_has_docstring_with_its_arguments(name):
    obj = getattr(mf, name)
    doc = own_docstring(obj)
    lines = [line for line in doc.splitlines() if line.strip()]
    assert len(lines) >= 2, f"{name}: the docstring needs a summary line and more, got {doc!r}"
    missing = [arg for arg in sorted(arguments(obj)) if not re.search(rf"\b{arg}\b", doc)]
    assert not missing, f"{name}: the docstring does not mention its arguments {missing}"


def names_with_docstring_examples() -> list[str]:
    """The public names whose own docstring holds at least one ```python block."""
    return [name for name in public_names() if python_blocks(own_docstring(getattr(mf, name)))]


def test_docstring_examples_are_found():
    names = names_with_docstring_examples()
    assert len(names) >= 10, names
    assert {"SteepestFlow", "sweep"} <= set(names), names


@pytest.mark.parametrize("name", names_with_docstring_examples())
def test_docstring_examples_run(name):
    """Code in docstrings is shown on the API pages: each block runs on its own."""
    for i, block in enumerate(python_blocks(own_docstring(getattr(mf, name)))):
        code = compile(f"{DOCSTRING_PREAMBLE}\n{block}", f"<{name} example {i}>", "exec")
        try:
            exec(code, {"__name__": f"docstring_example_{name}"})
        except Exception as error:
            raise AssertionError(f"{name}: docstring example {i} failed:\n{block}") from error


def test_every_public_name_is_on_an_api_page():
    pages = "\n".join(path.read_text() for path in (DOCS / "api").glob("*.md"))
    listed = re.findall(r"^::: mirrorflow_jax\.(\w+)$", pages, flags=re.M)
    missing = sorted(set(public_names()) - set(listed))
    assert not missing, f"add `::: mirrorflow_jax.NAME` to a docs/api page for {missing}"
    assert len(listed) == len(set(listed)), "a name is documented twice"


def test_every_python_block_on_the_site_is_an_executed_example():
    included = set()
    for page in DOCS.rglob("*.md"):
        for block in python_blocks(page.read_text()):
            match = SNIPPET.match(block.strip())
            assert match, f"{page.relative_to(ROOT)}: put this code in examples/ and include it"
            included.add(match.group(1))
    assert included == {f"examples/{path.name}" for path in EXAMPLES}
    assert set(EXPECTED) == {path.name for path in EXAMPLES}


def test_readme_links_to_the_docs():
    assert "docs/index.md" in (ROOT / "README.md").read_text()


def _example_params() -> list:
    """Each example, in this process unless it needs a process of its own: the multi-process
    one starts two more, and the device sweep sets ``XLA_FLAGS`` before jax is imported."""
    return [
        pytest.param(path, id=path.name, marks=[pytest.mark.slow] * (path.name in OWN_PROCESS))
        for path in EXAMPLES
    ]


@pytest.mark.parametrize("example", _example_params())
def test_example_runs(example, tmp_path, monkeypatch, capsys):
    if example.name in OWN_PROCESS:
        env = dict(os.environ, MPLBACKEND="Agg")
        done = subprocess.run(
            [sys.executable, str(example)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        printed = done.stdout
    else:
        # As `python examples/NAME.py` in a fresh directory: its own __main__ namespace and
        # argv, and JAX's default promotion rules (the suite's are strict).
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", [str(example)])
        try:
            with jax.numpy_dtype_promotion("standard"):
                runpy.run_path(str(example), run_name="__main__")
        finally:
            if "matplotlib.pyplot" in sys.modules:  # the figures an example left open
                sys.modules["matplotlib.pyplot"].close("all")
        printed = capsys.readouterr().out
    for expected in EXPECTED[example.name]:
        assert expected in printed, printed


def test_mkdocs_build_is_strict_and_renders_the_api(tmp_path):
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)]
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    api = "\n".join(path.read_text() for path in (site / "api").rglob("index.html"))
    missing = [name for name in public_names() if f'id="mirrorflow_jax.{name}"' not in api]
    assert not missing, f"not rendered on the API pages: {missing}"
    getting_started = (site / "getting-started" / "index.html").read_text()
    assert "--8&lt;--" not in getting_started and "DeepDiagonal" in getting_started


def _project_texts():
    """The repository's own docs, docstrings, configs and scripts."""
    for folder in ("mirrorflow_jax", "docs", "tests", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in {".py", ".md", ".yml", ".yaml"} and "__pycache__" not in path.parts:
                yield path
    yield from (ROOT / "README.md", ROOT / "mkdocs.yml")


def test_theory_citations_point_into_the_project():
    """Every "theory §N" citation names a section of docs/theory.md, and nothing cites a file
    the repository does not have."""
    sections = set(re.findall(r"^## (\d+)\. ", (DOCS / "theory.md").read_text(), flags=re.M))
    assert sections == {str(n) for n in range(1, 10)}, sections
    outside = "PAPER" + ".md"
    cited, offenders = set(), []
    for path in _project_texts():
        text = path.read_text()
        if outside in text:
            offenders.append(str(path.relative_to(ROOT)))
        for match in re.finditer(r"theory(?:\.md)?\)? §(\d+)(?:[–-]§?(\d+))?", text):
            cited |= {n for n in match.groups() if n}
            cited |= set(re.findall(r"§(\d+)", text[match.end() : match.end() + 12]))
    assert not offenders, f"cite docs/theory.md instead: {offenders}"
    assert cited and cited <= sections, sorted(cited - sections)
