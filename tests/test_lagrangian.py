"""`dynamics lagrangian`: the derived equations equal the hand-written ones (pendulum, double pendulum
of point masses and of rigid links, spring pendulum), energy is conserved to the integrator's order,
and a malformed block gets a line:col error."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import anmc
from anmc import cli
from anmc.lang.errors import AnmError

ROOT = Path(__file__).resolve().parents[1]
POSITIVE = st.floats(0.3, 3.0)
ANGLE = st.floats(-2.5, 2.5)
SPEED = st.floats(-3.0, 3.0)


def _model(consts: dict, states: list[str], body: str):
    lines = [f"const {k} = {v!r}" for k, v in consts.items()]
    lines += [f"state {s} ~ Normal(0, 1)" for s in states]
    lines += [body, "noise " + ", ".join(f"{s} = 0" for s in states), "observe " + states[0]]
    return anmc.load_model("model m\n" + "\n".join(lines) + "\n")


def _rhs_at(model, point: dict) -> np.ndarray:
    """The right-hand sides at `point` (states), with the model's consts and params put in."""
    point = {**model.consts, **{n: p.value for n, p in model.params.items()}, **point}
    values = {sp.Symbol(k, real=True): v for k, v in point.items()}
    return np.array([float(model.rhs[s].xreplace(values)) for s in model.states])


def _same(consts, states, lagrangian_body, written_body, point):
    derived = _model(consts, states, lagrangian_body)
    written = _model(consts, states, written_body)
    a, b = _rhs_at(derived, point), _rhs_at(written, point)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    return derived


def test_pendulum_is_derived_exactly():
    model = _model({"m": 2.0, "L": 1.5, "g": 9.81}, ["theta", "omega"], """dynamics lagrangian dt = 0.1 using rk4
  coordinates theta
  velocities omega
  kinetic T = m*L^2*omega^2/2
  potential V = -m*g*L*cos(theta)""")
    theta, omega, g, L = sp.symbols("theta omega g L", real=True)
    assert model.rhs["theta"] == omega
    assert sp.simplify(model.rhs["omega"] - (-(g / L) * sp.sin(theta))) == 0


@settings(max_examples=20, deadline=None)
@given(POSITIVE, POSITIVE, POSITIVE, ANGLE, SPEED, st.floats(0, 2))
def test_damped_forced_pendulum_equals_the_hand_written_one(m, L, g, theta, omega, c):
    _same(
        {"m": m, "L": L, "g": g, "c": c}, ["theta", "omega"],
        """dynamics lagrangian dt = 0.1 using rk4
  coordinates theta
  velocities omega
  kinetic T = m*L^2*omega^2/2
  potential V = -m*g*L*cos(theta)
  dissipation D = c*omega^2/2
  force theta = 0.3*cos(theta)""",
        """dynamics continuous dt = 0.1 using rk4
  theta' = omega
  omega' = -(g/L)*sin(theta) - c*omega/(m*L^2) + 0.3*cos(theta)/(m*L^2)""",
        {"theta": theta, "omega": omega},
    )  # fmt: skip


DOUBLE_LAGRANGIAN = """dynamics lagrangian dt = 0.1 using rk4
  coordinates theta1, theta2
  velocities omega1, omega2
  let vx = l1*cos(theta1)*omega1 + c2*cos(theta2)*omega2
  let vy = l1*sin(theta1)*omega1 + c2*sin(theta2)*omega2
  kinetic T = m1*(c1*omega1)^2/2 + I1*omega1^2/2 + m2*(vx^2 + vy^2)/2 + I2*omega2^2/2
  potential V = -m1*g*c1*cos(theta1) - m2*g*(l1*cos(theta1) + c2*cos(theta2))"""

# myPhysicsLab's double pendulum of point masses (https://www.myphysicslab.com/pendulum/double-pendulum-en.html)
DOUBLE_POINT_MASSES = """dynamics continuous dt = 0.1 using rk4
  theta1' = omega1
  theta2' = omega2
  let den = 2*m1 + m2 - m2*cos(2*theta1 - 2*theta2)
  omega1' = (-g*(2*m1 + m2)*sin(theta1) - m2*g*sin(theta1 - 2*theta2) - 2*sin(theta1 - theta2)*m2*(omega2^2*c2 + omega1^2*l1*cos(theta1 - theta2))) / (l1*den)
  omega2' = 2*sin(theta1 - theta2)*(omega1^2*l1*(m1 + m2) + g*(m1 + m2)*cos(theta1) + omega2^2*c2*m2*cos(theta1 - theta2)) / (c2*den)"""

# Two rigid links: the mass matrix and right side written out by hand, solved by Cramer's rule.
DOUBLE_RIGID = """dynamics continuous dt = 0.1 using rk4
  theta1' = omega1
  theta2' = omega2
  let M11 = m1*c1^2 + I1 + m2*l1^2
  let M12 = m2*l1*c2*cos(theta1 - theta2)
  let M22 = m2*c2^2 + I2
  let b1 = -m2*l1*c2*sin(theta1 - theta2)*omega2^2 - (m1*c1 + m2*l1)*g*sin(theta1)
  let b2 = m2*l1*c2*sin(theta1 - theta2)*omega1^2 - m2*c2*g*sin(theta2)
  let det = M11*M22 - M12^2
  omega1' = (M22*b1 - M12*b2)/det
  omega2' = (M11*b2 - M12*b1)/det"""

