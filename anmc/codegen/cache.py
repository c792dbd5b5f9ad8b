"""A cache of generated source, so that compiling a prior a second time compiles nothing.

    source = cache.get(key)              # None when absent, unreadable or off
    cache.put(key, source, meta)         # silently skipped when the directory is not writable

The key is a hash of everything the generated source depends on: the `.anm` text and its file name,
the intervention and edits applied, anmc's version and the text of the compiler itself (the language,
the symbolic model and the emitter), so that a changed anmc never reads an old entry. The directory is
`$ANMC_CACHE_DIR` if set (set it to an empty string to switch the cache off), else
`$XDG_CACHE_HOME/anmc/priors`, else `~/.cache/anmc/priors`.

Cached text is untrusted input: whoever can write the directory can write it. `compile_prior` sends it
through the same audit as freshly generated source (`anmc.codegen.load`) and checks the names in its
metadata as the language checks declared names; anything refused is compiled afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from anmc._version import __version__

_COMPILER_PACKAGES = ("lang", "symbolic", "codegen")


def directory() -> Path | None:
    """Where entries live, or None when the cache is off."""
    explicit = os.environ.get("ANMC_CACHE_DIR")
    if explicit is not None:
        return Path(explicit).expanduser() if explicit.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "anmc" / "priors"


@lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """A hash of anmc's version and of the compiler's own source files (read once per process)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(__version__.encode())
    for package in _COMPILER_PACKAGES:
        for path in sorted((root / package).iterdir()):
            if path.suffix in (".py", ".lark"):
                h.update(path.name.encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def key(text: str, filename: str, intervention: str | None, edits) -> str:
    """The entry's name: a hash of the inputs and of the compiler."""
    parts = [compiler_fingerprint(), filename, text, intervention or "", *edits]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]


def get(name: str) -> tuple[str, dict] | None:
    """(source, metadata) of an entry, or None."""
    where = directory()
    if where is None:
        return None
    try:
        source = (where / f"{name}.py").read_text(encoding="utf-8")
        meta = json.loads((where / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (source, meta) if isinstance(meta, dict) else None


def put(name: str, source: str, meta: dict) -> None:
    """Write an entry (atomically: a reader never sees half of one); do nothing if that fails."""
    where = directory()
    if where is None:
        return
    try:
        where.mkdir(parents=True, exist_ok=True)
        for suffix, text in ((".py", source), (".json", json.dumps(meta))):
            tmp = where / f"{name}{suffix}.{os.getpid()}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, where / f"{name}{suffix}")
    except OSError:
        pass
