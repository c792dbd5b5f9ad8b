"""Background removal (anmc/data/background.py): the median background, the stretched foreground, the
same frames from memory and from the cache, and training / evaluating a run that removed it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from anmc.cli import main
from anmc.data.background import DARK, MIN_SCALE, SAMPLE, auto_background, background_level, estimate_background, remove_background, without_background
from anmc.data.cache import DiskFrames, cached_clips
from anmc.data.dataset import frame_datasets
from anmc.data.io import Clip, load_clips
from anmc.errors import UserError
from anmc.vae.config import TrainConfig
from anmc.vae.run import load_run, load_run_clips
from anmc.vae.train import train

PRIOR = "priors/pendulum.anm"


def moving_disc(frames: int, size: int, background: np.ndarray, level: int, seed: int = 0) -> np.ndarray:
    """uint8 (T, S, S): a disc of grey `level` on a circle over the static `background`."""
    y, x = np.mgrid[:size, :size] + 0.5
    out = np.empty((frames, size, size), np.uint8)
    for t in range(frames):
        a = 2 * np.pi * t / frames + seed
        cx, cy = size / 2 + 0.3 * size * np.cos(a), size / 2 + 0.3 * size * np.sin(a)
        inside = np.hypot(x - cx, y - cy) < 0.1 * size
        out[t] = np.where(inside, level, background)
    return out


def textured(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, 200, (size, size)).astype(np.uint8)


def test_the_median_is_the_static_background_and_the_moving_object_is_what_is_left():
    bg = textured(24)
    frames = moving_disc(40, 24, bg, level=20)
    est = estimate_background(frames)
    assert np.array_equal(est.image, bg)  # the disc covers no pixel in half the frames
    fg = remove_background(frames, est)
    disc = frames != bg
    assert np.all(fg[~disc] == 0)
    assert fg[disc].max() == 255 and fg[disc].min() > 0
    # stretched: the largest difference |20 - bg| over the clip maps to 255 (the 99.9th percentile is in the disc)
    expected = np.abs(frames.astype(int) - bg)[disc] * 255.0 / est.scale
    assert np.allclose(fg[disc], np.clip(np.rint(expected), 0, 255))


@settings(max_examples=25, deadline=None)
@given(level=st.integers(0, 255), object_level=st.integers(0, 255), seed=st.integers(0, 50))
def test_a_dark_object_on_light_and_a_light_one_on_dark_look_the_same(level, object_level, seed):
    """Only the contrast remains: the foreground of (object o on background b) equals that of (b' on o')
    when |o - b| = |o' - b'|, whatever the grey level."""
    size = 16
    light = moving_disc(20, size, np.full((size, size), level, np.uint8), object_level, seed)
    flipped = moving_disc(20, size, np.full((size, size), 255 - level, np.uint8), 255 - object_level, seed)
    a = remove_background(light, estimate_background(light))
    b = remove_background(flipped, estimate_background(flipped))
    assert np.array_equal(a, b)


def test_a_still_clip_is_not_amplified_into_noise():
    rng = np.random.default_rng(1)
    frames = (128 + rng.integers(-2, 3, (30, 12, 12))).astype(np.uint8)  # +-2 levels of sensor noise, nothing moves
    est = estimate_background(frames)
    assert est.scale == MIN_SCALE
    # the stretch stops at 255 / MIN_SCALE: each level of noise becomes 51, not the full range
    diff = np.abs(frames.astype(int) - est.image)
    assert np.array_equal(remove_background(frames, est), np.minimum(diff * round(255 / MIN_SCALE), 255))


def test_rgb_frames_keep_their_shape_and_channels():
    frames = np.stack([moving_disc(30, 16, textured(16, c), level=40 * c) for c in range(3)], -1)  # darker in each
    est = estimate_background(frames)
    assert est.image.shape == (16, 16, 3) and np.array_equal(est.image[..., 2], textured(16, 2))
    fg = remove_background(frames, est)
    assert fg.shape == frames.shape and np.all(fg[frames[..., 0] == textured(16, 0)] [..., 0] == 0)


def test_long_clips_estimate_from_a_sample_and_disk_frames_read_only_it(tmp_path):
    frames = moving_disc(SAMPLE * 3, 10, textured(10), level=250)
    path = tmp_path / "f.u8"
    path.write_bytes(frames.tobytes())
    disk = DiskFrames(path, (10, 10), 0, len(frames))
    reads = []
    read = disk.read
    disk.read = lambda a, b: reads.append(b - a) or read(a, b)  # type: ignore[method-assign]
    a, b = estimate_background(disk), estimate_background(frames)
    assert np.array_equal(a.image, b.image) and a.scale == b.scale
    assert sum(reads) == SAMPLE


def test_cache_holds_the_same_foreground_as_memory_and_a_different_entry(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"c{i}.npy", moving_disc(90 + 7 * i, 20, textured(20, i), level=10 + 40 * i, seed=i))
    memory = without_background(load_clips(folder, size=16))
    disk = cached_clips(folder, tmp_path / "cache", size=16, background="remove")
    for m, d in zip(memory, disk):
        assert isinstance(d.frames, DiskFrames) and np.array_equal(np.asarray(d.frames), m.frames)
    kept = cached_clips(folder, tmp_path / "cache", size=16)
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 6  # removed and kept side by side
    assert not np.array_equal(np.asarray(kept[0].frames), memory[0].frames)
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary file left


def test_frame_datasets_remove_before_splitting_one_clip_in_time(tmp_path):
    frames = moving_disc(80, 16, textured(16), level=0)
    clip = Clip(name="c", path=tmp_path / "c.npy", frames=frames)
    train, val = frame_datasets([clip], length=5, val_fraction=0.25, background="remove")
    whole = remove_background(frames, estimate_background(frames))  # the background of the whole clip
    seen = torch.cat([train.frames, val.frames])[:, 0].numpy()
    assert {bytes(f) for f in seen} <= {bytes(f) for f in whole}
    with pytest.raises(ValueError, match="background"):
        frame_datasets([clip], length=5, background="blur")


def test_config_refuses_an_unknown_choice_and_old_runs_kept_their_background():
    with pytest.raises(UserError, match="--background 'median'"):
        TrainConfig(background="median")
    old = {k: v for k, v in TrainConfig(background="remove").__dict__.items() if k != "background"}
    assert TrainConfig.from_dict(old).background == "keep"


def test_cli_trains_with_the_background_removed_and_eval_reads_the_same_frames(tmp_path):
    from anmc.synthetic.synth import synthesize

    data = tmp_path / "d"
    synthesize(PRIOR, out_dir=data, clips=4, frames=24, size=16, seed=3, fmt="npz", clutter=True)
    run = tmp_path / "r"
    args = ["train", PRIOR, str(data), "-o", str(run), "--size", "16", "--batch", "4", "--seq-len", "4",
            "--steps-per-epoch", "3", "--epochs", "1", "--background", "remove"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    loaded = load_run(run)
    assert loaded.config.background == "remove"
    raw = load_clips(data, size=16)
    for got, clip in zip(load_run_clips(loaded), raw):
        assert np.array_equal(got.frames, remove_background(clip.frames, estimate_background(clip.frames)))
        assert not np.array_equal(got.frames, clip.frames)  # the clutter is gone
    res = CliRunner().invoke(main, ["eval", str(run)])
    assert res.exit_code == 0, res.output
    # a counterfactual started from a clip reads it as training did (its frames without the background)
    res = CliRunner().invoke(main, ["intervene", str(run), "--set", "c = 0.8", "--frames", "5", "-o", str(tmp_path / "cf.npz")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["train", PRIOR, str(data), "-o", str(tmp_path / "x"), "--background", "blur"])
    assert res.exit_code == 2 and "blur" in res.output


@pytest.mark.parametrize("object_level, background_level", [(230, 30), (20, 170)])
def test_an_object_that_stays_on_one_spot_most_of_the_clip_stays_foreground(object_level, background_level):
    """A pendulum of small amplitude sits near the bottom of its swing for most frames: a median would
    take it for background (and draw a hole where it rests); the tail on the background's side does not."""
    size, frames = 16, 50
    y, x = np.mgrid[:size, :size] + 0.5
    clip = np.full((frames, size, size), background_level, np.uint8)
    for t in range(frames):
        cx = 8.0 if t % 10 < 7 else 4.0  # at rest 70% of the time, away the rest
        clip[t][np.hypot(x - cx, y - 8.0) < 2.0] = object_level
    est = estimate_background(clip)
    assert np.all(est.image == background_level)
    fg = remove_background(clip, est)
    assert fg[0][np.hypot(x - 8.0, y - 8.0) < 2.0].min() == 255  # the resting object is drawn, not a hole


