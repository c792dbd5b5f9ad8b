"""The layout is a checked contract: imports flow one way along the pipeline, and the light stages stay light.

The layers and the forbidden imports are stated once, in pyproject.toml's [tool.importlinter]
(docs/architecture.md); this test runs import-linter on them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint) if lint.exists() else "lint-imports", "--config", str(ROOT / "pyproject.toml")],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "broken" not in res.stdout.split("Contracts:")[-1].replace("0 broken", "")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return set(out.stdout.split())


def test_package_root_and_language_load_no_torch_or_sympy():
    loaded = _modules_after("import anmc, anmc.lang, anmc.lang.ast, anmc.lang.parser, anmc.lang.check")
    assert "torch" not in loaded and "sympy" not in loaded and "numpy" not in loaded


def test_public_names_resolve_lazily():
    loaded = _modules_after("import anmc; anmc.parse_anm; assert anmc.__version__")
    assert "torch" not in loaded
    loaded = _modules_after("import anmc; anmc.compile_prior; anmc.intervene; anmc.train; anmc.TrainConfig")
    assert "torch" in loaded and "anmc.analysis.intervene" in loaded
    import anmc

    from anmc.analysis.intervene import intervene

    assert anmc.intervene is intervene and callable(anmc.intervene)
    with pytest.raises(AttributeError):
        anmc.no_such_name  # noqa: B018
    assert set(anmc.__all__) <= set(dir(anmc))


def test_cli_check_loads_no_torch(tmp_path):
    code = (
        "from click.testing import CliRunner\nfrom anmc.cli import main\n"
        f"res = CliRunner().invoke(main, ['check', {str(ROOT / 'priors' / 'pendulum.anm')!r}])\nassert res.exit_code == 0, res.output"
    )
    assert "torch" not in _modules_after(code)
