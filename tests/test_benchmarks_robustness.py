"""The robustness benchmark's own video generator (benchmarks/robustness.py): tiny versions of every
condition, their shapes and determinism, and that each condition does what it says."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location("robustness", Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py")
rb = importlib.util.module_from_spec(spec)
sys.modules["robustness"] = rb  # dataclasses look their module up
spec.loader.exec_module(rb)

N = 32  # tiny source side
SWING = np.linspace(-0.9, 0.9, 8)  # angles of a tiny clip


def render(name, seed=0, theta=SWING, **changes):
    cond = replace(rb.CONDITIONS[name], **{"source": N, **changes})
    return rb.render_clip(cond, np.asarray(theta, float), np.random.default_rng(seed))


def luma(frames):
    return frames.astype(float) @ [0.299, 0.587, 0.114] / 255


@pytest.mark.parametrize("name", list(rb.CONDITIONS))
def test_every_condition_renders_deterministically(name):
    a = render(name, source=48 if name == "res48" else N)  # res256 at a tiny stand-in side
    assert a.dtype == np.uint8 and a.shape == (len(SWING), a.shape[1], a.shape[1], 3)
    np.testing.assert_array_equal(a, render(name, source=a.shape[1]))  # same seed, same frames
    assert a.std() > 0
    random = {"texture", "noise05", "noise10", "distractor", "jitter", "drift", "flicker"}
    if name in random:
        assert not np.array_equal(a, render(name, seed=1, source=a.shape[1]))


def test_sources_of_48_and_256_pixels():
    assert rb.CONDITIONS["res48"].source == 48 and rb.CONDITIONS["res256"].source == 256
    assert rb.render_clip(rb.CONDITIONS["res48"], SWING[:2], np.random.default_rng(0)).shape == (2, 48, 48, 3)


def test_backgrounds():
    corner = lambda name: render(name)[:, -3:, :3].reshape(-1, 3)  # noqa: E731  bottom-left, never reached by the bob
    assert (corner("black") == 0).all() and (corner("white") == 255).all() and (corner("grey") == 128).all()
    g = luma(render("gradient")[0])
    assert g[0, 0] < g[N // 2, N // 2] < g[-1, -1]
    t = render("texture")
    np.testing.assert_array_equal(t[0, -5:], t[-1, -5:])  # static
    assert luma(t[0, -5:]).std() > 0.05


def test_rgb_contrast_is_what_it_says():
    for c in (0.3, 0.15):
        rgb = np.array(rb.contrast_rgb(c))
        assert rgb @ [0.299, 0.587, 0.114] - 0.5 == pytest.approx(c, abs=1e-9) and len(set(rgb)) == 3  # a colour, not grey
    frame = render("contrast15", theta=[0.0])[0]
    bob = int((rb.PIVOT[1] + rb.ROD) * N), N // 2
    assert luma(frame)[bob] - luma(frame)[-1, 0] == pytest.approx(0.15, abs=0.01)


def test_rod_string_or_nothing():
    mid = int((rb.PIVOT[1] + rb.ROD / 2) * N), N // 2  # halfway down a hanging rod
    lum = {name: luma(render(name, theta=[0.0], background="grey"))[0][mid] for name in ("black", "string", "bob_only")}
    assert lum["bob_only"] == pytest.approx(128 / 255)
    assert abs(lum["black"] - 0.5) > abs(lum["string"] - 0.5) > 0.01  # a rod covers more of the pixel than a string


def test_pixel_noise_has_its_std():
    for name, sigma in (("noise05", 0.05), ("noise10", 0.1)):
        clean = render(name, noise=0.0, background="grey").astype(float)
        noisy = render(name, background="grey").astype(float)
        assert ((noisy - clean) / 255).std() == pytest.approx(sigma, rel=0.1)


def test_distractor_moves_and_is_the_only_change():
    still = np.zeros(8)
    diff = np.abs(render("distractor", theta=still).astype(float) - render("black", theta=still)).sum(-1)
    assert (diff.reshape(8, -1).max(1) > 0).all()
    ys, xs = zip(*[np.argwhere(d > 0).mean(0) for d in diff])
    assert np.hypot(np.diff(ys), np.diff(xs)).min() > 0.3  # a new place every frame


def test_occluder_pixels_are_constant_while_the_bob_swings():
    frames = render("occluder", theta=np.linspace(-1.2, 1.2, 12))
    top, left, bottom, right = rb.occluder_box(N)
    box = frames[:, top:bottom, left:right]
    assert (box == box[0]).all() and (box[0] == np.round(np.array([0.35, 0.3, 0.25]) * 255)).all()
    # the swing does reach behind it: unoccluded, those pixels change
    assert not (render("black", theta=np.linspace(-1.2, 1.2, 12))[:, top:bottom, left:right] == box[0]).all()


def test_jitter_shifts_the_whole_frame_by_at_most_two_pixels():
    theta = np.full(10, 0.3)
    base = render("black", theta=theta)[0]
    shaky = render("jitter", theta=theta)
    shifts = []
    for frame in shaky:
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(frame[2:-2, 2:-2], base[2 + dy : N - 2 + dy, 2 + dx : N - 2 + dx])]  # fmt: skip
        assert found, "each frame is the still frame, moved"
        shifts.append(found[0])
    assert len(set(shifts)) > 2


def test_drift_is_slow_and_flicker_is_not():
    still = np.full(40, 0.2)
    base = luma(render("black", theta=still)).mean((1, 2))
    drift = luma(render("drift", theta=still)).mean((1, 2)) / base
    flicker = luma(render("flicker", theta=still)).mean((1, 2)) / base
    assert drift.max() / drift.min() > 1.3 and np.abs(np.diff(drift)).max() < 0.06
    assert np.abs(np.diff(flicker)).mean() > 0.04


def test_rk4_pendulum_is_the_physics():
    z = rb.rk4_pendulum([0.05], [0.0], 400, 1 / 100)  # small swing: period 2 pi sqrt(L/g)
    crossings = np.flatnonzero(np.diff(np.sign(z[0, :, 0])) != 0)
    period = 2 * np.mean(np.diff(crossings)) / 100
    assert period == pytest.approx(2 * math.pi * math.sqrt(rb.L_TRUE / rb.G), rel=0.02)
    big = rb.rk4_pendulum([1.2], [1.0], 300, 1 / 30)[0]
    energy = 0.5 * rb.L_TRUE * big[:, 1] ** 2 - rb.G * np.cos(big[:, 0])
    assert np.ptp(energy) < 1e-6


def test_dataset_truth_and_the_25_fps_video(tmp_path):
    from anmc.data.io import read_truth
    from anmc.data.rate import source_fps

    cond = replace(rb.CONDITIONS["fps25"], source=N)
    states = rb.make_dataset(cond, tmp_path / "d", seed=3, clips=2, frames=12)
    truth = read_truth(tmp_path / "d")
    np.testing.assert_allclose(truth["clips"][1], states[1])
    assert truth["meta"]["params"]["L"] == rb.L_TRUE and truth["meta"]["fps"] == 25
    assert source_fps(tmp_path / "d" / "clip_000.mp4") == pytest.approx(25)
    np.testing.assert_allclose(states, rb.draw_states(2, 12, 25.0, np.random.default_rng([3, 19])))  # by seed
    prior, note = rb.prior_for(tmp_path / "d", tmp_path / "p.anm")
    assert "dt = 1/25 using" in prior.read_text() and "param L = 0.9 " in prior.read_text() and note


def test_set_reaches_every_runs_config(tmp_path, monkeypatch):
    """`--set recon=gaussian` measures a candidate default: run_one builds each run's TrainConfig with it
    (training itself stubbed out here: the config is what is checked)."""
    import argparse

    import anmc.vae.train

    from anmc.vae.config import parse_overrides

    seen = []

    class Stop(Exception):
        pass

    def fake_train(prior, videos, run_dir, config, overwrite=False):
        seen.append(config)
        priors.append(Path(prior).read_text())
        raise Stop

    priors = []

    monkeypatch.setattr(anmc.vae.train, "train", fake_train)
    args = argparse.Namespace(clips=2, frames=8, epochs=3, time_limit=1.0, sets=["recon=gaussian"], prior=rb.PRIOR,
                              camera=False, camera_error=(0.0, 0.0, 0.0), camera_learn=False, overrides=parse_overrides(["recon=gaussian", "batch=2"]))  # fmt: skip
    with pytest.raises(Stop):
        rb.run_one(replace(rb.CONDITIONS["grey"], source=N), 0, args, tmp_path)
    assert seen[0].recon == "gaussian" and seen[0].batch == 2 and seen[0].epochs == 3 and seen[0].seed == 0
    # `--set seed=N`: the same data (drawn with the run's seed) trained from another start
    args.overrides = parse_overrides(["seed=7", "restarts=3", "restart_epochs=1"])
    with pytest.raises(Stop):
        rb.run_one(replace(rb.CONDITIONS["grey"], source=N), 0, args, tmp_path)
    assert seen[1].seed == 7 and seen[1].restarts == 3
    # `--camera`: the camera prior with this source's camera written in, L started 50% off
    args.camera, args.prior = True, rb.CAMERA_PRIOR
    with pytest.raises(Stop):
        rb.run_one(replace(rb.CONDITIONS["grey"], source=N), 0, args, tmp_path)
    assert "model pendulum_camera" in priors[2] and f"const S = {N} " in priors[2] and "param L = 0.9 " in priors[2]
    assert "model pendulum\n" in priors[0] and "const S" not in priors[0]


def test_prior_variant_keeps_its_text_and_starts_L_off(tmp_path):
    """`--prior` measures a variant of the pendulum prior (here its noise learnable) on every condition alike."""
    variant = tmp_path / "learn.anm"
    text = rb.PRIOR.read_text()
    noise = next(line for line in text.splitlines() if line.startswith("noise "))
    variant.write_text(text.replace(noise, "noise theta = 0.01 learn, omega = 0.05 learn"))
    rb.make_dataset(replace(rb.CONDITIONS["black"], source=N), tmp_path / "d", seed=0, clips=1, frames=4)
    prior, _ = rb.prior_for(tmp_path / "d", tmp_path / "p.anm", variant)
    written = prior.read_text()
    assert "noise theta = 0.01 learn, omega = 0.05 learn" in written and "param L = 0.9 " in written
    no_length = tmp_path / "spring.anm"
    no_length.write_text((rb.ROOT / "priors" / "spring.anm").read_text())
    with pytest.raises(SystemExit, match="param L"):
        rb.prior_for(tmp_path / "d", tmp_path / "q.anm", no_length)


@pytest.mark.parametrize("size", [48, 96, 256])
def test_camera_written_in_is_where_the_generator_draws_the_rod_and_bob(tmp_path, size):
    """`--camera`: priors/pendulum_camera.anm with the generator's camera at the source's side; the bob's
    centroid in the generator's frames (bob only, black) is the declared px2, py2, the rod's middle px1, py1."""
    import torch

    from anmc.codegen.compile import compile_prior

    path = tmp_path / "camera.anm"
    path.write_text(rb.camera_for(rb.CAMERA_PRIOR, size))
    module = compile_prior(path).module().double()
    theta = np.linspace(-1.2, 1.2, 7)
    declared = module.observe(torch.tensor(np.stack([theta, 0 * theta], 1))).numpy()
    frames = luma(rb.render_clip(replace(rb.CONDITIONS["bob_only"], source=size), theta, np.random.default_rng(0)))
    c = np.arange(size) + 0.5
    centroid = np.stack([frames.sum(1) @ c, frames.sum(2) @ c], 1) / frames.sum((1, 2))[:, None]
    np.testing.assert_allclose(centroid, declared[:, 3:5], atol=0.02 * size / 32)
    pivot = np.array([rb.PIVOT[0] * size, rb.PIVOT[1] * size])
    np.testing.assert_allclose(declared[:, 0:2], (pivot + declared[:, 3:5]) / 2, atol=1e-9)
    with pytest.raises(SystemExit, match="no `const S = ...` line"):
        rb.camera_for(rb.PRIOR, size)
    # `--camera-error 2,-3,0.1`: the pivot 2 px right and 3 px up, the bob's distance 10% long
    path.write_text(rb.camera_for(rb.CAMERA_PRIOR, size, (2.0, -3.0, 0.1)))
    bad = compile_prior(path).module().double().observe(torch.tensor([[0.0, 0.0]], dtype=torch.float64)).numpy()[0]
    np.testing.assert_allclose(bad[3:5], [pivot[0] + 2.0, pivot[1] - 3.0 + 1.1 * rb.ROD * size], atol=1e-9)
    # `--camera-learn`: the same camera as learnable params started there
    path.write_text(rb.camera_for(rb.CAMERA_PRIOR, size, (2.0, -3.0, 0.1), learn=True))
    learn = compile_prior(path).module().double()
    assert {"cx", "cy", "R"} <= set(learn.learnable_param_names)
    np.testing.assert_allclose(learn.observe(torch.tensor([[0.0, 0.0]], dtype=torch.float64)).detach().numpy()[0], bad, atol=1e-6)


@pytest.mark.slow
def test_quick_camera_run_trains_the_sprite_decoder_and_reports_the_learned_camera(tmp_path):
    """`--quick --camera --camera-learn`: each run trains priors/pendulum_camera.anm with the sprite decoder
    (the default for a prior with camera roles) and the JSON carries the camera it learned."""
    import json
    import subprocess

    out = tmp_path / "rows.json"
    run = subprocess.run([sys.executable, str(rb.ROOT / "benchmarks" / "robustness.py"), "--quick", "--camera", "--camera-learn",
                          "--workdir", str(tmp_path), "--json", str(out)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["condition"] for r in rows] == ["black", "grey"] and all(r["camera"] and r["camera_learn"] for r in rows)
    assert all(set(r["camera_learned"]) == {"cx", "cy", "R"} for r in rows)
    config = json.loads((tmp_path / "black_s0" / "run" / "config.json").read_text())
    assert config["decoder"] == "sprite"
    assert "param R = 0.42 * S in [0.05 * S, S] learn" in (tmp_path / "black_s0" / "pendulum.anm").read_text()


@pytest.mark.parametrize("name", ["black", "grey", "texture", "occluder", "distractor", "jitter", "noise10", "res48"])
def test_anmc_swing_measures_the_generators_camera(name):
    """`anmc swing`'s measurement (anmc.data.swing) on this generator's clips, which it never saw the
    making of: the pivot within half a pixel, R within 3%, the track reported reliable."""
    from anmc.data.swing import measure_swing

    cond = replace(rb.CONDITIONS[name], source=min(rb.CONDITIONS[name].source, 64))
    rng = np.random.default_rng([0, 19])
    states = rb.draw_states(8, 60, cond.fps, rng)
    s = measure_swing([rb.render_clip(cond, states[c, :, 0], np.random.default_rng([0, 19, c])) for c in range(8)])
    n = cond.source
    assert math.hypot(s.cx - rb.PIVOT[0] * n, s.cy - rb.PIVOT[1] * n) < 0.5 and abs(s.radius / (rb.ROD * n) - 1) < 0.03, s
    assert s.reliable, s.warnings()
    assert (s.pivot_se > 0.2) == (name == "jitter")  # the shake is what makes the track scatter


def test_measure_cameras_draws_each_data_set_and_reports_the_error(tmp_path, capsys):
    """`--measure-cameras`: each (condition, seed) drawn as mp4 clips as the training runs read them, measured
    by `anmc swing`, one row each with the error against the generator's camera, and a summary line."""
    import argparse

    args = argparse.Namespace(clips=2, frames=40)
    conds = [replace(rb.CONDITIONS[c], source=48) for c in ("black", "occluder")]
    rows = rb.measure_cameras(conds, [0], args, tmp_path)
    out = capsys.readouterr().out
    assert [r["condition"] for r in rows] == ["black", "occluder"] and (tmp_path / "occluder_s0" / "data" / "clip_000.mp4").exists()
    assert all(r["pivot_error_px"] < 0.5 and abs(r["R_error"]) < 0.03 for r in rows), rows
    assert rows[1]["frames"] < rows[1]["seen"]  # the occluded frames left out
    assert "pivot within" in out and "of 2 data sets with a warning" in out


