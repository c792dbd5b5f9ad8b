"""`let NAME = EXPR`: named intermediates. Substituted exactly (same f and J as the written-out form),
checked with line:col errors (unknown names, cycles, use before definition, shadowing, unused), shown
by the emitters, and usable in interventions."""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy as sp
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anmc
from anmc import cli
from anmc.lang.errors import AnmError

GOOD = """\
model m
const k = 2.0
param c = 0.5 in [0, 1]
state x ~ Normal(0, 1)
state v ~ Normal(0, 1)
dynamics continuous dt = 0.1 using rk4 steps 2
  let w = k * x
  let drag = c * v
  x' = v
  v' = -w - drag
noise x = 0.01, v = 0.02
observe x
intervention stiff
  let w = 3 * k * x
"""


def sub(old: str, new: str, text: str = GOOD) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (id, text, message of the first error, line, column)
CASES = [
    ("unknown_name", sub("let w = k * x", "let w = kk * x"), "unknown name 'kk'; did you mean 'k'?", 7, 11),
    ("self_reference", sub("let w = k * x", "let w = k * w"), "let 'w' is defined in terms of itself", 7, 7),
    ("cycle", sub("let drag = c * v", "let drag = c * u\n  let u = drag * v"), "the lets drag -> u -> drag form a cycle; define one of them without the others", 8, 7),
    ("use_before_definition", sub("let w = k * x", "let w = k * drag"), "'drag' is used before its definition (let at line 8); move that 'let' above this line", 7, 15),
    ("equation_before_let", sub("  let w = k * x\n  let drag = c * v\n  x' = v\n", "  x' = v + w\n  let w = k * x\n  let drag = c * v\n"), "'w' is used before its definition (let at line 8); move that 'let' above this line", 7, 12),
    ("shadows_a_state", sub("let w = k * x", "let x = k * x"), "let 'x' shadows the state declared at line 4; choose another name", 7, 7),
    ("shadows_a_param", sub("let w = k * x", "let c = k * x"), "let 'c' shadows the param declared at line 3; choose another name", 7, 7),
    ("shadows_a_const", sub("let w = k * x", "let k = 2 * x"), "let 'k' shadows the const declared at line 2; choose another name", 7, 7),
    ("defined_twice", sub("let drag = c * v", "let w = c * v"), "let 'w' is defined twice (first at line 7); give the second another name", 8, 7),
    ("reserved_name", sub("let w = k * x", "let sin = k * x"), "'sin' is a built-in function of the language; choose another name for this let", 7, 7),
    ("let_outside_a_block", sub("observe x", "observe x\nlet q = 1"), "a 'let' line belongs inside a 'dynamics' block or an 'intervention' (indented under it), not on its own", 13, 1),
    ("unknown_name_in_an_intervention_let", sub("let w = 3 * k * x", "let w = 3 * kk * x"), "unknown name 'kk'; did you mean 'k'?", 14, 15),
    ("intervention_let_uses_a_later_let", sub("let w = 3 * k * x", "let w = 3 * drag"), "'drag' is used before its definition (let at line 8); move that 'let' above this line", 14, 15),
    ("let_without_value", sub("let w = k * x", "let w ="), "unexpected end of line; expected '(', '+', '-', a name or a number", 7, 10),
]


