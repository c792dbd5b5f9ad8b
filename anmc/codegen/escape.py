"""The one way user text enters generated source: `comment_safe`.

File names, edit strings and the equations as the user typed them are written into comments and
docstrings of the generated code (so that it reads like the `.anm` it came from). Any of them may
hold characters that end a comment or a string and start code: Python ends a line at `\\n`, `\\r`
and `\\r\\n`; `str.splitlines` (linecache, tracebacks, editors) also at `\\x0b`, `\\x0c`,
`\\x1c`-`\\x1e`, `\\x85`, `\\u2028` and `\\u2029`; a `"` or a trailing backslash ends a docstring;
and `coding:` on one of the first two lines of a file changes how Python decodes the rest of it
(`# coding: utf-7` turns `+AAo-` into a line break). `comment_safe` keeps every printable character
except those, writes `"` as `'` and `\\` as `/`, and every other character as `<U+XXXX>`; the
emitters pass each piece of user text through it, and nothing else.
"""

from __future__ import annotations

import re

_REPLACED = {'"': "'", "\\": "/"}
# `coding:`/`coding=` is what Python's encoding declaration looks for (PEP 263): never write it.
_CODING = re.compile(r"(?<=coding)([:=])")


def _escape(c: str) -> str:
    if c in _REPLACED:
        return _REPLACED[c]
    if c.isprintable() and len(f"a{c}b".splitlines()) == 1:  # every line break is non-printable; belt and braces
        return c
    return f"<U+{ord(c):04X}>"


def comment_safe(text: str) -> str:
    """`text` made safe to write into a `#` comment or a docstring of generated code.

    The result holds only printable characters other than `"` and `\\`: no line break in any Unicode
    form, no control or format character (bidirectional overrides included), no `coding:` or `coding=`.
    Printable text (`theta' = -omega`, `priors/pendulum.anm`, `θ`) is unchanged.
    """
    out = "".join(_escape(c) for c in str(text))
    return _CODING.sub(lambda m: f"<U+{ord(m.group(1)):04X}>", out)