@pytest.mark.parametrize("level, chosen", [(0, "keep"), (DARK, "keep"), (DARK + 4, "remove"), (128, "remove"), (255, "remove")])
def test_auto_keeps_a_dark_background_and_removes_any_other(tmp_path, level, chosen):
    """`--background auto`: the clips' mean background level decides (at most DARK: kept), the training set
    says what was done, and its frames are exactly those of that choice; from the cache as from memory."""
    clips = [Clip(name=f"c{i}", path=tmp_path / f"c{i}.npy", frames=moving_disc(60, 16, np.full((16, 16), level, np.uint8), 255 - level // 2, seed=i))
             for i in range(2)]  # fmt: skip
    assert abs(background_level(clips) - level) < 1 and auto_background(clips) == chosen
    train, _ = frame_datasets(clips, length=4, val_fraction=0.0, background="auto")
    same, _ = frame_datasets(clips, length=4, val_fraction=0.0, background=chosen)
    assert train.background == chosen and torch.equal(train.frames, same.frames)
    folder = tmp_path / "v"
    folder.mkdir()
    for c in clips:
        np.save(folder / f"{c.name}.npy", c.frames)
    disk, _ = frame_datasets(folder, length=4, val_fraction=0.0, background="auto", cache=tmp_path / "cache")
    assert disk.background == chosen
    assert all(np.array_equal(np.asarray(a.frames), np.asarray(b.frames)) for a, b in zip(disk.clips, same.clips))


def test_textured_and_coloured_backgrounds_are_removed_by_auto():
    rng = np.random.default_rng(0)
    texture = Clip(name="t", path=None, frames=moving_disc(60, 16, textured(16), level=0))
    dark_texture = Clip(name="d", path=None, frames=moving_disc(60, 16, rng.integers(0, 12, (16, 16)).astype(np.uint8), level=200))
    colour = np.broadcast_to(np.array([40, 90, 10], np.uint8), (60, 16, 16, 3)).copy()
    colour[:, 5:9, 5:9] = 250
    assert auto_background([texture]) == "remove" and auto_background([dark_texture]) == "keep"
    assert auto_background([Clip(name="c", path=None, frames=colour)]) == "remove"


def test_a_run_trained_with_auto_records_the_choice(tmp_path):
    from anmc.synthetic.synth import synthesize

    data = tmp_path / "d"
    synthesize(PRIOR, out_dir=data, clips=4, frames=24, size=16, seed=3, fmt="npz")  # anmc's renders: black
    args = ["train", PRIOR, str(data), "-o", str(tmp_path / "r"), "--size", "16", "--batch", "4", "--seq-len", "4",
            "--steps-per-epoch", "2", "--epochs", "1", "--background", "auto"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "background (auto): keep" in " ".join(res.output.split())
    assert load_run(tmp_path / "r").config.background == "keep"
    config = TrainConfig(size=16, batch=4, seq_len=4, steps_per_epoch=2, epochs=1, background="auto")
    train(PRIOR, [str(data)], tmp_path / "p", config)
    assert config.background == "auto"  # the caller's config is left as it was
