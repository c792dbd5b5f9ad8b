"""`anmc quickstart`: the whole path end to end, at a tiny size (the real budgets are measured in the README)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from anmc.cli import QUICK, main


@pytest.mark.slow
def test_quick_path_runs_every_step_and_writes_every_file(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "qs"
    result = CliRunner().invoke(
        main, ["quickstart", "--quick", "-o", str(out), "--clips", "3", "--frames", "24", "--epochs", "1",
               "--steps-per-epoch", "2", "--batch", "2", "--seq-len", "4", "--size", "16"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.output
    for step in ("a first look", "1. synthesize", "2. train", "3. evaluate", "4. the learned model", "5. what if", "results"):
        assert step in text, step
    names = {p.name for p in out.iterdir()}
    assert {"run", "data", "eval.json", "latent.png", "latent_reconstructions.png", "latent_states.png", "drag.gif",
            "drag_latents.csv", "drag_latents.png"} <= names  # fmt: skip
    report = json.loads((out / "eval.json").read_text())
    assert set(report["states"]) == {"theta", "omega"}
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["epochs"] == 1 and config["steps_per_epoch"] == 2  # the user's values win over --quick's
    assert config["warmup"] == QUICK["warmup"] and config["learn_params_after"] == QUICK["learn_params_after"]


def test_quick_budget_is_smaller_than_the_full_one():
    from anmc.vae.config import TrainConfig

    full = TrainConfig()
    assert QUICK["epochs"] * QUICK["steps_per_epoch"] * 4 <= full.epochs * full.steps_per_epoch
