"""Failures that announce themselves (anmc.vae.diagnostics): each diagnostic provoked, in training and in eval.

A collapsed posterior is built by hand (an encoder whose readings are constant, a decoder that draws one
grey image whatever the latent), a param is started on its bound, and a latent's scale is set off the
prior's; healthy numbers raise nothing.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from anmc.cli import main
from anmc.codegen.compile import compile_prior
from anmc.data.dataset import frame_datasets
from anmc.synthetic.synth import synthesize
from anmc.vae import diagnostics as diag
from anmc.vae.config import TrainConfig
from anmc.vae.nets import build_vae
from anmc.vae.run import load_checkpoint, save_checkpoint

PRIOR = "priors/pendulum.anm"
TINY = ["--size", "16", "--batch", "4", "--seq-len", "4", "--steps-per-epoch", "3", "--learn-params-after", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("pend")
    synthesize(PRIOR, out_dir=out, clips=4, frames=24, size=16, seed=5, fmt="npz")
    return out


def collapse(vae, grey: float = 0.1) -> None:
    """Readings that ignore the frames and a decoder that draws one grey image whatever the latent."""
    with torch.no_grad():
        vae.encoder.head[-1].weight.zero_()
        vae.decoder.fc[0].weight.zero_()
        last = vae.decoder.deconv[-1]
        last.weight.zero_()
        last.bias.fill_(float(torch.logit(torch.tensor(grey))))


def test_collapse_needs_two_of_three_signs():
    assert diag.collapse_finding(1e-6, {"theta": 0.01}, 0.5)["code"] == "posterior_collapse"
    assert diag.collapse_finding(1e-6, {"theta": 0.5}, -0.2)["evidence"]["signs"] == {
        "kl_near_zero": True, "latents_constant": False, "mean_image_reconstruction": True}
    assert diag.collapse_finding(3.0, {"theta": 0.5}, 0.01) is None  # one sign alone is not a collapse
    assert diag.collapse_finding(3.0, {"theta": 0.9}, 0.8) is None
    assert diag.collapse_finding(None, {"theta": 0.01}, None) is None


def test_explained_fraction_is_zero_at_the_mean_image_and_one_at_perfect():
    assert diag.explained_fraction(10.0, 10.0, 2.0) == 0.0
    assert diag.explained_fraction(2.0, 10.0, 2.0) == 1.0
    assert diag.explained_fraction(1.0, 1.0, 1.0) is None  # no gap: nothing to explain


def test_collapsed_vae_is_found_at_epoch_end(data):
    config = TrainConfig(size=16, batch=4, seq_len=4, epochs=1, learn_params_after=0)
    train_data, _ = frame_datasets([str(data)], length=config.seq_len, size=16, val_fraction=0.25, seed=0)
    vae = build_vae(compile_prior(PRIOR), train_data.frame_shape, config)
    collapse(vae)
    found = diag.epoch_diagnostics(vae, train_data, config, {"epoch": 1, "kl": 3e-6}, "cpu")
    assert [f["code"] for f in found] == ["posterior_collapse"]
    assert all(found[0]["evidence"]["signs"].values())
    assert "--background remove" in found[0]["advice"] and "--recon gaussian" in found[0]["advice"]
    # before the epoch the checks start at, only the bounds are judged
    late = TrainConfig(size=16, batch=4, seq_len=4, epochs=10, learn_params_after=3)
    assert diag.epoch_diagnostics(vae, train_data, late, {"epoch": 3, "kl": 3e-6}, "cpu") == []
    assert diag.epoch_diagnostics(vae, train_data, late, {"epoch": 4, "kl": 3e-6}, "cpu")[0]["code"] == "posterior_collapse"


def test_param_on_its_bound_is_found():
    module = compile_prior(PRIOR).module()
    assert diag.param_findings(module) == []  # L = 1 in [0.05, 20]
    module.set_param("L", 19.999)
    (f,) = diag.param_findings(module)
    assert f["code"] == "param_at_bound" and f["evidence"]["param"] == "L" and "upper bound 20" in f["message"]
    module.set_param("L", 0.0505)
    assert "lower bound 0.05" in diag.param_findings(module)[0]["message"]


def test_latent_scale_drift_is_found_and_collapse_takes_precedence():
    module = compile_prior(PRIOR).module()
    s0 = module.initial_std
    wide = torch.randn(500, 2) * s0 * torch.tensor([8.0, 1.0])
    (f,) = diag.latent_diagnostics(module, wide, 2.0, 0.9, [0])
    assert f["code"] == "latent_scale" and f["evidence"]["state"] == "theta" and "wider" in f["message"]
    narrow = torch.randn(500, 2) * s0 * torch.tensor([1.0, 0.1])
    assert [f["evidence"]["state"] for f in diag.latent_diagnostics(module, narrow, 2.0, 0.9, [0])] == ["omega"]
    flat = torch.randn(500, 2) * s0 * 0.01
    assert [f["code"] for f in diag.latent_diagnostics(module, flat, 1e-5, 0.9, [0])] == ["posterior_collapse"]
    assert diag.latent_diagnostics(module, torch.randn(500, 2) * s0, 2.0, 0.9, [0]) == []


def test_latent_scale_is_judged_against_the_priors_own_clips():
    """A drifting system: the looming object's v runs from 0 to -10 m/s over a 128-frame clip, 35x its
    initial std of 0.3. Latents that spread like the prior's own clips are in its units (no finding,
    given the clips' length); judged against the initial std alone, v was flagged; a latent spread a
    tenth of the clips' is still found."""
    from anmc.prior.marginals import simulated_clips

    module = compile_prior("priors/looming.anm").module()
    clips = simulated_clips(module, 128, samples=64, seed=5).float().reshape(-1, 2)
    assert diag.latent_diagnostics(module, clips, 2.0, 0.9, [0], frames=128) == []
    assert [f["evidence"]["state"] for f in diag.latent_diagnostics(module, clips, 2.0, 0.9, [0])] == ["v"]
    shrunk = clips * torch.tensor([1.0, 0.1])
    (f,) = diag.latent_diagnostics(module, shrunk, 2.0, 0.9, [0], frames=128)
    assert f["code"] == "latent_scale" and f["evidence"]["state"] == "v" and "narrower" in f["message"]


