"""Every script in examples/ runs end to end at a tiny size (its --tiny flag)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_tiny(script, tmp_path):
    res = subprocess.run(
        [sys.executable, str(script), "--tiny", "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "pendulum" in res.stdout
    assert "torch threads: " in res.stdout  # as `anmc train` chooses them (ANMC_THREADS, else the load)
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert rows and set(rows[0]["states"]) == {"theta", "omega"}
    assert rows[0]["params"]["L"]["true"] == pytest.approx(1.0)
