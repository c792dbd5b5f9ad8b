"""Video I/O: round trips through every format, conversions, training-set folders, truth files, errors."""

from __future__ import annotations

import numpy as np
import pytest

from anmc.data.io import (
    VideoError,
    clip_sources,
    load_clips,
    read_truth,
    read_video,
    write_truth,
    write_video,
)


def moving_square(t=8, h=32, w=32, rgb=False, seed=0):
    """Frames with a bright square moving over a smooth gradient (codec-friendly, all values used)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((t, h, w, 3) if rgb else (t, h, w), np.uint8)
    for i in range(t):
        img = 40 + 80 * xx / w + 40 * yy / h
        img[(abs(yy - h / 2) < h / 6) & (abs(xx - (i + 4) * w / (t + 8)) < w / 6)] = 230
        if rgb:
            img = np.stack([img, img * 0.8 + 20, 255 - img], -1)
        out[i] = np.clip(img + rng.integers(0, 2, img.shape), 0, 255)
    return out


def one_sentence(err: VideoError) -> str:
    msg = str(err)
    assert "\n" not in msg and msg.endswith("."), msg
    assert "Traceback" not in msg
    return msg


# --------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["v.gif", "v.npy", "v.npz", "frames"])
@pytest.mark.parametrize("rgb", [False, True])
def test_lossless_round_trip(tmp_path, name, rgb):
    frames = moving_square(rgb=rgb)
    if rgb and name == "v.gif":
        frames = (frames // 64) * 64  # GIF keeps at most 256 colours a frame: exact only below that
    path = write_video(tmp_path / name, frames, fps=25)
    back = read_video(path, gray=not rgb)
    assert back.dtype == np.uint8 and back.shape == frames.shape
    np.testing.assert_array_equal(back, frames)


@pytest.mark.parametrize("hw", [(32, 32), (16, 48), (17, 23)])
def test_mp4_round_trip_keeps_count_and_size(tmp_path, hw):
    frames = moving_square(t=10, h=hw[0], w=hw[1])
    path = write_video(tmp_path / "v.mp4", frames, fps=30)
    back = read_video(path)
    assert back.shape == frames.shape  # odd sides use yuv444p, no macro-block resize
    err = np.abs(back.astype(int) - frames)
    assert err.mean() < 2.0 and np.percentile(err, 99) < 12


def test_mp4_rgb_round_trip(tmp_path):
    frames = moving_square(t=6, rgb=True)
    back = read_video(write_video(tmp_path / "c.mp4", frames), gray=False)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 6.0  # 4:2:0 halves the colour resolution


def test_float_frames_are_written_as_uint8(tmp_path):
    frames = np.linspace(0, 1, 4 * 8 * 8).reshape(4, 8, 8)
    back = read_video(write_video(tmp_path / "f.npy", frames))
    np.testing.assert_array_equal(back, np.round(frames * 255).astype(np.uint8))
    with pytest.raises(VideoError, match=r"scale them to \[0, 1\]"):
        write_video(tmp_path / "g.npy", frames * 255)


def test_write_unknown_suffix(tmp_path):
    with pytest.raises(VideoError, match="cannot write"):
        write_video(tmp_path / "v.webp", moving_square())


# --------------------------------------------------------------------------------------------- conversions


def test_rgb_to_gray_is_bt601_luma(tmp_path):
    frames = moving_square(t=3, rgb=True)
    write_video(tmp_path / "c.npz", frames)
    gray = read_video(tmp_path / "c.npz")
    want = np.round(frames.astype(np.float32) / 255 @ np.array([0.299, 0.587, 0.114], np.float32) * 255)
    assert np.abs(gray.astype(int) - want).max() <= 1


def test_gray_to_rgb_repeats(tmp_path):
    frames = moving_square(t=3)
    rgb = read_video(write_video(tmp_path / "g.npy", frames), gray=False)
    assert rgb.shape == (*frames.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], frames)


def test_size_area_averages_and_centre_crops(tmp_path):
    # 2x2 blocks of one value each: halving the size gives back the block values exactly
    blocks = np.arange(16 * 16, dtype=np.uint8).reshape(1, 16, 16)
    big = np.repeat(np.repeat(blocks, 2, axis=1), 2, axis=2)
    write_video(tmp_path / "b.npy", big)
    np.testing.assert_array_equal(read_video(tmp_path / "b.npy", size=16), blocks)
    # a wide video is centre-cropped to square before resizing
    wide = np.zeros((2, 20, 40), np.uint8)
    wide[:, :, 10:30] = 200
    out = read_video(write_video(tmp_path / "w.npy", wide), size=10)
    assert out.shape == (2, 10, 10) and (out == 200).all()
    assert read_video(tmp_path / "w.npy", size=(5, 10)).shape == (2, 5, 10)


def test_crop(tmp_path):
    frames = moving_square(t=2, h=20, w=30)
    write_video(tmp_path / "c.npy", frames)
    np.testing.assert_array_equal(read_video(tmp_path / "c.npy", crop=(2, 5, 10, 12)), frames[:, 2:12, 5:17])
    np.testing.assert_array_equal(read_video(tmp_path / "c.npy", crop="2,5,10,12"), frames[:, 2:12, 5:17])
    with pytest.raises(VideoError, match="does not fit"):
        read_video(tmp_path / "c.npy", crop=(0, 0, 40, 10))
    with pytest.raises(VideoError, match="four whole numbers"):
        read_video(tmp_path / "c.npy", crop="1,2,3")


def test_float_arrays_and_alpha(tmp_path):
    x = np.random.default_rng(0).random((3, 8, 8, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    got = read_video(tmp_path / "a.npy", gray=False)
    want = np.round(np.clip(x[..., :3] * x[..., 3:], 0, 1) * 255)
    assert np.abs(got.astype(int) - want).max() <= 1


# --------------------------------------------------------------------------------------------- training sets


def test_folder_of_clips_sorted_skipping_non_videos(tmp_path):
    d = tmp_path / "set"
    write_video(d / "clip_10.npy", moving_square(t=5))
    write_video(d / "clip_2.gif", moving_square(t=6))
    write_video(d / "clip_3", moving_square(t=7))  # a sub-folder of PNG frames is one clip
    (d / "truth.csv").write_text("clip,frame,x\n")
    (d / "truth.json").write_text("{}")
    (d / "notes.txt").write_text("hello")
    clips = load_clips(d)
    assert [c.name for c in clips] == ["clip_2.gif", "clip_3", "clip_10.npy"]  # natural order
    assert [c.n_frames for c in clips] == [6, 7, 5]
    assert all(c.frames.dtype == np.uint8 and c.frame_shape == (32, 32) for c in clips)


def test_folder_of_frames_is_one_clip(tmp_path):
    frames = moving_square(t=12)
    write_video(tmp_path / "frames", frames)
    (tmp_path / "frames" / "README.md").write_text("x")
    assert clip_sources(tmp_path / "frames") == [tmp_path / "frames"]
    (clip,) = load_clips(tmp_path / "frames")
    np.testing.assert_array_equal(clip.frames, frames)


def test_several_paths_keep_their_order(tmp_path):
    a = write_video(tmp_path / "b.npy", moving_square(t=4))
    b = write_video(tmp_path / "a.npy", moving_square(t=5))
    clips = load_clips([a, b], size=16)
    assert [c.n_frames for c in clips] == [4, 5] and clips[0].frame_shape == (16, 16)


# --------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match="does not exist") as e:
        load_clips(tmp_path / "nope.mp4")
    one_sentence(e.value)


@pytest.mark.parametrize("name", ["bad.mp4", "bad.avi", "bad.gif", "bad.npy", "bad.npz"])
def test_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"this is not a video" * 50)
    with pytest.raises(VideoError, match="could not be decoded") as e:
        load_clips(tmp_path / name)
    one_sentence(e.value)


def test_truncated_mp4(tmp_path):
    path = write_video(tmp_path / "v.mp4", moving_square(t=30))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError) as e:
        load_clips(path)
    one_sentence(e.value)


def test_corrupt_frame_in_folder(tmp_path):
    write_video(tmp_path / "f", moving_square(t=3))
    (tmp_path / "f" / "frame_00001.png").write_bytes(b"broken")
    with pytest.raises(VideoError, match="frame_00001.png could not be decoded") as e:
        read_video(tmp_path / "f")
    one_sentence(e.value)


def test_too_few_frames(tmp_path):
    write_video(tmp_path / "short.npy", moving_square(t=2))
    with pytest.raises(VideoError, match="has 2 frames but one training window needs 3") as e:
        load_clips(tmp_path, min_frames=3)
    one_sentence(e.value)


def test_inconsistent_frame_sizes(tmp_path):
    import imageio.v3 as iio

    d = tmp_path / "frames"
    d.mkdir()
    iio.imwrite(d / "0.png", np.zeros((8, 8), np.uint8))
    iio.imwrite(d / "1.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(VideoError, match="give every frame the same size") as e:
        load_clips(d, size=8)
    one_sentence(e.value)


def test_clips_of_different_sizes_need_a_size(tmp_path):
    write_video(tmp_path / "a.npy", moving_square(h=16, w=16))
    write_video(tmp_path / "b.npy", moving_square(h=32, w=32))
    with pytest.raises(VideoError, match="--size") as e:
        load_clips(tmp_path)
    one_sentence(e.value)
    assert {c.frame_shape for c in load_clips(tmp_path, size=16)} == {(16, 16)}


@pytest.mark.parametrize("setup", ["empty_dir", "not_video", "bad_shape", "npz_keys"])
def test_other_bad_inputs(tmp_path, setup):
    if setup == "empty_dir":
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "truth.csv").write_text("clip,frame,a\n")
        target = tmp_path / "x"
    elif setup == "not_video":
        target = tmp_path / "truth.csv"
        target.write_text("clip,frame,a\n")
    elif setup == "bad_shape":
        target = tmp_path / "a.npy"
        np.save(target, np.zeros((4, 4)))
    else:
        target = tmp_path / "a.npz"
        np.savez(target, a=np.zeros((2, 4, 4)), b=np.zeros((2, 4, 4)))
    with pytest.raises(VideoError) as e:
        load_clips(target)
    one_sentence(e.value)


# --------------------------------------------------------------------------------------------- truth files


def test_truth_round_trip(tmp_path):
    states = np.random.default_rng(1).normal(size=(3, 5, 2))
    write_truth(tmp_path, states, ["theta", "omega"], {"model": "pendulum", "fps": 30})
    t = read_truth(tmp_path / "truth.csv")
    assert t["state_names"] == ["theta", "omega"] and t["meta"]["model"] == "pendulum"
    assert sorted(t["clips"]) == [0, 1, 2]
    for c in range(3):
        np.testing.assert_array_equal(t["clips"][c], states[c])  # %.17g is exact for float64
    assert read_truth(tmp_path)["values"].shape == (15, 2)


def test_user_truth_with_gaps(tmp_path):
    (tmp_path / "truth.csv").write_text("clip,frame,x\n0,0,1.5\n0,2,2.5\n1,1,\n")
    t = read_truth(tmp_path / "truth.csv")
    assert t["meta"] == {}
    np.testing.assert_array_equal(t["clips"][0][:, 0], [1.5, np.nan, 2.5])
    assert np.isnan(t["clips"][1]).all() and t["clips"][1].shape == (2, 1)


@pytest.mark.parametrize(
    "text, match",
    [
        ("frame,clip,x\n0,0,1\n", "clip,frame followed by"),
        ("clip,frame,x\n0,0,abc\n", "is not a number"),
        ("clip,frame,x\n0,0,1\n0,0,2\n", "twice"),
        ("clip,frame,x\n0,0\n", "cells"),
        ("", "empty"),
    ],
)
def test_bad_truth(tmp_path, text, match):
    (tmp_path / "truth.csv").write_text(text)
    with pytest.raises(VideoError, match=match) as e:
        read_truth(tmp_path / "truth.csv")
    one_sentence(e.value)


# --------------------------------------------------------------------------------------------- imageio's clock

def _slow_header(monkeypatch):
    """What imageio-ffmpeg raises when ffmpeg's stream header takes over 10 s (a large video on a busy machine)."""
    import imageio.v2 as iio2

    def no_meta(*args, **kwargs):
        raise OSError("Could not load meta information\n=== stderr ===\n")

    monkeypatch.setattr(iio2, "get_reader", no_meta)


