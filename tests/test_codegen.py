"""The generated code: golden source, readability, the load-time audit, numpy and LaTeX emission,
and interventions (named blocks and one-line edits) changing f by the expected numbers."""

from __future__ import annotations

import ast
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import anmc
from anmc.codegen.load import UnsafeSourceError, audit, load_class
from anmc.lang.errors import AnmError

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = ROOT / "priors" / "pendulum.anm"
PRIORS = sorted((ROOT / "priors").glob("*.anm"))
sys.path.insert(0, str(ROOT / "tests" / "golden"))
import regenerate  # noqa: E402  (tests/golden/regenerate.py)


# ---------------------------------------------------------------- golden


def test_golden_pendulum_source():
    golden = (ROOT / "tests" / "golden" / "pendulum.py").read_text()
    source = regenerate.emitted("priors/pendulum.anm")
    assert source == golden, (
        "the source emitted for priors/pendulum.anm differs from tests/golden/pendulum.py; if the emitter "
        "change is intended, run `python tests/golden/regenerate.py` and commit the new golden file"
    )


def test_golden_file_is_what_compile_prior_gives_from_the_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert anmc.compile_prior("priors/pendulum.anm").source == (ROOT / "tests" / "golden" / "pendulum.py").read_text()


# ---------------------------------------------------------------- readable source


@pytest.mark.parametrize("path", PRIORS, ids=[p.stem for p in PRIORS])
def test_source_is_a_documented_class_named_after_the_model(path):
    prior = anmc.compile_prior(path)
    model = prior.model
    tree = ast.parse(prior.source)
    compile(prior.source, str(path), "exec")
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert [c.name for c in classes] == ["".join(part.capitalize() for part in model.name.split("_"))]  # double_pendulum -> DoublePendulum
    assert prior.module_class.__name__ == classes[0].name
    doc = ast.get_docstring(classes[0])
    for state in model.states:  # the docstring quotes every equation as written
        assert model.rhs_text[state] in doc
    assert model.integrator in doc and model.dt_text in doc


@pytest.mark.parametrize("path", PRIORS, ids=[p.stem for p in PRIORS])
def test_line_comments_quote_the_anm_lines(path):
    prior = anmc.compile_prior(path)
    anm_lines = path.read_text().splitlines()
    quoted = re.findall(r"# line (\d+): (.*)", prior.source)
    numbers = {int(n) for n, _ in quoted}
    for number, text in quoted:
        code = anm_lines[int(number) - 1].split("#")[0].strip()
        assert text.startswith(code), (number, text, code)
    for param in prior.model.params.values():  # every param's declaration is quoted where it is stored
        assert param.line in numbers
    assert any(anm_lines[n - 1].strip().startswith("noise") for n in numbers)


def test_class_name_of_a_snake_case_model():
    text = PENDULUM.read_text().replace("model pendulum", "model my_pendulum_2")
    prior = anmc.compile_prior(text)
    assert prior.module_class.__name__ == "MyPendulum2"
    assert prior.module().model_name == "my_pendulum_2"


def test_source_does_not_exec_or_import_anything_else():
    source = anmc.compile_prior(PENDULUM).source
    imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert sorted(a.name if isinstance(n, ast.Import) else n.module for n in imports for a in n.names) == [
        "anmc.codegen.runtime", "math", "torch", "torch",
    ]  # fmt: skip
    assert not re.search(r"\b(exec|eval|open|__import__|getattr|compile)\s*\(", source)


# ---------------------------------------------------------------- the load-time audit


def _allowed(prior):
    from anmc.codegen.compile import audit_names

    return audit_names(prior.model)  # also the lets (a temporary may take a let's name) and the observations


@pytest.mark.parametrize("path", PRIORS, ids=[p.stem for p in PRIORS])
def test_audit_accepts_every_genuine_source(path):
    model = anmc.load_model(path)
    for intervention in (None, *model.interventions):
        prior = anmc.compile_prior(path, intervention=intervention)
        audit(prior.source, _allowed(prior))


