"""The declared renderer and the camera roles: a prior's `observe px = ..., py = ...` (size, brightness,
level) is drawn with no code, and the new systems' priors synthesize with their truth files.

The pixel checks measure the frames with their own few lines of numpy (centroids, means, fractions).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import anmc
from anmc.cli import SYNTH_RENDERERS, main
from anmc.data import read_truth, read_video
from anmc.synthetic.render import RENDERERS, declared_geometry, measure_declared, pulse_profile, render_float, render_frames
from anmc.synthetic.roles import CAMERA_ROLES, RoleError, declared_roles, near_misses, objects_of, roles_of, split_role
from anmc.synthetic.synth import synthesize
from anmc.testing import check_jacobian

PRIORS = Path(__file__).resolve().parent.parent / "priors"
NEW = {"led": ("brightness",), "looming": ("size",), "torricelli": ("level",), "incline": ("px", "py"), "pulsar": ("brightness",)}

# a user's own prior: a ball on a circle, drawn from its declared pixel position alone
ORBIT = """model orbit
param w = 3.0 in [0.1, 10] learn
state a ~ Uniform(0, 6.2832)
dynamics continuous dt = 1/30 using rk4
  a' = w
noise a = 0.001
observe px = 16 + 9 * cos(a), py = 16 + 9 * sin(a)
"""


def centroid(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intensity centroid (x, y) in continuous pixel coordinates (pixel centres at i + 0.5)."""
    f = np.asarray(frames, dtype=np.float64)
    xs, ys = np.arange(f.shape[2]) + 0.5, np.arange(f.shape[1]) + 0.5
    mass = f.sum(axis=(1, 2))
    return f.sum(axis=1) @ xs / mass, f.sum(axis=2) @ ys / mass


def draw(observations: dict[str, list[float]], size: int = 64) -> np.ndarray:
    """float frames (T, S, S) of the declared renderer for the given role values."""
    names = list(observations)
    geom = declared_geometry(size, names)
    return render_float("declared", np.array([observations[n] for n in names], dtype=np.float64).T, geom)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------- the roles


def test_the_roles_table():
    assert list(CAMERA_ROLES) == ["px", "py", "size", "brightness", "level", "angle"]
    assert CAMERA_ROLES["angle"].range(64) == (-np.inf, np.inf)
    assert CAMERA_ROLES["px"].range(64) == (0.0, 64.0) and CAMERA_ROLES["size"].range(32) == (0.0, 32.0)
    assert CAMERA_ROLES["brightness"].range(64) == (0.0, 1.0) == CAMERA_ROLES["level"].range(16)
    assert roles_of(["theta", "py", "brightness", "px"]) == {"px": 3, "py": 1, "brightness": 2}
    assert roles_of(["theta", "omega"]) == {}
    assert SYNTH_RENDERERS == ("auto", *RENDERERS)  # the CLI's choices, written out there


def test_suffixed_roles_name_objects_of_their_own():
    """px1 / py_upper belong to objects "1" / "upper"; `level` is the frame's; near names are not roles."""
    assert split_role("px") == ("px", "") and split_role("level") == ("level", "")
    assert split_role("px1") == ("px", "1") and split_role("angle_upper") == ("angle", "upper")
    assert split_role("py_2b") == ("py", "2b")
    for name in ("sizes", "pxl", "level1", "px_", "theta1", "Px1"):
        assert split_role(name) is None, name
    obs = ["theta", "px1", "py1", "angle1", "px_tip", "py_tip", "level", "brightness"]
    assert objects_of(obs) == {"1": {"px": 1, "py": 2, "angle": 3}, "tip": {"px": 4, "py": 5}, "": {"brightness": 7}}
    assert roles_of(obs) == {"brightness": 7, "level": 6}  # the declared renderer draws the unsuffixed object alone
    assert near_misses(obs) == {}


def test_an_angle_alone_draws_nothing_and_says_so():
    with pytest.raises(RoleError, match="declares only `angle`"):
        declared_geometry(32, ["angle"], "m")


def test_half_a_position_is_drawn_on_the_centre_line():
    """An object moving along one axis declares that coordinate alone (a constant cannot be an observation)."""
    assert roles_of(["theta", "px"]) == {"px": 1} and roles_of(["py"]) == {"py": 0}
    cx, cy = centroid(draw({"px": [20.25, 41.0]}))
    np.testing.assert_allclose(cx, [20.25, 41.0], atol=0.05)
    np.testing.assert_allclose(cy, [32.0, 32.0], atol=1e-4)
    cx, cy = centroid(draw({"py": [10.5], "size": [3.0]}, size=32))
    assert cx[0] == pytest.approx(16.0, abs=1e-4) and cy[0] == pytest.approx(10.5, abs=0.05)
    assert declared_geometry(64, ["py"])["radius_px"] == pytest.approx(0.08 * 64)


