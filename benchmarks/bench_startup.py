"""Start-up cost of the package and the command line: wall and CPU seconds (best of N) of
``import mirrorflow_jax``, ``mirrorflow --help`` and the first use of a public name, each in a
fresh interpreter. CPU seconds stay comparable on a busy machine, wall seconds do not.

    python benchmarks/bench_startup.py                   # this checkout
    git archive OLD | tar -x -C /tmp/old && python benchmarks/bench_startup.py --before /tmp/old
"""

import argparse
import os
import resource
import subprocess
import sys
import time


def measure(command: list[str], env: dict | None, repeats: int) -> tuple[float, float]:
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, env=env, cwd="/", check=True, capture_output=True)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        wall, cpu = min(wall, elapsed), min(cpu, used)
    return wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="a source tree of another version to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    py = sys.executable
    rows = [
        ("python -c pass", [py, "-c", "pass"], None),
        ("import jax", [py, "-c", "import jax"], None),
        ("import mirrorflow_jax", [py, "-c", "import mirrorflow_jax"], None),
        ("mirrorflow --help", [py, "-m", "mirrorflow_jax", "--help"], None),
        ("then mf.solve_flow", [py, "-c", "import mirrorflow_jax as m; m.solve_flow"], None),
        ("then mf.sweep", [py, "-c", "import mirrorflow_jax as m; m.sweep"], None),
    ]
    if args.before:
        old = dict(os.environ, PYTHONPATH=os.path.abspath(args.before))
        rows[2:2] = [
            ("before: import mirrorflow_jax", rows[2][1], old),
            ("before: mirrorflow --help", rows[3][1], old),
        ]
    for name, command, env in rows:
        wall, cpu = measure(command, env, args.repeats)
        print(f"{name:32s} wall {wall:6.2f} s   CPU {cpu:6.2f} s", flush=True)
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
