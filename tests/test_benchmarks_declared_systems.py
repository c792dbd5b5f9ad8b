"""The declared-systems benchmark's own generator (benchmarks/declared_systems.py): its physics, its
determinism, and that the camera it writes into each prior puts h(z) where the object is drawn."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import anmc

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("declared_systems", ROOT / "benchmarks" / "declared_systems.py")
ds = importlib.util.module_from_spec(spec)
sys.modules["declared_systems"] = ds
spec.loader.exec_module(ds)


def luma(frames):
    return frames.astype(float) @ ds.LUMA / 255


def observed(system, states, tmp_path):
    """h(z) of the benchmark's prior for `system` (its camera) at the true states (T, d)."""
    module = anmc.compile_prior(ds.prior_for(system, tmp_path / f"{system}.anm")).module().double()
    with torch.no_grad():
        return dict(zip(module.observations, module.observe(torch.as_tensor(states)).numpy().T))


@pytest.mark.parametrize("system", list(ds.TRUTH))
def test_clips_are_deterministic_and_noisy(system):
    states = ds.draw_states(system, 2, 6, np.random.default_rng(0))
    a = ds.render_clip(system, states[0], np.random.default_rng(1), n=32)
    assert a.dtype == np.uint8 and a.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(a, ds.render_clip(system, states[0], np.random.default_rng(1), n=32))
    assert not np.array_equal(a, ds.render_clip(system, states[0], np.random.default_rng(2), n=32))  # the noise


def test_physics_in_closed_form():
    t = np.arange(90) / ds.FPS
    b = ds.draw_states("led", 3, 90, np.random.default_rng(0))[..., 0]
    np.testing.assert_allclose(np.diff(np.log(b), axis=1), -1 / (1.5 * ds.FPS))
    h = ds.draw_states("torricelli", 3, 90, np.random.default_rng(0))[..., 0]
    np.testing.assert_allclose(np.diff(np.sqrt(h), axis=1), -0.2 / (2 * ds.FPS), atol=1e-12)
    x = ds.draw_states("incline", 3, 90, np.random.default_rng(0))
    a = 9.81 * (math.sin(ds.ALPHA) - 0.3 * math.cos(ds.ALPHA))
    np.testing.assert_allclose(np.polyfit(t, x[0, :, 0], 2)[0], a / 2, rtol=1e-9)
    np.testing.assert_allclose(np.gradient(x[0, :, 0], t)[1:-1], x[0, 1:-1, 1], rtol=1e-9)


def test_led_brightness_is_what_the_prior_declares(tmp_path):
    """The LED body's grey level is gain * b (the prior's `observe brightness = gain * b`)."""
    states = np.array([[0.9], [0.5], [0.2]])
    frames = ds.render_clip("led", states, np.random.default_rng(0))
    c, r = int(0.5 * ds.SIDE), int(0.45 * ds.SIDE)
    body = luma(frames)[:, r - 5 : r + 5, c - 5 : c + 5].mean(axis=(1, 2))
    np.testing.assert_allclose(body, observed("led", states, tmp_path)["brightness"], atol=0.01)


def test_tank_level_is_what_the_prior_declares(tmp_path):
    """The water's surface row is S (1 - level) (the prior's `observe level = base + span * h / H`)."""
    states = np.array([[0.9], [0.6], [0.3]])
    frames = ds.render_clip("torricelli", states, np.random.default_rng(0)).astype(float)
    column = frames[:, :, ds.SIDE // 2]  # the tank's middle column
    water = (column[..., 2] - column[..., 0]) / 255 > 0.3  # blue over red
    surface = ds.SIDE - water.sum(1) - (ds.SIDE - ds.TANK["bottom"] * ds.SIDE)  # rows of water above the inside bottom
    np.testing.assert_allclose(surface, ds.SIDE * (1 - observed("torricelli", states, tmp_path)["level"]), atol=1.0)


def test_block_is_drawn_at_the_declared_pixels(tmp_path):
    """The green block's centroid is (px, py) of the prior's camera."""
    states = np.array([[0.5, 0.3], [3.0, 1.0], [6.0, 2.0]])
    frames = ds.render_clip("incline", states, np.random.default_rng(0)).astype(float)
    green = np.clip((frames[..., 1] - frames[..., 0] - frames[..., 2] / 2) / 255, 0, None) > 0.15
    ys, xs = np.mgrid[0 : ds.SIDE, 0 : ds.SIDE] + 0.5
    h = observed("incline", states, tmp_path)
    for t in range(3):
        m = green[t]
        assert abs(xs[m].mean() - h["px"][t]) < 0.5 and abs(ys[m].mean() - h["py"][t]) < 0.5


def test_priors_take_the_camera_and_start_off(tmp_path):
    for system, (name, value) in ((s, next(iter(p.items()))) for s, p in ds.TRUTH.items()):
        prior = anmc.compile_prior(ds.prior_for(system, tmp_path / f"{system}.anm"))
        assert prior.module().param_values()[name].item() == pytest.approx(1.5 * value)


@pytest.mark.slow
def test_quick_run(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "declared_systems.py"), "--quick", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "targets" in res.stdout and "led" in res.stdout
