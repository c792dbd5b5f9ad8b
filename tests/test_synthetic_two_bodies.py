"""`anmc synth` for the systems of two bodies: the double pendulum (two links, two tones) and two coupled
masses. The truth is the prior's own simulation, the same for the same seed, and the pixels show it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import anmc
from anmc import cli
from anmc.data import load_clips, read_truth
from anmc.synthetic.render import double_pendulum_points, geometry, render_frames
from anmc.synthetic.synth import synthesize

PRIORS = Path(__file__).resolve().parent.parent / "priors"
SIZE = 64


@pytest.fixture(scope="module")
def compiled():
    return {n: anmc.compile_prior(PRIORS / f"{n}.anm") for n in ("double_pendulum", "coupled_masses")}


@pytest.mark.parametrize("name", ["double_pendulum", "coupled_masses"])
def test_synth_writes_clips_and_a_truth_that_the_seed_reproduces(name, compiled, tmp_path):
    syn = synthesize(compiled[name], tmp_path, clips=2, frames=12, size=SIZE, seed=5, fmt="npz")
    again = synthesize(compiled[name], None, clips=2, frames=12, size=SIZE, seed=5)
    other = synthesize(compiled[name], None, clips=2, frames=12, size=SIZE, seed=6)
    assert syn.renderer == name and syn.states.shape == (2, 12, 4)
    assert all(f.shape == (12, SIZE, SIZE) and f.dtype == np.uint8 for f in syn.frames)
    np.testing.assert_array_equal(syn.states, again.states)
    assert all((a == b).all() for a, b in zip(syn.frames, again.frames))
    assert not np.allclose(syn.states, other.states)
    truth = read_truth(tmp_path / "truth.csv")
    meta = json.loads((tmp_path / "truth.json").read_text())
    assert truth["state_names"] == list(compiled[name].state_names) and meta["renderer"]["name"] == name
    np.testing.assert_allclose(truth["clips"][1], syn.states[1], rtol=1e-12)
    assert [c.frames.shape for c in load_clips(tmp_path)] == [(12, SIZE, SIZE)] * 2


def test_double_pendulum_pixels_show_both_links_in_two_tones():
    geom = geometry("double_pendulum", SIZE)
    states = np.array([[0.6, -0.9, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    frames = render_frames("double_pendulum", states, SIZE, geom, ("theta1", "theta2", "omega1", "omega2"))
    joint, tip = double_pendulum_points(states[:, :2], geom)
    at = lambda img, p: img[int(p[1]), int(p[0])]  # noqa: E731 - the pixel containing point p
    assert at(frames[0], joint[0]) == 255 and at(frames[0], tip[0]) == round(0.6 * 255)
    mid_upper = (np.asarray(geom["pivot"]) + joint[0]) / 2
    assert at(frames[0], mid_upper) == 255
    np.testing.assert_array_equal(frames[1], frames[1][:, ::-1])  # hanging straight down: mirror symmetric
    assert frames[0].sum() > 0 and not (frames[0] == frames[0][:, ::-1]).all()
    one_tone = render_frames("double_pendulum", states, SIZE, geometry("double_pendulum", SIZE, two_tone=False), None)
    assert at(one_tone[0], tip[0]) == 255


def test_an_intervention_that_changes_the_upper_link_is_drawn_with_it(compiled):
    longer = anmc.compile_prior(PRIORS / "double_pendulum.anm", intervention="long_upper_link")
    syn = synthesize(longer, None, clips=1, frames=3, size=SIZE, seed=0)
    assert syn.geometry["upper_m"] == 2.0 and syn.params["L"] == 2.0


def test_coupled_masses_blocks_sit_at_their_displacements():
    geom = geometry("coupled_masses", SIZE)
    x = np.array([[0.4, -0.3, 0.0, 0.0]])
    frame = render_frames("coupled_masses", x, SIZE, geom, ("x1", "x2", "v1", "v2"))[0].astype(float)
    cy, hh = geom["cy"], geom["block_half_height_px"]
    band = frame[int(cy - hh) + 1 : int(cy - geom["coil_amplitude_px"] - 2)]  # rows only the blocks cover
    cols = np.arange(SIZE) + 0.5
    for i, value in enumerate(geom["block_values"]):
        mask = np.isclose(band, round(value * 255), atol=1) * band
        left = cols < SIZE / 2 if i == 0 else cols >= SIZE / 2
        centre = (mask[:, left].sum(0) @ cols[left]) / mask[:, left].sum()
        assert abs(centre - (geom["rest"][i] + geom["px_per_m"] * x[0, i])) < 0.5


def test_synth_through_the_cli(tmp_path):
    result = CliRunner().invoke(cli.main, ["synth", str(PRIORS / "coupled_masses.anm"), "-o", str(tmp_path), "--clips", "1", "--frames", "8", "--format", "npz"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "truth.json").read_text())["renderer"]["name"] == "coupled_masses"