@pytest.mark.parametrize("hw", [(32, 48), (720, 1280)])
@pytest.mark.parametrize("rgb", [False, True])
def test_video_whose_header_is_slow_still_reads_the_same_frames(tmp_path, monkeypatch, hw, rgb):
    path = write_video(tmp_path / "v.mp4", moving_square(t=20, h=hw[0], w=hw[1], rgb=rgb))
    expected = read_video(path, gray=not rgb)
    _slow_header(monkeypatch)
    got = read_video(path, gray=not rgb)
    np.testing.assert_array_equal(got, expected)


def test_slow_header_and_a_corrupt_video_is_still_one_sentence(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4", moving_square(t=30))
    path.write_bytes(path.read_bytes()[:400])
    _slow_header(monkeypatch)
    with pytest.raises(VideoError, match="could not be decoded") as e:
        read_video(path)
    one_sentence(e.value)


@pytest.mark.parametrize("suffix", [".gif", ".mp4", ".npy", ".npz"])
def test_a_video_is_written_whole_or_not_at_all(tmp_path, suffix, monkeypatch):
    """write_video writes beside the name and moves the file onto it when complete: a location that cannot be
    written is one VideoError (imageio's GIF writer used to raise again while being collected, a traceback
    after the message), and a write that fails halfway leaves neither a partial file nor the name."""
    import subprocess
    import sys

    frames = np.zeros((3, 8, 8), np.uint8)
    code = f"from anmc.data.io import write_video; import numpy as np; write_video('/proc/x{suffix}', np.zeros((3, 8, 8), np.uint8))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert f"VideoError: cannot write /proc/x{suffix}" in run.stderr, run.stderr
    assert "Exception ignored" not in run.stderr
    written = write_video(tmp_path / f"ok{suffix}", frames)
    assert written.exists() and [p.name for p in tmp_path.iterdir()] == [f"ok{suffix}"]  # no partial file beside it

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    monkeypatch.setattr(np, "savez_compressed", full_disk)
    monkeypatch.setattr("anmc.data.io._write_mp4", full_disk)
    if suffix == ".gif":
        import imageio.v3 as iio

        monkeypatch.setattr(iio, "imwrite", full_disk)
    with pytest.raises(VideoError, match="No space left on device"):
        write_video(tmp_path / f"half{suffix}", frames)
    assert [p.name for p in tmp_path.iterdir()] == [f"ok{suffix}"]
