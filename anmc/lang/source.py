"""Reading a `.anm` source: a path or the text itself.

    text, filename = read_source("priors/pendulum.anm")   # or read_source(path_object), read_source(text)

The errors are imported only when raised, so that reading a cached prior (anmc.codegen.compile) does not
load the syntax tree's classes.
"""

from __future__ import annotations

from pathlib import Path


def _error(message: str, path: Path):
    from anmc.lang.errors import AnmError, Diagnostic

    return AnmError(Diagnostic(message, str(path), 0, 0))


def read_source(path_or_text: str | Path) -> tuple[str, str]:
    """(text, filename) from a path or from `.anm` text itself: anything with a newline is text (a model
    takes several lines), anything else a path."""
    if isinstance(path_or_text, Path) or "\n" not in str(path_or_text):
        path = Path(path_or_text)
        if path.is_dir():
            raise _error(f"{path} is a folder; give the path of a .anm file", path)
        if not path.is_file():
            raise _error(f"no such file: {path}; give the path of a .anm file", path)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as err:
            raise _error(f"the file is not UTF-8 text (byte {err.start}); is it really a .anm file?", path) from None
    return str(path_or_text), "<anm>"
