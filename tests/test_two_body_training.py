"""A 4-state prior (the double pendulum) through training: it reaches the smoother and trains end to end,
and a failed factorization of the smoother's precision is one sentence and exit 2, never a traceback
(anmc.vae.divergence turns it into TrainingDiverged)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import anmc
import anmc.vae.nets as nets
from anmc import cli
from anmc.vae.config import TrainConfig
from anmc.vae.divergence import TrainingDiverged, guard
from anmc.vae.nets import build_vae

PRIOR = Path(__file__).resolve().parent.parent / "priors" / "double_pendulum.anm"
TINY = ["--epochs", "1", "--steps-per-epoch", "3", "--batch", "2", "--seq-len", "8", "--size", "32"]


def run(*args):
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("dp")
    assert run("synth", PRIOR, "-o", d, "--clips", "2", "--frames", "24", "--size", "32", "--format", "npz").exit_code == 0
    return d


@pytest.mark.slow
def test_a_tiny_double_pendulum_trains_end_to_end_and_shows_its_derived_equations(videos, tmp_path):
    result = run("train", PRIOR, videos, "-o", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    shown = run("show", tmp_path / "run")
    assert shown.exit_code == 0 and "learned (g started at 9.81)" in shown.output
    assert "# The equations of motion anmc derived from the Lagrangian (M v' = b, v = omega1, omega2):" in shown.output


@pytest.mark.slow
def test_a_failed_factorization_in_training_is_one_sentence_and_exit_2(videos, tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.cholesky: The factorization could not be completed (the leading minor of order 126)")

    monkeypatch.setattr(nets, "kalman_smoother", fails)
    result = run("train", PRIOR, videos, "-o", tmp_path / "run", *TINY)
    assert result.exit_code == 2
    assert "error: training diverged at epoch 1, step 1 (linalg.cholesky failed on a singular or non-finite covariance)" in result.output
    assert "LinAlgError" not in result.output


def test_readings_that_jump_between_frames_give_a_posterior_or_a_sentence_never_a_raw_linalg_error():
    """The d = 4 failure of the issue, reproduced: readings jumping ~3 rad a frame at 30 fps make the iterated
    linearization of the double pendulum diverge (filtered velocities of 10^2 .. 10^4 rad/s within three passes),
    where f's Jacobian grows with the velocities (the omega^2 terms), so J^T Q^-1 J swamps the precision
    (condition number past 10^8) until Cholesky fails or f overflows to nan."""
    prior = anmc.compile_prior(PRIOR)
    vae = build_vae(prior, (1, 32, 32), TrainConfig())
    y = torch.randn(4, 16, 2, generator=torch.Generator().manual_seed(0)) * 3
    vae.encoder_readings = lambda x: (y, torch.full_like(y, 0.05))
    try:
        with guard(1, 1, "run", 0):  # the training boundary
            post = vae.smoothed(torch.zeros(4, 16, 1, 32, 32))
    except TrainingDiverged as err:  # the smoother as of this writing
        assert str(err).startswith("training diverged at epoch 1, step 1 (linalg.cholesky failed") and "\n" not in str(err)
    else:  # a smoother that copes
        assert torch.isfinite(post.mean).all() and torch.isfinite(post.cov).all()
