"""`observe NAME = EXPR`: the language, the checker's errors, the Model's h and H (SymPy), and the emitted
`observe` / `observe_and_jacobian` (golden source, H against finite differences and autograd, numpy, LaTeX)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import anmc
from anmc.cli import main
from anmc.codegen.compile import CompiledPrior, audit_names
from anmc.codegen.load import UnsafeSourceError, audit
from anmc.lang.errors import AnmError
from anmc.symbolic.model import symbol
from anmc.testing import check_observation_jacobian

ROOT = Path(__file__).resolve().parents[1]
CAMERA = ROOT / "tests" / "golden" / "camera_pendulum.anm"
PENDULUM = ROOT / "priors" / "pendulum.anm"
sys.path.insert(0, str(ROOT / "tests" / "golden"))
import regenerate  # noqa: E402  (tests/golden/regenerate.py)

# A model whose observations use every kind of name (state, param, const, let) and most functions.
LAB = """model lab
const c0 = 0.5
param k = 1.5 in [0.1, 10] learn
param s = 2.0
state a ~ Normal(0, 1)
state b ~ Normal(0, 1)
state v ~ Normal(0, 1)
dynamics continuous dt = 0.05 using rk4
  let r2 = a^2 + b^2
  a' = v
  b' = -k * b
  v' = -a
