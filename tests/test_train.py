"""Training, checkpoints, eval, plot and show on a tiny pendulum (16x16 frames, a few dozen steps)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import anmc.vae.train as train_mod
from anmc.errors import UserError
from anmc.cli import main
from anmc.analysis.evaluate import evaluate
from anmc.vae.run import load_checkpoint, load_run
from anmc.vae.config import TrainConfig
from anmc.vae.train import TrainingDiverged, train
from anmc.synthetic.synth import synthesize

PRIOR = "priors/pendulum.anm"
TINY = dict(size=16, batch=4, seq_len=4, steps_per_epoch=6, epochs=2, learn_params_after=1, val_fraction=0.25)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("pend")
    synthesize(PRIOR, out_dir=out, clips=4, frames=24, size=16, seed=3, fmt="npz")
    return out


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    result = train(PRIOR, [str(data)], run, TrainConfig(**{**TINY, "epochs": 4}))
    return run, result


def test_loss_falls_and_run_dir_is_complete(trained):
    run, result = trained
    losses = [m["loss"] for m in result.metrics]
    assert losses[-1] < losses[0]
    for name in ("checkpoint.pt", "metrics.jsonl", "prior.anm", "config.json"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["physics_learning"] is False and rows[1]["physics_learning"] is True
    payload = load_checkpoint(run)
    assert payload["anm_source"] == open(PRIOR).read()
    assert payload["config"]["kl"] == "elbo"


def test_learnable_param_frozen_then_trained(trained):
    run, result = trained
    assert result.metrics[0]["params"]["L"] == pytest.approx(1.0, abs=1e-6)  # frozen in epoch 1
    assert result.metrics[-1]["params"]["L"] != pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("kl", ["mixture", "pooled"])
def test_monte_carlo_readings_train_and_learn_the_param(kl, data, tmp_path):
    """The readings that run as one autograd node (anmc.prior.linearized_kl) train through the trainer: finite
    losses, and the learnable length moves once physics learning starts."""
    result = train(PRIOR, [str(data)], tmp_path / kl, TrainConfig(**{**TINY, "epochs": 2, "kl": kl, "samples": 4}))
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in result.metrics)
    assert load_checkpoint(tmp_path / kl)["config"]["kl"] == kl
    assert result.metrics[-1]["params"]["L"] != pytest.approx(1.0, abs=1e-6)


def test_resume_is_bit_for_bit(data, tmp_path):
    straight, split = tmp_path / "a", tmp_path / "b"
    train(PRIOR, [str(data)], straight, TrainConfig(**TINY))


    class Interrupted(Exception):
        pass

    def stop_after_first_epoch(vae, row):
        raise Interrupted  # an interrupted run: the first epoch's checkpoint is on disk

    with pytest.raises(Interrupted):
        train(PRIOR, [str(data)], split, TrainConfig(**TINY), on_epoch=stop_after_first_epoch)
    assert load_checkpoint(split)["epoch"] == 1
    train(PRIOR, [str(data)], split, None, resume=True)
    a, b = load_checkpoint(straight)["vae"], load_checkpoint(split)["vae"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = (split / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_non_finite_loss_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(PRIOR, [str(data)], run, TrainConfig(**{**TINY, "epochs": 1}))
    good = load_checkpoint(run)["vae"]
    real = train_mod.sequence_loss

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(train_mod, "sequence_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(PRIOR, [str(data)], run, TrainConfig(**TINY), resume=True)
    kept = load_checkpoint(run)
    assert kept["epoch"] == 1
    assert all(torch.equal(good[k], kept["vae"][k]) for k in good)


def test_eval_report_matches_a_direct_computation(trained, data):
    """The report's numbers, recomputed here from the encoder's latents, the truth file and the frames."""
    from anmc.analysis.evaluate import encode_frames, frames_tensor
    from anmc.data.io import read_truth
    from anmc.vae.run import load_run_clips

    run, _ = trained
    loaded = load_run(run)
    report = evaluate(loaded)
    assert set(report) >= {"states", "params", "recon_mse", "prediction"}
    assert set(report["states"]) == {"theta", "omega"}
    truth = read_truth(data / "truth.csv")
    clips = load_run_clips(loaded)
    k = loaded.vae.window
    lat = np.concatenate([encode_frames(loaded, c.frames)[0].numpy() for c in clips])
    tru = np.concatenate([truth["clips"][i][k - 1 :][: len(c.frames) - k + 1] for i, c in enumerate(clips)])
    for j, name in enumerate(("theta", "omega")):
        row = report["states"][name]
        r = np.corrcoef(lat[:, j], tru[:, j])[0, 1]
        assert row["pearson"] == pytest.approx(r, abs=1e-6)
        assert row["sign"] == (1 if r >= 0 else -1)
        assert row["slope"] == pytest.approx(np.polyfit(tru[:, j], lat[:, j], 1)[0], rel=1e-5)
        assert row["mae"] >= 0 and row["r2"] <= 1 and row["knn_r2"] <= 1
    assert report["params"]["L"]["true"] == pytest.approx(1.0, abs=1e-5)
    assert report["params"]["L"]["learned"] == pytest.approx(float(loaded.module.param_values()["L"].detach()), rel=1e-7)
    # repeating the last frame, one step ahead: mean over the same starts as the report's
    x = [frames_tensor(c.frames).float() / 255.0 for c in clips]
    errs = []
    for xc in x:
        ts = np.unique(np.linspace(k - 1, xc.shape[0] - 2, 8).astype(int))
        errs += ((xc[ts] - xc[ts + 1]) ** 2).mean((1, 2, 3)).tolist()
    assert report["prediction"]["1"]["repeat_last"] == pytest.approx(np.mean(errs), rel=1e-6)
    assert 0 < report["prediction"]["1"]["model"] < 1


def test_cli_eval_plot_show(trained, tmp_path):
    run, _ = trained
    runner = CliRunner()
    res = runner.invoke(main, ["eval", str(run), "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert "pearson" in res.output and json.loads((tmp_path / "e.json").read_text())["states"]["theta"]
    res = runner.invoke(main, ["plot", str(run), "-o", str(tmp_path / "latent.png"), "-i", "drag"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "latent.png").stat().st_size > 10_000
    res = runner.invoke(main, ["show", str(run)])
    assert res.exit_code == 0, res.output
    assert "learned (L started at 1.0)" in res.output
    assert "omega' = -(g / L) * sin(theta) - c * omega" in res.output


def test_cli_eval_says_which_truth_it_could_not_compare(trained, data, tmp_path):
    """Empty or NaN cells are left out and the note says how many frames a row compares; a column with no
    values, or one that never varies, is not scored as a state the model did not learn."""
    import csv

    rows = list(csv.reader((data / "truth.csv").open()))
    head = rows[0]
    theta, omega = head.index("theta"), head.index("omega")
    for n, row in enumerate(rows[1:]):
        row[theta] = "nan" if n % 4 == 0 else row[theta]
        row[omega] = ""
    partial = tmp_path / "truth.csv"
    with partial.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    run, _ = trained
    res = CliRunner().invoke(main, ["eval", str(run), "--truth", str(partial), "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert set(report["states"]) == {"theta"} and report["not_compared"] == {"omega": "has no values"}
    assert report["states"]["theta"]["frames"] < report["truth_frames"]
    assert f"theta in {report['states']['theta']['frames']} of {report['truth_frames']} frames" in res.output
    assert "omega is not compared: its column in the truth has no values" in res.output
    assert "did not learn omega" not in res.output
    for row in rows[1:]:
        row[omega] = "0.5"
    with partial.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    res = CliRunner().invoke(main, ["eval", str(run), "--truth", str(partial)])
    assert "omega is not compared: its column in the truth does not vary" in res.output
    # a truth for the first clip only, its first 10 frames: said, not evaluated silently
    short = [head] + [row for row in rows[1:] if row[head.index("clip")] == "0" and int(row[head.index("frame")]) < 10]
    with partial.open("w", newline="") as fh:
        csv.writer(fh).writerows(short)
    res = CliRunner().invoke(main, ["eval", str(run), "--truth", str(partial), "--json", str(tmp_path / "e.json")])
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["truth_clips"] == [0] and report["truth_frames"] < report["latent_frames"]
    assert f"the truth covers {report['truth_frames']} of the {report['latent_frames']} frames evaluated (clip(s) 0)" in res.output
    # rows for a clip the videos do not have
    far = [*short, ["7", "0", *short[1][2:]]]
    with partial.open("w", newline="") as fh:
        csv.writer(fh).writerows(far)
    res = CliRunner().invoke(main, ["eval", str(run), "--truth", str(partial)])
    assert "the truth has rows for clip(s) 7, which the videos evaluated do not have" in res.output


def test_cli_train_and_resume(data, tmp_path):
    runner = CliRunner()
    args = ["train", PRIOR, str(data), "-o", str(tmp_path / "r"), "--size", "16", "--batch", "4", "--seq-len", "4",
            "--steps-per-epoch", "3", "--epochs", "1"]  # fmt: skip
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["train", PRIOR, str(data), "-o", str(tmp_path / "r"), "--resume", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(tmp_path / "r")["epoch"] == 2
    assert "it continues on" not in res.output  # the same videos: no warning
    import shutil

    shutil.copytree(data, tmp_path / "more")  # other videos: it continues on them, and says so
    res = runner.invoke(main, ["train", PRIOR, str(tmp_path / "more"), "-o", str(tmp_path / "r"), "--resume", "--epochs", "3"])
    assert res.exit_code == 0, res.output
    assert f"trained on {data.resolve()}; it continues on {(tmp_path / 'more').resolve()}" in " ".join(res.output.split())


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["eval", "{tmp}/nothing"], "does not exist"),
        ("empty", ["eval", "{tmp}/run"], "holds no checkpoint.pt"),
        ("corrupt", ["eval", "{tmp}/run"], "not a readable anmc checkpoint"),
        ("corrupt", ["show", "{tmp}/run"], "not a readable anmc checkpoint"),
        (None, ["train", PRIOR, "{tmp}/missing.mp4", "-o", "{tmp}/r"], "does not exist"),
        ("still", ["train", PRIOR, "{tmp}/still.npy", "-o", "{tmp}/r"], "no motion for the latents to follow"),
        ("trained", ["plot", "{run}", "-o", "{tmp}/p.txt"], "p.txt: a figure is written as .png, .pdf, .svg or another format"),
        ("trained", ["eval", "{run}", "--circular", "nosuch"], "--circular nosuch: the run has no state of that name; its states are theta, omega."),
        ("colons", ["eval", "{run}", "--truth", "{tmp}/t.csv"], "starts with columns root:x:0:0"),  # printed as written, no emoji for :x:
        ("trained", ["train", "priors/spring.anm", "{data}", "-o", "{run}", "--resume"], "different prior"),
        (None, ["train", PRIOR, "{data}", "-o", "{tmp}/r", "--device", "cuda:0"] if not torch.cuda.is_available() else ["eval", "{tmp}/x"], "cuda" if not torch.cuda.is_available() else "does not exist"),
    ],
)  # fmt: skip
def test_cli_bad_input_one_sentence_exit_2(setup, args, message, tmp_path, data, trained):
    run_dir = tmp_path / "run"
    if setup == "empty":
        run_dir.mkdir()
    elif setup == "corrupt":
        run_dir.mkdir()
        (run_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    elif setup == "colons":
        (tmp_path / "t.csv").write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif setup == "still":  # a video in which nothing moves (a still scene, the wrong file)
        np.save(tmp_path / "still.npy", np.full((64, 32, 32), 40, np.uint8))
    fmt = {"tmp": tmp_path, "data": data, "run": trained[0]}
    res = CliRunner().invoke(main, [a.format(**fmt) for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_leftover_temp_file_does_not_break_loading(trained):
    run, _ = trained
    (run / ".checkpoint.pt.tmp-999").write_bytes(b"half written")
    assert load_run(run).config.size == 16


def test_context_encoder_sees_neighbouring_frames_and_reloads(data, tmp_path):
    from anmc.vae.nets import Encoder

    torch.manual_seed(0)
    frames = torch.rand(1, 9, 1, 16, 16)
    later = frames.clone()
    later[:, -1] = torch.rand(1, 16, 16)  # change only the last frame
    for context, sees_future in ((0, False), (2, True)):
        enc = Encoder(window=2, channels=1, size=16, d=2, context=context)
        mu, _ = enc(frames)
        mu2, _ = enc(later)
        assert mu.shape == (1, 8, 2)
        # latent 4 (frames 4-5) depends on frame 8 only through the temporal convolution (reach 2 * context)
        assert (not torch.allclose(mu[0, 4], mu2[0, 4])) == sees_future
    run = tmp_path / "run"
    train(PRIOR, [str(data)], run, TrainConfig(**{**TINY, "epochs": 1, "context": 2}))
    report = evaluate(load_run(run))
    assert set(report["states"]) == {"theta", "omega"}
    assert load_run(run).vae.encoder.context == 2


def test_log_variances_past_their_bounds_keep_a_gradient():
    """The encoder's log-variances are clamped to LOG_VAR_RANGE with a leak: inside, unchanged; outside,
    held near the bound but with a gradient, so a reading the encoder gave up on can be trusted again
    (a hard clamp passes none: the looming object's readings stayed at the bound for a whole run)."""
    from anmc.vae.nets import LEAK, LOG_VAR_RANGE, leaky_clamp

    low, high = LOG_VAR_RANGE
    x = torch.tensor([low - 50.0, low + 1.0, 0.0, high - 1.0, high + 10.0], requires_grad=True)
    y = leaky_clamp(x, low, high)
    torch.testing.assert_close(y[1:4], x[1:4])
    torch.testing.assert_close(y[[0, 4]], torch.tensor([low - 50 * LEAK, high + 10 * LEAK]))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([LEAK, 1.0, 1.0, 1.0, LEAK]))


