"""Bad `.anm` input: every error says what is wrong, where (line, column, caret), and nothing but
`AnmError` ever escapes `anmc.compile_prior` -- not for typos, not for injection attempts, not for fuzz.
"""

from __future__ import annotations

import contextlib
import random
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anmc
from anmc.codegen import compile as compile_module
from anmc.codegen import torch_emitter
from anmc.lang.errors import AnmError

ROOT = Path(__file__).resolve().parents[1]
PRIORS = sorted((ROOT / "priors").glob("*.anm"))

# A small valid model; every malformed case below is one edit of it (line numbers refer to this text).
GOOD = """\
model m
const k = 2.0
param c = 0.5 in [0, 1]
state x ~ Normal(0, 1)
state v ~ Normal(0, 1)
dynamics continuous dt = 0.1 using rk4 steps 2
  x' = v
  v' = -k * x - c * v
noise x = 0.01, v = 0.02
observe x
"""


def sub(old: str, new: str, text: str = GOOD) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


FUNCTIONS = "sin, cos, tan, exp, log, sqrt, abs, tanh, sinh, cosh, atan, atan2, sign, min, max"

# (id, text, message of the first error, line, column)
CASES = [
    # -- syntax
    ("unclosed_paren", sub("Normal(0, 1)\nstate v", "Normal(0, 1\nstate v"), "unexpected end of line; expected ')' or ','", 4, 22),
    ("model_without_name", sub("model m", "model"), "unexpected end of line; expected a name", 1, 6),
    ("two_statements_on_a_line", sub("const k = 2.0", "const k = 2.0 const j = 1"), "unexpected 'const'", 2, 15),
    ("missing_equals", sub("const k = 2.0", "const k 2.0"), "unexpected '2.0'; expected '='", 2, 9),
    ("double_operator", sub("-k * x", "-k * * x"), "unexpected '*'; expected '(', '+', '-', a name or a number", 8, 13),
    ("trailing_operator", sub("x' = v", "x' = v +"), "unexpected end of line; expected '(', '+', '-', a name or a number", 7, 11),
    ("misspelt_keyword", sub("const k = 2.0", "constant k = 2.0"), "unknown statement 'constant'; did you mean 'const'?", 2, 1),
    ("keyword_glued_to_name", sub("param c = 0.5", "paramc = 0.5"), "unknown statement 'paramc'; did you mean 'param'?", 3, 1),
    ("missing_comma", sub("noise x = 0.01, v = 0.02", "noise x = 0.01 v = 0.02"), "unexpected 'v' (each statement goes on its own line)", 9, 16),
    ("string_literal", sub("x' = v", 'x\' = "v"'), "strings are not part of the language", 7, 8),
    ("attribute_access", sub("x' = v", "x' = v.real"), "'.' is not part of the language: attribute access is not allowed, and numbers need a digit before the dot", 7, 9),
    ("subscript", sub("x' = v", "x' = v[0]"), "subscripts are not part of the language ('[' only appears in 'in [lo, hi]' bounds)", 7, 9),
    ("dunder_import", sub("x' = v", "x' = __import__('os')"), "unexpected character '_'", 7, 8),
    ("semicolon", sub("x' = v", "x' = v; import os"), "unexpected character ';'", 7, 9),
    ("too_deep", sub("x' = v", "x' = " + "-" * 150 + "v"), "this expression is nested too deeply (more than 100 levels); split it with consts", 7, 8),
    # -- names
    ("unknown_name", sub("x' = v", "x' = vv"), "unknown name 'vv'; did you mean 'v'?", 7, 8),
    ("unknown_name_far", sub("x' = v", "x' = qqq"), "unknown name 'qqq'", 7, 8),
    ("state_in_const", sub("const k = 2.0", "const k = x"), "unknown name 'x'", 2, 11),
    ("function_as_name", sub("x' = v", "x' = sin"), "'sin' is a function; call it as sin(...)", 7, 8),
    ("constant_called", sub("x' = v", "x' = pi(v)"), "'pi' is a constant, not a function", 7, 8),
    ("declared_twice", sub("state v ~ Normal(0, 1)", "state v ~ Normal(0, 1)\nstate x ~ Normal(0, 2)"), "'x' is declared twice (first at line 4)", 6, 7),
    ("python_keyword_name", sub("const k = 2.0\n", "const k = 2.0\nconst lambda = 1\n"), "'lambda' is a Python keyword, and anmc generates Python; choose another name", 3, 7),
    ("python_builtin_name", sub("const k = 2.0\n", "const k = 2.0\nconst print = 1\n"), "'print' is a Python builtin name, and anmc generates Python; choose another name", 3, 7),
    ("language_keyword_name", sub("state v ~ Normal(0, 1)", "state v ~ Normal(0, 1)\nstate steps ~ Normal(0, 1)"), "'steps' is a keyword of the language; choose another name", 6, 7),
    ("generated_name", sub("const k = 2.0\n", "const k = 2.0\nconst J_01 = 1\n"), "'J_01' is reserved by the code anmc generates; choose another name", 3, 7),
    ("model_named_keyword", sub("model m", "model none"), "'none' cannot name a model: its generated class would be called 'None', a Python keyword", 1, 7),
    # -- functions
    ("unknown_function", sub("x' = v", "x' = sine(v)"), "unknown function 'sine'; did you mean 'sin'?", 7, 8),
    ("eval", sub("x' = v", "x' = eval(v)"), f"unknown function 'eval'; allowed functions: {FUNCTIONS}", 7, 8),
    ("open", sub("x' = v", "x' = open(v)"), f"unknown function 'open'; allowed functions: {FUNCTIONS}", 7, 8),
    ("arity_one", sub("x' = v", "x' = sin(v, x)"), "sin() takes 1 argument, got 2", 7, 8),
    ("arity_two", sub("x' = v", "x' = atan2(v)"), "atan2() takes 2 arguments, got 1", 7, 8),
    ("arity_min", sub("x' = v", "x' = min(v)"), "min() takes two or more arguments, got 1", 7, 8),
    # -- structure
    ("no_equation", sub("  x' = v\n", ""), "state 'x' has no equation; add the equation \"x' = ...\" to the dynamics block", 4, 7),
    ("two_equations", sub("  x' = v\n", "  x' = v\n  x' = 2*v\n"), "state 'x' has two equations (the first at line 7)", 8, 3),
    ("equation_undeclared_state", sub("  x' = v\n", "  x' = v\n  y' = v\n"), "an equation for undeclared state 'y'", 8, 3),
    ("equation_for_param", sub("  x' = v\n", "  x' = v\n  c' = v\n"), "an equation for param 'c'; only states have equations", 8, 3),
    ("derivative_in_discrete", sub("dynamics continuous dt = 0.1 using rk4 steps 2", "dynamics discrete dt = 0.1"), "a derivative equation (x' = ...) inside 'dynamics discrete'; write 'next x = ...'", 7, 3),
    ("assignment_in_continuous", sub("  x' = v", "  x = v"), "'x = ...' is not an equation: continuous dynamics give the derivative, 'x' = EXPR' (a discrete map, 'dynamics discrete', gives the next value: 'next x = EXPR')", 7, 5),
    ("assignment_in_discrete", sub("  x' = v", "  x = v", sub("dynamics continuous dt = 0.1 using rk4 steps 2", "dynamics discrete dt = 0.1")), "'x = ...' is not an equation of a discrete map: write 'next x = EXPR' (the state at the next frame)", 7, 5),
    ("next_in_continuous", sub("  x' = v", "  next x = v"), "a 'next' equation inside 'dynamics continuous'; write \"x' = ...\" (a derivative)", 7, 8),
    ("no_dt", sub("dt = 0.1 ", ""), "continuous dynamics need a frame interval: 'dynamics continuous dt = 1/30 using rk4'", 6, 1),
    ("second_dynamics", GOOD + "dynamics discrete\n", "a second 'dynamics' block (the first is at line 6); a model has one", 11, 1),
    ("unknown_integrator", sub("using rk4", "using rk5"), "unknown integrator 'rk5'; did you mean 'rk4'?", 6, 36),
    ("steps_zero", sub("steps 2", "steps 0"), "steps must be a positive whole number", 6, 46),
    ("steps_fraction", sub("steps 2", "steps 1.5"), "steps must be a positive whole number", 6, 46),
    ("steps_huge", sub("steps 2", "steps 100000"), "steps must be at most 1000 (substeps per frame); use a smaller dt instead", 6, 46),
    ("observe_unknown", sub("observe x", "observe y"), "observe names unknown state 'y'; to observe a function of the states write 'observe y = EXPR'", 10, 9),
    ("observe_twice", sub("observe x", "observe x, x"), "state 'x' is observed twice (first at line 10)", 10, 12),
    ("noise_unknown_state", sub("v = 0.02", "v = 0.02, w = 0.1"), "noise for unknown state 'w'", 9, 27),
    ("noise_missing_state", sub("noise x = 0.01, v = 0.02", "noise x = 0.01"), "no noise std for state 'v'; add 'v = ...' to the noise line (0 is allowed)", 9, 1),
    ("unknown_distribution", sub("Normal(0, 1)", "Gaussian(0, 1)"), "unknown distribution 'Gaussian'; use Normal(mean, sd) or Uniform(low, high)", 4, 11),
    ("distribution_arity", sub("Normal(0, 1)", "Normal(0)"), "Normal takes 2 arguments (mean, standard deviation), got 1", 4, 11),
    # -- numbers
    ("dt_zero", sub("dt = 0.1", "dt = 0"), "dt must be positive, got 0", 6, 26),
    ("dt_negative", sub("dt = 0.1", "dt = -1/30"), "dt must be positive, got -0.0333333", 6, 26),
    ("default_above_bounds", sub("param c = 0.5", "param c = 1.5"), "param 'c' = 1.5 is outside its bounds [0, 1]", 3, 11),
    ("empty_bounds", sub("in [0, 1]", "in [1, 0]"), "empty bounds [1, 0] for param 'c': the lower bound must be below the upper", 3, 19),
    ("learnable_on_bound", sub("param c = 0.5 in [0, 1]", "param c = 0 in [0, 1] learn"), "learnable param 'c' = 0 sits on a bound of [0, 1]; start it strictly inside", 3, 11),
    ("normal_sd_negative", sub("Normal(0, 1)", "Normal(0, -1)"), "the standard deviation of a Normal must be positive, got -1", 4, 21),
    ("uniform_reversed", sub("Normal(0, 1)", "Uniform(1, 0)"), "Uniform(low, high) needs low < high, got Uniform(1, 0)", 4, 11),
    ("noise_negative", sub("v = 0.02", "v = -0.02"), "the noise std of 'v' must be zero or positive, got -0.02", 9, 21),
    ("noise_bounds_without_learn", sub("v = 0.02", "v = 0.02 in [0.01, 0.1]"), "bounds on the noise std of 'v' only apply to a learnable one: add 'learn' after them, or remove them", 9, 30),
    ("noise_bounds_not_positive", sub("v = 0.02", "v = 0.02 in [0, 0.1] learn"), "bounds [0, 0.1] for the noise std of 'v': give 0 < lower < upper", 9, 30),
    ("noise_bounds_empty", sub("v = 0.02", "v = 0.02 in [0.1, 0.01] learn"), "bounds [0.1, 0.01] for the noise std of 'v': give 0 < lower < upper", 9, 30),
    ("noise_learnable_outside_bounds", sub("v = 0.02", "v = 0.2 in [0.01, 0.1] learn"), "the learnable noise std of 'v' = 0.2 is not strictly inside its bounds [0.01, 0.1]; start it inside", 9, 21),
    ("noise_learnable_on_bound", sub("v = 0.02", "v = 0.1 in [0.01, 0.1] learn"), "the learnable noise std of 'v' = 0.1 is not strictly inside its bounds [0.01, 0.1]; start it inside", 9, 21),
    ("noise_bound_unknown_name", sub("v = 0.02", "v = 0.02 in [0.01, vmax] learn"), "unknown name 'vmax'", 9, 36),
    ("const_log_negative", sub("const k = 2.0", "const k = log(-1)"), "const 'k' is not a finite real number (it evaluates to 3.14159i)", 2, 11),
    ("equation_division_by_zero", sub("x' = v", "x' = v / 0"), "the equation of 'x' contains an infinite value (such as 1/0, log(0) or 1e999)", 7, 8),
    ("equation_const_makes_zero", sub("x' = v", "x' = v / (k - 2)"), "the equation of 'x' contains an infinite value (such as 1/0, log(0) or 1e999)", 7, 8),
    ("equation_complex", sub("x' = v", "x' = sqrt(-1) * v"), "the equation of 'x' contains 1i, which is not a real number", 7, 8),
    ("equation_overflow", sub("x' = v", "x' = v * 2^(10^10)"), "the equation of 'x' contains 4.36327e+3010299956, which is too large for a float", 7, 8),
    # -- interventions
    ("set_of_state", GOOD + "intervention a\n  set x = 1\n", "'set' changes consts and params; to change the start of state 'x' use 'init' or 'start'", 12, 7),
    ("set_unknown", GOOD + "intervention a\n  set kk = 1\n", "'set' of unknown name 'kk'; did you mean 'k'?", 12, 7),
    ("assignment_in_intervention", GOOD + "intervention a\n  k = 1\n", "'k = ...' is not an intervention item: write 'set k = EXPR' to change a const or param, or an edited equation ('k' = EXPR', or 'next k = EXPR' for a discrete map)", 12, 5),
    ("intervention_twice", GOOD + "intervention a\n  set k = 1\nintervention a\n  set k = 3\n", "intervention 'a' is declared twice (first at line 11)", 13, 14),
    ("init_unknown_state", GOOD + "intervention a\n  init y ~ Normal(0, 1)\n", "'init' of unknown state 'y'", 12, 8),
    ("start_unknown_state", GOOD + "intervention a\n  start y = 1\n", "'start' of unknown state 'y'", 12, 9),
    # -- characters
    ("backtick", sub("x' = v", "x' = `v`"), "backticks are not part of the language", 7, 8),
    ("cyrillic_letter", sub("state x ~", "state \u0445 ~"), "unexpected character '\u0445' (U+0445); names and operators must be plain ASCII", 4, 7),
    ("fullwidth_letter", sub("x' = v", "x' = \uff56"), "unexpected character '\uff56' (U+FF56); names and operators must be plain ASCII", 7, 8),
    ("nul_byte", sub("x' = v", "x' = v\x00"), "the file contains NUL bytes; is it really a .anm text file?", 7, 9),
]