@pytest.mark.parametrize("text, message, line, column", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_let_reports_message_line_and_column(text, message, line, column):
    with pytest.raises(AnmError) as err:
        anmc.load_model(text)
    first = err.value.first
    assert (first.message, first.line, first.column) == (message, line, column), str(err.value)


def test_the_base_is_valid_and_an_unused_let_is_a_warning():
    assert anmc.load_model(GOOD).warnings == []
    model = anmc.load_model(sub("let drag = c * v", "let drag = c * v\n  let spare = 2 * v"))
    assert [(w.message, w.line, w.column) for w in model.warnings] == [("let 'spare' is never used", 9, 7)]


def test_the_lets_are_substituted_exactly():
    model = anmc.load_model(GOOD)
    x, v, k, c = sp.symbols("x v k c", real=True)
    assert model.rhs["v"] == -k * x - c * v
    assert model.lets == {"w": k * x, "drag": c * v}


def test_an_intervention_redefines_a_let_and_everything_using_it_follows():
    prior = anmc.compile_prior(GOOD, intervention="stiff")
    x, v, k, c = sp.symbols("x v k c", real=True)
    assert prior.model.rhs["v"] == -3 * k * x - c * v
    edited = anmc.compile_prior(GOOD, edits=["let drag = 0"])
    assert edited.model.rhs["v"] == -k * x


def test_a_named_temporary_carries_the_lets_name_in_torch_and_numpy():
    text = sub("  x' = v\n  v' = -w - drag\n", "  x' = v + sin(w)\n  v' = -w - drag + cos(w)\n")
    prior = anmc.compile_prior(text)
    assert "w = k*x  # let" in prior.source.replace("2.0*x", "k*x") or "w = 2.0*x  # let" in prior.source
    assert "# line 7: let w = k * x" in prior.source
    assert "  # let w" in prior.numpy_source()
    latex = prior.latex()
    assert r"w &= k x && \text{(let)}" in latex and r"drag &= c v && \text{(let)}" in latex
    assert r"\dot{v} &= - drag - w + \cos{\left(w \right)}" in latex  # the equation over the lets


# ---------------------------------------------------------------- property: lets change nothing numerically

LEAVES = ["x", "v", "k", "c", "1", "2", "0.5"]


@st.composite
def expressions(draw, names, depth=3):
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(names))
    kind = draw(st.sampled_from(["+", "-", "*", "sin", "cos", "tanh"]))
    a = draw(expressions(names, depth - 1))
    if kind in ("sin", "cos", "tanh"):
        return f"{kind}({a})"
    b = draw(expressions(names, depth - 1))
    return f"({a} {kind} {b})"


@st.composite
def programs_with_lets(draw):
    """(text with lets, the same text with every let written out)."""
    lets, inline = [], {}
    for i in range(draw(st.integers(1, 4))):
        expr = draw(expressions(LEAVES + list(inline)))
        name = f"a{i}"
        lets.append(f"  let {name} = {expr}")
        written = expr
        for other, value in sorted(inline.items(), key=lambda kv: -len(kv[0])):
            written = _replace_name(written, other, f"({value})")
        inline[name] = written
    eq_x = draw(expressions(LEAVES + list(inline)))
    eq_v = draw(expressions(LEAVES + list(inline)))

    def text(body_lets, ex, ev):
        return sub("  let w = k * x\n  let drag = c * v\n  x' = v\n  v' = -w - drag\n", body_lets + f"  x' = {ex}\n  v' = {ev}\n", GOOD.split("intervention")[0])

    written = [eq_x, eq_v]
    for name, value in inline.items():
        written = [_replace_name(e, name, f"({value})") for e in written]
    return text("\n".join(lets) + "\n", eq_x, eq_v), text("", *written)


def _replace_name(expr: str, name: str, value: str) -> str:
    import re

    return re.sub(rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])", value, expr)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs_with_lets(), st.integers(0, 2**31 - 1))
def test_a_prior_with_lets_compiles_to_the_same_f_and_J_as_written_out(pair, seed):
    with_lets, written_out = pair
    a, b = anmc.compile_prior(with_lets), anmc.compile_prior(written_out)
    assert a.model.rhs == b.model.rhs
    z = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    fa, Ja = a.module().f_and_jacobian(z)
    fb, Jb = b.module().f_and_jacobian(z)
    torch.testing.assert_close(fa, fb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Ja, Jb, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the command line


def run(*args):
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("case", ["cycle", "use_before_definition", "shadows_a_param", "unknown_name"])
def test_check_reports_let_errors_with_a_caret_and_exit_2(tmp_path, case):
    _, text, message, line, column = next(c for c in CASES if c[0] == case)
    path = tmp_path / "bad.anm"
    path.write_text(text)
    result = run("check", path)
    assert result.exit_code == 2
    assert f"{path}:{line}:{column}: error: {message}" in result.output
    assert "^" in result.output


def test_check_warns_about_an_unused_let_and_exits_0(tmp_path):
    path = tmp_path / "m.anm"
    path.write_text(sub("let drag = c * v", "let drag = c * v\n  let spare = 2 * v"))
    result = run("check", path)
    assert result.exit_code == 0
    assert "warning: let 'spare' is never used" in result.output


def test_compile_latex_prints_the_lets(tmp_path):
    path = tmp_path / "m.anm"
    path.write_text(GOOD)
    result = run("compile", path, "--emit", "latex")
    assert result.exit_code == 0 and r"\text{(let)}" in result.output