def test_names_that_look_like_roles_are_noted():
    assert near_misses(["Brightness", "sizes", "PX", "theta", "x", "y", "x1", "phase", "omega"]) == {
        "Brightness": "brightness", "sizes": "size", "PX": "px"}  # fmt: skip
    text = (PRIORS / "led.anm").read_text().replace("observe brightness = b", "observe Brightness = b")
    syn = synthesize(text, None, clips=1, frames=3, size=16)
    assert syn.renderer == "dot" and any("'Brightness' is no camera role" in note for note in syn.notes)


def test_no_role_is_refused_only_where_the_declared_renderer_is_asked_for():
    with pytest.raises(RoleError, match=r"m declares no camera role \(its observations: theta\).*observe px = "):
        roles_of(["theta"], "m", required=True)
    with pytest.raises(RoleError, match="no camera role"):
        declared_geometry(32, ["theta"])


def test_declared_roles_of_a_hand_built_module():
    """The interface alone (ISSUE15): a module overriding observation_names and observe."""
    base = type(anmc.compile_prior(PRIORS / "pendulum.anm").module())

    class Drawn(base):
        observation_names = ("px", "py", "brightness")

        def observe(self, z):
            return torch.stack([16 + 10 * torch.sin(z[..., 0]), 16 + 10 * torch.cos(z[..., 0]), 0.5 + 0 * z[..., 1]], -1)

    assert declared_roles(Drawn()) == {"px": 0, "py": 1, "brightness": 2}
    assert declared_roles(base()) == {}  # observe theta: no role
    with pytest.raises(RoleError, match="pendulum declares no camera role"):
        declared_roles(base(), required=True)


def test_the_cli_refuses_a_renderer_that_cannot_draw_the_prior_with_one_sentence_and_exit_code_2(tmp_path):
    result = run("synth", PRIORS / "spring.anm", "-o", tmp_path / "out", "--renderer", "declared", "--frames", 3)
    assert result.exit_code == 2 and "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert "spring declares no camera role (its observations: x)" in result.output
    result = run("synth", PRIORS / "led.anm", "-o", tmp_path / "out", "--renderer", "pendulum", "--frames", 3)
    assert result.exit_code == 2 and "the pendulum renderer draws the state theta, which led does not have" in result.output
    assert not (tmp_path / "out" / "truth.csv").exists()


# ---------------------------------------------------------------- the declared renderer


@settings(max_examples=40, deadline=None)
@given(st.floats(8, 56), st.floats(8, 56), st.floats(1.5, 7.5))
def test_a_disc_is_drawn_at_the_declared_position_with_the_declared_size(px, py, size):
    frames = draw({"px": [px], "py": [py], "size": [size]})
    cx, cy = centroid(frames)  # the antialiasing (coverage clip(r + 0.5 - distance)) is exact to a few 0.01 px
    assert abs(cx[0] - px) < 0.1 and abs(cy[0] - py) < 0.1
    r = np.sqrt(frames.sum() / np.pi)  # the antialiased disc's area is pi r^2 (+ pi/12)
    assert abs(r - size) < 0.05
    got = measure_declared(np.round(frames * 255).astype(np.uint8), declared_geometry(64, ["px", "py", "size"]))
    assert abs(got["px"][0] - px) < 0.1 and abs(got["py"][0] - py) < 0.1 and abs(got["size"][0] - size) < 0.1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=6))
def test_brightness_scales_the_mean_intensity(values):
    frames = draw({"px": [30.3] * len(values), "py": [33.1] * len(values), "brightness": values})
    white = draw({"px": [30.3], "py": [33.1]})
    np.testing.assert_allclose(frames.mean(axis=(1, 2)), np.array(values) * white.mean(), rtol=1e-5, atol=1e-7)
    alone = draw({"brightness": values})  # no px, py: a disc at the centre, radius 0.3 S
    np.testing.assert_allclose(alone.max(axis=(1, 2)), values, atol=1e-6)
    cx, cy = centroid(alone[np.array(values) > 0.01]) if max(values) > 0.01 else (np.array([32.0]), np.array([32.0]))
    assert np.allclose(cx, 32.0, atol=1e-3) and np.allclose(cy, 32.0, atol=1e-3)
    assert abs(np.sqrt(draw({"brightness": [1.0]}).sum() / np.pi) - 0.3 * 64) < 0.05


@settings(max_examples=40, deadline=None)
@given(st.floats(-0.2, 1.2), st.sampled_from([16, 32, 64]))
def test_level_fills_the_right_fraction_from_the_bottom(level, size):
    frame = draw({"level": [level]}, size)[0]
    want = min(max(level, 0.0), 1.0)
    assert frame.mean() == pytest.approx(want, abs=1e-6)
    rows = frame.mean(axis=1)  # every row is full, empty or (the one at the surface) partly filled
    assert np.all(np.diff(rows) >= 0)  # filled from the bottom
    np.testing.assert_allclose(frame, np.broadcast_to(rows[:, None], frame.shape), atol=1e-6)  # float32 row means