def test_train_warns_of_a_param_started_on_its_bound_and_prints_plain_epoch_lines(data, tmp_path):
    prior = tmp_path / "stuck.anm"
    prior.write_text(open(PRIOR).read().replace("param L = 1.0 in [0.05, 20]", "param L = 19.995 in [0.05, 20]"))
    res = CliRunner().invoke(main, ["train", str(prior), str(data), "-o", str(tmp_path / "run"), *TINY, "--epochs", "2"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]  # stderr is not a terminal here
    assert all(" kl " in line and "L=" in line and " s" in line and "ETA" in line for line in lines)
    assert res.stderr.count("param L") == 1  # said once, when first found
    assert "sits at the upper bound 20" in res.stderr and "Try: widen" in res.stderr
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "param_at_bound" in [f["code"] for f in rows[0]["diagnostics"]]


def test_eval_reports_a_collapsed_run(data, tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", PRIOR, str(data), "-o", str(run), *TINY, "--epochs", "1"])
    assert res.exit_code == 0, res.output
    payload = load_checkpoint(run)
    from anmc.vae.run import load_run

    loaded = load_run(run)
    collapse(loaded.vae)
    payload["vae"] = loaded.vae.state_dict()
    payload["metrics"]["kl"] = payload["metrics"]["val_kl"] = 2e-6
    save_checkpoint(run, payload)
    res = CliRunner().invoke(main, ["eval", str(run), "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert "warning" in res.stdout and "the posterior has collapsed" in res.stdout
    report = json.loads((tmp_path / "e.json").read_text())
    # collapsed, and (the truth known) neither state learned
    assert [(f["code"], f["evidence"].get("state")) for f in report["diagnostics"]] == [
        ("posterior_collapse", None), ("state_not_recovered", "theta"), ("state_not_recovered", "omega")]
    assert report["diagnostics"][0]["evidence"]["recon_explained"] <= diag.MEAN_IMAGE_LEVEL


@pytest.mark.slow
def test_quickstart_prints_a_plain_line_per_epoch(tmp_path):
    """Redirected output (click's runner: stderr is not a terminal) shows progress after every epoch, not only at the end."""
    res = CliRunner().invoke(main, ["quickstart", "-o", str(tmp_path / "qs"), "--clips", "2", "--frames", "16", "--size", "16",
                                    "--batch", "2", "--seq-len", "4", "--steps-per-epoch", "2", "--epochs", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "ETA" in lines[0] and "L=" in lines[0] and "torch threads:" in res.stderr and "allocator:" in res.stderr
    assert "\x1b[" not in res.stderr  # no bar, no escape codes


def test_truth_findings_say_when_a_state_was_not_learned_or_not_in_units():
    """With the truth known (`anmc eval` on synthetic data), a state the latents do not follow is said to be
    not learned, and one found at another scale (the first incline prior: slope 0.07) not in units."""
    states = {
        "theta": {"pearson": 0.999, "slope": 1.02},
        "omega": {"pearson": -0.2, "slope": -0.1},
        "x": {"pearson": 0.895, "slope": 0.0704},
        "phase": {"pearson": 0.99, "slope": None},  # circular: no slope
    }
    found = {(f["code"], f["evidence"]["state"]) for f in diag.truth_findings(states)}
    assert found == {("state_not_recovered", "omega"), ("not_in_units", "x")}
    assert diag.truth_findings({"b": {"pearson": float("nan"), "slope": float("nan")}})[0]["code"] == "state_not_recovered"


def test_a_latent_off_its_place_is_said_so():
    """A latent found and in units but shifted (a pendulum with quadratic drag and a learnable noise std,
    10 epochs: theta latent = truth + 2.67 rad, |r| 0.989, slope 1.09, the truth's std 0.357) is an `offset`
    finding: the dynamics' equilibrium sits elsewhere in the latents. Small shifts, a phase (no offset) and
    a state already flagged are not."""
    states = {
        "theta": {"pearson": 0.989, "slope": 1.092, "offset": 2.671, "spread": 0.357},
        "omega": {"pearson": 0.964, "slope": 1.051, "offset": 0.075, "spread": 1.257},
        "phase": {"pearson": 0.99, "slope": None, "offset": None, "spread": 1.8},
        "x": {"pearson": 0.9, "slope": 0.07, "offset": 5.0, "spread": 0.1},  # not in units: that finding only
    }
    found = diag.truth_findings(states)
    assert [(f["code"], f["evidence"]["state"]) for f in found] == [("offset", "theta"), ("not_in_units", "x")]
    (theta,) = [f for f in found if f["code"] == "offset"]
    assert "shifted by +2.67 (7.48 times its spread" in diag.describe(theta) and "--restarts 3" in theta["advice"]
    assert diag.truth_findings({"theta": {"pearson": 0.99, "slope": 1.0, "offset": 0.3, "spread": 0.357}}) == []


def test_evaluate_reports_where_the_latent_zero_is():
    """`offset` is the mean of the sign-corrected latent minus the truth; a phase has none."""
    import numpy as np

    from anmc.analysis.evaluate import state_metrics

    rng = np.random.default_rng(0)
    truth = rng.normal(0, 0.4, 400)
    latents = np.stack([-(truth + 2.0), truth], 1)  # sign -1, shifted by 2 after the sign is taken out
    halves = (np.arange(200), np.arange(200, 400))
    m = state_metrics(latents[:, 0], truth, latents, halves, circular=False)
    assert m["sign"] == -1 and m["offset"] == pytest.approx(2.0) and m["spread"] == pytest.approx(truth.std())
    assert state_metrics(latents[:, 1], truth, latents, halves, circular=True)["offset"] is None


def test_several_states_not_learned_are_one_line_with_the_advice_once():
    """A model of a dozen states that learned none is one finding to a reader, not a dozen repeated
    warnings; one state alone keeps its own sentence, and other findings are unchanged."""
    states = {name: {"pearson": r, "slope": 0.1} for name, r in (("x0", 0.01), ("v0", -0.27), ("x1", 0.9))}
    states["x1"]["slope"] = 0.05
    found = diag.truth_findings(states)
    lines = diag.describe_all(found)
    assert len(found) == 3 and len(lines) == 2
    assert lines[0].startswith("2 latents follow their true states at |r| below 0.5 (x0 0.01, v0 0.27)")
    assert lines[0].count("Try:") == 1 and lines[1] == diag.describe(found[2])
    (one,) = diag.truth_findings({"x0": {"pearson": 0.01, "slope": 0.1}})
    assert diag.describe_all([one]) == [diag.describe(one)]


def test_not_in_units_with_a_declared_camera_points_at_the_camera():
    """With the sprite decoder the declared camera sets the units, so a latent at twice the truth (a pivot
    written 29 px off on 96-px clips: slopes 2.02, docs/results.md §6) is a camera that does not fit the
    video, and the advice says to measure it, not to declare one."""
    states = {"theta": {"pearson": 0.989, "slope": 2.02}}
    (plain,) = diag.truth_findings(states)
    (camera,) = diag.truth_findings(states, camera=True)
    assert plain["code"] == camera["code"] == "not_in_units"
    assert "declare the camera" in plain["advice"] and "declared camera" not in plain["advice"]
    assert "check the declared camera" in camera["advice"] and "Declare the camera" in camera["advice"]


@pytest.mark.parametrize("stored", [64, 48])
def test_a_camera_measured_on_another_video_puts_the_object_off_the_frame(stored):
    """priors/pendulum_camera.anm declares anmc's renderer at 64 px (pivot (32, 32), R = 23 px). On 64-px clips
    every object stays inside the frame; on 48-px clips the bob (object 2) is below the frame whenever
    |theta| < 0.80 (68% of Normal(0, 0.8)) and right of it whenever theta > 0.77 (17%), 85% in all, and
    `camera_off_frame` says so; the rod's middle stays inside."""
    from anmc.data.io import resize_transform

    prior = compile_prior("priors/pendulum_camera.anm")
    vae = build_vae(prior, (1, 32, 32), TrainConfig(decoder="sprite", size=32), camera=resize_transform((stored, stored), 32))
    found = diag.camera_findings(vae)
    if stored == 64:
        assert found == []
    else:
        (f,) = found
        assert f["code"] == "camera_off_frame" and f["evidence"]["object"] == "2"
        assert 0.8 < f["evidence"]["share"] < 0.9 and "48x48 video" in f["message"] and "Declare the camera" in f["advice"]


def test_camera_findings_need_a_placed_object():
    """No camera roles (the deconv decoder) or no px/py (a glowing LED): nothing to judge."""
    vae = build_vae(compile_prior(PRIOR), (1, 16, 16), TrainConfig())
    assert diag.camera_findings(vae) == []


def test_anm_train_warns_about_a_camera_measured_on_another_video_from_a_start(tmp_path):
    """`anmc train` of priors/pendulum_camera.anm (a camera for 64-px clips) on 48-px clips warns
    `camera_off_frame` once, at the first epoch of the first of its --restarts starts (the camera does not
    change with training, so the warning need not wait for the chosen start), and records it."""
    data = tmp_path / "pend48"
    synthesize("priors/pendulum_camera.anm", out_dir=data, clips=2, frames=12, size=48, seed=3, renderer="pendulum", fmt="npz")
    res = CliRunner().invoke(main, ["train", "priors/pendulum_camera.anm", str(data), "-o", str(tmp_path / "run"), *TINY,
                                    "--epochs", "2", "--restarts", "2", "--restart-epochs", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    said = res.output  # stdout and stderr, as a terminal shows them
    assert said.count("outside the 48x48 video") == 1
    assert "warning (start seed 0, epoch 1)" in said and "camera measured on another video" in said
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "camera_off_frame" in [f["code"] for f in rows[-1]["diagnostics"]]


def test_the_plain_lines_eta_counts_this_process_epochs_only(capsys):
    """After --restarts' starts the finishing run's rows count their seconds from the start of the whole
    training, starts included; the ETA is each epoch's own time (`epoch_seconds`) times the epochs left,
    not those seconds over the epochs done (the quick start's log said ETA 114.6 min with 8 left)."""
    from anmc.cli import _EpochReporter

    reporter = _EpochReporter(30, plain=True, restart_epochs=4)
    row = {"loss": 1.0, "recon": 1.0, "kl": 0.5, "params": {"L": 1.0}}
    for start in range(3):
        for e in range(1, 5):
            reporter(None, row | {"start": start, "epoch": e, "seconds": 20.0 * e, "epoch_seconds": 20.0})
    reporter(None, row | {"epoch": 5, "seconds": 275.0, "epoch_seconds": 20.0})
    reporter(None, row | {"epoch": 6, "seconds": 297.0, "epoch_seconds": 22.0})
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert lines == ["epoch 5/30: loss 1 recon 1 kl 0.5 L=1 | 275 s, ETA 8.3 min", "epoch 6/30: loss 1 recon 1 kl 0.5 L=1 | 297 s, ETA 8.4 min"]
