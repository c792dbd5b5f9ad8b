"""The double-pendulum benchmark's own generator (benchmarks/double_pendulum.py): its hand-derived
physics against the prior anmc derives from the Lagrangian, energy conservation, the drawing, the data
set's truth, and the prior it trains (g started 50% off)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import anmc

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # it imports robustness.py's drawing primitives
spec = importlib.util.spec_from_file_location("double_pendulum_bench", BENCH / "double_pendulum.py")
dp = importlib.util.module_from_spec(spec)
sys.modules["double_pendulum_bench"] = dp  # dataclasses look their module up
spec.loader.exec_module(dp)


def test_hand_derived_accelerations_equal_the_lagrangian_prior():
    """Two derivations that share nothing: this file's by hand, anmc's by SymPy from the prior's energies."""
    model = anmc.load_model(dp.PRIOR)
    fixed = {**model.consts, **{n: p.value for n, p in model.params.items()}}
    rng = np.random.default_rng(0)
    for s in rng.uniform(-2.5, 2.5, (20, 4)):
        values = {sp.Symbol(k, real=True): v for k, v in {**fixed, **dict(zip(dp.STATES, s))}.items()}
        anmc_acc = [float(model.rhs[n].xreplace(values)) for n in ("omega1", "omega2")]
        np.testing.assert_allclose(dp.accelerations(s), anmc_acc, rtol=1e-10, atol=1e-12)


def test_rk4_conserves_energy_and_is_deterministic_by_seed():
    states = dp.draw_states(3, 150, 30.0, np.random.default_rng([5, 22]))
    assert states.shape == (3, 150, 4)
    e = dp.energy(states)
    assert np.max(np.abs(e - e[:, :1])) < 1e-5 * np.max(np.abs(e))
    np.testing.assert_array_equal(states, dp.draw_states(3, 150, 30.0, np.random.default_rng([5, 22])))
    # the velocities are the angles' derivatives (central differences of the simulated angles)
    dtheta = (states[:, 2:, :2] - states[:, :-2, :2]) * 15.0
    np.testing.assert_allclose(dtheta, states[:, 1:-1, 2:], atol=0.05 * np.abs(states[..., 2:]).max())


def test_drawing_puts_the_links_where_the_angles_say():
    look = dp.Look(source=48)
    frames = dp.render_clip(look, np.array([[0.0, 0.0], [0.0, np.pi / 2]]), np.random.default_rng(0))
    assert frames.shape == (2, 48, 48, 3) and frames.dtype == np.uint8
    n, r = 48, dp.PX_PER_M * 48
    px, py = dp.PIVOT[0] * n, dp.PIVOT[1] * n
    tip_down = (int(py + 2 * r), int(px))  # both links hanging: the tip straight below
    tip_side = (int(py + r), int(px + r))  # lower link horizontal: the tip to the right of the joint
    blue = np.array(dp.Look().lower) * 255
    assert np.abs(frames[0][tip_down] - blue).max() < 30 and frames[1][tip_down].max() == 0
    assert np.abs(frames[1][tip_side] - blue).max() < 30 and frames[0][tip_side].max() == 0
    grey = dp.render_clip(dp.Look(background="grey", source=48), np.zeros((1, 2)), np.random.default_rng(0))
    assert grey[0, 0, 0].tolist() == [128, 128, 128]


def test_dataset_truth_and_the_prior_started_off(tmp_path):
    from anmc.data.io import read_truth

    states = dp.make_dataset(dp.Look(source=32), tmp_path / "d", seed=1, clips=2, frames=10)
    truth = read_truth(tmp_path / "d")
    np.testing.assert_allclose(truth["clips"][1], states[1])
    assert truth["meta"]["states"] == dp.STATES and truth["meta"]["params"]["g"] == dp.G
    assert sorted(p.name for p in (tmp_path / "d").glob("clip_*.mp4")) == ["clip_000.mp4", "clip_001.mp4"]
    prior = dp.prior_for(tmp_path / "p.anm")
    assert anmc.load_model(prior).params["g"].value == pytest.approx(14.7, rel=1e-3)
    assert dp.met({**{f"{n}_r": 0.95 for n in dp.STATES}, "g_err": -0.05})
    assert not dp.met({**{f"{n}_r": 0.95 for n in dp.STATES}, "omega2_r": 0.5, "g_err": 0.0})


def test_camera_prior_declares_this_generators_camera(tmp_path):
    """--camera: priors/double_pendulum_camera.anm with the generator's pivot and scale puts object 1 on the
    upper link's middle and object 2 on the lower link's, in pixels of the video as drawn; g started 50% off."""
    import torch

    prior = dp.camera_prior_for(tmp_path / "c.anm", 96)
    model = anmc.load_model(prior)
    assert model.params["g"].value == pytest.approx(14.7, rel=1e-3)
    module = anmc.compile_prior(prior).module().double()
    angles = np.array([[0.3, -0.8], [-1.0, 0.9], [0.0, 0.0]])
    frames = dp.render_clip(dp.Look(), angles, np.random.default_rng(0))
    y = module.observe(torch.tensor(np.concatenate([angles, np.zeros_like(angles)], 1))).numpy()
    for t in range(len(angles)):
        for obj, colour in ((0, dp.Look().upper), (3, dp.Look().lower)):
            px, py = y[t, obj], y[t, obj + 1]
            assert np.abs(frames[t][int(py), int(px)] - np.array(colour) * 255).max() < 40, (t, obj)
    np.testing.assert_allclose(y[:, [2, 5]], angles)
