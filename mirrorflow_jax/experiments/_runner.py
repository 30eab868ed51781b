"""Run an experiment from its YAML config: load and validate the config, run it, write results.

A config file names the experiment and sets fields of its ``Config`` dataclass; a ``quick:``
block holds the overrides that ``--quick`` applies::

    experiment: saddle_escape
    depths: [2, 3, 4]
    alphas: [1.0e-6, 1.0e-5, 1.0e-4]
    quick:
      depths: [2, 3]

Every value is checked against the field's annotation, and then by the ``Config``'s own
``__post_init__``, before anything is computed; a mistake raises `ConfigError` naming the key
and what it expects.
"""

import dataclasses
import difflib
import hashlib
import json
import math
import pathlib
import re
import sys
import textwrap
import time
import types
import typing
from collections.abc import Sequence

import yaml

from .. import _resources
from . import EXPERIMENTS, _bounded, load
from ._base import Check

RESERVED = ("experiment", "quick")


class ConfigError(ValueError):
    """A config file or ``--set`` override that cannot be run, with the key and the fix (one
    line; values are shown at bounded length)."""


# ----------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` (no dot) as a number, as YAML 1.2 does."""


_FLOAT = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str, source: str):
    """``text`` as YAML, refused (`ConfigError`) when it is not YAML, larger than 100 kB,
    nested deeper than 64 levels or expands through aliases to more than 20000 values."""
    try:
        return _bounded.load_yaml(text, _Loader, source)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    except yaml.YAMLError as error:
        message = " ".join(str(error).split())
        raise ConfigError(f"{source} is not valid YAML: {message}") from None


# ----------------------------------------------------------------------------- types