noise a = 0.01, b = 0.01, v = 0.01
observe radius = sqrt(1 + r2), glow = c0 + tanh(k * a) * exp(-b^2 / s)
observe heading = atan2(b, 2 + cos(a)), lit = 1 / (1 + exp(-v * b)), a
"""


def compiled(text):
    return anmc.compile_prior(text)


# ---------------------------------------------------------------- the language


def test_several_observations_per_line_and_several_lines():
    model = anmc.load_model(LAB)
    assert model.observation_names == ("radius", "glow", "heading", "lit", "a")
    assert model.observed == ("a", "b", "v")  # every state some observation depends on, in state order
    a, b, v, k = (symbol(n) for n in ("a", "b", "v", "k"))
    assert sp.simplify(dict(model.observations)["radius"] - sp.sqrt(1 + a**2 + b**2)) == 0  # the let substituted
    assert dict(model.observations)["a"] == a
    assert model.observation_text["glow"] == "glow = c0 + tanh(k * a) * exp(-b^2 / s)"
    assert not model.plain_observations
    prior = compiled(LAB)
    assert prior.observations == model.observation_names and prior.observed == ("a", "b", "v")


def test_h_and_its_jacobian_are_sympy_matrices_of_the_right_shape():
    model = anmc.load_model(LAB)
    h, H = model.observation_function, model.observation_jacobian
    assert h.shape == (5, 1) and H.shape == (5, 3)
    a, b, v = (symbol(n) for n in ("a", "b", "v"))
    assert H[4, :] == sp.Matrix([[1, 0, 0]])  # the plain observation of a is a row of the identity
    assert sp.simplify(H[3, 2] - sp.diff(h[3], v)) == 0


@pytest.mark.parametrize("line", ["observe theta", "observe theta = theta"])
def test_observe_a_state_is_the_old_behaviour(line):
    text = PENDULUM.read_text().replace("observe theta ", line + " ")
    prior = compiled(text)
    model, module = prior.model, prior.module()
    assert model.observed == ("theta",) and model.observed_index == (0,) and model.plain_observations
    assert module.observations == ("theta",) and module.observation_names == ("theta",) and module.observed_index == (0,)
    assert "def observe(" not in prior.source  # AnmModule's defaults: h picks the observed states
    z = torch.randn(4, 2)
    h, H = module.observe_and_jacobian(z)
    assert torch.equal(h, z[:, :1]) and torch.equal(H, torch.tensor([[1.0, 0.0]]).expand(4, 1, 2))


def test_plain_observations_are_listed_in_state_order_as_before():
    text = PENDULUM.read_text().replace("observe theta ", "observe omega, theta ")
    module = compiled(text).module()
    assert module.observations == ("theta", "omega") and module.observed_index == (0, 1)


def test_without_an_observe_line_every_state_is_observed():
    text = "\n".join(line for line in PENDULUM.read_text().splitlines() if not line.startswith("observe"))
    model = anmc.load_model(text)
    assert model.observation_names == model.observed == ("theta", "omega") and model.plain_observations
    assert any("no 'observe' line" in w.message for w in model.warnings)


# ---------------------------------------------------------------- checker errors (message and caret)

BASE = PENDULUM.read_text()


def observe_error(line, base=BASE):
    """The first error of the pendulum with its observe line replaced by `line` (the last line of the text)."""
    text = base.replace("observe theta ", line + "  ")
    with pytest.raises(AnmError) as info:
        anmc.load_model(text, filename="p.anm")
    return info.value.first, text


ERRORS = [
    # (observe line, message, the text the caret is under)
    ("observe y = thetta + 1", "unknown name 'thetta'; did you mean 'theta'?", "thetta"),
    ("observe y = 0.5", "observation 'y' depends on no state: a frame's reading must be a function of the states (theta, omega)", "0.5"),
    ("observe y = g * L", "observation 'y' depends on no state: a frame's reading must be a function of the states (theta, omega)", "g * L"),
    ("observe y = theta, y = omega", "observation 'y' is declared twice (first at line 16)", "y"),
    ("observe theta = 2 * theta", "observation 'theta' has the name of the state declared at line 8; choose another name ('observe theta' alone observes the state itself)", "theta"),
    ("observe L = theta", "observation 'L' has the name of the param declared at line 5; choose another name", "L"),
    ("observe g = theta", "observation 'g' has the name of the const declared at line 4; choose another name", "g"),
    ("observe theta, omega, theta", "state 'theta' is observed twice (first at line 16)", "theta"),
    ("observe sum = theta", "'sum' is a Python builtin name, and anmc generates Python; choose another name for this observation", "sum"),
    ("observe y = sinn(theta)", "unknown function 'sinn'; did you mean 'sin'?", "sinn"),
    ("observe y", "observe names unknown state 'y'; to observe a function of the states write 'observe y = EXPR'", "y"),
]


@pytest.mark.parametrize("line, message, under", ERRORS, ids=[e[1][:40] for e in ERRORS])
def test_checker_error_message_and_caret(line, message, under):
    d, text = observe_error(line)
    assert d.message == message
    assert d.line == 16 and d.source_line.startswith(line)
    # the caret sits under the offending text: d.column, d.width wide
    assert d.source_line[d.column - 1 : d.column - 1 + d.width] == under
    shown = str(d).splitlines()
    assert shown[0].startswith(f"p.anm:16:{d.column}: error: {message}")
    assert shown[2].index("^") - 4 == d.column - 1


def test_the_caret_of_a_duplicate_points_at_the_second():
    d, _ = observe_error("observe y = theta, y = omega")
    assert d.column == len("observe y = theta, ") + 1


def test_a_second_plain_observation_on_another_line():
    text = BASE.replace("observe theta ", "observe theta\nobserve theta ")
    with pytest.raises(AnmError) as info:
        anmc.load_model(text)
    assert info.value.first.message == "state 'theta' is observed twice (first at line 16)"
    assert (info.value.first.line, info.value.first.column) == (17, 9)


def test_several_observe_lines_are_no_longer_an_error():
    text = BASE.replace("observe theta ", "observe theta\nobserve speed = omega^2 ")
    assert anmc.load_model(text).observation_names == ("theta", "speed")


@pytest.mark.parametrize(
    "edit, message, where",
    [
        (lambda text: text.replace("observe theta ", "observe x = theta "),
         "observation 'x' has the name of the let declared at line 10; choose another name", (15, 9)),
        (lambda text: text + "intervention tilt\n  let px = theta\n  omega' = -px\n",
         "let 'px' has the name of the observation declared at line 14; choose another name", (17, 7)),
    ],
    ids=["observation named like a let", "intervention let named like an observation"],
)  # fmt: skip
def test_a_name_shared_by_an_observation_and_a_let_is_refused(edit, message, where):
    with pytest.raises(AnmError) as info:
        anmc.load_model(edit(CAMERA.read_text()))
    d = info.value.first
    assert d.message == message
    assert (d.line, d.column) == where


def test_an_expression_that_reduces_to_no_state_is_refused_by_the_builder():
    d, _ = observe_error("observe y = theta - theta + 1")
    assert d.message == "observation 'y' depends on no state: it reduces to 1"
    assert d.source_line[d.column - 1 : d.column - 1 + d.width] == "theta - theta + 1"


def test_a_non_finite_observation_is_refused():
    d, _ = observe_error("observe y = theta + 1/0")
    assert d.message == "observation 'y' contains an infinite value (such as 1/0, log(0) or 1e999)"


def test_non_smooth_functions_warn():
    model = anmc.load_model(BASE.replace("observe theta ", "observe y = abs(theta) "))
    assert any(w.message.startswith("abs() is not smooth") and w.line == 16 for w in model.warnings)


def test_a_const_or_let_used_only_by_an_observation_counts_as_used():
    model = anmc.load_model(CAMERA)
    assert not [w for w in model.warnings if "never used" in w.message]


# ---------------------------------------------------------------- the emitted module


def test_golden_camera_pendulum_source():
    golden = (ROOT / "tests" / "golden" / "camera_pendulum.py").read_text()
    assert regenerate.emitted("tests/golden/camera_pendulum.anm") == golden, (
        "the source emitted for tests/golden/camera_pendulum.anm differs from tests/golden/camera_pendulum.py; if "
        "the emitter change is intended, run `python tests/golden/regenerate.py` and commit the new golden file"
    )


def test_the_emitted_methods_are_readable():
    source = compiled(CAMERA).source
    body = source[source.index("    def observe(self, z):") :]
    assert "        # line 14: observe px = cx + scale * x, py = cy + scale * L * cos(theta)" in body
    assert "px = cx + " in body and "torch.sin(theta)" in body
    assert "L = (torch.sigmoid(self._raw_L)" in body  # the param as everywhere else in the module
    assert "    observation_names = ('px', 'py', 'theta')" in source
    assert "A frame shows h(z) = (px, py, theta)" in source


def test_module_observations_and_moments():
    module = compiled(CAMERA).module().double()
    assert module.observations == ("px", "py", "theta") and module.observed_states == ("theta",)
    z = torch.tensor([[0.3, -1.0], [-0.2, 0.5]], dtype=torch.float64)
    L = module.param("L")
    want = torch.stack((32 + 20 * L * torch.sin(z[:, 0]), 8 + 20 * L * torch.cos(z[:, 0]), z[:, 0]), -1)
    torch.testing.assert_close(module.observe(z), want)
    mean, std = module.observation_moments(n=20000)
    assert mean.shape == std.shape == (3,)
    assert abs(float(mean[2])) < 0.05 and float(std[2]) == pytest.approx(0.8, rel=0.05)  # theta ~ N(0, 0.8)
    assert float(mean[1]) < 28  # py = 8 + 20 cos(theta) < 28


def _fd_jacobian(f, z, eps=1e-6):
    cols = []
    for j in range(z.shape[-1]):
        e = torch.zeros_like(z)
        e[..., j] = eps
        cols.append((f(z + e) - f(z - e)) / (2 * eps))
    return torch.stack(cols, -1)


points = st.lists(st.floats(-2.5, 2.5, allow_nan=False), min_size=6, max_size=6)


@settings(max_examples=40, deadline=None)
@given(points, st.floats(0.2, 9.0))
def test_H_matches_central_differences_and_autograd(values, k):
    module = _lab_module()
    module.set_param("k", k)
    z = torch.tensor(values, dtype=torch.float64).reshape(2, 3)
    h, H = module.observe_and_jacobian(z)
    assert h.shape == (2, 5) and H.shape == (2, 5, 3)
    torch.testing.assert_close(h, module.observe(z), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        fd = _fd_jacobian(module.observe, z)
    torch.testing.assert_close(H, fd, rtol=1e-6, atol=1e-7)
    auto = torch.autograd.functional.jacobian(lambda x: module.observe(x).sum(0), z).permute(1, 0, 2)
    torch.testing.assert_close(H, auto, rtol=1e-12, atol=1e-12)


_LAB = {}


def _lab_module():
    if "m" not in _LAB:
        _LAB["m"] = compiled(LAB).module().double()
    return _LAB["m"]


@settings(max_examples=25, deadline=None)
@given(points)
def test_the_emitted_H_is_the_models_sympy_jacobian(values):
    module, model = _lab_module(), anmc.load_model(LAB)
    module.set_param("k", 1.5)
    z = np.array(values[:3])
    point = {symbol(s): float(x) for s, x in zip(model.states, z)}
    point |= {symbol(n): float(v) for n, v in model.consts.items()} | {symbol(n): p.value for n, p in model.params.items()}
    want = np.array(model.observation_jacobian.xreplace(point).evalf(), dtype=float)
    _, H = module.observe_and_jacobian(torch.tensor(z))
    np.testing.assert_allclose(H.detach().numpy(), want, rtol=1e-6, atol=1e-9)


def test_batch_shapes_and_float32():
    module = compiled(CAMERA).module()
    z = torch.randn(4, 7, 2)
    h, H = module.observe_and_jacobian(z)
    assert h.shape == (4, 7, 3) and H.shape == (4, 7, 3, 2) and h.dtype == H.dtype == torch.float32
    assert module.observe(z[0, 0]).shape == (3,)


def test_a_learnable_param_in_h_gets_a_gradient():
    module = compiled(CAMERA).module()
    h, H = module.observe_and_jacobian(torch.randn(5, 2))
    (h.sum() + H.sum()).backward()
    assert module._raw_L.grad is not None and torch.isfinite(module._raw_L.grad)


def test_an_intervention_keeps_the_observations_and_they_follow_its_params():
    text = CAMERA.read_text() + "intervention long\n  set L = 2\n"
    z = torch.tensor([[0.4, 0.0]], dtype=torch.float64)
    plain, long = (compiled(text) if i is None else anmc.compile_prior(text, intervention=i) for i in (None, "long"))
    assert long.module().observations == plain.module().observations == ("px", "py", "theta")
    with torch.no_grad():
        a, b = plain.module().double().observe(z), long.module().double().observe(z)
    torch.testing.assert_close(b[0, 0] - 32, 2 * (a[0, 0] - 32), rtol=1e-6, atol=1e-6)  # px - cx = scale L sin(theta)
    assert float(b[0, 2]) == float(a[0, 2])


def test_audit_accepts_the_genuine_source_and_refuses_an_extra_method():
    prior = compiled(LAB)
    audit(prior.source, audit_names(prior.model))
    extra = prior.source.replace("    def observe(self, z):", "    def observe_more(self, z):\n        return z\n\n    def observe(self, z):")
    with pytest.raises(UnsafeSourceError, match="observe_more"):
        audit(extra, audit_names(prior.model))
    twice = prior.source.replace("    observation_names = ", "    observation_names = ()\n    observation_names = ")
    with pytest.raises(UnsafeSourceError, match="twice"):
        audit(twice, audit_names(prior.model))


def test_a_second_compile_reads_the_cache(tmp_path, monkeypatch):
    from anmc.codegen import compile as compile_module

    monkeypatch.setenv("ANMC_CACHE_DIR", str(tmp_path))
    first = anmc.compile_prior(CAMERA)

    def refuse(model):
        raise AssertionError("compiled although the cache holds this prior")

    monkeypatch.setattr(compile_module, "compile_model", refuse)
    second = anmc.compile_prior(CAMERA)
    assert second.source == first.source and second.module().observations == ("px", "py", "theta")


def test_lagrangian_and_discrete_models_observe_expressions():
    import re

    text = re.sub(r"^observe .*$", "observe tipx = sin(theta1) + sin(theta2), tipy = cos(theta1) + cos(theta2)",
                  (ROOT / "priors" / "double_pendulum.anm").read_text(), flags=re.M)  # fmt: skip
    module = compiled(text).module().double()
    assert module.observations == ("tipx", "tipy") and module.observed_states == ("theta1", "theta2")
    check_observation_jacobian(compiled(text), samples=16)
    discrete = compiled("state x ~ Normal(0, 1)\ndynamics discrete\n  next x = 0.9 * x\nnoise x = 0.1\nobserve y = x^3\n")
    h, H = discrete.module().observe_and_jacobian(torch.tensor([[2.0]]))
    assert h.tolist() == [[8.0]] and H.tolist() == [[[12.0]]]


# ---------------------------------------------------------------- anmc.testing


@pytest.mark.parametrize("prior", [LAB, CAMERA, PENDULUM], ids=["lab", "camera", "plain"])
def test_check_observation_jacobian_passes_on_the_compiled_H(prior):
    report = check_observation_jacobian(prior, samples=32)
    assert report.points + report.skipped_kinks == 32
    assert report.max_error_autograd < 1e-10 and report.max_error_differences < 1e-6


@pytest.mark.parametrize("entry", [(0, 0), (1, 0), (2, 0)])
def test_check_observation_jacobian_catches_and_names_a_wrong_entry(entry):
    i, j = entry
    prior = compiled(CAMERA)

    class Wrong(prior.module_class):
        def observe_and_jacobian(self, z):
            h, H = super().observe_and_jacobian(z)
            H = H.clone()
            H[..., i, j] *= 1 + 1e-4
            return h, H

    with pytest.raises(AssertionError) as err:
        check_observation_jacobian(CompiledPrior(prior.model, prior.source, Wrong))
    assert f"H[{('px', 'py', 'theta')[i]}, theta]" in str(err.value)


# ---------------------------------------------------------------- the other emitters and the CLI


def test_latex_prints_the_observations_and_H():
    latex = compiled(CAMERA).latex()
    assert r"y_{px} &= cx + scale x && \text{(observed)} \\" in latex
    assert r"y_{\theta} &= \theta && \text{(observed)} \\" in latex
    assert r"\[ H(z) = \frac{\partial h}{\partial z} = " in latex
    assert "% the observation function h's Jacobian, rows px, py, theta, columns theta, omega" in latex
    plain = compiled(PENDULUM).latex()
    assert r"y_{\theta} &= \theta && \text{(observed)} \\" in plain and "H(z)" not in plain


def test_numpy_observe_and_jacobian_matches_the_torch_module():
    prior = compiled(LAB)
    namespace: dict = {}
    exec(prior.numpy_source(), namespace)  # noqa: S102 - our own generated source
    module = prior.module().double()
    module.set_param("k", 1.5)
    z = np.random.default_rng(0).normal(size=(4, 3))
    h, H = namespace["observe_and_jacobian"](z)
    th, tH = module.observe_and_jacobian(torch.tensor(z))
    np.testing.assert_allclose(h, th.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(H, tH.detach().numpy(), rtol=1e-12, atol=1e-15)
    assert "def observe_and_jacobian" not in compiled(PENDULUM).numpy_source()


def test_check_lists_the_observations(tmp_path):
    path = tmp_path / "camera.anm"
    path.write_text(CAMERA.read_text())
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "(observed: px = cx + scale * x, py = cy + scale * L * cos(theta), theta; functions of theta)" in result.stdout


def test_check_reports_an_observation_error_with_exit_code_2(tmp_path):
    path = tmp_path / "bad.anm"
    path.write_text(BASE.replace("observe theta ", "observe b = 0.5 "))
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:16:13: error: observation 'b' depends on no state" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "prior, affine",
    [("pendulum", True), ("led", True), ("torricelli", True), ("incline", True), ("spring_camera", True), ("pulsar", False), ("looming", False)],
)
def test_the_module_says_whether_h_is_affine(prior, affine):
    """observation_affine: H holds no state (a selection, a level h / H, a camera that is linear in the
    position) or it does (a pulse profile of the phase, an apparent size s0 / d); the smoother picks its
    linearization points by it."""
    module = anmc.compile_prior(f"priors/{prior}.anm").module()
    assert module.observation_affine is affine
    z = module.sample_initial(3, torch.Generator().manual_seed(0)).double()
    H = module.double().observe_and_jacobian(z)[1]
    assert bool(torch.allclose(H, H[:1].expand_as(H))) is affine  # three draws: H the same only where affine
