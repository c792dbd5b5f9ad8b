"""Every ```anm block of docs/language.md does what the page says it does.

```anm            a complete model: compiles, with no errors (also ```anm file=NAME, a complete model the
                  page's console sessions use: tests/test_docs_sessions.py)
```anm fragment   a piece of a model: parses
```anm error      intentionally wrong: raises AnmError; a ```text block right after it is the exact report
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import anmc
from anmc.lang.errors import AnmError

DOC = Path(__file__).resolve().parents[1] / "docs" / "language.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.M | re.S)


def blocks():
    """(info, body, the body of the ```text block that directly follows or None), in page order."""
    found = [(m.group(1).strip(), m.group(2), m.start(), m.end()) for m in FENCE.finditer(DOC.read_text())]
    out = []
    for i, (info, body, _, end) in enumerate(found):
        if info.split()[:1] == ["anm"]:
            follows = found[i + 1] if i + 1 < len(found) else None
            text = follows[1] if follows and follows[0] == "text" and not DOC.read_text()[end : follows[2]].strip() else None
            out.append(("anm" if info.startswith("anm file=") else info, body, text))
    return out


BLOCKS = blocks()


def test_the_page_has_examples_of_every_kind():
    kinds = [info for info, _, _ in BLOCKS]
    assert kinds.count("anm") >= 3 and kinds.count("anm fragment") >= 8 and kinds.count("anm error") >= 2
    assert set(kinds) <= {"anm", "anm fragment", "anm error"}, "unknown kind of ```anm block"


@pytest.mark.parametrize("info, body, text", BLOCKS, ids=[f"{i}-{info.replace(' ', '_')}" for i, (info, _, _) in enumerate(BLOCKS)])
def test_example(info, body, text):
    if info == "anm":
        prior = anmc.compile_prior(body)
        assert prior.state_names
    elif info == "anm fragment":
        program = anmc.parse_anm(body, "fragment.anm")
        assert program.statements or program.model
    else:
        with pytest.raises(AnmError) as err:
            anmc.compile_prior(anmc.load_model(body, filename="example.anm"))
        if text is not None:
            assert str(err.value) == text.rstrip("\n")


def test_documented_edit_error():
    # the one-line edit example of the page
    model = anmc.load_model(Path(__file__).resolve().parents[1] / "priors" / "pendulum.anm")
    with pytest.raises(AnmError) as err:
        anmc.apply_edits(model, ["omega' = -thetta"])
    assert str(err.value) in DOC.read_text()


def test_documented_reserved_words_are_reserved():
    from anmc.lang.check import KEYWORDS, reserved_reason

    page = DOC.read_text()
    for word in KEYWORDS:
        assert f" {word}" in page and reserved_reason(word)
    for name in ("match", "case", "exec", "eval", "open", "id", "input", "sum", "type", "z", "self", "np", "next_x", "start_x", "J_01"):
        assert reserved_reason(name), name
    assert reserved_reason("kin") is None and reserved_reason("theta") is None


def test_documented_precedence():
    module = anmc.compile_prior(
        "state a ~ Normal(0, 1)\nstate b ~ Normal(0, 1)\nstate c ~ Normal(0, 1)\ndynamics discrete\n"
        "  next a = a - b - c\n  next b = a / b / c\n  next c = -a^2 + a^b^c + 2^-1 * -a\nnoise a = 0, b = 0, c = 0\nobserve a\n"
    ).module().double()
    import torch

    a, b, c = 1.3, 0.7, 1.1
    got = module(torch.tensor([a, b, c], dtype=torch.float64)).tolist()
    assert got == pytest.approx([(a - b) - c, (a / b) / c, -(a**2) + a ** (b**c) + 2**-1 * -a], rel=1e-14)
