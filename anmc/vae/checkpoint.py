"""Run directories and checkpoints: written atomically, loaded with `weights_only=True`.

A run directory holds everything needed to evaluate, intervene or resume:

    RUN/checkpoint.pt    network + prior weights, optimizer state, RNG state, epoch/step,
                         the .anm source and the resolved config (plain types only)
    RUN/prior.anm        the .anm source, for reading
    RUN/metrics.jsonl    one JSON line per epoch
    RUN/config.json      the resolved config, for reading

`save_checkpoint` writes a temporary file beside the target and renames it over, so an interrupted
run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch

from anmc.errors import UserError

FORMAT = "anmc-checkpoint-1"
CHECKPOINT = "checkpoint.pt"


class CheckpointError(UserError):
    """A run directory or checkpoint that cannot be used; the message says why and what to do."""


def save_checkpoint(run_dir: str | Path, payload: dict) -> Path:
    """Write `payload` to RUN/checkpoint.pt atomically (temp file + fsync + rename)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / CHECKPOINT
    tmp = run_dir / f".{CHECKPOINT}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save({"format": FORMAT, **payload}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def load_checkpoint(run_dir: str | Path, map_location="cpu") -> dict:
    """Read RUN/checkpoint.pt (weights_only=True); CheckpointError with one clear sentence otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT if run_dir.is_dir() else run_dir
    if not run_dir.exists():
        raise CheckpointError(f"{run_dir} does not exist; give the -o directory of an `anmc train` run.")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} holds no {CHECKPOINT}; train into it first with `anmc train PRIOR VIDEO -o {run_dir}`.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable anmc checkpoint ({type(err).__name__}); it may be truncated or from another program: retrain or restore it."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an anmc checkpoint (format {payload.get('format') if isinstance(payload, dict) else type(payload).__name__}); give the directory of an `anmc train` run.")
    return payload


def append_metrics(run_dir: str | Path, row: dict) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, epochs_done: int) -> None:
    """Drop metric lines of epochs after the checkpoint (an interrupted run's partial log) before resuming."""
    rows = [r for r in read_metrics(run_dir) if r.get("epoch", 0) <= epochs_done]
    (Path(run_dir) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
