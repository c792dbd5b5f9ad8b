"""Synthetic videos: truth.csv is the prior's own simulation, and the pixels show the true states.

The centroid checks run on the decoded mp4 files, so they also cover what the lossy codec does.
They measure with their own few lines of numpy, using only the geometry stored in truth.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import anmc
from anmc.data import load_clips, read_truth, read_video
from anmc.synthetic.render import geometry, measure_declared, measure_frames, object_position_px, pulse_profile, render_frames
from anmc.synthetic.synth import synthesize

PRIORS = Path(__file__).resolve().parent.parent / "priors"
SIZE = 64


@pytest.fixture(scope="module")
def compiled():
    return {n: anmc.compile_prior(PRIORS / f"{n}.anm") for n in ("pendulum", "spring", "falling", "pulsar")}


@pytest.fixture(scope="module")
def made(compiled, tmp_path_factory):
    """Each prior synthesized once into its own folder (3 clips x 24 frames, 64x64 mp4, seed 7)."""
    out = {}
    for name, prior in compiled.items():
        d = tmp_path_factory.mktemp(name)
        out[name] = (d, synthesize(prior, d, clips=3, frames=24, size=SIZE, seed=7))
    return out


def resimulate(prior, clips: int, frames: int, seed: int) -> np.ndarray:
    """The prior's own noisy rollout, written out from the module contract alone."""
    m = prior.module().double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = m.sample_initial(clips, generator=g)
        out = [z]
        for _ in range(frames - 1):
            z = m(z) + m.noise_std * torch.randn(z.shape, generator=g, dtype=torch.float64)
            out.append(z)
    return torch.stack(out, 1).numpy()


