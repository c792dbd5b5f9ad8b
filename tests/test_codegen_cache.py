"""The cache of generated source (anmc.codegen.cache): a second compile loads what the first wrote,
cached text goes through the same audit as fresh text, and an unusable directory changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import anmc
from anmc.codegen import cache
from anmc.codegen import compile as compile_module

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = ROOT / "priors" / "pendulum.anm"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    where = tmp_path / "cache"
    monkeypatch.setenv("ANMC_CACHE_DIR", str(where))
    return where


def no_compiling(monkeypatch):
    def refuse(model):
        raise AssertionError("compiled although the cache holds this prior")

    monkeypatch.setattr(compile_module, "compile_model", refuse)


def test_a_second_compile_reads_the_cache(cache_dir, monkeypatch):
    first = anmc.compile_prior(PENDULUM, intervention="drag")
    assert len(list(cache_dir.glob("*.py"))) == 1
    no_compiling(monkeypatch)
    second = anmc.compile_prior(PENDULUM, intervention="drag")
    assert second.source == first.source and second.module_class is not first.module_class
    assert second.state_names == ("theta", "omega") and second.observed == ("theta",)
    z = torch.randn(5, 2)
    torch.testing.assert_close(second.module().f_and_jacobian(z), first.module().f_and_jacobian(z))
    # the model is built on demand, the same as the first one's
    assert second.model.params["c"].value == first.model.params["c"].value == 0.8


@pytest.mark.parametrize(
    "other",
    [dict(intervention="long_rod"), dict(edits=["c = 0.3"]), dict(intervention="drag", edits=["L = 2"])],
    ids=["intervention", "edit", "both"],
)
def test_interventions_and_edits_are_part_of_the_key(cache_dir, other):
    plain = anmc.compile_prior(PENDULUM)
    changed = anmc.compile_prior(PENDULUM, **other)
    assert changed.source != plain.source
    assert len(list(cache_dir.glob("*.py"))) == 2


def test_the_key_covers_the_text_the_file_name_and_the_compiler():
    text = PENDULUM.read_text()
    base = cache.key(text, "a.anm", None, [])
    assert cache.key(text + "\n", "a.anm", None, []) != base
    assert cache.key(text, "b.anm", None, []) != base
    assert cache.key(text, "a.anm", None, ["c = 1"]) != base
    assert len(cache.compiler_fingerprint()) == 64


def test_tampered_cached_source_is_never_run(cache_dir, tmp_path):
    prior = anmc.compile_prior(PENDULUM)
    (entry,) = cache_dir.glob("*.py")
    marker = tmp_path / "ran"
    entry.write_text(prior.source.replace("import math\n", f"import math\nopen({str(marker)!r}, 'w')\n", 1))
    again = anmc.compile_prior(PENDULUM)  # refused by the audit, compiled afresh, the entry rewritten
    assert not marker.exists()
    assert again.source == prior.source and entry.read_text() == prior.source


def test_cached_metadata_cannot_widen_the_audit(cache_dir, tmp_path):
    prior = anmc.compile_prior(PENDULUM)
    (meta,) = cache_dir.glob("*.json")
    (entry,) = cache_dir.glob("*.py")
    marker = tmp_path / "ran"
    entry.write_text(prior.source.replace("import math\n", f"import math\nopen({str(marker)!r}, 'w')\n", 1))
    meta.write_text('{"class": "Pendulum", "names": ["theta", "omega", "g", "L", "c", "open"]}')
    anmc.compile_prior(PENDULUM)
    assert not marker.exists()


def test_an_unwritable_cache_directory_is_ignored(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ANMC_CACHE_DIR", str(blocker / "cache"))
    prior = anmc.compile_prior(PENDULUM)
    assert prior.module().d == 2


def test_an_empty_cache_dir_switches_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("ANMC_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    anmc.compile_prior(PENDULUM)
    assert cache.directory() is None and not any(tmp_path.iterdir())


def test_xdg_cache_home_is_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("ANMC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    anmc.compile_prior(PENDULUM)
    assert len(list((tmp_path / "anmc" / "priors").glob("*.py"))) == 1


def test_a_model_object_is_compiled_without_the_cache(cache_dir):
    anmc.compile_prior(anmc.load_model(PENDULUM))
    assert not cache_dir.exists()


def test_reading_a_cached_prior_builds_no_model_and_imports_no_parser(cache_dir):
    """The cached path's promise (benchmarks/jacobian.py, "cached"): in a fresh process, a prior the
    cache holds is audited and loaded without the parser, the checker, the syntax tree or the
    symbolic model, which are imported the moment something asks for the model."""
    anmc.compile_prior(PENDULUM)
    script = (
        "import sys, anmc\n"
        f"p = anmc.compile_prior({str(PENDULUM)!r})\n"
        "p.module()\n"
        "heavy = ('anmc.lang.parser', 'anmc.lang.check', 'anmc.lang.ast', 'anmc.symbolic.model', 'anmc.codegen.torch_emitter', 'lark')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "p.model\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env={**os.environ, "ANMC_CACHE_DIR": str(cache_dir)})
    before, after = out.stdout.strip().splitlines()
    assert before == "[]"
    assert "anmc.symbolic.model" in after and "anmc.lang.parser" in after


@pytest.mark.parametrize("enabled", [True, False])
def test_compiling_leaves_the_garbage_collector_as_it_found_it(cache_dir, enabled):
    """compile_prior pauses the cyclic collector while it works (anmc.codegen.compile) and gives it
    back in the state it was in, also when the compile fails."""
    import gc

    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        anmc.compile_prior(PENDULUM)
        assert gc.isenabled() is enabled
        with pytest.raises(anmc.AnmError):
            anmc.compile_prior("model broken\nstate x\n")
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
