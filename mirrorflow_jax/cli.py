"""The ``mirrorflow`` command line."""

import argparse
import pathlib
import sys
import time


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirrorflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="solve real flows, print a summary, write a figure")
    demo.add_argument("--out", default="results", help="output folder (default: results)")
    demo.set_defaults(handler=_demo)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