def centroid(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intensity centroid (x, y) in continuous pixel coordinates (pixel centres at i + 0.5)."""
    f = frames.astype(np.float64)
    xs, ys = np.arange(f.shape[2]) + 0.5, np.arange(f.shape[1]) + 0.5
    mass = f.sum(axis=(1, 2))
    return f.sum(axis=1) @ xs / mass, f.sum(axis=2) @ ys / mass


@pytest.mark.parametrize("name", ["pendulum", "spring", "falling", "pulsar"])
def test_truth_is_a_resimulation_from_the_seed(name, compiled, made):
    d, syn = made[name]
    truth = read_truth(d / "truth.csv")
    meta = json.loads((d / "truth.json").read_text())
    assert truth["state_names"] == list(compiled[name].state_names) == meta["states"]
    assert meta["model"] == name and meta["seed"] == 7 and meta["size"] == SIZE and meta["fps"] == 30
    renderer = "declared" if name == "pulsar" else name  # the pulsar declares `observe brightness = ...`
    assert meta["observed"] == list(compiled[name].observed) and meta["renderer"]["name"] == renderer
    assert set(meta["params"]) == set(compiled[name].model.params)
    n_frames = syn.states.shape[1]
    again = resimulate(compiled[name], 3, 24, 7)[:, :n_frames]
    assert sorted(truth["clips"]) == [0, 1, 2]
    for c in range(3):
        np.testing.assert_allclose(truth["clips"][c], again[c], rtol=1e-12, atol=1e-12)
    clips = load_clips(d)  # truth.csv and truth.json are skipped
    assert [c.name for c in clips] == [f"clip_{c:03d}.mp4" for c in range(3)]
    assert all(c.frames.shape == (n_frames, SIZE, SIZE) for c in clips)


def test_pendulum_angle_from_pixels(made):
    d, syn = made["pendulum"]
    g = json.loads((d / "truth.json").read_text())["renderer"]["geometry"]
    truth = read_truth(d)
    for c in range(3):
        cx, cy = centroid(read_video(d / f"clip_{c:03d}.mp4"))
        angle = np.arctan2(cx - g["pivot"][0], cy - g["pivot"][1])  # theta = 0 hangs straight down
        err = np.angle(np.exp(1j * (angle - truth["clips"][c][:, 0])))
        assert np.abs(err).max() < 0.05


def test_spring_block_position_from_pixels(made):
    d, syn = made["spring"]
    g = json.loads((d / "truth.json").read_text())["renderer"]["geometry"]
    truth = read_truth(d)
    cy = g["center"][1]
    # rows only the block covers: from its top edge down to just above the spring's zigzag
    rows = slice(int(np.ceil(cy - g["block_half_height_px"])), int(cy - g["coil_amplitude_px"] - 3))
    cols = slice(int(np.ceil(g["wall_px"])), SIZE)
    for c in range(3):
        f = read_video(d / f"clip_{c:03d}.mp4")[:, rows, cols]
        cx, _ = centroid(f)
        cx = cx + cols.start
        want = g["center"][0] + g["px_per_m"] * truth["clips"][c][:, 0]
        assert np.abs(cx - want).max() < 1.0


def test_falling_ball_position_from_pixels_and_clips_end_before_the_floor(made):
    d, syn = made["falling"]
    meta = json.loads((d / "truth.json").read_text())
    g = meta["renderer"]["geometry"]
    truth = read_truth(d)
    assert syn.states.shape[1] < 24 and meta["notes"]  # cut before the first ball reaches the floor
    assert (syn.states[:, :, 0] > 0).all()
    for c in range(3):
        f = read_video(d / f"clip_{c:03d}.mp4")[:, : g["floor_row"]]
        _, cy = centroid(f)
        want = g["floor_row"] - g["radius_px"] - g["px_per_m"] * truth["clips"][c][:, 0]
        assert np.abs(cy - want).max() < 1.0


def test_pulsar_brightness_follows_the_pulse_profile(made):
    d, syn = made["pulsar"]
    g = json.loads((d / "truth.json").read_text())["renderer"]["geometry"]
    truth = read_truth(d)
    xs = np.arange(SIZE) + 0.5
    inside = np.hypot(*np.meshgrid(xs - g["center"][0], xs - g["center"][1])) < g["radius_px"] - 1
    for c in range(3):
        f = read_video(d / f"clip_{c:03d}.mp4").astype(np.float64) / 255
        brightness = f[:, inside].mean(axis=1)
        want = pulse_profile(truth["clips"][c][:, 0])
        assert np.corrcoef(brightness, want)[0, 1] >= 0.99
        assert np.abs(brightness - want).max() < 0.03


def test_measure_frames_inverts_the_renderers(made):
    for name, (d, syn) in made.items():
        if name == "pulsar":
            got = measure_declared(syn.frames[0], syn.geometry)["brightness"]
        else:
            got = measure_frames(syn.renderer, syn.frames[0], syn.geometry)
        q = syn.states[0, :, 0]
        want = pulse_profile(q) if name == "pulsar" else q
        if name == "pendulum":
            got, want = np.angle(np.exp(1j * got)), np.angle(np.exp(1j * want))
        np.testing.assert_allclose(got, want, atol=0.01)


def test_pulse_profile_shape():
    phase = np.linspace(-np.pi, np.pi, 721)
    b = pulse_profile(phase)
    assert b.max() == pytest.approx(1.0, abs=1e-3) and abs(phase[b.argmax()]) < 1e-9  # main pulse at 0
    assert pulse_profile(np.pi) == pytest.approx(0.1 + 0.45, abs=1e-3)  # interpulse at pi
    np.testing.assert_allclose(pulse_profile(phase + 2 * np.pi), b)  # a function of the phase mod 2 pi
    assert b.min() == pytest.approx(0.1, abs=1e-3)


def test_object_positions_scale_with_size():
    names = ["theta", "omega"]
    states = np.array([[0.0, 0.0], [np.pi / 2, 0.0]])
    for size in (16, 64):
        g = geometry("pendulum", size, names)
        pos = object_position_px("pendulum", states, g, names)
        np.testing.assert_allclose(pos[0], [size / 2, size / 2 + 0.36 * size])
        np.testing.assert_allclose(pos[1], [size / 2 + 0.36 * size, size / 2], atol=1e-9)
        assert render_frames("pendulum", states, size, g, names).shape == (2, size, size)


def test_generic_dot_for_user_priors(tmp_path):
    text = (PRIORS / "spring.anm").read_text().replace("model spring", "model oscillator")
    syn = synthesize(text, tmp_path, clips=2, frames=12, size=32, seed=1, fmt="npz")
    assert syn.renderer == "dot" and syn.notes
    g = syn.geometry
    for c in range(2):
        f = read_video(tmp_path / f"clip_{c:03d}.npz")
        cx, cy = centroid(f)
        want = object_position_px("dot", syn.states[c], g)
        assert np.abs(cx - want[:, 0]).max() < 0.5 and np.abs(cy - want[:, 1]).max() < 0.5
    assert json.loads((tmp_path / "truth.json").read_text())["renderer"]["name"] == "dot"


def test_dot_draws_the_states_a_frame_shows(tmp_path):
    """A dot drawing a state the prior does not observe makes a video its own model cannot reconstruct (a Van
    der Pol oscillator observing x, drawn at (x, y), diverged in training): the dot draws the observed states."""
    text = """model osc
state a ~ Normal(0, 1)
state b ~ Normal(0, 2)
dynamics continuous dt = 0.1
  a' = b
  b' = -a
noise a = 0.01, b = 0.01
observe b
"""
    syn = synthesize(text, tmp_path, clips=2, frames=12, size=32, seed=1, fmt="npz")
    assert syn.renderer == "dot" and syn.geometry["states"] == [1]
    assert any("a dot shows b across;" in note for note in syn.notes)
    g = syn.geometry
    for c in range(2):
        cx, cy = centroid(read_video(tmp_path / f"clip_{c:03d}.npz"))
        u = np.clip(syn.states[c][:, 1] / (3 * 2.0), -1, 1)  # b's mean 0, std 2
        assert np.abs(cx - (16 + g["span_px"] * u)).max() < 0.5 and np.abs(cy - 16).max() < 0.5
        assert np.ptp(cx) > 1.0  # it moves
    measured = measure_frames("dot", read_video(tmp_path / "clip_000.npz"), g)
    assert measured.shape == (12, 1) and np.abs(measured[:, 0] - syn.states[0][:, 1]).max() < 0.1
    # without `observe` every state is observed: the first two drawn, as before
    syn = synthesize(text.replace("observe b\n", ""), None, clips=1, frames=4, size=32, seed=1)
    assert syn.geometry["states"] == [0, 1] and any("a dot shows a across and b up" in note for note in syn.notes)


def test_noise_and_clutter_change_pixels_not_physics(compiled):
    prior = compiled["pendulum"]
    clean = synthesize(prior, None, clips=2, frames=6, size=32, seed=3)
    noisy = synthesize(prior, None, clips=2, frames=6, size=32, seed=3, noise=0.05, clutter=True)
    again = synthesize(prior, None, clips=2, frames=6, size=32, seed=3, noise=0.05, clutter=True)
    np.testing.assert_array_equal(clean.states, noisy.states)
    assert not np.array_equal(clean.frames[0], noisy.frames[0])
    np.testing.assert_array_equal(noisy.frames[1], again.frames[1])
    # the clutter is one static background per clip, drawn under the object
    cluttered = synthesize(prior, None, clips=1, frames=6, size=32, seed=3, clutter=True).frames[0]
    assert (cluttered[0] > 0).mean() > (clean.frames[0][0] > 0).mean()
    far = np.abs(cluttered.astype(int) - clean.frames[0]).max(axis=0) > 0  # where the clutter shows
    corner = (np.arange(32)[:, None] < 4) & (np.arange(32)[None, :] < 4)  # the pendulum never reaches it
    assert (np.ptp(cluttered[:, corner], axis=0) == 0).all() and far.any()


@pytest.mark.parametrize("fmt", ["png", "gif", "npy"])
def test_lossless_formats_round_trip(compiled, tmp_path, fmt):
    syn = synthesize(compiled["spring"], tmp_path, clips=2, frames=5, size=16, seed=0, fmt=fmt)
    clips = load_clips(tmp_path)
    assert len(clips) == 2
    for c, clip in enumerate(clips):
        np.testing.assert_array_equal(clip.frames, syn.frames[c])


def test_rewriting_a_folder_removes_stale_clips(compiled, tmp_path):
    synthesize(compiled["pulsar"], tmp_path, clips=3, frames=4, size=16, fmt="npz")
    (tmp_path / "keep.txt").write_text("mine")
    synthesize(compiled["pulsar"], tmp_path, clips=2, frames=4, size=16, fmt="npz")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["clip_000.npz", "clip_001.npz", "keep.txt", "truth.csv", "truth.json"]
