"""The ``mirrorflow`` command line: ``demo``, ``run NAME`` (or ``run FILE.yaml``) and ``list``."""

import argparse
import contextlib
import importlib.resources
import os
import pathlib
import sys
import threading
import time

CONFIGS = importlib.resources.files(__package__) / "configs"
"""The shipped configs (package data): ``CONFIGS / "<experiment>.yaml"``."""

RESUME_HINT = "interrupted; rerun the same command to resume"
EXTRA_HINT = "pip install 'mirrorflow_jax[experiments]'"
EXPERIMENT_PACKAGES = ("yaml", "matplotlib", "scipy", "sklearn")


class _UsageError(Exception):
    """A problem with the command line, reported in one line with exit status 2."""


def _config_file(name_or_path: str):
    """The config for ``mirrorflow run``: an existing file, else a shipped experiment's config."""
    path = pathlib.Path(name_or_path)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return contextlib.nullcontext(path)  # a path: load_config reports a missing file
    from .experiments import EXPERIMENTS

    shipped = CONFIGS / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise _UsageError(
            f"{name_or_path!r} is neither a config file nor an experiment; the experiments "
            f"are {', '.join(EXPERIMENTS)} (see `mirrorflow list`)."
        )
    return importlib.resources.as_file(shipped)


def _exit_promptly_on_interrupt(message: str, reported, grace: float = 2.0):
    """Make Ctrl-C end the process within ``grace`` seconds with ``message`` and status 130.

    Python raises KeyboardInterrupt only when the main thread runs Python again, which waits
    for a running XLA computation or compilation (minutes, in a big chunk). The wakeup fd is
    written by the C-level signal handler at once, so a watcher thread sees the signal and, if
    the KeyboardInterrupt has not ended the process by then, exits it (printing ``message``
    unless the event ``reported`` is set). Results are written atomically and checkpoints are
    verified on resume, so nothing half-written is kept."""
    import os
    import signal

    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        return

    def watch():
        while signal.SIGINT not in os.read(read, 64):
            pass
        time.sleep(grace)
        if not reported.is_set():
            os.write(2, f"\n{message}\n".encode())
        os._exit(130)

    threading.Thread(target=watch, daemon=True, name="mirrorflow-interrupt").start()

    # A Ctrl-C that lands in a callback Python cannot raise from (e.g. JAX's garbage-collection
    # hook) is "ignored" with a printed traceback; the watcher ends the process anyway, so
    # keep the terminal to the one-line message.
    previous = sys.unraisablehook

    def quiet_interrupts(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)

    sys.unraisablehook = quiet_interrupts


