"""`anmc train --tensorboard`: the log holds what the trainer reports, the pictures per epoch, and
changes nothing about the run; without the package, one sentence and exit 2."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from click.testing import CliRunner

from anmc.cli import main
from anmc.errors import UserError
from anmc.vae.tensorboard import MISSING, TensorBoardLog, flatten

PRIOR = "priors/pendulum.anm"


def events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_flatten_rows():
    row = {"epoch": 3, "loss": 1.5, "params": {"L": 0.9, "c": 0.0}, "physics_learning": True, "note": "x", "bad": float("nan")}
    assert flatten(row) == {"epoch": 3.0, "loss": 1.5, "params.L": 0.9, "params.c": 0.0, "physics_learning": 1.0}


def test_log_writes_steps_params_epochs_and_pictures(tmp_path):
    import matplotlib.pyplot as plt

    def pictures(vae, row):
        fig = plt.figure(figsize=(2, 1), dpi=50)
        return {"one": fig}

    log = TensorBoardLog(tmp_path, pictures=pictures, params=["L"])
    for epoch in range(2):
        for step in range(1, 4):
            log.progress(epoch, step, 3, {"loss": 10.0 - epoch * 3 - step, "kl": 0.5, "L": 1.0 + step / 10})
        log.on_epoch(None, {"epoch": epoch + 1, "step": 3 * (epoch + 1), "loss": 9.0 - epoch, "params": {"L": 1.3}})
    log.close()
    acc = events(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("step/loss")] == [(s, 10.0 - (s - 1) // 3 * 3 - ((s - 1) % 3 + 1)) for s in range(1, 7)]
    assert [e.step for e in acc.Scalars("params/L")] == list(range(1, 7))
    assert [(e.step, e.value) for e in acc.Scalars("epoch/loss")] == [(3, 9.0), (6, 8.0)]
    assert [e.step for e in acc.Scalars("epoch/params.L")] == [3, 6]
    images = acc.Images("pictures/one")
    assert [e.step for e in images] == [3, 6] and (images[0].width, images[0].height) == (100, 50)


def test_missing_package_is_one_sentence_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(UserError, match="pip install 'anmc\\[tensorboard\\]'"):
        TensorBoardLog(tmp_path)
    from anmc.synthetic.synth import synthesize

    synthesize(PRIOR, out_dir=tmp_path / "data", clips=2, frames=12, size=16, seed=1, fmt="npz")
    result = CliRunner().invoke(main, ["train", PRIOR, str(tmp_path / "data"), "-o", str(tmp_path / "run"), "--tensorboard"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {MISSING}"
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_cli_train_tensorboard_logs_and_leaves_the_run_unchanged(tmp_path):
    from anmc.synthetic.synth import synthesize

    torch.set_num_threads(1)
    synthesize(PRIOR, out_dir=tmp_path / "data", clips=3, frames=20, size=16, seed=2, fmt="npz")
    args = ["train", PRIOR, str(tmp_path / "data"), "--size", "16", "--epochs", "2", "--steps-per-epoch", "3",
            "--batch", "2", "--seq-len", "4", "--learn-params-after", "1"]  # fmt: skip
    plain = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "plain")])
    logged = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "logged"), "--tensorboard"])
    assert plain.exit_code == 0 and logged.exit_code == 0, logged.output

    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "epoch_seconds")} for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert rows("plain") == rows("logged")  # the pictures drew no random numbers from the run
    acc = events(tmp_path / "logged" / "tensorboard")
    assert [e.step for e in acc.Scalars("step/loss")] == list(range(1, 7))
    assert [e.step for e in acc.Scalars("params/L")] == list(range(1, 7))
    epoch_loss = [e.value for e in acc.Scalars("epoch/loss")]
    assert epoch_loss == pytest.approx([r["loss"] for r in rows("logged")], rel=1e-6)
    for name in ("latent_space", "reconstructions", "latents_against_truth"):
        assert [e.step for e in acc.Images(f"pictures/{name}")] == [3, 6], name