# Each tampering adds one line; `c` is a name the genuine source may assign, so only the fault is at stake.
TAMPERINGS = {
    "import os": lambda s: s.replace("import math\n", "import math\nimport os\n", 1),
    "from os import system": lambda s: s.replace("import math\n", "import math\nfrom os import system\n", 1),
    "__import__": lambda s: s.replace("        super().__init__()\n", "        super().__init__()\n        __import__('os')\n", 1),
    "dunder attribute": lambda s: s.replace("        super().__init__()\n", "        super().__init__()\n        c = self.__class__\n", 1),
    "open(": lambda s: s.replace("        super().__init__()\n", "        super().__init__()\n        open('x', 'w')\n", 1),
    "eval(": lambda s: s.replace("        super().__init__()\n", "        super().__init__()\n        eval('1')\n", 1),
    "lambda": lambda s: s.replace("        super().__init__()\n", "        super().__init__()\n        c = lambda: 0\n", 1),
    "subscript": lambda s: s.replace("        super().__init__()\n", "        super().__init__()\n        c = z[0]\n", 1),
    "torch.load": lambda s: s.replace("        super().__init__()\n", "        super().__init__()\n        torch.load('x')\n", 1),
    "monkeypatch torch": lambda s: s.replace("        super().__init__()\n", "        super().__init__()\n        torch.sin = torch.cos\n", 1),
    "rebind torch": lambda s: s.replace("        super().__init__()\n", "        super().__init__()\n        torch = 1\n", 1),
    "global": lambda s: s.replace("        super().__init__()\n", "        super().__init__()\n        global g\n", 1),
    "complex constant": lambda s: s.replace("        super().__init__()\n", "        super().__init__()\n        c = 1j\n", 1),
}


@pytest.mark.parametrize("tamper", list(TAMPERINGS), ids=list(TAMPERINGS))
def test_audit_rejects_tampered_source(tamper):
    prior = anmc.compile_prior(PENDULUM)
    source = TAMPERINGS[tamper](prior.source)
    assert source != prior.source
    with pytest.raises(UnsafeSourceError):
        audit(source, _allowed(prior))


def test_audit_accepts_a_harmless_assignment_of_an_allowed_name():
    # the control for the tamperings above: the same kind of line with an innocent right-hand side passes
    prior = anmc.compile_prior(PENDULUM)
    audit(prior.source.replace("        super().__init__()\n", "        super().__init__()\n        c = torch.sin(z)\n", 1), _allowed(prior))


def test_tampered_source_is_never_run(tmp_path):
    prior = anmc.compile_prior(PENDULUM)
    marker = tmp_path / "ran"
    source = prior.source.replace("import math\n", f"import math\nopen({str(marker)!r}, 'w')\n", 1)
    with pytest.raises(UnsafeSourceError):
        load_class(source, prior.module_class.__name__, _allowed(prior))
    assert not marker.exists()


# ---------------------------------------------------------------- numpy and LaTeX