def test_smoother_posterior_trains_resumes_and_evaluates(data, tmp_path):
    """--posterior smoother: the encoder reads theta only; omega comes from the dynamics over the sequence
    (a later frame changes an earlier frame's smoothed state but not its causal, filtered one)."""
    cfg = {**TINY, "posterior": "smoother", "window": 1}
    straight, split = tmp_path / "a", tmp_path / "b"
    result = train(PRIOR, [str(data)], straight, TrainConfig(**{**cfg, "epochs": 3}))
    assert result.metrics[-1]["loss"] < result.metrics[0]["loss"]
    run = load_run(straight)
    assert run.vae.posterior == "smoother" and run.vae.encoder.d == 1  # one reading per frame: theta
    torch.manual_seed(0)
    frames = torch.rand(1, 6, 1, 16, 16)
    later = frames.clone()
    later[:, -1] = torch.rand(1, 16, 16)
    with torch.no_grad():
        smooth, smooth2 = run.vae.encode(frames)[0], run.vae.encode(later)[0]
        causal, causal2 = run.vae.encode(frames, causal=True)[0], run.vae.encode(later, causal=True)[0]
    assert smooth.shape == causal.shape == (1, 6, 2)
    assert not torch.allclose(smooth[0, 2], smooth2[0, 2]) and torch.equal(causal[0, :5], causal2[0, :5])
    report = evaluate(run)
    assert set(report["states"]) == {"theta", "omega"} and "prediction" in report

    class Interrupted(Exception):
        pass

    def stop(vae, row):
        raise Interrupted

    with pytest.raises(Interrupted):
        train(PRIOR, [str(data)], split, TrainConfig(**{**cfg, "epochs": 3}), on_epoch=stop)
    train(PRIOR, [str(data)], split, None, resume=True)
    a, b = load_checkpoint(straight)["vae"], load_checkpoint(split)["vae"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_smoother_posterior_needs_the_elbo_reading(data, tmp_path):
    res = CliRunner().invoke(main, ["train", PRIOR, str(data), "-o", str(tmp_path / "r"), "--posterior", "smoother", "--kl", "mixture"])
    assert res.exit_code == 2, res.output
    assert "--posterior smoother" in res.output and "Traceback" not in res.output


def test_config_names_are_the_implemented_ones():
    """TrainConfig's choices are plain data (the CLI reads them without torch): they name what exists."""
    from anmc.prior import TRANSITION_KL
    from anmc.vae import config, nets

    assert config.KL_READINGS == (*TRANSITION_KL, "standard")
    assert set(config.DECODERS) == set(nets.DECODERS)
    assert nets.POSTERIORS is config.POSTERIORS


def _weights_of(run):
    return load_checkpoint(run)["vae"]


def test_training_from_the_cache_through_workers_is_training_from_memory(data, tmp_path):
    """--cache with DataLoader workers reads the same batches in the same order: the same weights, bit for bit."""
    base = {**TINY, "epochs": 1, "steps_per_epoch": 3}
    train(PRIOR, [str(data)], tmp_path / "mem", TrainConfig(**base))
    train(PRIOR, [str(data)], tmp_path / "disk", TrainConfig(**base, cache=str(tmp_path / "cache"), workers=2))
    a, b = _weights_of(tmp_path / "mem"), _weights_of(tmp_path / "disk")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list((tmp_path / "cache").glob("*.u8"))


def test_bf16_autocast_trains_with_the_prior_in_float(data, tmp_path, monkeypatch):
    """--precision bf16: the networks run in bfloat16, the smoother and the KL in float32/float64."""
    import anmc.vae.nets as nets

    seen = []
    smoother = nets.kalman_smoother
    monkeypatch.setattr(nets, "kalman_smoother", lambda m, y, r, **kw: seen.append((y.dtype, torch.is_autocast_enabled("cpu"))) or smoother(m, y, r, **kw))
    result = train(PRIOR, [str(data)], tmp_path / "run", TrainConfig(**{**TINY, "epochs": 1, "steps_per_epoch": 3}, precision="bf16"))
    assert all(np.isfinite(m["loss"]) for m in result.metrics)
    assert seen and all(dtype == torch.float32 and not autocast for dtype, autocast in seen)


def test_precision_must_be_known():
    with pytest.raises(Exception, match="--precision"):
        TrainConfig(precision="fp8")


@pytest.mark.slow
def test_compile_flag_trains_with_the_compiled_core(data, tmp_path):
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile needs a C++ compiler")
    result = train(PRIOR, [str(data)], tmp_path / "run", TrainConfig(**{**TINY, "epochs": 1, "steps_per_epoch": 2}, compile=True))
    assert np.isfinite(result.metrics[-1]["loss"])


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_training_resumes_on_the_cpu_and_back(data, tmp_path):
    """A run trained on the GPU evaluates and resumes on the CPU, and a CPU run resumes on the GPU."""
    run = tmp_path / "gpu"
    train(PRIOR, [str(data)], run, TrainConfig(**{**TINY, "epochs": 1}, device="cuda", precision="bf16"))
    assert next(load_run(run, "cpu").vae.parameters()).device.type == "cpu"
    train(PRIOR, [str(data)], run, TrainConfig(**{**TINY, "epochs": 2}, device="cpu"), resume=True)
    train(PRIOR, [str(data)], run, TrainConfig(**{**TINY, "epochs": 3}, device="cuda"), resume=True)
    assert load_checkpoint(run)["epoch"] == 3
    payload = load_checkpoint(run)
    assert "cuda" in payload["rng"] and payload["rng"]["cpu"].dtype == torch.uint8


@cuda
def test_cli_commands_run_on_cuda(trained, tmp_path):
    run, _ = trained
    runner = CliRunner()
    for args in (["eval", str(run), "--device", "cuda"], ["plot", str(run), "-o", str(tmp_path / "p.png"), "--device", "cuda"],
                 ["intervene", str(run), "--set", "c = 0.5", "--frames", "5", "-o", str(tmp_path / "i.gif"), "--device", "cuda"]):  # fmt: skip
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output


def test_a_run_of_an_edited_prior_reloads_with_its_edits(data, tmp_path):
    """Trained from `compile_prior(path, intervention, edits)`, the checkpoint keeps the steps beside the
    source: load_run, eval and resume see the edited model (a const, an equation, an intervention),
    and resuming with the unedited prior is refused."""
    from anmc.codegen.compile import compile_prior
    from anmc.errors import UserError
    from anmc.vae.run import CheckpointError, check_payload

    edited = compile_prior(PRIOR, intervention="drag", edits=["L = 0.8", "init theta ~ Normal(0, 0.5)"])
    run_dir = tmp_path / "run"
    train(edited, [str(data)], run_dir, TrainConfig(**{**TINY, "epochs": 1}))
    payload = load_checkpoint(run_dir)
    assert payload["anm_steps"] == [["intervention", "drag"], ["edit", "L = 0.8"], ["edit", "init theta ~ Normal(0, 0.5)"]]
    run = load_run(run_dir)
    model = run.prior.model
    assert model.applied == edited.model.applied and model.params["c"].value == edited.model.params["c"].value != 0.0
    assert float(run.module.initial_std[0]) == pytest.approx(0.5)
    assert run.prior.source == edited.source  # the same generated module, edits included
    train(edited, [str(data)], run_dir, TrainConfig(**{**TINY, "epochs": 2}), resume=True)
    with pytest.raises(UserError, match="different prior"):
        train(PRIOR, [str(data)], run_dir, TrainConfig(**{**TINY, "epochs": 3}), resume=True)
    with pytest.raises(CheckpointError, match="anm_steps"):
        check_payload({**payload, "anm_steps": [["edit", 3]]}, "x")


def test_an_intervention_on_an_edited_run_keeps_what_the_run_learned(data, tmp_path):
    """The run's own edits (a learnable param's start value, an init line) are not the intervention's:
    the counterfactual module takes the learned value of every param the intervention does not set, and
    the physics checks simulate with the true values wherever it does not."""
    from anmc.analysis.intervene import intervened_module
    from anmc.analysis.physics_checks import CHECKS, true_modules
    from anmc.codegen.compile import compile_prior
    from anmc.symbolic.model import changed_since

    edited = compile_prior(PRIOR, edits=["L = 0.8", "init theta ~ Normal(0, 0.5)"])
    train(edited, [str(data)], tmp_path / "run", TrainConfig(**{**TINY, "epochs": 1}))
    run = load_run(tmp_path / "run")
    run.module.set_param("L", 0.93)  # as if learned
    cf = intervened_module(run, intervention="drag")
    values = {k: float(v) for k, v in cf.param_values().items()}
    assert values["L"] == pytest.approx(0.93) and values["c"] == pytest.approx(0.8)
    assert changed_since(cf.anm_model, run.prior.model) == {"c"} and not changed_since(cf.anm_model, run.prior.model, "inits")
    factual, counterfactual = true_modules(run.prior.model, CHECKS["pendulum"][1], {"L": 1.0, "c": 0.0})
    assert float(factual.param_values()["L"]) == pytest.approx(1.0) and float(counterfactual.param_values()["L"]) == pytest.approx(1.0)
    assert float(counterfactual.param_values()["c"]) == pytest.approx(0.8)


def test_parse_overrides_reads_json_values_and_refuses_unknown_keys():
    from anmc.errors import UserError
    from anmc.vae.config import parse_overrides

    got = parse_overrides(["recon=gaussian", "batch=16", "recon_std=0.05", "time_limit=null", "compile=true"])
    assert got == {"recon": "gaussian", "batch": 16, "recon_std": 0.05, "time_limit": None, "compile": True}
    assert TrainConfig(**got).recon == "gaussian"
    for bad in (["recno=gaussian"], ["batch"]):
        with pytest.raises(UserError, match="KEY=VALUE"):
            parse_overrides(bad)


def test_calibrated_likelihood_is_the_gaussian_at_the_batchs_own_error():
    """--recon calibrated: N(sigmoid(logits), σ²) with σ² the batch's mean squared error (held fixed in the
    step): summed over the batch it is N/2 · (1 + log 2π σ²), its gradient the gaussian's at recon_std = σ,
    and σ never falls below recon_std_floor."""
    import math

    from anmc.vae.loss import pixel_nll

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 3, 1, 8, 8, generator=g, dtype=torch.float64)
    mse = float(((torch.sigmoid(logits.detach()) - target) ** 2).mean())
    calibrated = pixel_nll(logits, target, TrainConfig(recon="calibrated"))
    assert float(calibrated.detach().sum()) == pytest.approx(target.numel() / 2 * (1 + math.log(2 * math.pi * mse)), rel=1e-6)
    (grad_cal,) = torch.autograd.grad(calibrated.sum(), logits)
    gaussian = pixel_nll(logits, target, TrainConfig(recon="gaussian", recon_std=math.sqrt(mse)))
    (grad_gauss,) = torch.autograd.grad(gaussian.sum(), logits)
    torch.testing.assert_close(grad_cal, grad_gauss, rtol=1e-5, atol=1e-9)
    perfect = torch.logit(target.clamp(1e-6, 1 - 1e-6)).detach().requires_grad_()
    floor = pixel_nll(perfect, target, TrainConfig(recon="calibrated", recon_std_floor=0.01))
    assert float(floor.detach().sum()) == pytest.approx(target.numel() / 2 * math.log(2 * math.pi * 1e-4), rel=1e-3)