def test_level_under_a_disc_is_half_bright_and_both_read_back():
    geom = declared_geometry(64, ["level", "px", "py"])
    assert geom["level_value"] == 0.5 and geom["disc"] and geom["level"]
    f = draw({"level": [0.3, 0.6], "px": [20.0, 44.5], "py": [12.0, 10.25]})
    assert f[0, 63, 0] == 0.5 and f[0, 12, 20] == 1.0
    got = measure_declared(np.round(f * 255).astype(np.uint8), geom)
    np.testing.assert_allclose(got["level"], [0.3, 0.6], atol=0.01)
    np.testing.assert_allclose(got["px"], [20.0, 44.5], atol=0.05)
    np.testing.assert_allclose(got["py"], [12.0, 10.25], atol=0.05)


def test_the_declared_renderer_needs_its_geometry():
    with pytest.raises(ValueError, match="declared_geometry"):
        render_frames("declared", np.zeros((2, 1)), 16)


# ---------------------------------------------------------------- anmc synth


def test_a_users_own_prior_synthesizes_from_its_declared_position(tmp_path):
    (tmp_path / "orbit.anm").write_text(ORBIT)
    result = run("synth", tmp_path / "orbit.anm", "-o", tmp_path / "out", "--clips", 2, "--frames", 12, "--size", 32,
                 "--format", "npz")  # fmt: skip
    assert result.exit_code == 0 and "declared renderer" in result.output and "note" not in result.output
    meta = json.loads((tmp_path / "out" / "truth.json").read_text())
    assert meta["renderer"]["name"] == "declared" and meta["renderer"]["geometry"]["roles"] == {"px": 0, "py": 1}
    assert meta["observations"] == ["px", "py"]
    truth = read_truth(tmp_path / "out")
    for c in range(2):
        a = truth["clips"][c][:, 0]
        cx, cy = centroid(read_video(tmp_path / "out" / f"clip_{c:03d}.npz"))
        assert np.abs(cx - (16 + 9 * np.cos(a))).max() < 0.05 and np.abs(cy - (16 + 9 * np.sin(a))).max() < 0.05


def test_clutter_and_pixel_noise_change_the_declared_pixels_not_the_physics():
    clean = synthesize(ORBIT, None, clips=2, frames=8, size=32, seed=4)
    noisy = synthesize(ORBIT, None, clips=2, frames=8, size=32, seed=4, noise=0.05, clutter=True)
    np.testing.assert_array_equal(clean.states, noisy.states)
    np.testing.assert_array_equal(clean.observations, noisy.observations)
    assert not np.array_equal(clean.frames[0], noisy.frames[0])
    cluttered = synthesize(ORBIT, None, clips=1, frames=8, size=32, seed=4, clutter=True).frames[0]
    assert (cluttered[0] > 0).mean() > (clean.frames[0][0] > 0).mean()
    x, y = clean.observations[0, :, 0], clean.observations[0, :, 1]
    at = cluttered[np.arange(8), np.floor(y).astype(int), np.floor(x).astype(int)]
    assert (at == 255).all()  # the disc is drawn over the background, white at its centre


def test_clips_end_before_an_object_reaches_the_camera_and_out_of_range_roles_are_noted():
    text = (PRIORS / "looming.anm").read_text()
    syn = synthesize(text, None, clips=4, frames=200, size=32, seed=0)
    n = syn.states.shape[1]
    assert 2 < n < 200 and any("clips cut to" in note for note in syn.notes)
    assert (syn.observations[..., 0] <= 32).all() and (syn.observations[..., 0] > 0).all()
    d = syn.states[..., 0]
    assert ((64 / d[:, n - 1]) <= 32).all()  # size = s0 / d, s0 = 64: within the 32 px frame
    bright = re.sub(r"observe brightness = b .*", "observe brightness = 4 * b", (PRIORS / "led.anm").read_text())
    syn = synthesize(bright, None, clips=4, frames=4, size=16)
    assert any(note.startswith("brightness is outside [0, 1]") and "clipped" in note for note in syn.notes)
    assert syn.frames[0].max() == 255


