"""Measuring a swing's camera off the video (anmc/data/swing.py, `anmc swing`): the pivot and R of
pendulums drawn here over other backgrounds, with an occluder and a second moving object, of anmc's own
renders, the warnings when nothing swings, and the measurement written into a prior."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from anmc.cli import main
from anmc.codegen.compile import compile_prior
from anmc.data.io import write_video
from anmc.data.swing import Swing, measure_swing, with_camera
from anmc.errors import UserError

CAMERA_PRIOR = Path("priors/pendulum_camera.anm")


def pendulum_clips(size=64, pivot=(30.0, 14.0), radius=34.0, clips=4, frames=60, bg=0.5, rod=True, occluder=False,
                   other=False, seed=0) -> list[np.ndarray]:  # fmt: skip
    """uint8 (T, S, S, 3) clips of a dark bob (radius 0.08 S) on a rod swinging about `pivot` over a flat
    background of level `bg`; `occluder`: a static box over the right of the swing; `other`: a smaller
    disc crossing the frame in a straight line."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] + 0.5
    out = []
    for c in range(clips):
        amp, phase = rng.uniform(0.5, 1.1), rng.uniform(0, 2 * np.pi)
        video = np.empty((frames, size, size, 3), np.uint8)
        pos, vel = rng.uniform(5, size - 5, 2), rng.uniform(-1, 1, 2)
        for t in range(frames):
            th = amp * math.sin(0.15 * t + phase)
            bx, by = pivot[0] + radius * math.sin(th), pivot[1] + radius * math.cos(th)
            img = np.full((size, size), bg)
            if rod:
                u = np.clip(((x - pivot[0]) * (bx - pivot[0]) + (y - pivot[1]) * (by - pivot[1])) / radius**2, 0, 1)
                near = np.hypot(x - pivot[0] - u * (bx - pivot[0]), y - pivot[1] - u * (by - pivot[1])) <= 0.8
                img[near] = 0.2
            img[np.hypot(x - bx, y - by) <= 0.08 * size] = 0.05
            if other:
                img[np.hypot(x - pos[0], y - pos[1]) <= 0.04 * size] = 0.95
                pos = np.clip(pos + vel, 3, size - 3)
            if occluder:
                img[int(0.3 * size) : int(0.75 * size), int(0.78 * size) :] = 0.3
            video[t] = np.repeat(np.round(img * 255)[..., None], 3, -1).astype(np.uint8)
        out.append(video)
    return out


@pytest.mark.parametrize("kind", ["rod", "bob alone", "white background", "occluder", "second object"])
def test_the_pivot_and_r_of_a_drawn_pendulum(kind):
    """Within half a pixel for the pivot and 3% for R, whatever else the video shows."""
    options = {"rod": {}, "bob alone": {"rod": False}, "white background": {"bg": 0.95}, "occluder": {"occluder": True},
               "second object": {"other": True}}[kind]  # fmt: skip
    s = measure_swing(pendulum_clips(**options))
    assert abs(s.cx - 30.0) < 0.5 and abs(s.cy - 14.0) < 0.5, s
    assert abs(s.radius / 34.0 - 1) < 0.03, s
    assert s.reliable and not s.warnings() and (s.width, s.height) == (64, 64)
    assert s.frames >= 0.6 * s.seen and s.seen == 4 * 60


def test_anmc_own_pendulum_renderer_is_measured_where_it_draws():
    """`anmc synth priors/pendulum.anm` draws the pivot at (S/2, S/2) and the bob 0.36 S from it."""
    from anmc.synthetic.synth import synthesize

    syn = synthesize(compile_prior("priors/pendulum.anm"), clips=4, frames=60, size=48, seed=1, fmt="npz")
    s = measure_swing(list(syn.frames))
    assert abs(s.cx - 24) < 0.5 and abs(s.cy - 24) < 0.5 and abs(s.radius / (0.36 * 48) - 1) < 0.03, s


