"""docs/guarantees.md names a test for every guarantee: each named test exists (a renamed or deleted
test would leave a promise without proof)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_guarantee_table_names_exists():
    text = (ROOT / "docs" / "guarantees.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("|") and not line.startswith(("| guarantee", "| fault", "| limit", "|---"))]
    assert len(rows) >= 25
    for row in rows:
        named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", row)
        assert named, f"a guarantee without a test: {row}"
        for path, name in named:
            source = (ROOT / path).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"
    assert "(slow)" in text and "tests/test_kill_resume.py" in text