def test_cli_trains_with_the_calibrated_likelihood(data, tmp_path):
    args = ["train", PRIOR, str(data), "-o", str(tmp_path / "r"), "--size", "16", "--batch", "4", "--seq-len", "4",
            "--steps-per-epoch", "3", "--epochs", "1", "--recon", "calibrated"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert load_run(tmp_path / "r").config.recon == "calibrated"
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["loss"]) for row in rows)


def test_restarts_finish_the_start_with_the_lowest_validation_loss(data, tmp_path):
    """--restarts: each seed trains restart_epochs epochs in RUN/starts/seedN; the lowest validation loss
    among them is copied to RUN and trained to the end with its seed; a second call trains no start again."""
    config = TrainConfig(**{**TINY, "epochs": 3, "restarts": 3, "restart_epochs": 1, "seed": 5})
    seen = []
    result = train(PRIOR, [str(data)], tmp_path / "run", config, on_epoch=lambda vae, row: seen.append((row.get("start"), row["epoch"])))
    choice = json.loads((tmp_path / "run" / "starts.json").read_text())
    assert seen == [(5, 1), (6, 1), (7, 1), (None, 2), (None, 3)]  # each start's epoch, marked, then the finish's
    assert choice == result.starts and sorted(choice["loss"]) == ["5", "6", "7"]
    losses = {int(k): v for k, v in choice["loss"].items()}
    for seed, loss in losses.items():
        (row,) = [json.loads(line) for line in (tmp_path / "run" / "starts" / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert row["val_loss"] == loss  # each start trained its one epoch and stopped
    assert len(set(losses.values())) == 3  # the seeds are different starts
    best = min(losses, key=losses.get)
    assert choice["chosen"] == best
    run = load_run(tmp_path / "run")
    assert run.config.seed == best and run.config.restarts == 3
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["val_loss"] == losses[best]  # the finished run is the chosen start, continued
    assert load_checkpoint(tmp_path / "run")["epoch"] == 3
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "starts").glob("*/checkpoint.pt")}
    (tmp_path / "run" / "checkpoint.pt").unlink()  # the finish interrupted before its first checkpoint
    train(PRIOR, [str(data)], tmp_path / "run", config)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the starts were read, not trained again
    changed = TrainConfig(**{**TINY, "epochs": 3, "restarts": 3, "restart_epochs": 1, "seed": 5, "lr": 5e-4})
    train(PRIOR, [str(data)], tmp_path / "run", changed, overwrite=True)  # (a trained run is replaced only when asked)
    assert all(p.stat().st_mtime_ns != stamps[p] for p in stamps)  # another config: every start trained anew
    assert load_run(tmp_path / "run").config.lr == 5e-4