@pytest.mark.slow
def test_quick_run_with_the_camera_measured_records_the_measurement(tmp_path):
    """`--quick --camera --camera-measured`: the prior each run trains carries the camera `anmc swing` measured
    off its clips, and the row records that measurement and its error against the generator's camera."""
    import json
    import subprocess

    out = tmp_path / "rows.json"
    run = subprocess.run([sys.executable, str(rb.ROOT / "benchmarks" / "robustness.py"), "--quick", "--camera", "--camera-measured",
                          "--camera-learn", "--workdir", str(tmp_path), "--json", str(out)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert all(r["camera_measured"]["pivot_error_px"] < 1.0 and abs(r["camera_measured"]["R_error"]) < 0.05 for r in rows), rows
    m = rows[0]["camera_measured"]
    assert f"param cx = {m['cx']:.1f} in [0, S] learn" in (tmp_path / "black_s0" / "pendulum.anm").read_text()
    assert "camera measured: pivot" in run.stdout
    bad = subprocess.run([sys.executable, str(rb.ROOT / "benchmarks" / "robustness.py"), "--quick", "--camera-measured"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "--camera-measured goes with --camera" in bad.stderr


def _row(condition, seed, r=1.0, l_err=0.002, **extra):
    return {"condition": condition, "seed": seed, "epochs": 15, "theta_r": r, "theta_slope": 1.0, "omega_r": r,
            "omega_slope": 1.0, "L": 0.6 * (1 + l_err), "L_err": l_err, "minutes": 10.0, "diagnostics": [], "note": "",
            "set": [], "prior": "priors/pendulum_camera.anm", "camera": True, "camera_error": [0.0, 0.0, 0.0],
            "camera_learn": False, **extra}  # fmt: skip


def test_summarize_joins_runs_made_one_at_a_time_and_says_what_the_full_table_lacks(tmp_path, capsys):
    """`--summarize` reads the --json files of runs made a condition and a seed at a time: one table per way
    of training (a bad camera is its own group), the conditions met in every seed, the runs that missed the
    targets, and the (condition, seed) runs the full 19 x 3 table still lacks."""
    import json

    (tmp_path / "a.json").write_text(json.dumps([_row("grey", s) for s in (0, 1, 2)]))
    (tmp_path / "b.json").write_text(json.dumps([_row("black", 0, l_err=-0.2), _row("black", 1, camera_error=[3.0, -3.0, 0.1])]))
    rows = rb.summarize([tmp_path / "a.json", tmp_path / "b.json"])
    out = capsys.readouterr().out
    assert len(rows) == 5
    assert "== pendulum_camera.anm camera: 4 runs" in out and "== pendulum_camera.anm camera error 3,-3,0.1: 1 runs" in out
    assert "met in every seed of 0, 1, 2: 1 of 19 conditions (grey)" in out
    assert "a run that did not meet them: black" in out  # L 20% short
    assert f"not run for the full table: {19 * 3 - 4} of 57" in out and "black 1" in out.split("camera: 4 runs")[1].split("==")[0]
    per_condition = out.split("camera: 4 runs")[1].split("per condition:")[1].split("met in every seed")[0]
    lines = [" ".join(line.split()) for line in per_condition.splitlines()]
    assert "grey 0,1,2 1.000 1.000-1.000 +0.2%..+0.2% 3/3" in lines and "black 0 1.000 1.000-1.000 -20.0%..-20.0% 0/1" in lines
    assert not rb.met(_row("grey", 0, r=0.9)) and rb.met(_row("grey", 0, l_err=-0.099))


def test_summarize_as_markdown_gives_the_tables_docs_show(tmp_path, capsys):
    """`--summarize --markdown`: the same runs as Markdown tables (docs/results.md §6 is pasted from them):
    one row a run with the measured and the learned camera's errors against the generator's, a run that
    missed the targets marked, and per condition the seeds still to run."""
    import json

    size = 96
    learned = {"cx": rb.PIVOT[0] * size + 0.3, "cy": rb.PIVOT[1] * size - 0.4, "R": rb.ROD * size * 0.98}
    measured = {"pivot_error_px": 0.12, "R_error": -0.011}
    rows = [_row("grey", 0, camera_learned=learned, camera_measured=measured), _row("grey", 1, r=0.9, camera_measured=measured)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    rb.summarize([tmp_path / "a.json"], markdown=True)
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| grey |")]
    assert table[0].split(" | ")[2:4] == ["0.12 px, -1.1%", "0.50 px, -2.0%"]  # hypot(0.3, 0.4); R 2% short
    assert table[0].endswith("| yes |") and table[1].endswith("| **no** |") and table[1].split(" | ")[3] == "-"
    assert "met in **1 of 2** runs" in out
    assert table[2].startswith("| grey | dark bob on a string over mid-grey") and table[2].endswith("| 1/2 | 2 |")
