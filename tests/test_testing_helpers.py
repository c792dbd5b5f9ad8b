"""anmc.testing: the helpers catch what they claim to catch, and docs/testing.md's example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

import anmc
from anmc.codegen.compile import CompiledPrior
from anmc.testing import check_intervention, check_jacobian, params, states

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "testing.md"


def page_file(name: str) -> str:
    return re.search(rf"^```\w+ file={re.escape(name)}\n(.*?)^```", PAGE.read_text(), re.M | re.S).group(1)


def test_the_pages_example_is_short_and_passes(tmp_path, monkeypatch):
    code = page_file("test_duffing.py")
    assert len([line for line in code.splitlines() if line.strip()]) < 10
    (tmp_path / "duffing.anm").write_text(page_file("duffing.anm"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "test_duffing.py", "exec"), namespace)  # noqa: S102 - the page's own example
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()


def _with_jacobian(prior: CompiledPrior, change) -> CompiledPrior:
    """The same prior whose f_and_jacobian hands back change(J)."""

    class Changed(prior.module_class):
        def f_and_jacobian(self, z):
            f, J = super().f_and_jacobian(z)
            return f, change(J.clone())

    return CompiledPrior(prior.model, prior.source, Changed)


PENDULUM = anmc.compile_prior(ROOT / "priors" / "pendulum.anm")


@pytest.mark.parametrize("entry", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_a_wrong_jacobian_entry_is_caught_and_named(entry):
    i, j = entry

    def change(J):
        J[..., i, j] *= 1 + 1e-4
        return J

    with pytest.raises(AssertionError) as err:
        check_jacobian(_with_jacobian(PENDULUM, change))
    names = PENDULUM.state_names
    assert f"J[{names[i]}, {names[j]}]" in str(err.value)


def test_a_jacobian_wrong_only_far_from_the_data_is_caught_beyond_the_initial_distribution():
    # wrong only where |theta| > 2.5 initial stds: half the points are drawn out to 3 stds
    class FarOnly(PENDULUM.module_class):
        def f_and_jacobian(self, z):
            f, J = super().f_and_jacobian(z)
            far = (z[..., 0].abs() > 2.5 * 0.8)[..., None, None]
            return f, J + far * torch.tensor([[0.0, 0.0], [0.01, 0.0]], dtype=J.dtype)

    far_only = CompiledPrior(PENDULUM.model, PENDULUM.source, FarOnly)
    with pytest.raises(AssertionError):
        check_jacobian(far_only, samples=200)
    inside = PENDULUM.module().sample_initial(64, generator=torch.Generator().manual_seed(0)).double().clamp(-1.9, 1.9)
    assert check_jacobian(far_only, states=inside).points == 64


def test_report_of_a_right_jacobian():
    report = check_jacobian(PENDULUM, samples=32)
    assert report.points == 32 and report.skipped_kinks == 0
    assert report.max_error_autograd < 1e-12 and report.max_error_differences < 1e-8


def test_kinks_are_skipped_not_failed():
    # abs(v) has a kink at v = 0: points that straddle it are counted, the rest checked
    prior = anmc.compile_prior(
        "state x ~ Normal(0, 1)\nstate v ~ Normal(0, 1)\ndynamics continuous dt = 0.1 using rk4\n"
        "  x' = v\n  v' = -x - v * abs(v)\nnoise x = 0.01, v = 0.01\nobserve x\n"
    )
    z = torch.tensor([[0.3, 1e-5], [0.3, -2e-5], [1.0, 0.5], [-0.4, -0.7], [0.2, 1.2]], dtype=torch.float64)
    report = check_jacobian(prior, states=z)
    assert report.skipped_kinks == 2 and report.points == 3


@settings(max_examples=30, deadline=None)
@given(states(PENDULUM, n=5), params(PENDULUM))
def test_strategies_stay_inside_the_declared_ranges(z, values):
    assert z.shape == (5, 2) and z.dtype == torch.float64
    assert (z[:, 0].abs() <= 3 * 0.8 + 1e-12).all() and (z[:, 1].abs() <= 3 * 1.5 + 1e-12).all()
    assert set(values) == {"L", "c"}
    assert 0.05 < values["L"] < 20 and 0 < values["c"] < 10
    module = PENDULUM.module().double()
    for name, value in values.items():
        module.set_param(name, value)
    assert torch.isfinite(module.f_and_jacobian(z)[1]).all()


def test_params_are_set_before_the_check():
    class WrongWhenLong(PENDULUM.module_class):  # J off only when L > 10
        def f_and_jacobian(self, z):
            f, J = super().f_and_jacobian(z)
            return f, J * (1 + 1e-3 * (self.param("L") > 10))

    wrong = CompiledPrior(PENDULUM.model, PENDULUM.source, WrongWhenLong)
    assert check_jacobian(wrong, params={"L": 2.0, "c": 3.0}, samples=8).points == 8
    with pytest.raises(AssertionError):
        check_jacobian(wrong, params={"L": 19.0, "c": 3.0}, samples=8)


def test_check_intervention_reports_what_changed():
    r = check_intervention(PENDULUM, "quadratic_drag")
    assert r.equations == ("omega",) and r.values == ("c",) and r.inits == ()
    r = check_intervention(PENDULUM, ["init theta ~ Normal(0, 1.6)"])
    assert r.inits == ("theta",) and r.equations == () and r.values == ()
    r = check_intervention(PENDULUM, "g = 24.8")
    assert r.values == ("g",)


@pytest.mark.parametrize(
    "edit, says",
    [("c = 0.0", "leaves them as they were"), ("theta' = omega", "leaves them as they were"), ("omega' = -(g / L) * sin(theta) - c * omega", "leaves")],
)
def test_check_intervention_fails_on_an_edit_that_changes_nothing(edit, says):
    with pytest.raises(AssertionError, match=says):
        check_intervention(PENDULUM, edit)


def test_check_intervention_fails_when_the_edit_does_not_compile():
    with pytest.raises(anmc.AnmError):
        check_intervention(PENDULUM, "omega' = -thetta")