def test_restarts_are_checked_and_offered_on_the_command_line(data, tmp_path):
    with pytest.raises(UserError, match="--restarts 2 --restart-epochs 4"):
        TrainConfig(epochs=4, restarts=2)
    with pytest.raises(UserError, match="--restarts 0"):
        TrainConfig(restarts=0)
    assert TrainConfig(epochs=1, restarts=1).restart_epochs == 4  # one start: restart_epochs is not used
    args = ["train", PRIOR, str(data), "-o", str(tmp_path / "r"), "--size", "16", "--batch", "4", "--seq-len", "4",
            "--steps-per-epoch", "3", "--epochs", "2", "--restarts", "2", "--restart-epochs", "1"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "starts (validation loss after 1 epochs): seed 0" in said and "finished seed" in said
    for seed in (0, 1):  # each start's epoch has its own line, before the finish's
        assert f"start seed {seed}, epoch 1/1: loss" in said and said.index(f"start seed {seed}, epoch 1/1") < said.index("epoch 2/2")
    assert (tmp_path / "r" / "starts.json").exists()
    res = CliRunner().invoke(main, [*args[:-4], "--restarts", "2", "--restart-epochs", "2"])
    assert res.exit_code == 2 and "restart-epochs" in res.output


def test_a_start_that_diverged_is_reported(data, tmp_path, monkeypatch):
    """A start that diverges is skipped, and the command line says so (a Van der Pol prior's seed 0 blew up at
    step 13 while seeds 1 and 2 trained; the starts line listed only those two)."""
    from anmc.vae.divergence import diverged

    real = train_mod._train_locked

    def first_start_diverges(prior, videos, run_dir, config, *args, **kwargs):
        if run_dir.name == "seed0":
            raise diverged("linalg.cholesky failed on a singular or non-finite covariance", 1, 13, run_dir, 0)
        return real(prior, videos, run_dir, config, *args, **kwargs)

    monkeypatch.setattr(train_mod, "_train_locked", first_start_diverges)
    args = ["train", PRIOR, str(data), "-o", str(tmp_path / "r"), "--size", "16", "--batch", "4", "--seq-len", "4",
            "--steps-per-epoch", "2", "--epochs", "2", "--restarts", "2", "--restart-epochs", "1"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "seed 0 diverged at epoch 1, step 13 (linalg.cholesky failed on a singular or non-finite covariance); finished seed 1" in said
    assert json.loads((tmp_path / "r" / "starts.json").read_text())["chosen"] == 1


def _diverging_seeds(monkeypatch, seeds):
    """Make the trainer's starts with these seeds diverge at step 13 of their first epoch (nothing kept)."""
    from anmc.vae.divergence import diverged

    real = train_mod._train_locked

    def diverging(prior, videos, run_dir, config, *args, **kwargs):
        if config.seed in seeds:
            raise diverged("linalg.cholesky failed on a singular or non-finite covariance", 1, 13, run_dir, 0)
        return real(prior, videos, run_dir, config, *args, **kwargs)

    monkeypatch.setattr(train_mod, "_train_locked", diverging)


def test_one_start_that_diverges_in_its_first_epoch_tries_the_next_seed(data, tmp_path, monkeypatch):
    """A short run (one start) whose seed diverges before its first checkpoint trains the next seed in its
    place, says so, and records it; an explicit --restarts 1 trains its one seed only; a divergence in every
    seed says so; one after a kept epoch is not retried (test_faults)."""
    _diverging_seeds(monkeypatch, {0})
    args = ["train", PRIOR, str(data), "-o", str(tmp_path / "r"), "--size", "16", "--batch", "4", "--seq-len", "4",
            "--steps-per-epoch", "2", "--epochs", "1"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "seed 0 diverged at epoch 1, step 13 (linalg.cholesky failed on a singular or non-finite covariance); trained seed 1 instead" in said
    assert load_run(tmp_path / "r").config.seed == 1
    res = CliRunner().invoke(main, [*args, "--overwrite", "--restarts", "1"])
    assert res.exit_code == 2 and "training diverged at epoch 1, step 13" in res.output and "trained seed" not in res.output
    _diverging_seeds(monkeypatch, {0, 1, 2})
    with pytest.raises(TrainingDiverged, match="seeds 1 and 2 diverged in their first epoch too"):
        train(PRIOR, [str(data)], tmp_path / "all", TrainConfig(**TINY))


def test_the_time_limit_counts_the_starts(data, tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 5, "restarts": 2, "restart_epochs": 1, "time_limit": 1e-6})
    result = train(PRIOR, [str(data)], tmp_path / "run", config)
    # each start trains its epoch; the finish, its clock already past the limit, stops after one more
    assert result.epochs == 2 and "time limit" in result.stopped_early


def test_restarts_with_auto_background_reuse_their_finished_starts(data, tmp_path):
    """Each start records what --background auto chose; an interrupted choice still finds its starts."""
    config = TrainConfig(**{**TINY, "epochs": 2, "restarts": 2, "restart_epochs": 1, "background": "auto"})
    train(PRIOR, [str(data)], tmp_path / "run", config)
    assert json.loads((tmp_path / "run" / "starts" / "seed0" / "config.json").read_text())["background"] in ("keep", "remove")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "starts").glob("*/checkpoint.pt")}
    (tmp_path / "run" / "checkpoint.pt").unlink()
    train(PRIOR, [str(data)], tmp_path / "run", config)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert load_run(tmp_path / "run").config.background == json.loads((tmp_path / "run" / "starts" / "seed0" / "config.json").read_text())["background"]


