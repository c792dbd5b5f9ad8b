"""The language's limits measured properly: a long flat sum is not "nested too deeply" (long chains
are regrouped, with the same model), deep nesting still is; and line numbers count `\\n` only, as the
parser does, so that a `\\x0b`, `\\x0c` or `\\u2028` in a comment does not shift what diagnostics,
the generated comments and `anmc show` quote."""

from __future__ import annotations

import operator
from pathlib import Path

import pytest
import sympy as sp
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import anmc
from anmc.cli import main
from anmc.lang.errors import AnmError
from anmc.lang.parser import LONG_CHAIN, MAX_NESTING
from anmc.codegen.learned_anm import learned_anm
from anmc.symbolic.model import symbol

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = ROOT / "priors" / "pendulum.anm"
HEAD = "model m\nstate x ~ Normal(0, 1)\ndynamics continuous dt = 0.1\n"
TAIL = "noise x = 0.1\nobserve x\n"


def _model(rhs: str):
    return anmc.load_model(f"{HEAD}  x' = {rhs}\n{TAIL}")


@pytest.mark.parametrize("n", [99, 100, 1000, 5000])
def test_a_flat_sum_of_many_terms_is_not_too_deep(n):
    model = _model(" + ".join(f"{i + 1}*x" for i in range(n)))
    assert model.rhs["x"] == sp.Integer(n * (n + 1) // 2) * symbol("x")
    if n <= 1000:
        anmc.compile_model(model)


def test_deep_nesting_is_still_refused():
    with pytest.raises(AnmError, match="nested too deeply"):
        _model("x * (2 + " * (MAX_NESTING + 1) + "x" + ")" * (MAX_NESTING + 1))  # right-nested: no chain to regroup
    with pytest.raises(AnmError, match="nested too deeply"):
        _model("-" * 150 + "x")


def test_cli_check_accepts_a_flat_sum_of_99_terms(tmp_path):
    path = tmp_path / "flat.anm"
    path.write_text(f"{HEAD}  x' = -(" + " + ".join(["x"] * 99) + f") / 99\n{TAIL}")
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output


_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_terms = st.one_of(st.integers(1, 9).map(str), st.just("x"), st.just("(x + 2)"), st.just("sin(x)"))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["+-", "*/"]), st.data())
def test_regrouped_chains_build_the_same_model(family, data):
    n = data.draw(st.integers(LONG_CHAIN - 2, 3 * LONG_CHAIN))
    terms = data.draw(st.lists(_terms, min_size=n, max_size=n))
    ops = data.draw(st.lists(st.sampled_from(family), min_size=n - 1, max_size=n - 1))
    text = terms[0] + "".join(f" {o} {t}" for o, t in zip(ops, terms[1:]))
    x = symbol("x")
    values = {"x": x, "(x + 2)": x + 2, "sin(x)": sp.sin(x)}
    expected = values.get(terms[0], None) or sp.Integer(terms[0])
    for o, t in zip(ops, terms[1:]):  # left to right, as written
        expected = _OPS[o](expected, values.get(t, None) or sp.Integer(t))
    got = _model(text).rhs["x"]
    assert sp.simplify(got - expected) == 0


# ---------------------------------------------------------------- lines as the parser counts them

BREAKS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]


@pytest.mark.parametrize("brk", BREAKS, ids=lambda c: f"U+{ord(c):04X}")
def test_diagnostic_after_a_line_break_character_in_a_comment_shows_the_right_line(brk):
    text = f"model m   # a comment{brk}with a break\nstate x ~ Normal(0, 1)\ndynamics continuous dt = 0.1\n  x' = -thetta\n{TAIL}"
    with pytest.raises(AnmError) as info:
        anmc.load_model(text)
    d = info.value.first
    assert (d.line, d.column) == (4, 9)
    assert d.source_line == "  x' = -thetta"


@pytest.mark.parametrize("brk", BREAKS, ids=lambda c: f"U+{ord(c):04X}")
def test_syntax_error_after_a_line_break_character_shows_the_right_line(brk):
    text = f"model m   # a comment{brk}with a break\nstate x ~ Normal(0, 1)\ndynamics continuous dt = 0.1\n  x' = -x )\n{TAIL}"
    with pytest.raises(AnmError) as info:
        anmc.load_model(text)
    assert info.value.first.line == 4 and info.value.first.source_line == "  x' = -x )"


@pytest.mark.parametrize("brk", BREAKS, ids=lambda c: f"U+{ord(c):04X}")
def test_generated_comments_and_show_quote_the_right_lines(brk):
    text = PENDULUM.read_text().replace("\n", f"   # note{brk}more\n", 2)
    assert text.count("\n") == PENDULUM.read_text().count("\n")
    prior = anmc.compile_prior(text)
    assert "# line 5: param L = 1.0 in [0.05, 20] learn" in prior.source
    assert "# line 15: noise theta = 0.01, omega = 0.05" in prior.source
    assert prior.model.rhs_text["omega"] == "omega' = -(g / L) * sin(theta) - c * omega"
    shown = learned_anm(prior.model, prior.module())
    assert shown.count("\n") == text.count("\n")
    assert shown.split("\n")[4].startswith("param L = 1 in [0.05, 20] learn   # learned (L started at 1.0)")