@pytest.mark.parametrize("text, message, line, column", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_file_reports_message_line_and_column(text, message, line, column):
    with pytest.raises(AnmError) as info:
        anmc.compile_prior(text)
    d = info.value.first
    assert (d.message, d.line, d.column) == (message, line, column), str(info.value)
    assert d.filename == "<anm>" and d.severity == "error"


def test_the_table_is_large_and_its_base_is_valid():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
    prior = anmc.compile_prior(GOOD)
    assert prior.state_names == ("x", "v") and not prior.warnings


def test_formatted_error_has_position_source_line_and_caret(tmp_path):
    path = tmp_path / "bad.anm"
    path.write_text(sub("x' = v", "x' = vv + v"))
    with pytest.raises(AnmError) as info:
        anmc.compile_prior(path)
    assert str(info.value) == (
        f"{path}:7:8: error: unknown name 'vv'; did you mean 'v'?\n"
        "      x' = vv + v\n"
        "           ^~"
    )


def test_caret_lines_up_under_the_column_with_tabs():
    text = sub("  v' = -k * x - c * v", "\tv' = -k * x - cc * v")
    with pytest.raises(AnmError) as info:
        anmc.compile_prior(text)
    d = info.value.first
    assert (d.line, d.column) == (8, 16)
    head, shown, caret = str(d).splitlines()
    assert head.startswith("<anm>:8:16: error: unknown name 'cc'")
    assert shown[caret.index("^") : caret.index("^") + 2] == "cc" and caret.endswith("^~")


def test_several_independent_errors_are_all_reported_in_file_order():
    text = sub("x' = v", "x' = vv")
    text = sub("observe x", "observe y", text)
    text = sub("using rk4", "using rk5", text)
    with pytest.raises(AnmError) as info:
        anmc.compile_prior(text)
    got = [(d.line, d.column, d.message) for d in info.value.diagnostics]
    assert got == [
        (6, 36, "unknown integrator 'rk5'; did you mean 'rk4'?"),
        (7, 8, "unknown name 'vv'; did you mean 'v'?"),
        (10, 9, "observe names unknown state 'y'; to observe a function of the states write 'observe y = EXPR'"),
    ]
    assert str(info.value).endswith("\n3 errors")


def test_numeric_errors_are_collected_too():
    text = sub("dt = 0.1", "dt = 0")
    text = sub("param c = 0.5", "param c = 1.5", text)
    with pytest.raises(AnmError) as info:
        anmc.compile_prior(text)
    assert [(d.line, d.column) for d in info.value.diagnostics] == [(3, 11), (6, 26)]


def test_file_level_error_has_no_position():
    with pytest.raises(AnmError) as info:
        anmc.compile_prior("model m\n")
    first = info.value.first
    assert first.line == 0
    assert str(first) == "<anm>: error: the model declares no state; add a line such as 'state x ~ Normal(0, 1)'"


def test_unused_consts_and_params_are_warnings_not_errors():
    text = sub("const k = 2.0\n", "const k = 2.0\nconst spare = 3\nparam unused = 1\n")
    prior = anmc.compile_prior(text)
    got = [(w.severity, w.line, w.column, w.message) for w in prior.warnings]
    assert got == [
        ("warning", 3, 7, "const 'spare' is never used"),
        ("warning", 4, 7, "param 'unused' is never used"),
    ]
    assert str(prior.warnings[0]).startswith("<anm>:3:7: warning: const 'spare' is never used\n")


def test_non_smooth_functions_compile_with_a_note():
    prior = anmc.compile_prior(sub("x' = v", "x' = abs(v)"))
    assert [w.message for w in prior.warnings] == [
        "abs() is not smooth: its Jacobian is piecewise (exact away from the kinks)"
    ]


def test_semi_implicit_euler_warns_when_equations_are_not_in_declaration_order():
    text = sub("using rk4", "using semi_implicit_euler")
    text = sub("  x' = v\n  v' = -k * x - c * v\n", "  v' = -k * x - c * v\n  x' = v\n", text)
    prior = anmc.compile_prior(text)
    assert [w.message for w in prior.warnings] == [
        "semi_implicit_euler updates the states in the order they are declared (x, v), not in the order the equations are written"
    ]


def test_keywords_are_whole_words():
    # `usingrk4` is not `using rk4`, and `paramk` is not `param k`
    with pytest.raises(AnmError) as info:
        anmc.compile_prior(sub("using rk4", "usingrk4"))
    assert (info.value.first.line, info.value.first.column) == (6, 30)
    assert anmc.compile_prior(sub("const k = 2.0", "const kin = 2.0").replace("-k *", "-kin *")).model.consts == {"kin": 2.0}


def test_byte_order_mark_and_crlf_are_accepted():
    prior = anmc.compile_prior("\ufeff" + GOOD.replace("\n", "\r\n"))
    assert prior.state_names == ("x", "v")


def test_bad_edit_names_the_edit_as_the_file():
    model = anmc.load_model(GOOD)
    edit = "v' = -k * xx"
    with pytest.raises(AnmError) as info:
        anmc.apply_edits(model, [edit])
    d = info.value.first
    assert (d.filename, d.line, d.column, d.message) == (edit, 1, 11, "unknown name 'xx'; did you mean 'x'?")


# ---------------------------------------------------------------- injection attempts


INJECTIONS = [
    sub("x' = v", "x' = __import__('os').system('echo pwned')"),
    sub("x' = v", "x' = ().__class__.__bases__[0].__subclasses__()"),
    sub("x' = v", "x' = v.__class__"),
    sub("x' = v", "x' = exec(v)"),
    sub("x' = v", "x' = eval(v)"),
    sub("x' = v", "x' = open(v)"),
    sub("x' = v", "x' = getattr(v, x)"),
    sub("x' = v", "x' = globals()"),
    sub("x' = v", "x' = torch.sin(v)"),
    sub("x' = v", "x' = self"),
    sub("x' = v", "x' = lambda: v"),
    sub("x' = v", "x' = [v]"),
    sub("x' = v", "x' = {v}"),
    sub("x' = v", "x' = v if v else x"),
    sub("x' = v", "x' = v; import os"),
    sub("x' = v", "x' = `v`"),
    sub("x' = v", "x' = 'v'"),
    sub("x' = v", "x' = \"\"\"v\"\"\""),
    sub("x' = v", "x' = v\\\nimport os"),
    sub("const k = 2.0", "const exec = 2.0"),
    sub("const k = 2.0", "const eval = 2.0"),
    sub("const k = 2.0", "const self = 2.0"),
    sub("const k = 2.0", "const torch = 2.0"),
    sub("const k = 2.0", "const __builtins__ = 2.0"),
    sub("param c = 0.5", "param super = 0.5"),
    sub("state v ~", "state z ~"),
    sub("model m", "model m; import os"),
    GOOD + "intervention __init__\n  set k = 1\n",
    sub("state x ~", "state \u0445 ~"),  # Cyrillic ha
    sub("x' = v", "x' = \u03bd"),  # Greek nu, looks like v
    sub("x' = v", "x' = \uff56"),  # fullwidth v (Python would NFKC-normalize it to v)
    sub("const k = 2.0", "const \ufb01 = 2.0"),  # the ligature fi
    sub("x' = v", "x' = v\u202e"),  # right-to-left override
    sub("x' = v", "x' = v\x00"),
]


@pytest.fixture
def no_emission(monkeypatch):
    """Fail loudly if code generation is ever reached."""

    def reached(*args, **kwargs):
        raise AssertionError("code generation was reached")

    monkeypatch.setattr(torch_emitter, "emit_torch", reached)  # compile_model imports it when it runs
    monkeypatch.setattr(compile_module, "load_class", reached)


@pytest.mark.parametrize("text", INJECTIONS, ids=range(len(INJECTIONS)))
def test_injection_is_rejected_before_any_code_is_generated(text, no_emission):
    with pytest.raises(AnmError):
        anmc.compile_prior(text)


@pytest.mark.parametrize(
    "edit",
    ["c = __import__('os')", "omega' = omega.__class__", "c = 0.8; import os", "c = eval(1)", "set torch = 1", "c = 0.8\nimport os"],
)
def test_injection_through_an_edit_is_rejected(edit, no_emission):
    model = anmc.load_model(ROOT / "priors" / "pendulum.anm")
    with pytest.raises(AnmError):
        anmc.apply_edits(model, [edit])


def test_comment_in_an_edit_cannot_close_the_docstring():
    before = torch.sin(torch.tensor(1.0))
    edit = 'c = 0.8 # """; torch.sin = torch.cos; """'
    prior = anmc.compile_prior(ROOT / "priors" / "pendulum.anm", edits=[edit])
    assert torch.sin(torch.tensor(1.0)) == before
    assert "torch.sin = " not in prior.source and '"""; ' not in prior.source
    assert float(prior.module().param_values()["c"]) == pytest.approx(0.8)


def test_file_name_cannot_inject_code(tmp_path):
    path = tmp_path / 'p"""\n    dt = 5.0\n    """.anm'
    path.write_text((ROOT / "priors" / "pendulum.anm").read_text())
    prior = anmc.compile_prior(path)
    assert prior.module().dt == pytest.approx(1 / 30)
    for text in (prior.source, prior.numpy_source(), prior.latex()):
        assert "\n    dt = 5.0" not in text


# ---------------------------------------------------------------- fuzz


@contextlib.contextmanager
def time_limit(seconds: float):
    """Turn a hang into a test failure (SIGALRM; a no-op where there is none)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def hung(*args):
        raise TimeoutError(f"compile_prior took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def only_anm_errors(text: str) -> None:
    with time_limit(10):
        try:
            anmc.compile_prior(text)
        except AnmError as err:
            assert err.diagnostics and str(err)


TOKENS = [
    "model", "const", "param", "state", "dynamics", "continuous", "discrete", "dt", "using", "steps",
    "next", "noise", "observe", "intervention", "set", "init", "start", "learn", "in", "rk4", "euler",
    "x", "v", "theta", "Normal", "Uniform", "sin", "atan2", "max", "pi", "e", "exec", "__import__",
    "0", "1", "2.5", "1e-3", "1e999", "=", "~", "'", "(", ")", "[", "]", ",", "+", "-", "*", "/", "^",
    "**", ".", "#", "\n", "\n  ", "`", "\u0445", "\x00", '"', ";",
]  # fmt: skip
PRIOR_TEXTS = [p.read_text() for p in PRIORS]
FUZZ = settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_random_text(text):
    only_anm_errors(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join))
def test_fuzz_random_tokens(text):
    only_anm_errors(text)


def _mutate(text: str, rng: random.Random, n: int) -> str:
    alphabet = "abcxyz019_.+-*/^()[],='~#\n \t`\"\\\u0445\x00"
    for _ in range(n):
        kind = rng.randrange(6)
        i = rng.randrange(len(text) + 1)
        if kind == 0 and text:  # delete a run of characters
            text = text[:i] + text[i + rng.randint(1, 8) :]
        elif kind == 1:  # insert a character
            text = text[:i] + rng.choice(alphabet) + text[i:]
        elif kind == 2 and i < len(text):  # replace a character
            text = text[:i] + rng.choice(alphabet) + text[i + 1 :]
        elif kind == 3:  # insert a token
            text = text[:i] + " " + rng.choice(TOKENS) + " " + text[i:]
        else:  # swap two lines, or duplicate one
            lines = text.split("\n")
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            if kind == 4:
                lines[a], lines[b] = lines[b], lines[a]
            else:
                lines.insert(a, lines[b])
            text = "\n".join(lines)
    return text


@FUZZ
@given(st.sampled_from(PRIOR_TEXTS), st.randoms(use_true_random=False), st.integers(1, 4))
def test_fuzz_mutated_priors(text, rng, n):
    only_anm_errors(_mutate(text, rng, n))


@settings(max_examples=60, deadline=5000)
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=12).map(" ".join))
def test_fuzz_edits(edit):
    model = anmc.load_model(PRIORS[0])
    with time_limit(10):
        try:
            anmc.compile_prior(model, edits=[edit])
        except AnmError:
            pass


def test_number_text_is_anmcs_own_and_total():
    """Messages print numbers with anmc's formatter (stable across SymPy versions), for every kind of value."""
    import sympy as sp

    from anmc.symbolic.model import number_text

    cases = {sp.sqrt(-1): "1i", sp.log(-1): "3.14159i", sp.Integer(2) + sp.I: "2 + 1i", sp.Rational(1, 3): "0.333333",
             sp.Pow(2, 10**10, evaluate=False): "4.36327e+3010299956", sp.nan: "nan", sp.zoo: "infinity", sp.nan * sp.I: "nan"}  # fmt: skip
    for value, text in cases.items():
        assert number_text(value) == text, value


def test_a_path_that_is_no_anm_file_is_named_as_a_path(tmp_path):
    """A string without a newline is a path (a model takes several lines): a folder, or a missing file whose
    name does not end in .anm, is reported as such, not parsed as text ('unexpected /')."""
    with pytest.raises(anmc.AnmError, match=r"is a folder; give the path of a \.anm file"):
        anmc.compile_prior(str(tmp_path))
    with pytest.raises(anmc.AnmError, match=r"no such file: .*prior\.txt; give the path of a \.anm file"):
        anmc.compile_prior(str(tmp_path / "prior.txt"))
    (tmp_path / "prior.txt").write_text((Path(__file__).parents[1] / "priors" / "pendulum.anm").read_text())
    assert anmc.compile_prior(str(tmp_path / "prior.txt")).module().d == 2  # any name, if it is a file