STATES4 = ["theta1", "theta2", "omega1", "omega2"]


@settings(max_examples=20, deadline=None)
@given(POSITIVE, POSITIVE, POSITIVE, POSITIVE, POSITIVE, ANGLE, ANGLE, SPEED, SPEED)
def test_double_pendulum_of_point_masses_equals_the_hand_written_one(m1, m2, l1, l2, g, t1, t2, w1, w2):
    consts = {"m1": m1, "m2": m2, "l1": l1, "c1": l1, "c2": l2, "I1": 0.0, "I2": 0.0, "g": g}
    _same(consts, STATES4, DOUBLE_LAGRANGIAN, DOUBLE_POINT_MASSES, dict(zip(STATES4, (t1, t2, w1, w2))))


@settings(max_examples=20, deadline=None)
@given(POSITIVE, POSITIVE, POSITIVE, st.floats(0.1, 1.0), st.floats(0.1, 1.0), POSITIVE, POSITIVE, POSITIVE, ANGLE, ANGLE, SPEED, SPEED)
def test_double_pendulum_of_rigid_links_equals_the_hand_written_one(m1, m2, l1, f1, f2, i1, i2, g, t1, t2, w1, w2):
    consts = {"m1": m1, "m2": m2, "l1": l1, "c1": f1 * l1, "c2": f2, "I1": i1, "I2": i2, "g": g}
    _same(consts, STATES4, DOUBLE_LAGRANGIAN, DOUBLE_RIGID, dict(zip(STATES4, (t1, t2, w1, w2))))


@settings(max_examples=20, deadline=None)
@given(POSITIVE, POSITIVE, st.floats(1, 50), POSITIVE, st.floats(0.2, 3), ANGLE, SPEED, SPEED)
def test_spring_pendulum_equals_the_hand_written_one(m, L0, k, g, r, theta, v, omega):
    _same(
        {"m": m, "L0": L0, "k": k, "g": g}, ["r", "theta", "v", "omega"],
        """dynamics lagrangian dt = 0.1 using rk4
  coordinates r, theta
  velocities v, omega
  kinetic T = m*(v^2 + r^2*omega^2)/2
  potential V = -m*g*r*cos(theta) + k*(r - L0)^2/2""",
        """dynamics continuous dt = 0.1 using rk4
  r' = v
  theta' = omega
  v' = r*omega^2 + g*cos(theta) - (k/m)*(r - L0)
  omega' = -(g*sin(theta) + 2*v*omega)/r""",
        {"r": r, "theta": theta, "v": v, "omega": omega},
    )  # fmt: skip


