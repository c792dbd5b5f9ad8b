"""Every script in benchmarks/ runs with `--quick` (tiny sizes, one repeat), exits 0 and prints a table.

The numbers are not checked: the benchmarks report, they do not assert (speed is measured, never a timed
assertion). Every script must have a `--quick` flag: one without it fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
NUMBER = re.compile(r"\d[\d,]*(\.\d+)?")


def _is_table(text: str) -> bool:
    """At least two lines that each hold a label and two or more numbers (rich's boxes or plain columns)."""
    rows = [line for line in text.splitlines() if len(NUMBER.findall(line)) >= 2 and re.search(r"[A-Za-z]", line)]
    return len(rows) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_runs_quick(script: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert "--quick" in help_text.stdout, f"benchmarks/{script.name} has no --quick flag (exit {help_text.returncode})"
    run = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert run.returncode == 0, f"{script.name} --quick exited {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert _is_table(run.stdout), f"{script.name} --quick printed no table:\n{run.stdout[-3000:]}"