def _output_folder(out: pathlib.Path) -> pathlib.Path:
    """``out`` created and writable, else a one-line `_UsageError` saying why not."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except FileExistsError:
        raise _UsageError(f"--out {out}: a file of that name exists; give a folder.") from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise _UsageError(f"--out {out} cannot be used as the output folder: {reason}.") from None
    return out


def _demo(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    from . import save_dataset
    from .experiments import demo

    out = _output_folder(pathlib.Path(args.out))
    start = time.perf_counter()
    ds = demo.run()
    save_dataset(ds, out / "demo.nc")
    demo.figures(ds)["demo"].savefig(out / "demo.png", dpi=120)
    print(demo.summary(ds))
    print(f"wrote {out / 'demo.nc'} and {out / 'demo.png'} in {time.perf_counter() - start:.1f} s")
    return 0


def _run(args) -> int:
    from .experiments import _runner

    try:
        with _config_file(args.config) as path:
            loaded = _runner.load_config(path, quick=args.quick, overrides=args.set)
    except _runner.ConfigError as error:
        print(f"mirrorflow run: error: {error}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out or f"results/{loaded.name}{'-quick' if args.quick else ''}")
    shard = _shard(args.shard)
    summary = _runner.run_experiment(
        loaded, _output_folder(out), quick=args.quick, progress=args.progress, shard=shard
    )
    if shard is not None:
        print(
            f"{loaded.name}: shard {shard[0]}/{shard[1]} done in {summary['run_seconds']:.1f} s "
            f"({summary['checkpoint_files']} chunk files in {summary['checkpoint_dir']}); once "
            f"every shard is done, `mirrorflow merge {out}` writes the results"
        )
        return 0
    _runner.print_summary(summary, out)
    return 1 if args.strict and not summary["all_held"] else 0


def _shard(text: str | None) -> tuple[int, int] | None:
    from ._distributed import parse_shard

    try:
        return None if text is None else parse_shard(text)
    except ValueError as error:
        raise _UsageError(str(error)) from None


def _merge(args) -> int:
    from .experiments import _runner

    out = pathlib.Path(args.out)
    try:
        summary = _runner.merge_experiment(out, progress=args.progress)
    except _runner.ConfigError as error:
        raise _UsageError(str(error)) from None
    _runner.print_summary(summary, out)
    return 1 if args.strict and not summary["all_held"] else 0


def _list(args) -> int:
    from .experiments import _runner

    rows = _runner.describe_experiments(CONFIGS)
    width = max(len(name) for name, _, _ in rows)
    for name, description, config in rows:
        print(f"{name:<{width}}  {description}")
        print(f"{'':<{width}}  run: mirrorflow run {name} [--quick]   config: {config}")
    return 0


def _compilation_cache(command: str) -> None:
    """Keep compiled programs on disk (`enable_compilation_cache`), so that a rerun or a
    resumed run does not compile again; a cache folder that cannot be made is reported and
    the run goes on without it.

    Run-time checks inside the programs (equinox's ``error_if``, which diffrax uses on save
    times) are host callbacks, which keep a program out of JAX's cache, and a failing one
    stops every member of a sweep; here they yield NaN instead (``EQX_ON_ERROR=nan``, unless
    the environment sets it), which the solves report as the result ``nonfinite``."""
    if command == "list":
        return
    os.environ.setdefault("EQX_ON_ERROR", "nan")  # read when equinox is first imported
    from ._cache import enable_compilation_cache

    try:
        enable_compilation_cache()
    except ValueError as error:
        print(f"mirrorflow {command}: warning: {error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mirrorflow",
        description=__doc__,
        epilog="Experiments need the experiments extra: " + EXTRA_HINT + ". Compiled "
        "programs are cached in ~/.cache/mirrorflow_jax/jax (MIRRORFLOW_CACHE_DIR sets the "
        "folder; empty turns the cache off).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="solve real flows, print a summary, write a figure")
    demo.add_argument("--out", default="results", help="output folder (default: results)")
    demo.set_defaults(handler=_demo)

    run = commands.add_parser("run", help="run an experiment by name, or from a YAML config")
    run.add_argument(
        "config",
        metavar="NAME|CONFIG.yaml",
        help="an experiment's name (its shipped config, see `mirrorflow list`) or a YAML file",
    )
    run.add_argument("--quick", action="store_true", help="apply the config's quick: block")
    run.add_argument(
        "--out", help="output folder (default: results/<experiment>[-quick]); rerun to resume"
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (value read as YAML, e.g. --set qs=[1,2]); repeatable",
    )
    run.add_argument("--strict", action="store_true", help="exit with status 1 if any check fails")
    run.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress on stderr (a bar on a terminal, else one log line per step)",
    )
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="compute only shard I of N (0 <= I < N) of every sweep's chunks into --out "
        "(a job array's task); then `mirrorflow merge OUT`",
    )
    run.set_defaults(handler=_run)

    merge = commands.add_parser(
        "merge", help="assemble the results of `run --shard` tasks, computing what is missing"
    )
    merge.add_argument("out", help="the --out folder that the shards wrote into")
    merge.add_argument("--strict", action="store_true", help="exit with status 1 if a check fails")
    merge.add_argument("--no-progress", dest="progress", action="store_false")
    merge.set_defaults(handler=_merge)

    listing = commands.add_parser("list", help="list the experiments and their configs")
    listing.set_defaults(handler=_list)
    args = parser.parse_args(argv)
    hint = RESUME_HINT if args.command in ("run", "merge") else "interrupted"
    reported = threading.Event()
    if argv is None:  # the command itself, not a call from Python
        _exit_promptly_on_interrupt(f"mirrorflow {args.command}: {hint}", reported)
    try:
        if argv is None:  # the command itself: a call from Python keeps its process's config
            _compilation_cache(args.command)
        return args.handler(args)
    except _UsageError as error:
        print(f"mirrorflow {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        if error.name not in EXPERIMENT_PACKAGES:
            raise
        print(
            f"mirrorflow {args.command}: error: {error.name} is missing; {EXTRA_HINT}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"\nmirrorflow {args.command}: {hint}", file=sys.stderr, flush=True)
        reported.set()
        return 130


if __name__ == "__main__":
    sys.exit(main())
