"""How `anmc check` (parse + check + build the SymPy model) scales with the number of equations.

    python benchmarks/check_scaling.py [--sizes 10 100 1000] [--repeat 3] [--quick]

A generated prior with N coupled states (`x_i' = -k * x_i + 0.1 * sin(x_{i-1})`) is checked N = 10,
100, 1000 times; the table gives the seconds of `load_model` (in-process, the best of --repeat) and
of the whole `anmc check` command (a subprocess: interpreter start and imports included), and the
time per equation, which stays flat when the work is linear. Compilation to torch is not included
(see docs/results.md for the emitter's own scaling).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prior_text(n: int) -> str:
    lines = ["model chain", "const k = 0.5"]
    lines += [f"state x{i} ~ Normal(0, 1)" for i in range(n)]
    lines.append("dynamics continuous dt = 0.05 using euler")
    lines += [f"  x{i}' = -k * x{i} + 0.1 * sin(x{(i - 1) % n})   # state {i}" for i in range(n)]
    lines.append("noise " + ", ".join(f"x{i} = 0.01" for i in range(n)))
    lines.append("observe x0")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10 and 30 equations, one repeat (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeat = [10, 30], 1

    from anmc.symbolic.model import load_model

    load_model(prior_text(2))  # the grammar and SymPy's caches, once

    print(f"{'prior':>12} | {'equations':>9} | {'load_model s':>12} | {'per equation ms':>15} | {'anmc check s':>12}")
    print("-" * 73)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"chain{n}.anm"
            path.write_text(prior_text(n))
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                load_model(path)
                best = min(best, time.perf_counter() - t)
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "anmc", "check", str(path)], capture_output=True, text=True)
            cli = time.perf_counter() - t
            assert done.returncode == 0, done.stderr
            print(f"{'chain' + str(n):>12} | {n:>9} | {best:>12.3f} | {1000 * best / n:>15.3f} | {cli:>12.2f}")


if __name__ == "__main__":
    main()
