"""Interventions on a trained run: `anmc intervene` and `anmc.intervene(...)` on a tiny pendulum run
(16x16 frames, a few training steps). What is checked is the machinery (starts, rollouts, files,
errors), not the quality of a model trained for seconds."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import anmc
from anmc.cli import main
from anmc.errors import UserError
from anmc.vae.run import load_run
from anmc.analysis.intervene import Counterfactual, intervened_module
from anmc.data.io import read_video

PRIOR = "priors/pendulum.anm"
SIZE = 16


@pytest.fixture(scope="module")
def run_dir(tiny_pendulum_run_dir):
    return tiny_pendulum_run_dir


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


def invoke(*args):
    return CliRunner().invoke(main, ["intervene", *map(str, args)])


# ------------------------------------------------------------------ library


def test_library_api_shapes_and_save(run_dir, tmp_path):
    assert anmc.intervene is not None and anmc.Counterfactual is Counterfactual
    cf = anmc.intervene(run_dir, edits=["c = 0.8"], frames=12)
    assert isinstance(cf, Counterfactual)
    assert cf.frames.shape == cf.factual.shape == (1, 12, SIZE, SIZE) and cf.frames.dtype == np.uint8
    assert cf.latents.shape == cf.factual_latents.shape == (1, 12, 2)
    assert cf.observed.shape == (1, 12, SIZE, SIZE)  # the real clip over the same span
    sbs = cf.side_by_side()
    # label strip; video | factual | counterfactual, enlarged 5x so that "counterfactual" fits above 16 pixels
    assert sbs.shape == (12, 17 + 5 * SIZE, 3 * 5 * SIZE + 2 * 2, 3)
    written = cf.save(tmp_path / "drag.gif")
    assert [p.name for p in written] == ["drag.gif", "drag_latents.csv", "drag_latents.png"]
    assert read_video(tmp_path / "drag.gif", gray=False).shape[:3] == sbs.shape[:3]


def test_a_counterfactual_that_blows_up_is_an_error_not_a_video(run_dir, tmp_path):
    """An edit whose dynamics leave the floats (omega' = exp(omega^2)) stops at the first non-finite frame,
    naming the frame, the states and the values before, as `anmc simulate` does; the CLI exits 2 and writes
    nothing (the frames decoded from inf latents would be pictures of nothing)."""
    from anmc.codegen.rollout import NonFiniteRollout

    with pytest.raises(NonFiniteRollout, match=r"the counterfactual rollout blew up at frame \d+ of sample 0: .*omega.* became (inf|nan)"):
        anmc.intervene(run_dir, edits=["omega' = exp(omega^2)"], frames=300)
    res = invoke(run_dir, "--edit", "omega' = exp(omega^2)", "--frames", 300, "-o", tmp_path / "x.gif")
    assert res.exit_code == 2 and "Traceback" not in res.output and "check the intervention, or roll out fewer frames" in res.output
    assert not list(tmp_path.iterdir())


def test_set_changes_the_rollout_not_the_start(run):
    cf = anmc.intervene(run, edits=["c = 0.8"], frames=30)
    np.testing.assert_allclose(cf.latents[:, 0], cf.factual_latents[:, 0])
    assert np.abs(cf.latents[0, 5:] - cf.factual_latents[0, 5:]).max() > 1e-4
    # the identity intervention (c is 0 in the prior) reproduces the factual exactly
    same = anmc.intervene(run, edits=["c = 0"], frames=30)
    np.testing.assert_allclose(same.latents, same.factual_latents, atol=1e-6)
    np.testing.assert_array_equal(same.frames, same.factual)


def test_named_intervention_equals_its_edits(run):
    a = anmc.intervene(run, intervention="drag", frames=20)
    b = anmc.intervene(run, edits=["set c = 0.8"], frames=20)
    np.testing.assert_allclose(a.latents, b.latents, atol=1e-6)
    assert a.label == "drag"


def test_start_edit_scales_the_first_latent(run):
    cf = anmc.intervene(run, edits=["start theta = 1.5 * theta"], frames=10)
    th, om = cf.factual_latents[0, 0], cf.latents[0, 0]
    assert om[0] == pytest.approx(1.5 * th[0], rel=1e-5)
    assert om[1] == pytest.approx(th[1], rel=1e-6)  # omega untouched
    # the physics is unchanged: one frame on, the counterfactual is f(start)
    module = run.module
    with torch.no_grad():
        nxt = module(torch.as_tensor(cf.latents[:, 0])).numpy()
    np.testing.assert_allclose(cf.latents[:, 1], nxt, rtol=1e-5, atol=1e-6)


def test_learned_values_are_kept(run):
    module = intervened_module(run, intervention="drag")
    learned = {k: float(v.detach()) for k, v in run.module.param_values().items()}
    assert float(module.param("L").detach()) == pytest.approx(learned["L"], rel=1e-5)
    assert float(module.param("c").detach()) == pytest.approx(0.8)
    np.testing.assert_allclose(module.noise_std.detach().numpy(), run.module.noise_std.detach().numpy())


def test_sample_uses_the_intervened_initial_distribution(run):
    cf = anmc.intervene(run, intervention="big_swing", sample=True, batch=4, frames=5, seed=1)
    # Normal(0, 1.6) against Normal(0, 0.8) with the same draws: exactly twice the angle, same omega
    np.testing.assert_allclose(cf.latents[:, 0, 0], 2 * cf.factual_latents[:, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(cf.latents[:, 0, 1], cf.factual_latents[:, 0, 1], rtol=1e-6)
    assert cf.observed is None


def test_noise_uses_the_same_draws_for_both_rollouts(run):
    cf = anmc.intervene(run, edits=["c = 0"], frames=15, noise=True, seed=4)
    np.testing.assert_allclose(cf.latents, cf.factual_latents, atol=1e-6)
    plain = anmc.intervene(run, edits=["c = 0"], frames=15, noise=False, seed=4)
    assert np.abs(cf.latents - plain.latents).max() > 1e-4


def test_init_on_a_video_start_is_noted(run):
    cf = anmc.intervene(run, intervention="big_swing", frames=5)
    assert any("--sample" in n for n in cf.notes)


# ------------------------------------------------------------------ command line


def test_cli_writes_video_csv_and_plot(run_dir, tmp_path):
    res = invoke(run_dir, "--set", "c = 0.8", "--frames", "20", "-o", tmp_path / "drag.mp4")
    assert res.exit_code == 0, res.output
    for name in ("drag.mp4", "drag_latents.csv", "drag_latents.png"):
        assert (tmp_path / name).stat().st_size > 0, name
        assert name in res.output
    rows = list(csv.DictReader(open(tmp_path / "drag_latents.csv")))
    assert list(rows[0]) == ["sample", "frame", "time", "factual_theta", "factual_omega", "counterfactual_theta", "counterfactual_omega"]
    assert len(rows) == 20 and float(rows[-1]["time"]) == pytest.approx(19 / 30, rel=1e-4)
    video = read_video(tmp_path / "drag.mp4", gray=False)
    assert video.shape[0] == 20 and video.shape[2] == 3 * 5 * SIZE + 4  # panels enlarged 5x for the labels


def test_cli_start_edit(run_dir, tmp_path):
    res = invoke(run_dir, "--edit", "start theta = 1.5 * theta", "--frames", "8", "-o", tmp_path / "amp.gif")
    assert res.exit_code == 0, res.output
    row = next(csv.DictReader(open(tmp_path / "amp_latents.csv")))
    assert float(row["counterfactual_theta"]) == pytest.approx(1.5 * float(row["factual_theta"]), rel=1e-4, abs=1e-6)


def test_cli_batch_writes_one_video_each(run_dir, tmp_path):
    res = invoke(run_dir, "-i", "drag", "--batch", "3", "--frames", "6", "-o", tmp_path / "b.gif")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.glob("b_*.gif")) == ["b_00.gif", "b_01.gif", "b_02.gif"]
    rows = list(csv.DictReader(open(tmp_path / "b_latents.csv")))
    assert {r["sample"] for r in rows} == {"0", "1", "2"} and len(rows) == 18


def test_cli_sample_video_start_and_file(run_dir, tmp_path):
    res = invoke(run_dir, "--sample", "-i", "big_swing", "--frames", "6", "--noise", "-o", tmp_path / "s.gif")
    assert res.exit_code == 0, res.output
    clip = next(p for p in load_run(run_dir).videos)
    res = invoke(run_dir, "-i", "drag", "--video", f"{clip}/clip_002.npz", "--start", "3", "--frames", "6", "-o", tmp_path / "v.gif")
    assert res.exit_code == 0, res.output
    (tmp_path / "heavy.anm").write_text("intervention heavy\n  set c = 2\n  start omega = 0\n")
    res = invoke(run_dir, "--file", tmp_path / "heavy.anm", "--frames", "6", "-o", tmp_path / "h.gif")
    assert res.exit_code == 0, res.output
    row = next(csv.DictReader(open(tmp_path / "h_latents.csv")))
    assert float(row["counterfactual_omega"]) == 0.0


def assert_exit_2(res, *phrases):
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "Traceback" not in res.output
    for p in phrases:
        assert p in res.output, res.output


def test_cli_bad_inputs_exit_2(run_dir, tmp_path):
    out = tmp_path / "x.gif"
    assert_exit_2(invoke(tmp_path / "no_run", "-i", "drag", "-o", out), "does not exist")
    assert_exit_2(invoke(run_dir, "-i", "dragg", "-o", out), "no intervention 'dragg'", "did you mean 'drag'?")
    assert_exit_2(invoke(run_dir, "-o", out), "give an intervention")
    assert_exit_2(invoke(run_dir, "-i", "drag", "-o", tmp_path / "x.txt"), ".gif or .mp4")
    assert_exit_2(invoke(run_dir, "-i", "drag", "--sample", "--video", "v.mp4", "-o", out), "--sample")
    assert_exit_2(invoke(run_dir, "-i", "drag", "--start", "500", "-o", out), "--start", "the last start possible is")
    assert_exit_2(invoke(run_dir, "-i", "drag", "--video", tmp_path / "missing.mp4", "-o", out), "does not exist")
    assert_exit_2(invoke(run_dir, "--file", tmp_path / "none.anm", "-o", out), "does not exist")
    assert not out.exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        ("omega' = -(g/L)*sin(theta) - k*omega", "omega' = -(g/L)*sin(theta) - k*omega:1:30: error: unknown name 'k'"),
        ("start thetaa = 1.5 * theta", "start thetaa = 1.5 * theta:1:7: error: 'start' of unknown state 'thetaa'; did you mean 'theta'?"),
        ("phi' = omega", "phi' = omega:1:1"),
        ("omega' = (", "omega' = (:1:"),
        ("c = 100", "outside its bounds"),
    ],
)
def test_cli_bad_edits_point_into_the_edit(run_dir, tmp_path, edit, message):
    res = invoke(run_dir, "--edit", edit, "-o", tmp_path / "x.gif")
    assert_exit_2(res, message)


def test_library_errors_are_user_errors(run):
    with pytest.raises(UserError, match="no intervention 'nope'"):
        anmc.intervene(run, intervention="nope")
    with pytest.raises(UserError, match="at least 2"):
        anmc.intervene(run, edits=["c = 1"], frames=1)


# ------------------------------------------------------------------ the informed start (issue 19)


def test_default_start_is_the_filtered_state_after_enough_frames(run):
    """The default start is the filter's mean at frame INFORMED_START given frames 0..start (not a one-frame
    reading): it equals the causal posterior of the whole clip at that frame, and its omega is the video's
    (nonzero), where a start at frame 0 has the prior's mean omega = 0. (A run trained for seconds has not
    learnt the true omega, so its correlation with the truth is measured on real runs, docs/interventions.md.)"""
    from anmc.analysis.evaluate import encode_frames
    from anmc.analysis.intervene import INFORMED_START
    from anmc.vae.run import load_run_clips

    clip = load_run_clips(run)[0]
    cf = anmc.intervene(run, edits=["c = 0"], frames=5)
    filtered, _ = encode_frames(run, clip.frames, causal=True)
    np.testing.assert_allclose(cf.factual_latents[0, 0], filtered[INFORMED_START].numpy(), rtol=1e-4, atol=1e-5)
    assert abs(cf.factual_latents[0, 0, 1]) > 1e-3 and not cf.notes
    # the filter at the start has not read later frames: the same with the clip cut just after it
    cut, _ = encode_frames(run, clip.frames[: INFORMED_START + 1], causal=True)
    np.testing.assert_allclose(cut[-1].numpy(), filtered[INFORMED_START].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(cf.observed[0], clip.frames[INFORMED_START : INFORMED_START + 5])
    early = anmc.intervene(run, edits=["c = 0"], frames=5, start=0)
    assert early.factual_latents[0, 0, 1] == pytest.approx(float(run.module.initial_mean[1]), abs=1e-6)
    assert any("too few for the unobserved states (omega)" in n for n in early.notes)


def test_the_informed_start_knows_omega_when_the_readings_are_right():
    """What the default start buys on a run whose encoder reads theta well (a trained run's, to within its
    noise): the filter over frames 0..INFORMED_START of true angles recovers the true omega of 64 clips
    (correlation > 0.95, slope near 1), where a frame-0 start has omega = the prior's mean, 0, for every clip."""
    from anmc.analysis.intervene import INFORMED_START
    from anmc.codegen.compile import compile_prior
    from anmc.codegen.rollout import simulate
    from anmc.posterior.smoother import kalman_filter

    prior = compile_prior(PRIOR)
    truth = simulate(prior, INFORMED_START + 1, seed=7, runs=64)  # (64, T, 2) with the prior's noise
    y = truth[..., :1] + 0.02 * torch.randn(truth[..., :1].shape, generator=torch.Generator().manual_seed(1), dtype=truth.dtype)
    with torch.no_grad():
        mean, _ = kalman_filter(prior.module().double(), y, torch.full_like(y, 0.02))
    omega_true, omega_start = truth[:, INFORMED_START, 1].numpy(), mean[:, INFORMED_START, 1].numpy()
    assert np.corrcoef(omega_true, omega_start)[0, 1] > 0.95
    assert np.polyfit(omega_true, omega_start, 1)[0] == pytest.approx(1.0, abs=0.1)  # (0.70 at frame 1, 0.87 at 2)
    np.testing.assert_allclose(mean[:, 0, 1].numpy(), 0.0, atol=1e-9)  # one frame: no velocity