def _factor(step, total, final=0.1):
    import math

    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))


def test_networks_and_physical_params_follow_one_cosine(data, tmp_path):
    """Both rates fall to lr_final of their start along the same cosine: a length whose rate stayed at
    --param-lr wandered ±10% from epoch to epoch at the end of a run (docs/results.md §6, twelfth session)."""
    train(PRIOR, [str(data)], tmp_path / "run", TrainConfig(**TINY))
    groups = load_checkpoint(tmp_path / "run")["optimizer"]["param_groups"]
    last = TINY["epochs"] * TINY["steps_per_epoch"] - 1  # the rates the last step used
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * _factor(last, last + 1), 1e-2 * _factor(last, last + 1)])


@pytest.fixture
def fake_clock(monkeypatch):
    """The trainer's clock, frozen but for 20 s added after each epoch by `clock.epoch` (an on_epoch)."""
    import types

    clock = types.SimpleNamespace(t=0.0)
    clock.epoch = lambda vae, row: setattr(clock, "t", clock.t + 20.0)
    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(monotonic=lambda: clock.t))
    return clock


def test_a_time_limit_ends_the_cosine_when_the_time_does(data, tmp_path, fake_clock):
    """Each epoch takes 20 s of a fake clock and the limit is 1 minute: after epoch 1 the two epochs still
    to come fit, so the cosine ends at step 18 of 30, where the time limit stops the run; the plan is in
    the checkpoint, and a resume keeps it."""
    config = TrainConfig(**{**TINY, "epochs": 5, "time_limit": 1.0})
    result = train(PRIOR, [str(data)], tmp_path / "run", config, on_epoch=fake_clock.epoch)
    assert result.epochs == 3 and "time limit" in result.stopped_early
    payload = load_checkpoint(tmp_path / "run")
    assert payload["schedule_steps"] == 18 and payload["step"] == 18
    assert [g["lr"] for g in payload["optimizer"]["param_groups"]] == pytest.approx([1e-3 * _factor(17, 18), 1e-2 * _factor(17, 18)])
    # resumed (the limit counts anew): the rates stay at the floor the plan reached, they do not climb back
    fake_clock.t = 0.0
    train(PRIOR, [str(data)], tmp_path / "run", None, resume=True, on_epoch=fake_clock.epoch)
    payload = load_checkpoint(tmp_path / "run")
    assert payload["schedule_steps"] == 18
    assert [g["lr"] for g in payload["optimizer"]["param_groups"]] == pytest.approx([1e-4, 1e-3])