@pytest.mark.parametrize("name", list(NEW))
def test_each_new_prior_synthesizes_with_truth_files(name, tmp_path):
    path = PRIORS / f"{name}.anm"
    prior = anmc.compile_prior(path)
    module = prior.module()
    assert module.observations == NEW[name] and prior.model.interventions
    assert any(p.learn for p in prior.model.params.values()) or name == "pulsar"
    out = tmp_path / name
    result = run("synth", path, "-o", out, "--clips", 2, "--frames", 6, "--size", 32, "--format", "npz")
    assert result.exit_code == 0, result.output
    assert "declared renderer" in result.output
    truth = read_truth(out)
    meta = truth["meta"]
    assert truth["state_names"] == list(prior.state_names) and sorted(truth["clips"]) == [0, 1]
    assert meta["renderer"]["name"] == "declared" and meta["observations"] == list(NEW[name])
    geom = meta["renderer"]["geometry"]
    for c in range(2):  # the pixels are the declared renderer's drawing of h(the true states)
        z = torch.from_numpy(truth["clips"][c])
        y = module.double().observe(z).detach().numpy()
        want = np.round(render_float("declared", y, geom) * 255).astype(np.uint8)
        np.testing.assert_array_equal(read_video(out / f"clip_{c:03d}.npz"), want)
    check_jacobian(prior, samples=16)


def test_the_pulsar_draws_its_pulse_profile_as_the_hand_coded_renderer_did():
    """Golden: a disc at the centre, radius 0.3 S, of brightness pulse_profile(phase), composited over black."""
    syn = synthesize(PRIORS / "pulsar.anm", None, clips=3, frames=40, size=32, seed=5)
    phase = syn.states[..., 0]
    np.testing.assert_allclose(syn.observations[..., 0], pulse_profile(phase), atol=1e-12)
    c = np.arange(32, dtype=np.float32) + 0.5
    cov = np.clip(np.float32(0.3 * 32 + 0.5) - np.sqrt((c[None, :] - 16) ** 2 + (c[:, None] - 16) ** 2), 0, 1)
    for k in range(3):
        b = pulse_profile(phase[k]).astype(np.float32)[:, None, None]
        np.testing.assert_array_equal(syn.frames[k], np.round(cov * b * 255).astype(np.uint8))


# what each new system's learned parameter is, read back from its pixels alone (measure_declared on the
# decoded mp4) by a least-squares fit of the closed-form solution: the videos carry the physics
def _led_tau(m, t):
    b = m["brightness"]
    ok = b > 0.1
    return -1.0 / np.polyfit(t[ok], np.log(b[ok]), 1)[0]  # b = b0 exp(-t / tau)


def _torricelli_k(m, t):
    return -2.0 * np.polyfit(t, np.sqrt(m["level"]), 1)[0]  # sqrt(h) = sqrt(h0) - k t / 2 (H = 1 m)


def _looming_g(m, t):
    return -2.0 * np.polyfit(t, 64.0 / m["size"], 2)[0]  # d = s0 / size = d0 + v0 t - g t^2 / 2 (s0 = 64)


def _incline_mu(m, t):
    s = np.hypot(m["px"] - m["px"][0], m["py"] - m["py"][0]) / 4.0  # metres along the slope
    a = 2.0 * np.polyfit(t, s, 2)[0]
    return (np.sin(0.349) - a / 9.81) / np.cos(0.349)


@pytest.mark.parametrize(
    "name, intervention, read, true, frames",
    [("led", None, _led_tau, 1.5, 96), ("led", "faster", _led_tau, 0.75, 96),
     ("torricelli", None, _torricelli_k, 0.2, 96), ("torricelli", "wider_hole", _torricelli_k, 0.4, 96),
     ("looming", None, _looming_g, 9.81, 128), ("incline", None, _incline_mu, 0.3, 64),
     ("incline", "waxed", _incline_mu, 0.25, 64)],
)  # fmt: skip
def test_the_parameter_can_be_read_back_from_the_pixels(name, intervention, read, true, frames, tmp_path):
    prior = anmc.compile_prior(PRIORS / f"{name}.anm", intervention=intervention)
    syn = synthesize(prior, tmp_path, clips=4, frames=frames, size=64, seed=2)
    t = np.arange(frames) * prior.module().dt
    got = [read(measure_declared(read_video(tmp_path / f"clip_{c:03d}.mp4"), syn.geometry), t) for c in range(4)]
    assert np.mean(got) == pytest.approx(true, rel=0.03)  # one clip is within ~5%: the process noise


def test_several_objects_are_not_drawn_by_the_declared_renderer_and_the_note_says_what_to_do():
    syn = synthesize((PRIORS / "double_pendulum_camera.anm").read_text(), None, clips=1, frames=3, size=16)
    assert syn.renderer == "dot"
    assert any("px1, py1, angle1, px2, py2, angle2 place several objects" in n and "--renderer" in n for n in syn.notes)
    assert synthesize((PRIORS / "double_pendulum_camera.anm").read_text(), None, clips=1, frames=3, size=16,
                      renderer="double_pendulum").renderer == "double_pendulum"  # fmt: skip
