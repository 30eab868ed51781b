"""The ``mirrorflow`` command line: ``demo``, ``run CONFIG.yaml`` and ``list``."""

import argparse
import pathlib
import sys
import time

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def _demo(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    from . import save_dataset
    from .experiments import demo

    start = time.perf_counter()
    ds = demo.run()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_dataset(ds, out / "demo.nc")
    demo.plot(ds).savefig(out / "demo.png", dpi=120)
    print(demo.summary(ds))
    print(f"wrote {out / 'demo.nc'} and {out / 'demo.png'} in {time.perf_counter() - start:.1f} s")
    return 0


def _run(args) -> int:
    from .experiments import _runner

    try:
        loaded = _runner.load_config(args.config, quick=args.quick, overrides=args.set)
    except _runner.ConfigError as error:
        print(f"mirrorflow run: error: {error}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out or f"results/{loaded.name}{'-quick' if args.quick else ''}")
    summary = _runner.run_experiment(
        loaded, out, quick=args.quick, progress=args.progress and sys.stderr.isatty()
    )
    _runner.print_summary(summary, out)
    return 1 if args.strict and not summary["all_held"] else 0


def _list(args) -> int:
    from .experiments import _runner

    rows = _runner.describe_experiments(CONFIGS)
    width = max(len(name) for name, _, _ in rows)
    for name, description, config in rows:
        print(f"{name:<{width}}  {description}\n{'':<{width}}  config: {config}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirrorflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="solve real flows, print a summary, write a figure")
    demo.add_argument("--out", default="results", help="output folder (default: results)")
    demo.set_defaults(handler=_demo)

    run = commands.add_parser("run", help="run an experiment from its YAML config")
    run.add_argument("config", help="the experiment's YAML file, e.g. configs/balance.yaml")
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
    run.add_argument("--no-progress", dest="progress", action="store_false")
    run.set_defaults(handler=_run)

    listing = commands.add_parser("list", help="list the experiments and their configs")
    listing.set_defaults(handler=_list)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