def test_the_starts_of_restarts_keep_the_full_schedule(data, tmp_path, fake_clock):
    """The starts are compared after the same steps at the same rates: the time limit fits only the finish."""
    config = TrainConfig(**{**TINY, "epochs": 4, "restarts": 2, "restart_epochs": 2, "time_limit": 10.0})
    train(PRIOR, [str(data)], tmp_path / "run", config, on_epoch=fake_clock.epoch)
    for seed in (0, 1):
        assert load_checkpoint(tmp_path / "run" / "starts" / f"seed{seed}")["schedule_steps"] is None


def test_a_long_run_trains_three_starts_by_default_a_short_or_distributed_one_one():
    """Three starts where the two losing ones cost at most a third of the run (docs/results.md §6: one start
    in three went wrong on the same clips); one under torchrun, where the starts cannot run."""
    assert TrainConfig().starts(world=1) == 3
    assert TrainConfig(epochs=23).starts(world=1) == 1 and TrainConfig(epochs=24).starts(world=1) == 3
    assert TrainConfig(epochs=48, restart_epochs=8).starts(world=1) == 3 and TrainConfig(epochs=47, restart_epochs=8).starts(world=1) == 1
    assert TrainConfig().starts(world=2) == 1
    assert TrainConfig(restarts=1).starts(world=1) == 1 and TrainConfig(restarts=5).starts(world=1) == 5
    with pytest.raises(UserError, match="restart-epochs"):
        TrainConfig(restarts=2, epochs=4)  # a start as long as the run: refused when asked for
    assert TrainConfig(epochs=4).starts(world=1) == 1  # and never chosen by default


