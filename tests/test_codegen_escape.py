"""No user text in executed code: the one escaping function (`anmc.codegen.escape.comment_safe`), the
loader's audit of the statements, and the exploit that once ran a statement hidden after a `\\r` in an
edit string (library, `anmc compile` and `anmc intervene`), now blocked."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import anmc
from anmc.symbolic.model import apply_interventions_from
from anmc.cli import main
from anmc.codegen.escape import comment_safe
from anmc.codegen.load import UnsafeSourceError, audit, load_class

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = ROOT / "priors" / "pendulum.anm"
# Every character that ends a line for Python or for str.splitlines, the docstring's own delimiters,
# format characters (bidirectional overrides, BOM), NUL and surrogates.
DANGEROUS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\"\\\x00\x1b\u202e\u2066\ufeff\ud800\t"
# The reproduction: a statement after a bare `\r` in an edit whose text ends in `.anm`.
EXPLOIT = "omega' = -omega #\r        omega = omega * 0 + 42 #.anm"
CODING = re.compile(r"^[ \t\f]*#.*?coding[:=]")

texts = st.text(alphabet=st.one_of(st.sampled_from(DANGEROUS), st.characters(), st.sampled_from("coding:=# ")), max_size=60)


# ---------------------------------------------------------------- the escaping function


@settings(max_examples=400, deadline=None)
@given(texts)
def test_comment_safe_cannot_end_a_comment_or_a_docstring(text):
    safe = comment_safe(text)
    assert all(c.isprintable() and c not in '"\\' for c in safe)
    assert len(f"# {safe}".splitlines()) == 1 and len(f"a{safe}b".split("\n")) == 1
    # as a comment: the next line is still the only statement
    tree = ast.parse(f"x = 1  # {safe}\ny = 2\n")
    assert [type(s).__name__ for s in tree.body] == ["Assign", "Assign"]
    # as a docstring: the literal is exactly the escaped text (nothing closed it, nothing was an escape)
    (doc,) = ast.parse(f'"""{safe}"""\n').body
    assert doc.value.value == safe
    # never an encoding declaration, on the first line of a file or the second
    assert not CODING.match(f"# {safe}") and not CODING.match(f"# Generated from {safe}. Edit")


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E).filter(lambda c: c not in '"\\'), max_size=40))
def test_comment_safe_keeps_plain_text(text):
    if not re.search(r"coding[:=]", text):
        assert comment_safe(text) == text


def test_comment_safe_escapes_every_line_break_visibly():
    for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\n":
        assert comment_safe(f"a{c}b") == f"a<U+{ord(c):04X}>b"
    assert comment_safe('C:\\runs\\"x".anm') == "C:/runs/'x'.anm"
    assert comment_safe("θ = 0.5 rad") == "θ = 0.5 rad"  # printable non-ASCII stays readable
    assert comment_safe("x coding: utf-7") == "x coding<U+003A> utf-7"


# ---------------------------------------------------------------- the exploit, library level


def _f(prior):
    module = prior.module().double()
    z = torch.tensor([[0.3, -0.7], [1.2, 2.0]], dtype=torch.float64)
    return module.f_and_jacobian(z)


def test_edit_with_a_carriage_return_runs_nothing():
    attacked = anmc.compile_prior(PENDULUM, edits=[EXPLOIT])
    honest = anmc.compile_prior(PENDULUM, edits=["omega' = -omega"])
    assert "\r" not in attacked.source and "<U+000D>" in attacked.source
    f, J = _f(attacked)
    f0, J0 = _f(honest)
    torch.testing.assert_close(f, f0, rtol=0, atol=0)
    torch.testing.assert_close(J, J0, rtol=0, atol=0)
    # f and J still agree: the Jacobian is the derivative of the f that runs
    module = attacked.module().double()
    z = torch.tensor([0.3, -0.7], dtype=torch.float64)
    torch.testing.assert_close(torch.func.jacrev(lambda x: module.f_and_jacobian(x)[0])(z), module.f_and_jacobian(z)[1])


@pytest.mark.parametrize("brk", list("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), ids=lambda c: f"U+{ord(c):04X}")
def test_intervention_file_path_with_a_line_break_runs_nothing(tmp_path, brk):
    folder = tmp_path / f"x{brk}        omega = omega * 0 + 42 #"
    folder.mkdir()
    path = folder / "iv.anm"
    path.write_text("intervention fast\n  omega' = -omega\n")
    model = apply_interventions_from(anmc.load_model(PENDULUM), path)
    prior = anmc.compile_model(model)
    assert f"<U+{ord(brk):04X}>" in prior.source
    assert not re.search(r"^\s*omega = omega", prior.source, re.M)
    assert brk == "\n" or brk not in prior.source
    torch.testing.assert_close(_f(prior)[0], _f(anmc.compile_prior(PENDULUM, edits=["omega' = -omega"]))[0], rtol=0, atol=0)


def test_a_file_name_cannot_declare_an_encoding(tmp_path):
    path = tmp_path / "p coding:utf-7 +AAo-import os+AAo-.anm"
    path.write_text(PENDULUM.read_text())
    prior = anmc.compile_prior(path)
    for source in (prior.source, prior.numpy_source()):
        assert not any(CODING.match(line) for line in source.split("\n")[:2])
    out = tmp_path / "generated.py"
    out.write_bytes(prior.source.encode())
    ast.parse(out.read_bytes())  # decoded as Python would decode the file: still our module


# ---------------------------------------------------------------- the audit, when escaping were bypassed


def _allowed(prior):
    m = prior.model
    return {*m.states, *m.consts, *m.params}


def _inject(source: str, text: str) -> str:
    """What the emitter wrote before the fix: the raw edit string in the comment above rhs's equations."""
    anchor = "        # line 13: omega' = "
    assert anchor in source
    return source.replace(anchor, f"        # {text}, line 1: omega' = -omega\n{anchor}", 1)