def test_the_double_pendulum_prior_matches_its_hand_written_form():
    model = anmc.load_model(ROOT / "priors" / "double_pendulum.anm")
    consts = {"m1": 1.0, "m2": 1.0, "l1": 1.0, "c1": 0.5, "c2": 0.5, "I1": 1.0, "I2": 1.0, "g": 9.81}
    written = _model(consts, STATES4, DOUBLE_RIGID)
    rng = np.random.default_rng(0)
    for _ in range(5):
        point = dict(zip(STATES4, rng.uniform(-2, 2, 4)))
        np.testing.assert_allclose(_rhs_at(model, point), _rhs_at(written, point), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- energy


def _energy(z: torch.Tensor) -> torch.Tensor:
    """T + V of priors/double_pendulum.anm (m = 1, L = 1, c = 0.5, I = 1, g = 9.81), z (..., 4)."""
    t1, t2, w1, w2 = z.unbind(-1)
    vx = torch.cos(t1) * w1 + 0.5 * torch.cos(t2) * w2
    vy = torch.sin(t1) * w1 + 0.5 * torch.sin(t2) * w2
    T = (0.5 * w1) ** 2 / 2 + w1**2 / 2 + (vx**2 + vy**2) / 2 + w2**2 / 2
    V = -9.81 * 0.5 * torch.cos(t1) - 9.81 * (torch.cos(t1) + 0.5 * torch.cos(t2))
    return T + V


@pytest.fixture(scope="module")
def double_pendulum_by_steps():
    text = (ROOT / "priors" / "double_pendulum.anm").read_text()
    return {n: anmc.compile_prior(text.replace("using rk4 steps 2", f"using rk4 steps {n}")).module().double() for n in (1, 2)}


def _drift(module, z0: torch.Tensor, frames: int) -> torch.Tensor:
    z, e0, worst = z0, _energy(z0), torch.zeros(z0.shape[0], dtype=z0.dtype)
    with torch.no_grad():
        for _ in range(frames):
            z = module(z)
            worst = torch.maximum(worst, (_energy(z) - e0).abs())
    return worst


@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_without_noise_or_dissipation_rk4_conserves_energy_to_fourth_order(double_pendulum_by_steps, seed):
    """Halving the substep (rk4 x1 -> x2 at dt = 1/30) cuts the energy drift over 2 s by about 2^4."""
    gen = torch.Generator().manual_seed(seed)
    module = double_pendulum_by_steps[1]
    z0 = module.sample_initial(16, generator=gen).double()
    coarse, fine = _drift(double_pendulum_by_steps[1], z0, 60), _drift(double_pendulum_by_steps[2], z0, 60)
    assert (fine < 2e-3).all(), fine.max()
    ratio = coarse.sum() / fine.sum()
    assert 8 < ratio < 40, ratio  # 16 for a fourth-order method


# ---------------------------------------------------------------- errors

BASE = """\
model m
const g = 9.81
state theta ~ Normal(0, 1)
state omega ~ Normal(0, 1)
dynamics lagrangian dt = 0.1 using rk4
  coordinates theta
  velocities omega
  kinetic T = omega^2/2
  potential V = -g*cos(theta)
noise theta = 0.01, omega = 0.01
observe theta
"""


def sub(old, new):
    assert old in BASE, old
    return BASE.replace(old, new, 1)


CASES = [
    ("no_kinetic", sub("  kinetic T = omega^2/2\n", ""), "the lagrangian block has no kinetic energy; add e.g. 'kinetic T = m*omega^2/2'", 5, 1),
    ("no_coordinates", sub("  coordinates theta\n", ""), "the lagrangian block has no 'coordinates' line; add e.g. 'coordinates theta'", 5, 1),
    ("coordinate_not_a_state", sub("coordinates theta", "coordinates thet"), "coordinates names 'thet', which is not a state; did you mean 'theta'?", 6, 15),
    ("counts_differ", sub("velocities omega", "velocities omega, omega2").replace("state omega ~", "state omega2 ~ Normal(0, 1)\nstate omega ~"), "1 coordinates but 2 velocities; the velocities line pairs one velocity with each coordinate, in order", 8, 3),
    ("listed_twice", sub("velocities omega", "velocities theta"), "state 'omega' is neither a coordinate nor a velocity of the lagrangian block; add it to one of the two lines", 4, 7),
    ("equation_in_the_block", sub("  potential V", "  omega' = 0\n  potential V"), "a 'dynamics lagrangian' block derives the equations from the energies; remove 'omega' = ...' (or write 'dynamics continuous' and give every equation)", 9, 3),
    ("singular_mass_matrix", sub("kinetic T = omega^2/2", "kinetic T = theta^2/2"), "the kinetic energy's mass matrix d2T/dv2 is singular, so the accelerations are not determined; T must contain every velocity (squared), e.g. m*v^2/2 for each", 8, 15),
    ("force_on_a_velocity", sub("  potential V", "  force omega = 1\n  potential V"), "a force on 'omega', which is not a coordinate; forces act on the coordinates", 9, 9),
    ("kinetic_in_continuous", sub("dynamics lagrangian", "dynamics continuous"), "'coordinates' lines belong in a 'dynamics lagrangian' block, not in 'dynamics continuous'", 6, 3),
    ("energy_name_used", sub("potential V = -g*cos(theta)", "potential V = -g*cos(theta) + 0*T"), "'T' names the kinetic energy, which only the derivation uses; to use it here write it as a 'let' and refer to that in the energy line", 9, 35),
    ("velocity_in_potential", sub("potential V = -g*cos(theta)", "potential V = -g*cos(theta)*omega"), "the potential energy depends on a velocity; velocity-dependent terms go in the kinetic energy", 9, 17),
    ("kinetic_outside_a_block", BASE + "kinetic U = 1\n", "a 'kinetic' line belongs inside a 'dynamics lagrangian' block", 12, 1),
]


@pytest.mark.parametrize("text, message, line, column", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_lagrangian_block_reports_message_line_and_column(text, message, line, column):
    with pytest.raises(AnmError) as err:
        anmc.load_model(text)
    first = err.value.first
    assert (first.message, first.line, first.column) == (message, line, column), str(err.value)


def test_a_state_listed_twice_is_reported_where_it_is_listed():
    with pytest.raises(AnmError) as err:
        anmc.load_model(sub("velocities omega", "velocities theta"))
    assert "7:14: error: state 'theta' is listed twice (as a coordinate and as a velocity)" in str(err.value)


def test_check_and_compile_through_the_cli(tmp_path):
    bad = tmp_path / "bad.anm"
    bad.write_text(dict((c[0], c[1]) for c in CASES)["singular_mass_matrix"])
    result = CliRunner().invoke(cli.main, ["check", str(bad)])
    assert result.exit_code == 2 and "bad.anm:8:15: error: the kinetic energy's mass matrix" in result.output
    assert "Traceback" not in result.output
    good = tmp_path / "good.anm"
    good.write_text(BASE)
    result = CliRunner().invoke(cli.main, ["compile", str(good), "--emit", "latex"])
    assert result.exit_code == 0, result.output
    assert "derived by anmc: M v' = b" in result.output and r"\sin{\left(\theta \right)}" in result.output