def _describe(annotation) -> str:
    """What a value of ``annotation`` looks like, for error messages."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is tuple:
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if annotation is pathlib.Path:
        return "the path of an existing file"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _coerce(key: str, annotation, value):
    """``value`` as the type of ``annotation``; ConfigError naming ``key`` otherwise."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)

    def wrong():
        return ConfigError(f"`{key}` must be {_describe(annotation)}; got {_bounded.show(value)}.")

    if origin is typing.Literal:
        if value not in args:
            raise wrong()
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, option, value)
            except ConfigError:
                continue
        raise wrong()
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise wrong()
        if len(args) == 2 and args[1] is Ellipsis:
            if not value:
                raise ConfigError(f"`{key}` must be a non-empty list; got [].")
            items = [args[0]] * len(value)
        elif len(args) == len(value):
            items = list(args)
        else:
            raise wrong()
        return tuple(
            _coerce(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(items, value, strict=True))
        )
    if annotation is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong()
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"`{key}` must be a finite number; got {_bounded.show(value)}.")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if annotation is pathlib.Path:
        if not isinstance(value, str) or not pathlib.Path(value).is_file():
            where = _bounded.show(value)
            raise ConfigError(f"`{key}` must be {_describe(annotation)}; no file at {where}.")
        return pathlib.Path(value)
    raise TypeError(f"Config field `{key}` has an annotation the loader cannot read: {annotation}")


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class LoadedConfig:
    """A validated config: the experiment's name, module and ``Config`` instance."""

    name: str
    module: types.ModuleType
    config: typing.Any
    source: str

    def as_dict(self) -> dict:
        """The resolved config as plain JSON/YAML values (tuples as lists, paths as strings)."""

        def plain(value):
            if isinstance(value, tuple | list):
                return [plain(v) for v in value]
            return str(value) if isinstance(value, pathlib.Path) else value

        return {k: plain(v) for k, v in dataclasses.asdict(self.config).items()}

    def fingerprint(self) -> str:
        """A short hash of the experiment and its resolved config (names checkpoint folders)."""
        text = json.dumps({"experiment": self.name} | self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _parse_override(item: str) -> tuple[str, typing.Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set takes key=value (e.g. --set t1=10); got {_bounded.show(item)}.")
    return key.strip(), parse_yaml(text, f"--set {key.strip()}")


def _fields(config_cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls) if f.init}


def _apply(values: dict, updates: dict, fields: dict, source: str):
    for key, value in updates.items():
        if not isinstance(key, str) or key not in fields:
            close = difflib.get_close_matches(key, fields, n=1) if isinstance(key, str) else []
            hint = f"did you mean `{close[0]}`? " if close else ""
            name = f"`{key}`" if isinstance(key, str) and len(key) <= 60 else _bounded.show(key)
            raise ConfigError(
                f"unknown key {name} in {source}; {hint}the keys of this experiment are "
                f"{sorted(fields)}."
            )
        values[key] = _coerce(key, fields[key], value)


def load_config(
    path: str | pathlib.Path, *, quick: bool = False, overrides: Sequence[str] = ()
) -> LoadedConfig:
    """Read, merge (file, then ``quick:`` if ``quick``, then each ``key=value`` override) and
    validate a config. Raises `ConfigError` naming the key and the expected value."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    try:
        text = _bounded.read_text(path)
    except (OSError, ValueError) as error:
        raise ConfigError(str(error)) from None
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values.")
    if "experiment" not in raw:
        raise ConfigError(f"{path} needs a key `experiment`: one of {sorted(EXPERIMENTS)}.")
    if not isinstance(raw["experiment"], str) or raw["experiment"] not in EXPERIMENTS:
        raise ConfigError(
            f"`experiment` must be one of {sorted(EXPERIMENTS)}; got "
            f"{_bounded.show(raw['experiment'])} (in {path})."
        )
    try:
        module = load(raw["experiment"])
    except ValueError as error:
        raise ConfigError(f"{error} (in {path})") from None
    quick_block = raw.get("quick") or {}
    if not isinstance(quick_block, dict):
        raise ConfigError(f"`quick` in {path} must be a mapping of overrides.")
    fields = _fields(module.Config)
    values: dict = {}
    _apply(values, {k: v for k, v in raw.items() if k not in RESERVED}, fields, str(path))
    if quick:
        _apply(values, quick_block, fields, f"the quick block of {path}")
    for item in overrides:
        _apply(values, dict([_parse_override(item)]), fields, "--set")
    where = f"(in {path}{' --quick' if quick else ''})"
    try:
        config = module.Config(**values)
        _resources.check_config(config)
    except (ValueError, TypeError, ArithmeticError, LookupError) as error:
        message = " ".join(str(error).split())
        message = message if len(message) <= 300 else message[:300] + "…"
        raise ConfigError(f"{message} {where}") from None
    return LoadedConfig(raw["experiment"], module, config, str(path))


# ----------------------------------------------------------------------------- reports


def _plain(value):
    """A JSON-safe number or string (numpy scalars unwrapped, non-finite floats as text)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _check_record(check: Check) -> dict:
    return {k: bool(v) if k == "held" else _plain(v) for k, v in check.as_dict().items()}


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_markdown(summary: dict) -> str:
    """The Markdown report of one run: header, the checks table, the resolved config."""
    held, total = summary["checks_held"], summary["checks_total"]
    verdict = "all checks held" if held == total else f"**{total - held} of {total} FAILED**"
    lines = [
        f"# {summary['experiment']}{' (quick)' if summary['quick'] else ''}",
        "",
        f"Config `{summary['config_file']}`, run time {summary['run_seconds']:.1f} s: "
        f"{held} of {total} checks held ({verdict}).",
        "",
        "| check | measured | predicted | tolerance | held | detail |",
        "|---|---|---|---|---|---|",
    ]
    for c in summary["checks"]:
        mark = "yes" if c["held"] else "**FAILED**"
        cells = [c["name"], *(_cell(c[k]) for k in ("measured", "predicted", "tolerance"))]
        row = [cell.replace("|", "\\|") for cell in (*cells, mark, c["detail"])]
        lines.append("| " + " | ".join(row) + " |")
    config = yaml.safe_dump(summary["config"], sort_keys=False, default_flow_style=None)
    return "\n".join([*lines, "", "## Config", "", "```yaml", config.rstrip(), "```", ""])


def _save_figures(figures: dict, out: pathlib.Path) -> list[str]:
    files = []
    for name, fig in figures.items():
        for suffix in ("png", "pdf"):
            fig.savefig(out / f"{name}.{suffix}", dpi=120)
            files.append(f"{name}.{suffix}")
    return files


def _note(progress: bool, text: str):
    """One progress line on stderr (the stages of a run; sweeps report their own chunks)."""
    if progress:
        print(f"mirrorflow: {text}", file=sys.stderr, flush=True)


def run_experiment(
    loaded: LoadedConfig,
    out: str | pathlib.Path,
    *,
    quick: bool = False,
    progress: bool = False,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Run a loaded config and write into ``out``: ``results.nc`` (attrs hold the resolved
    config), every figure as PNG and PDF, ``summary.json``, ``summary.md`` and ``config.yaml``
    (the resolved config, runnable as is). Sweeps checkpoint under
    ``out/checkpoints/<experiment>-<config hash>``, so rerunning an interrupted run resumes it.

    With ``shard=(i, n)`` (a job array's task) every checkpointed sweep computes only its
    share of the chunks into that folder; no results, figures or checks are written, only
    ``shards/shard-<i>-of-<n>.json``. A run without ``shard`` afterwards (`merge_experiment`)
    assembles the finished chunks and computes whatever is missing.

    **Returns:** the summary (as written to ``summary.json``)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from mirrorflow_jax import save_dataset

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = loaded.as_dict()
    config_text = yaml.safe_dump({"experiment": loaded.name} | resolved, sort_keys=False)
    (out / "config.yaml").write_text(config_text)
    workdir = out / "checkpoints" / f"{loaded.name}-{loaded.fingerprint()}"
    found = len(list(workdir.rglob("*.nc"))) if workdir.exists() else 0

    start = time.perf_counter()
    if shard is not None:
        return _run_shard(loaded, out, workdir, shard, quick=quick, progress=progress)
    _note(progress, f"{loaded.name}{' (quick)' if quick else ''}: running, into {out}/")
    ds = loaded.module.run(loaded.config, workdir=workdir, progress=progress)
    seconds = time.perf_counter() - start
    _note(progress, f"{loaded.name}: computed in {seconds:.1f} s; checking, plotting, writing")
    checks = loaded.module.checks(ds)
    run_seconds = time.perf_counter() - start

    ds = ds.assign_attrs(
        experiment=loaded.name,
        config=json.dumps(resolved),
        config_file=loaded.source,
        quick=int(quick),
        wall_seconds=run_seconds,
    )
    save_dataset(ds, out / "results.nc")
    files = ["results.nc", *_save_figures(loaded.module.figures(ds), out)]
    records = [_check_record(c) for c in checks]
    summary = {
        "experiment": loaded.name,
        "config_file": loaded.source,
        "quick": quick,
        "run_seconds": run_seconds,
        "checks_held": sum(r["held"] for r in records),
        "checks_total": len(records),
        "all_held": all(r["held"] for r in records),
        "checks": records,
        "checkpoint_dir": str(workdir),
        "checkpoint_files_resumed": found,
        "files": [*files, "summary.json", "summary.md", "config.yaml"],
        "config": resolved,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


def _run_shard(loaded: LoadedConfig, out, workdir, shard, *, quick: bool, progress: bool) -> dict:
    from mirrorflow_jax._distributed import sharded

    start = time.perf_counter()
    with sharded(shard):
        loaded.module.run(loaded.config, workdir=workdir, progress=progress)
    record = {
        "experiment": loaded.name,
        "config_file": loaded.source,
        "quick": quick,
        "shard": list(shard),
        "run_seconds": time.perf_counter() - start,
        "checkpoint_dir": str(workdir),
        "checkpoint_files": len(list(workdir.rglob("*.nc"))) if workdir.exists() else 0,
    }
    folder = out / "shards"
    folder.mkdir(exist_ok=True)
    (folder / f"shard-{shard[0]}-of-{shard[1]}.json").write_text(json.dumps(record, indent=2))
    return record


def merge_experiment(out: str | pathlib.Path, *, progress: bool = False) -> dict:
    """Assemble a run whose shards (``run_experiment(..., shard=(i, n))``) wrote into ``out``:
    the config is read back from ``out/config.yaml``, finished chunks are loaded and missing
    ones computed, then results, figures and checks are written as by `run_experiment`.

    Raises `ConfigError` when ``out`` holds no ``config.yaml``."""
    out = pathlib.Path(out)
    if not (out / "config.yaml").is_file():
        raise ConfigError(
            f"{out} holds no config.yaml: give the --out folder of `mirrorflow run --shard`."
        )
    records = [json.loads(p.read_text()) for p in sorted(out.glob("shards/shard-*.json"))]
    loaded = load_config(out / "config.yaml")
    quick = any(r.get("quick") for r in records)
    if records:
        loaded = dataclasses.replace(loaded, source=records[0]["config_file"])
    return run_experiment(loaded, out, quick=quick, progress=progress)


def _relative(path: pathlib.Path) -> str:
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


def describe_experiments(configs) -> list[tuple[str, str, str]]:
    """(name, one-line description, config file) for every registered experiment; ``configs``
    is the folder (a path or an `importlib.resources` traversable) of the shipped configs."""
    rows = []
    for name in EXPERIMENTS:
        try:
            summary = (load(name).__doc__ or "").strip().split("\n\n")[0]
        except ImportError as error:
            summary = f"(cannot be imported: {error})"
        description = textwrap.shorten(" ".join(summary.split()), width=110, placeholder=" …")
        config = configs / f"{name}.yaml"
        shown = _relative(config) if isinstance(config, pathlib.Path) else str(config)
        rows.append((name, description, shown if config.is_file() else "-"))
    return rows


def print_summary(summary: dict, out: pathlib.Path, file=None):
    file = sys.stdout if file is None else file
    held, total = summary["checks_held"], summary["checks_total"]
    for c in summary["checks"]:
        mark = "held  " if c["held"] else "FAILED"
        print(
            f"  {mark} {c['name']}: measured {_cell(c['measured'])}, predicted "
            f"{_cell(c['predicted'])} ± {_cell(c['tolerance'])}",
            file=file,
        )
    status = "all checks held" if held == total else f"{total - held} of {total} checks FAILED"
    print(
        f"{summary['experiment']}: {held}/{total} checks held ({status}) in "
        f"{summary['run_seconds']:.1f} s; wrote {out}/ ({', '.join(summary['files'])})",
        file=file,
    )