@pytest.mark.parametrize("brk", ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x85", "\u2028", "\u2029"], ids=repr)
def test_audit_refuses_a_statement_smuggled_through_a_comment(brk):
    prior = anmc.compile_prior(PENDULUM)
    source = _inject(prior.source, f"omega' = -omega #{brk}        omega = omega * 0 + 42 #.anm")
    with pytest.raises(UnsafeSourceError):
        audit(source, _allowed(prior))


# Statements made only of allowed names and attributes, each of which the node and name checks let
# through; the statement-level audit refuses them.
SMUGGLED = {
    "rebind an argument": ("    def rhs(", "        c = c * 0 + 42\n", "return torch.stack((omega"),
    "rebind a state": ("    def rhs(", "        omega = omega * 0 + 42\n", "return torch.stack((omega"),
    "second return": ("    def rhs(", "        return torch.stack((theta, omega))\n", "return torch.stack((omega"),
    "bind a name twice": ("    def constants(", "        c = 0.5 * g\n", "_t0 = -g/L"),
    "second class attribute": ("    integrator = ", "    dt = 1.0\n", None),
    "new method": ("    def rhs(", "    def forward(self, z):\n        return z\n\n", None),
    "second buffer": ("        # initial-frame prior", '        self.register_buffer("_fixed_c", torch.tensor(5.0))\n', None),
    "second parameter": ("        # line 6:", "        self._raw_L = nn.Parameter(torch.tensor(3.0))\n", None),
    "module-level statement": ("\n\nclass ", "\nz = torch.tensor(1.0)\n", None),
    "call statement": ("        # line 6:", "        torch.manual_seed(0)\n", None),
}


@pytest.mark.parametrize("name", list(SMUGGLED), ids=list(SMUGGLED))
def test_audit_refuses_statements_the_emitter_never_writes(name):
    prior = anmc.compile_prior(PENDULUM)
    anchor, line, later = SMUGGLED[name]
    source = prior.source
    if later is not None:  # put the line inside the method, just before `later`
        start = source.index(anchor)
        at = source.index(later, start)
        at = source.rindex("\n", 0, at) + 1
    else:
        at = source.index(anchor)
        at = source.rindex("\n", 0, at) + 1 if not anchor.startswith("\n") else at + 1
    tampered = source[:at] + line + source[at:]
    assert tampered != source
    with pytest.raises(UnsafeSourceError):
        load_class(tampered, prior.module_class.__name__, _allowed(prior))


def test_audit_accepts_every_intervened_and_edited_source():
    model = anmc.load_model(PENDULUM)
    for iv in model.interventions:
        audit(anmc.compile_prior(PENDULUM, intervention=iv).source, _allowed(anmc.compile_prior(PENDULUM)))
    edited = anmc.compile_prior(PENDULUM, edits=["c = 0.8", "start theta = 1.5 * theta", "init omega ~ Normal(0, 2)", EXPLOIT])
    audit(edited.source, _allowed(edited))


# ---------------------------------------------------------------- the exploit through the command line


def _rhs_statements(source: str) -> list[str]:
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
    rhs = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "rhs")
    return [ast.unparse(s) for s in rhs.body[1:]]


def test_cli_compile_with_the_exploit_prints_only_the_honest_module():
    result = CliRunner().invoke(main, ["compile", str(PENDULUM), "--edit", EXPLOIT])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    assert _rhs_statements(result.output) == _rhs_statements(anmc.compile_prior(PENDULUM, edits=["omega' = -omega"]).source)