def test_a_run_finds_its_videos_from_any_folder_and_says_when_they_moved(data, tmp_path, monkeypatch):
    """`anmc train` given a relative path records it absolute, so `anmc eval` from another folder reads the
    same clips; when they are gone, eval, plot and intervene say which path and to pass --video (exit 2)."""
    import shutil
    from pathlib import Path

    videos, prior = tmp_path / "project" / "clips", Path(PRIOR).resolve()
    shutil.copytree(data, videos)
    monkeypatch.chdir(tmp_path / "project")
    train(prior, ["clips"], tmp_path / "project" / "run", TrainConfig(**{**TINY, "epochs": 1, "steps_per_epoch": 1}))
    assert load_checkpoint(tmp_path / "project" / "run")["videos"] == [str(videos.resolve())]
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["eval", "project/run"])
    assert res.exit_code == 0, res.output
    videos.rename(tmp_path / "project" / "moved")
    for args in (["eval", "project/run"], ["plot", "project/run", "-o", "p.png"], ["intervene", "project/run", "--set", "c = 0.5", "-o", "x.gif"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert f"project/run was trained on {videos.resolve()}, which is not there now; give its videos with --video" in res.output
    res = CliRunner().invoke(main, ["eval", "project/run", "--video", "project/moved"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    "field, value, need",
    [("lr", -1.0, "a positive learning rate"), ("lr", float("nan"), "a positive learning rate"), ("beta", -0.5, "a KL weight of 0 or more"),
     ("size", 4, "8 pixels or more"), ("samples", 0, "1 sample or more"), ("val_fraction", 1.0, "a fraction of the clips in [0, 1)"),
     ("time_limit", -1.0, "0 minutes (stop after the first epoch) or more"), ("lr_final", 2.0, "in [0, 1]")],
)  # fmt: skip
def test_a_train_config_out_of_range_is_one_sentence(field, value, need, data, tmp_path):
    """TrainConfig checks its numbers where it is made, for a notebook as for the CLI (whose --lr, --beta and
    --time-limit are plain floats): one sentence naming the option and what to give."""
    with pytest.raises(UserError, match=re.escape(f"--{field.replace('_', '-')} {value}: give ") + ".*" + re.escape(need)):
        TrainConfig(**{field: value})
    res = CliRunner().invoke(main, ["train", PRIOR, str(data), "-o", str(tmp_path / "r"), "--lr", "-1"])
    assert res.exit_code == 2 and "--lr -1.0: give a positive learning rate." in res.output and "Traceback" not in res.output