def test_what_does_not_swing_is_reported_not_trusted():
    """A disc moving along a straight line is no circle: the arc is too short to place a centre."""
    size, frames = 48, 40
    y, x = np.mgrid[:size, :size] + 0.5
    video = np.zeros((frames, size, size), np.uint8)
    for t in range(frames):
        video[t][np.hypot(x - 6 - t, y - 10 - 0.5 * t) <= 3] = 255
    s = measure_swing([video])
    assert not s.reliable and any("arc" in w for w in s.warnings())
    # a camera that shakes by ±3 px scatters the track: few frames leave the pivot uncertain, and it says so
    shaky = [np.stack([np.roll(f, tuple(np.random.default_rng(t).integers(-3, 4, 2)), (0, 1)) for t, f in enumerate(clip)])
             for clip in pendulum_clips(clips=1, frames=30)]  # fmt: skip
    s = measure_swing(shaky)
    assert s.pivot_se > 0.64 and any("uncertain" in w for w in s.warnings()), s
    with pytest.raises(UserError, match="at least 3"):
        measure_swing([np.zeros((5, 16, 16), np.uint8)])
    with pytest.raises(UserError, match="different frame sizes"):
        measure_swing([np.zeros((5, 16, 16), np.uint8), np.zeros((5, 20, 20), np.uint8)])


def test_with_camera_writes_the_measurement_into_the_prior():
    swing = Swing(cx=48.04, cy=19.21, radius=40.26, width=96, height=96, residual=0.1, arc=2.0, frames=10, seen=10)
    text = with_camera(CAMERA_PRIOR.read_text(), swing)
    assert "const S = 96 " in text and "const cx = 48.0 " in text and "const cy = 19.2 " in text and "const R = 40.3 " in text
    assert "# the pivot, pixels from the left" in text  # the comments stay
    learn = with_camera(CAMERA_PRIOR.read_text(), swing, learn=True)
    assert "param cx = 48.0 in [0, S] learn" in learn and "param R = 40.3 in [0.05 * S, S] learn" in learn
    compile_prior(text)
    learned = {name for name, p in compile_prior(learn).model.params.items() if p.learn}
    assert learned == {"cx", "cy", "R", "L"}
    # a pivot above the frame (its top cropped off) keeps a range that holds it
    above = with_camera(CAMERA_PRIOR.read_text(), Swing(cx=48.0, cy=-12.0, radius=70.0, width=64, height=64, residual=0.1,
                                                        arc=2.0, frames=10, seen=10), learn=True)  # fmt: skip
    assert "param cy = -12.0 in [-S, 2 * S] learn" in above and "param R = 70.0 in [0.05 * S, 3 * S] learn" in above
    compile_prior(above)
    # every start strictly inside its range, whatever was measured: a bob 3 px from the pivot, a pivot on the
    # frame's edge, one far above it (a param started at a bound would be flagged as stuck there)
    for cx, cy, radius in [(48.0, 20.0, 3.0), (0.0, 20.0, 30.0), (48.0, -200.0, 300.0)]:
        odd = Swing(cx=cx, cy=cy, radius=radius, width=96, height=96, residual=0.1, arc=2.0, frames=10, seen=10)
        params = compile_prior(with_camera(CAMERA_PRIOR.read_text(), odd, learn=True)).model.params
        for name, value in {"cx": cx, "cy": cy, "R": radius}.items():
            lo, hi = params[name].bounds
            assert lo < value < hi, (name, value, lo, hi)
    with pytest.raises(UserError, match="no `const S"):
        with_camera("model m\nstate x ~ Normal(0, 1)\n", swing)


def test_a_large_non_square_video_is_measured_in_its_own_pixels(tmp_path):
    """`measure_swing_in` decodes each clip at most MAX_SIDE px a side with its aspect kept (an HD recording
    never sits in memory whole) and maps the result back to the stored pixels of a 400 x 240 video."""
    from anmc.data.swing import MAX_SIDE, measure_swing_in

    h, w, pivot, radius = 240, 400, (210.0, 40.0), 150.0
    y, x = np.mgrid[:h, :w] + 0.5
    for c, (amp, phase) in enumerate([(0.9, 0.0), (0.6, 2.0)]):
        video = np.zeros((60, h, w), np.uint8)
        for t in range(60):
            th = amp * math.sin(0.15 * t + phase)
            video[t][np.hypot(x - pivot[0] - radius * math.sin(th), y - pivot[1] - radius * math.cos(th)) <= 16] = 220
        write_video(tmp_path / f"clip_{c}.npz", video)
    s = measure_swing_in(tmp_path)
    assert (s.width, s.height) == (w, h) and max(w, h) > MAX_SIDE
    assert abs(s.cx - pivot[0]) < 1.0 and abs(s.cy - pivot[1]) < 1.0 and abs(s.radius / radius - 1) < 0.02, s


