"""Fault injection: `anmc train` in a subprocess, killed with SIGKILL at random (seeded) moments and
resumed until it finishes, ends with the same weights, optimizer state and metrics, bit for bit, as
one uninterrupted run (issue 17 §6; docs/guarantees.md). Kills land while the interpreter starts,
during steps, and during checkpoint writes; each restart takes over the killed run's lock and
removes its temporary files."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anmc.synthetic.synth import synthesize
from anmc.vae.run import CHECKPOINT, load_checkpoint, read_metrics
from anmc.vae.run_lock import LOCK

ROOT = Path(__file__).resolve().parents[1]
PRIOR = str(ROOT / "priors" / "pendulum.anm")
EPOCHS = 6
ARGS = ["--size", "16", "--batch", "2", "--seq-len", "4", "--steps-per-epoch", "4", "--epochs", str(EPOCHS), "--learn-params-after", "2"]
KILLS = 5


def _command(data: Path, run: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "anmc", "train", PRIOR, str(data), "-o", str(run), *(["--resume"] if resume else ARGS)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _epoch_done(run: Path) -> int:
    try:
        return load_checkpoint(run)["epoch"] if (run / CHECKPOINT).exists() else 0
    except Exception:  # noqa: BLE001 - a checkpoint must never be unreadable: fail loudly below
        raise AssertionError(f"{run / CHECKPOINT} is unreadable after a kill") from None


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    synthesize(PRIOR, out_dir=data, clips=2, frames=16, size=16, seed=3, fmt="npz")

    reference = tmp_path / "reference"
    started = time.monotonic()
    done = subprocess.run(_command(data, reference, resume=False), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    startup = time.monotonic() - started - read_metrics(reference)[-1]["seconds"]
    per_epoch = read_metrics(reference)[-1]["seconds"] / EPOCHS

    rng = random.Random(17)
    run = tmp_path / "killed"
    kills, seen_epochs = 0, []
    for attempt in range(KILLS + 10):
        epoch = _epoch_done(run)
        seen_epochs.append(epoch)
        if epoch == EPOCHS:
            break
        proc = subprocess.Popen(_command(data, run, resume=epoch > 0), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < KILLS:
            # a moment anywhere in a run's life: the interpreter's start (first kill), or some time into a
            # random epoch still to come (its steps, its metrics line, its checkpoint write)
            if kills == 0:
                time.sleep(rng.uniform(0.2, startup))
            else:
                target = rng.randint(epoch, EPOCHS - 1)
                while proc.poll() is None and _epoch_done(run) < target:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 1.2 * per_epoch))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), err
    assert kills == KILLS, f"only {kills} kills landed"
    assert _epoch_done(run) == EPOCHS, seen_epochs

    a, b = load_checkpoint(reference), load_checkpoint(run)
    for key in a["vae"]:
        assert torch.equal(a["vae"][key], b["vae"][key]), key
    assert a["rng"].keys() == b["rng"].keys() and all(torch.equal(a["rng"][k], b["rng"][k]) for k in a["rng"] if k != "cuda")
    assert all(torch.equal(x, y) for x, y in zip(a["rng"].get("cuda", []), b["rng"].get("cuda", []))) and a["step"] == b["step"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "epoch_seconds")} for r in rows]  # noqa: E731 (times differ)
    assert strip(read_metrics(run)) == strip(read_metrics(reference))
    assert not list(run.glob(".*.tmp-*")) and not (run / LOCK).exists()
