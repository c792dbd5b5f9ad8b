"""The frame rate a video carries against the prior's dt (anmc.data.rate) and `anmc train --fps`."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from anmc.cli import main
from anmc.data.io import write_video
from anmc.data.rate import check_frame_rate, dt_text, frame_rate, source_fps
from anmc.errors import UserError

PRIOR = "priors/pendulum.anm"  # dt = 1/30


def frames(n=6, size=16):
    rng = np.random.default_rng(0)
    return (rng.random((n, size, size)) * 255).astype(np.uint8)


@pytest.mark.parametrize("suffix, fps, expected", [(".mp4", 25, 25.0), (".mp4", 29.97, 29.97), (".npz", 30, 30.0)])
def test_source_fps_reads_each_format(tmp_path, suffix, fps, expected):
    path = write_video(tmp_path / f"a{suffix}", frames(), fps=fps)
    assert source_fps(path) == pytest.approx(expected, rel=1e-3)


def test_formats_without_a_rate(tmp_path):
    write_video(tmp_path / "folder", frames())
    write_video(tmp_path / "a.gif", frames(), fps=30)  # hundredths of a second: 30 fps cannot be stored
    assert source_fps(tmp_path / "a.gif") is None
    np.save(tmp_path / "a.npy", frames())
    assert source_fps(tmp_path / "folder") is None and source_fps(tmp_path / "a.npy") is None
    assert check_frame_rate([tmp_path / "a.npy"], dt=1 / 30) is None  # nothing to check


def test_a_25_fps_video_against_dt_1_30_says_what_to_change(tmp_path):
    write_video(tmp_path / "d" / "clip_000.mp4", frames(), fps=25)
    with pytest.raises(UserError) as err:
        check_frame_rate([tmp_path / "d"], dt=1 / 30)
    message = str(err.value)
    assert "25 fps" in message and "write `dt = 1/25`" in message and "--fps 30" in message
    assert check_frame_rate([tmp_path / "d"], dt=1 / 25) == pytest.approx(25)
    assert check_frame_rate([tmp_path / "d"], dt=1 / 30, fps=30) == 30  # --fps overrides the metadata
    with pytest.raises(UserError, match="--fps 30"):
        check_frame_rate([tmp_path / "d"], dt=1 / 30, fps=60)  # and is itself checked


def test_ntsc_rate_agrees_and_mixed_rates_do_not(tmp_path):
    write_video(tmp_path / "a.mp4", frames(), fps=29.97)
    assert check_frame_rate([tmp_path / "a.mp4"], dt=1 / 30) == pytest.approx(29.97, rel=1e-3)
    write_video(tmp_path / "b.npz", frames(), fps=60)
    with pytest.raises(UserError, match="different frame rates"):
        frame_rate([tmp_path / "a.mp4", tmp_path / "b.npz"])


def test_dt_text():
    assert dt_text(25) == "1/25" and dt_text(29.97) == "1/29.97"
    assert dt_text(240) == "1/240"


def test_cli_train_refuses_a_disagreeing_rate_and_fps_overrides(tmp_path):
    data = tmp_path / "d"
    for i in range(3):
        write_video(data / f"clip_{i}.npz", frames(12), fps=25)
    args = ["train", PRIOR, str(data), "-o", str(tmp_path / "run"), "--size", "16", "--batch", "2", "--seq-len", "3",
            "--steps-per-epoch", "1", "--epochs", "1"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "write `dt = 1/25`" in res.stderr and "--fps 30" in res.stderr
    assert not (tmp_path / "run").exists()
    res = CliRunner().invoke(main, [*args, "--fps", "30"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, [*args, "--fps", "-1"])
    assert res.exit_code == 2 and "must be positive" in res.stderr
