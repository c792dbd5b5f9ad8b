"""Rewrite the golden files of tests/test_codegen.py from the current emitter.

    python tests/golden/regenerate.py

Run it when a change to the generated source is intended, read the diff (`git diff tests/golden`),
and commit it with the emitter change. The golden source is what `anmc.compile_prior` emits for
each prior of GOLDEN given by that relative path, from the repository root: `priors/pendulum.anm`,
and `camera_pendulum.anm` here (observe expressions).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# golden file -> the prior it is emitted from
GOLDEN = {"pendulum.py": "priors/pendulum.anm", "camera_pendulum.py": "tests/golden/camera_pendulum.anm"}


def emitted(prior: str) -> str:
    """The torch source for `prior` (a path relative to the repository root), as the golden test sees it."""
    import anmc

    cwd = os.getcwd()
    os.chdir(ROOT)  # the source names the file it came from: keep that path relative
    try:
        return anmc.compile_prior(prior).source
    finally:
        os.chdir(cwd)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    for name, prior in GOLDEN.items():
        path = Path(__file__).with_name(name)
        text = emitted(prior)
        changed = not path.exists() or path.read_text() != text
        path.write_text(text)
        print(f"{'rewrote' if changed else 'unchanged'} {path.relative_to(ROOT)} (from {prior})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