@pytest.mark.parametrize("path", PRIORS, ids=[p.stem for p in PRIORS])
def test_numpy_emission_matches_torch(path):
    prior = anmc.compile_prior(path)
    namespace: dict = {}
    exec(compile(prior.numpy_source(), f"<numpy {path.name}>", "exec"), namespace)  # noqa: S102 - our own output
    module = prior.module().double()
    params = {n: float(v.detach()) for n, v in module.param_values().items()}
    z = (module.initial_mean + module.initial_std * torch.randn(7, module.d, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    f_np, J_np = namespace["f_and_jacobian"](z.numpy(), **params)
    f, J = module.f_and_jacobian(z)
    np.testing.assert_allclose(f_np, f.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(J_np, J.detach().numpy(), rtol=1e-12, atol=1e-12)
    f_default, _ = namespace["f_and_jacobian"](z.numpy())  # the declared param values are the defaults
    np.testing.assert_allclose(f_default, f.detach().numpy(), rtol=1e-6, atol=1e-8)


def test_latex_has_the_equations_and_the_jacobian():
    latex = anmc.compile_prior(PENDULUM).latex()
    assert r"\begin{align*}" in latex and r"\end{align*}" in latex
    assert r"\dot{\theta} &= \omega \\" in latex
    assert r"\dot{\omega} &= " in latex and r"\sin{\left(\theta \right)}" in latex
    assert r"J(z) = \left[\begin{matrix}" in latex
    assert "rk4" in latex


def test_latex_of_a_discrete_model():
    text = "model logistic\nparam r = 3.2\nstate x ~ Uniform(0.1, 0.9)\ndynamics discrete\n  next x = r * x * (1 - x)\nnoise x = 0.01\nobserve x\n"
    latex = anmc.compile_prior(text).latex()
    assert "x_{t+1} &= r x \\left(1 - x\\right)" in latex
    assert r"J(z) = \left[\begin{matrix}- r x + r \left(1 - x\right)\end{matrix}\right]" in latex


# ---------------------------------------------------------------- interventions


def _f(prior, z):
    return prior.module().double()(torch.tensor(z, dtype=torch.float64)).detach()


def test_named_intervention_sets_the_param():
    base, drag = anmc.compile_prior(PENDULUM), anmc.compile_prior(PENDULUM, intervention="drag")
    assert float(drag.module().param_values()["c"]) == pytest.approx(0.8)
    assert float(base.module().param_values()["c"]) == 0.0
    module = base.module().double()
    module.set_param("c", 0.8)
    z = torch.tensor([[0.4, 1.2], [-1.0, -0.3]], dtype=torch.float64)
    torch.testing.assert_close(_f(drag, z.tolist()), module(z).detach())
    assert drag.model.applied == ("drag",)
    assert "drag" in ast.get_docstring(next(n for n in ast.parse(drag.source).body if isinstance(n, ast.ClassDef)))


def test_unknown_intervention_says_which_exist():
    with pytest.raises(AnmError) as info:
        anmc.compile_prior(PENDULUM, intervention="dragg")
    assert info.value.first.message == "unknown intervention 'dragg'; did you mean 'drag'?"


def test_edits_give_the_closed_form_of_linear_drag():
    # with g = 0 the pendulum is pure drag: omega(t) = omega0 exp(-c t), theta(t) = theta0 + omega0 (1 - exp(-c t)) / c
    model = anmc.load_model(PENDULUM)
    prior = anmc.compile_prior(anmc.apply_edits(model, ["g = 0", "c = 0.8"]))
    theta0, omega0, c, t = 0.3, 1.7, 0.8, 1 / 30
    f = _f(prior, [theta0, omega0])
    assert float(f[1]) == pytest.approx(omega0 * math.exp(-c * t), rel=1e-9)
    assert float(f[0]) == pytest.approx(theta0 + omega0 * (1 - math.exp(-c * t)) / c, rel=1e-9)


def test_edited_equation_gives_the_closed_form_of_quadratic_drag():
    # omega' = -c omega |omega| with omega0 > 0: omega(t) = omega0 / (1 + c omega0 t), theta(t) = theta0 + ln(1 + c omega0 t) / c
    edits = ["set g = 0", "c = 0.8", "omega' = -(g/L)*sin(theta) - c*omega*abs(omega)  # quadratic"]
    prior = anmc.compile_prior(PENDULUM, edits=edits)
    theta0, omega0, c, t = -0.2, 2.5, 0.8, 1 / 30
    f = _f(prior, [theta0, omega0])
    # (to RK4's truncation error, ~1e-8 here; linear drag would be off by ~1e-3)
    assert float(f[1]) == pytest.approx(omega0 / (1 + c * omega0 * t), rel=1e-6)
    assert float(f[0]) == pytest.approx(theta0 + math.log(1 + c * omega0 * t) / c, rel=1e-6)
    assert prior.model.rhs_text["omega"] == "omega' = -(g/L)*sin(theta) - c*omega*abs(omega)"
    assert prior.model.applied == tuple(e.split("#")[0].strip() for e in edits)


def test_edits_of_the_initial_distribution_and_the_start():
    prior = anmc.compile_prior(PENDULUM, edits=["init theta ~ Normal(0.5, 1.6)", "start omega = 2 * omega + theta"])
    module = prior.module().double()
    assert module.initial_mean.tolist() == pytest.approx([0.5, 0.0])
    assert module.initial_std.tolist() == pytest.approx([1.6, 1.5])
    z = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    assert module.start(z)[0].tolist() == pytest.approx([0.3, -1.7])


def test_edits_leave_the_original_model_alone():
    model = anmc.load_model(PENDULUM)
    anmc.apply_edits(model, ["c = 0.8"])
    assert model.params["c"].value == 0.0 and model.applied == ()


@pytest.mark.parametrize(
    "edit, message, column",
    [
        ("c = ", "unexpected end of line; expected '(', '+', '-', a name or a number", 4),
        ("cc = 0.8", "'set' of unknown name 'cc'; did you mean 'c'?", 1),
        ("c = 50", "'c' = 50 is outside its bounds [0, 10]; widen them in the model if this is intended", 5),
        ("omega' = -thetta", "unknown name 'thetta'; did you mean 'theta'?", 11),
        ("next omega = 0", "a 'next' equation inside 'dynamics continuous'; write \"omega' = ...\" (a derivative)", 6),
        ("init phi ~ Normal(0, 1)", "'init' of unknown state 'phi'", 6),
    ],
)
def test_bad_edit_is_an_anm_error_named_after_the_edit(edit, message, column):
    model = anmc.load_model(PENDULUM)
    with pytest.raises(AnmError) as info:
        anmc.apply_edits(model, [edit])
    d = info.value.first
    assert (d.filename, d.line, d.column, d.message) == (edit, 1, column, message)
    assert str(info.value).startswith(f"{edit}:1:{column}: error: ")


def test_atan2_of_a_number_and_a_state_runs_and_differentiates():
    """torch.atan2 takes tensors only: `atan2(e, x)` (hypothesis found the emitter writing atan2(math.e, ...))
    emits the number as a tensor like the other argument, in f, its Jacobian and h."""
    from anmc.testing import check_jacobian, check_observation_jacobian

    prior = anmc.compile_prior(
        "model a2\nparam b = 1.3 in [0.5, 2] learn\nstate x ~ Normal(0, 1)\nstate y ~ Normal(0, 1)\n"
        "dynamics continuous dt = 0.05 using rk4\n  x' = atan2(e, 2 + y^2)\n  y' = atan2(b, 2) - atan2(x, -2)\n"
        "noise x = 0.01, y = 0.01\nobserve px = 3 + atan2(1, x)\n"
    )
    assert "torch.atan2(torch.full_like(" in prior.source
    assert check_jacobian(prior).max_error_autograd < 1e-12
    assert check_observation_jacobian(prior).max_error_autograd < 1e-12


def test_heaviside_at_zero_is_one_half_as_in_sympy():
    """A max of arguments tied on a whole half-line (|x| = x for x > 0): its derivative is SymPy's
    H(|x| - max(x, c)) sign(x) + H(x - max(|x|, c)) with H(0) = 1/2, i.e. 1 there; printed with H(0) = 0 the
    emitted Jacobian was 0 (hypothesis found it: J 1.0 against jacrev's e^dt = 1.0339 over an RK4 step)."""
    import numpy as np
    from anmc.testing import check_jacobian

    prior = anmc.compile_prior("model m\nstate x ~ Normal(0, 1)\ndynamics continuous dt = 1/30 using rk4\n"
                               "  x' = max(abs(x), x, 0.75)\nnoise x = 0.01\n")  # fmt: skip
    module = prior.module().double()
    z = torch.tensor([[0.9], [-0.9], [0.3]], dtype=torch.float64)
    _, J = module.f_and_jacobian(z)
    np.testing.assert_allclose(J[:, 0, 0].numpy(), [math.exp(1 / 30), math.exp(-1 / 30), 1.0], rtol=1e-6)
    assert check_jacobian(prior).max_error_autograd < 1e-12


def test_large_right_hand_sides_run_their_stages_numerically_in_numpy():
    """The derived double pendulum (163 operations) is not expanded through RK4's stages in the numpy
    source (SymPy's cse of that expansion took minutes); the hand-written priors are."""
    big = anmc.compile_prior(ROOT / "priors" / "double_pendulum.anm").numpy_source()
    small = anmc.compile_prior(ROOT / "priors" / "coupled_masses.anm").numpy_source()
    assert "def rhs_and_jacobian(" in big and "def rhs_and_jacobian(" not in small