def test_anmc_swing_cli(tmp_path):
    for i, clip in enumerate(pendulum_clips(clips=3, frames=50)):
        write_video(tmp_path / "videos" / f"clip_{i}.npz", clip)
    runner = CliRunner()
    res = runner.invoke(main, ["swing", str(tmp_path / "videos")])
    assert res.exit_code == 0, res.output
    head = res.output.splitlines()[0]
    cx, cy, r = (float(head.split(f"{k} = ")[1].split(",")[0].split(";")[0].split(" ")[0]) for k in ("cx", "cy", "R"))
    assert abs(cx - 30) < 0.5 and abs(cy - 14) < 0.5 and abs(r / 34 - 1) < 0.03, head
    assert "const S = 64" in res.output and f"const cx = {cx:.1f}" in res.output and f"const R = {r:.1f}" in res.output
    res = runner.invoke(main, ["swing", str(tmp_path / "videos"), "--prior", str(CAMERA_PRIOR), "--learn", "-o", str(tmp_path / "mine.anm")])
    assert res.exit_code == 0, res.output
    mine = (tmp_path / "mine.anm").read_text()
    assert f"param cx = {cx:.1f} in [0, S] learn" in mine and "const S = 64" in mine
    compile_prior(tmp_path / "mine.anm")
    res = runner.invoke(main, ["swing", str(tmp_path / "nothing_here")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    write_video(tmp_path / "still" / "clip.npz", np.full((8, 32, 32), 90, np.uint8))
    res = runner.invoke(main, ["swing", str(tmp_path / "still")])
    assert res.exit_code == 2 and "show something moving" in res.output and "Traceback" not in res.output
    write_video(tmp_path / "two" / "a.npz", pendulum_clips(clips=1, frames=10)[0])
    write_video(tmp_path / "two" / "b.npz", pendulum_clips(size=48, pivot=(20.0, 10.0), radius=25.0, clips=1, frames=10)[0])
    res = runner.invoke(main, ["swing", str(tmp_path / "two")])
    assert res.exit_code == 2 and "is stored at 64x64" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["swing", str(tmp_path / "videos"), "--prior", "priors/pendulum.anm"])
    assert res.exit_code == 2 and "no `const S" in res.output


def test_a_declared_camera_far_from_the_measured_one_is_reported(tmp_path):
    """`camera_disagreement`: a prior that declares S, cx, cy, R as `anmc swing --prior` writes them is checked
    against the camera measured on the first clips — silent when they agree, one sentence with both cameras
    and the command when the pivot is more than 2% of the frame or R more than 5% off, silent for a prior
    without a camera; and `anmc train` prints it (once, before training)."""
    from anmc.data.swing import camera_disagreement, measure_swing_in
    from anmc.symbolic.model import load_model

    for i, clip in enumerate(pendulum_clips(clips=3, frames=50)):
        write_video(tmp_path / "videos" / f"clip_{i}.npz", clip)
    swing = measure_swing_in([tmp_path / "videos"])
    right = tmp_path / "right.anm"
    right.write_text(with_camera(CAMERA_PRIOR.read_text(), swing, learn=True))
    assert camera_disagreement(load_model(right), [tmp_path / "videos"]) is None
    assert camera_disagreement(load_model(Path("priors/pendulum.anm")), [tmp_path / "videos"]) is None
    off = tmp_path / "off.anm"  # the shipped prior as it is: pivot at the centre of a 64-px frame, R = 0.36 S
    off.write_text(CAMERA_PRIOR.read_text())
    said = camera_disagreement(load_model(off), [tmp_path / "videos"])
    assert said is not None and "cx = 32.0, cy = 32.0, R = 23.0" in said and "anmc swing VIDEOS --prior PRIOR --learn" in said
    measured = [float(v) for v in re.search(r"measures cx = ([\d.]+), cy = ([\d.]+), R = ([\d.]+)", said).groups()]
    assert np.allclose(measured, [swing.cx, swing.cy, swing.radius], atol=0.11) and re.search(r"R -3\d% off", said), said
    shifted = tmp_path / "shifted.anm"  # 1 px and 2%: within what training refines, not reported
    shifted.write_text(with_camera(CAMERA_PRIOR.read_text(), replace(swing, cx=swing.cx + 1.0, radius=swing.radius * 1.02)))
    assert camera_disagreement(load_model(shifted), [tmp_path / "videos"]) is None
    assert camera_disagreement(load_model(off), [tmp_path / "nothing_here"]) is None  # training reports the path
    args = ["train", str(off), str(tmp_path / "videos"), "-o", str(tmp_path / "run"), "--size", "16", "--batch", "2", "--seq-len", "3",
            "--steps-per-epoch", "1", "--epochs", "1"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert res.stderr.count("the prior declares the camera") == 1 and "anmc swing VIDEOS --prior PRIOR" in res.stderr