def test_cli_compile_numpy_with_the_exploit_in_a_file_name(tmp_path):
    path = tmp_path / "p\r    import os #.anm"
    path.write_text(PENDULUM.read_text())
    result = CliRunner().invoke(main, ["compile", str(path), "--emit", "numpy"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    assert not any(isinstance(n, ast.Import) and n.names[0].name == "os" for n in ast.walk(ast.parse(result.output)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from anmc.vae.config import TrainConfig
    from anmc.vae.train import train
    from anmc.synthetic.synth import synthesize

    torch.set_num_threads(1)
    data, run = tmp_path_factory.mktemp("pend"), tmp_path_factory.mktemp("run")
    synthesize(str(PENDULUM), out_dir=data, clips=2, frames=12, size=16, seed=3, fmt="npz")
    train(str(PENDULUM), [str(data)], run, TrainConfig(size=16, batch=2, seq_len=4, steps_per_epoch=2, epochs=1, val_fraction=0.0))
    return run


def test_cli_intervene_with_the_exploit_gives_the_honest_counterfactual(run_dir, tmp_path):
    def latents(edit, name):
        out = tmp_path / f"{name}.npz"
        result = CliRunner().invoke(main, ["intervene", str(run_dir), "--edit", edit, "--sample", "--frames", "5", "-o", str(out)])
        assert result.exit_code == 0, result.output
        rows = np.loadtxt(tmp_path / f"{name}_latents.csv", delimiter=",", skiprows=1)
        return rows

    np.testing.assert_array_equal(latents(EXPLOIT, "attacked"), latents("omega' = -omega", "honest"))


def test_cli_intervene_file_whose_path_holds_a_carriage_return(run_dir, tmp_path):
    folder = tmp_path / "x\r        omega = omega * 0 + 42 #"
    folder.mkdir()
    (folder / "iv.anm").write_text("intervention fast\n  omega' = -omega\n")

    def latents(args, name):
        out = tmp_path / f"{name}.npz"
        result = CliRunner().invoke(main, ["intervene", str(run_dir), *args, "--sample", "--frames", "5", "-o", str(out)])
        assert result.exit_code == 0, result.output
        return np.loadtxt(tmp_path / f"{name}_latents.csv", delimiter=",", skiprows=1)

    np.testing.assert_array_equal(latents(["--file", str(folder / "iv.anm")], "attacked"), latents(["--edit", "omega' = -omega"], "honest"))


# ---------------------------------------------------------------- any text, end to end


def _statements(source: str) -> list[str]:
    """Every statement of the module, docstrings dropped (what runs, not what reads)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
            node.body = body[1:]
    return [ast.dump(s) for s in tree.body]


_HONEST_EDIT = anmc.compile_prior(PENDULUM, edits=["omega' = -omega"])
_any_text = st.text(alphabet=st.one_of(st.sampled_from(DANGEROUS + "#'= omega42.anm"), st.characters()), max_size=40)


@settings(max_examples=60, deadline=None)
@given(_any_text, st.sampled_from(["", ".anm"]))
def test_any_comment_in_an_edit_runs_the_same_statements(text, suffix):
    edit = "omega' = -omega #" + text + suffix  # an edit ending in .anm is quoted as a file name
    if "\n" in edit.strip():
        return  # an edit is one line: refused before anything is generated (tests/test_lang_errors.py)
    prior = anmc.compile_prior(PENDULUM, edits=[edit])
    assert _statements(prior.source) == _statements(_HONEST_EDIT.source)


@settings(max_examples=60, deadline=None)
@given(_any_text)
def test_any_file_name_runs_the_same_statements(name):
    from dataclasses import replace

    model = anmc.load_model(PENDULUM)
    honest = anmc.compile_model(model)
    renamed = anmc.compile_model(replace(model, program=replace(model.program, filename=name)))
    assert _statements(renamed.source) == _statements(honest.source)


def test_a_file_name_with_surrogates_does_not_leak_into_sys_modules(tmp_path):
    """A Linux file name that is not UTF-8 decodes with surrogates; the generated module's __file__ must
    still be a path other tools can handle (hypothesis resolves every module's file)."""
    import os
    import sys

    path = tmp_path / os.fsdecode(b"p\xff\n.anm")
    path.write_text(PENDULUM.read_text())
    prior = anmc.compile_prior(path)
    module = sys.modules[prior.module_class.__module__]
    assert all(c.isprintable() for c in module.__file__)
    Path(module.__file__).resolve()
    module.__file__.encode("utf-8")
