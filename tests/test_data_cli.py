"""The command line on video inputs: `anmc synth`, and every bad input as one sentence with exit 2.

Bad training videos go through the real `anmc train` (which fails before any training step); clips of
different sizes without a size to resize to go through a small command wrapped by the CLI's own
`report_user_errors`, since `anmc train` always resizes (its --size has a default).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from anmc.cli import main, report_user_errors
from anmc.data.io import load_clips, write_video

PRIORS = Path(__file__).resolve().parent.parent / "priors"


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--size", type=int)
@click.option("--window", default=3, type=int)
@report_user_errors
def load(paths, size, window):
    clips = load_clips(list(paths), size=size, min_frames=window)
    click.echo(f"{len(clips)} clips")


def run_load(*args):
    return CliRunner().invoke(load, [str(a) for a in args])


def run_train(*paths, window=2):
    """`anmc train` on PATHS with sequences of 2 latent frames: a clip needs window + 1 frames."""
    out = Path(paths[0]).parent / "run"
    args = ["train", str(PRIORS / "pendulum.anm"), *map(str, paths), "-o", str(out), "--size", "16",
            "--seq-len", "2", "--window", str(window), "--epochs", "1", "--steps-per-epoch", "1"]  # fmt: skip
    return CliRunner().invoke(main, args)


def assert_one_sentence_exit_2(result, *phrases):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    text = result.output.strip()
    assert "Traceback" not in text and text.count("\n") == 0 and text.endswith("."), text
    assert text.startswith("error: ")
    for p in phrases:
        assert p in text, text


def frames(t=4, h=16, w=16):
    return (np.arange(t * h * w) % 251).astype(np.uint8).reshape(t, h, w)


def test_missing_file(tmp_path):
    assert_one_sentence_exit_2(run_train(tmp_path / "missing.mp4"), "does not exist")


@pytest.mark.parametrize("name", ["bad.mp4", "bad.avi", "bad.gif", "bad.npz"])
def test_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00\x01garbage" * 64)
    assert_one_sentence_exit_2(run_train(tmp_path / name), "could not be decoded")


def test_fewer_frames_than_a_window(tmp_path):
    write_video(tmp_path / "a.mp4", frames(t=2))
    assert_one_sentence_exit_2(run_train(tmp_path / "a.mp4", window=2), "has 2 frames", "needs 3")


def test_inconsistent_frame_sizes(tmp_path):
    import imageio.v3 as iio

    (tmp_path / "f").mkdir()
    iio.imwrite(tmp_path / "f" / "0.png", np.zeros((16, 16), np.uint8))
    iio.imwrite(tmp_path / "f" / "1.png", np.zeros((16, 12), np.uint8))
    iio.imwrite(tmp_path / "f" / "2.png", np.zeros((16, 16), np.uint8))
    assert_one_sentence_exit_2(run_train(tmp_path / "f"), "same size")


def test_clips_of_different_sizes(tmp_path):
    write_video(tmp_path / "a.gif", frames(h=16, w=16))
    write_video(tmp_path / "b.gif", frames(h=20, w=20))
    assert_one_sentence_exit_2(run_load(tmp_path), "--size")
    ok = run_load(tmp_path, "--size", 16)
    assert ok.exit_code == 0 and "2 clips" in ok.output


def test_synth_writes_clips_and_truth(tmp_path):
    out = tmp_path / "pend"
    r = CliRunner().invoke(main, ["synth", str(PRIORS / "pendulum.anm"), "-o", str(out), "--clips", "2",
                                  "--frames", "6", "--size", "32", "--seed", "4"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["clip_000.mp4", "clip_001.mp4", "truth.csv", "truth.json"]
    assert (out / "truth.csv").read_text().splitlines()[0] == "clip,frame,theta,omega"
    assert [c.frames.shape for c in load_clips(out)] == [(6, 32, 32)] * 2


def test_synth_falling_says_it_cut_the_clips(tmp_path):
    r = CliRunner().invoke(main, ["synth", str(PRIORS / "falling.anm"), "-o", str(tmp_path), "--clips", "2",
                                  "--size", "16", "--format", "npz"])
    assert r.exit_code == 0 and "before the floor" in r.output


def test_synth_bad_noise(tmp_path):
    r = CliRunner().invoke(main, ["synth", str(PRIORS / "spring.anm"), "-o", str(tmp_path), "--noise", "2"])
    assert_one_sentence_exit_2(r, "outside [0, 1]")


def test_synth_output_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    r = CliRunner().invoke(main, ["synth", str(PRIORS / "spring.anm"), "-o", str(tmp_path / "f")])
    assert r.exit_code == 2 and "is a file" in r.output and "Traceback" not in r.output


def test_synth_missing_prior(tmp_path):
    r = CliRunner().invoke(main, ["synth", str(tmp_path / "nope.anm"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "nope.anm" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()
