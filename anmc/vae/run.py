"""Run directories and checkpoints: written atomically, loaded with `weights_only=True`.

A run directory holds everything needed to evaluate, intervene or resume:

    RUN/checkpoint.pt    network + prior weights, optimizer state, RNG state, epoch/step,
                         the .anm source and the resolved config (plain types only)
    RUN/prior.anm        the .anm source, for reading
    RUN/metrics.jsonl    one JSON line per epoch
    RUN/config.json      the resolved config, for reading

`load_run` rebuilds a trained run (its compiled prior and VAE) from the directory alone; every
command that reads a run (`eval`, `intervene`, `plot`, `show`, `check-interventions`) starts there.

`save_checkpoint` writes a temporary file beside the target and renames it over, so an interrupted
run never leaves a half-written checkpoint; when the write fails (a full disk, a read-only folder)
the temporary file is removed, the previous checkpoint stays, and the error says so.
`load_checkpoint` checks every key's type before anything uses it, and `read_metrics` skips a
last line cut short by a kill (the line is written again when the run resumes).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from anmc.codegen.compile import CompiledPrior, compile_stored
from anmc.data.background import without_background
from anmc.data.io import Clip, load_clips
from anmc.errors import UserError
from anmc.vae.config import TrainConfig
from anmc.vae.nets import VideoVAE, build_vae, on_device

FORMAT = "anmc-checkpoint-1"
CHECKPOINT = "checkpoint.pt"


class CheckpointError(UserError):
    """A run directory or checkpoint that cannot be used; the message says why and what to do."""


class RunExists(UserError):
    """A new training pointed at a run directory that already holds a trained run."""


class CheckpointWriteError(UserError):
    """The checkpoint could not be written; the previous one is intact."""


# key -> (type, what it holds); the checkpoint is refused unless each has that type
_KEYS = {
    "anm_source": (str, "the .anm text"),
    "anm_filename": (str, "the .anm file name"),
    "config": (dict, "the training config"),
    "epoch": (int, "epochs done"),
    "step": (int, "steps done"),
    "vae": (dict, "the weights"),
    "optimizer": (dict, "the optimizer state"),
    "rng": ((dict, torch.Tensor), "the random state: CPU and CUDA generators, or the CPU's alone from older runs"),
    "frame_shape": (list, "the frame shape"),
}
_OPTIONAL = {"videos": (list, "the training videos"), "metrics": (dict, "the last metrics row"),
             "anm_steps": (list, "the interventions and edits applied to the .anm")}


def save_checkpoint(run_dir: str | Path, payload: dict) -> Path:
    """Write `payload` to RUN/checkpoint.pt atomically (temp file + fsync + rename)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / CHECKPOINT
    tmp = run_dir / f".{CHECKPOINT}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            torch.save({"format": FORMAT, **payload}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError of its zip writer
        with contextlib.suppress(OSError):
            tmp.unlink()
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:120]
        kept = f"the previous checkpoint {target} is intact" if target.exists() else f"no checkpoint was written to {run_dir}"
        raise CheckpointWriteError(
            f"could not write the checkpoint ({reason}); {kept}: free disk space or fix the folder's permissions, then --resume."
        ) from None
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
    check_payload(payload, path)
    return payload


def check_payload(payload: dict, path) -> None:
    """CheckpointError unless every key a run needs is there with its type (a 3-int frame shape,
    string video paths): an edited or foreign file stops here, not at a KeyError deep inside."""
    for key, (kind, what) in {**_KEYS, **_OPTIONAL}.items():
        if key not in payload:
            if key in _OPTIONAL:
                continue
            raise CheckpointError(f"{path} has no {key!r} ({what}); it is damaged or from another anmc version: retrain the run.")
        value = payload[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if ok and key == "frame_shape":
            ok = len(value) == 3 and all(isinstance(v, int) and v > 0 for v in value)
        if ok and key == "videos":
            ok = all(isinstance(v, str) for v in value)
        if ok and key == "anm_steps":
            ok = all(isinstance(step, list) and step and all(isinstance(v, str) for v in step) for step in value)
        if ok and key in ("epoch", "step"):
            ok = value >= 0
        if ok and key == "rng" and isinstance(value, dict):
            ok = isinstance(value.get("cpu"), torch.Tensor) and all(isinstance(t, torch.Tensor) for t in value.get("cuda", []))
        if not ok:
            raise CheckpointError(
                f"{path} holds {type(value).__name__} {_short(value)} as {key!r} ({what}); it is damaged or from another anmc version: retrain the run."
            )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def append_metrics(run_dir: str | Path, row: dict) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metrics rows. A last line cut short (the run was killed while writing it) is skipped;
    any other line that is not a JSON object is a CheckpointError naming it."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        lines = path.read_text().split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); delete it (training rewrites it on --resume from the checkpoint).") from None
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            if i == last:  # the line being written when the run stopped
                break
            raise CheckpointError(f"{path} line {i + 1} is not a metrics row; delete that line (or the file) and try again.")
        rows.append(row)
    return rows


def truncate_metrics(run_dir: str | Path, epochs_done: int, last_row: dict | None = None) -> None:
    """Drop metric lines of epochs after the checkpoint (an interrupted run's partial log) before resuming;
    `last_row` (the checkpoint's own copy of its epoch's row) restores that line if it was cut short."""
    rows = [r for r in read_metrics(run_dir) if r.get("epoch", 0) <= epochs_done]
    if last_row is not None and last_row.get("epoch") == epochs_done and not any(r.get("epoch") == epochs_done for r in rows):
        rows.append(last_row)
    (Path(run_dir) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@dataclass
class Run:
    """A trained run loaded from its directory."""

    run_dir: Path
    vae: VideoVAE
    prior: CompiledPrior
    config: TrainConfig
    payload: dict

    @property
    def module(self):
        return self.vae.prior

    @property
    def videos(self) -> list[str]:
        return list(self.payload.get("videos", []))


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Rebuild the VAE and prior of a run directory from its checkpoint (weights_only=True)."""
    payload = load_checkpoint(run_dir, map_location=device)
    config = TrainConfig.from_dict(payload["config"], f"{run_dir}/checkpoint.pt")
    try:
        prior = compile_stored(payload["anm_source"], payload.get("anm_steps", []), payload["anm_filename"])
    except (UserError, ValueError) as err:
        raise CheckpointError(f"the prior stored in {run_dir} no longer compiles ({str(err).splitlines()[0]}); retrain the run.") from None
    vae = build_vae(prior, payload["frame_shape"], config)
    weights = payload["vae"]
    legacy = [k for k in VideoVAE.SCALES if k not in weights]
    if legacy == list(VideoVAE.SCALES) and set(vae.prior.observations) <= set(vae.prior.state_names):
        # saved before the scales were buffers: observations of states, whose scales are the ones it had
        weights = {**weights, **{k: getattr(vae, k) for k in legacy}}
    try:
        vae.load_state_dict(weights)
    except RuntimeError:
        raise CheckpointError(
            f"the weights in {run_dir} do not fit the model its prior describes; the checkpoint comes from another model or anmc version: retrain."
        ) from None
    return Run(Path(run_dir), on_device(vae, device).eval(), prior, config, payload)


def load_run_clips(run: Run, videos=None) -> list[Clip]:
    """The clips to evaluate: `videos` if given, else the run's training videos, at the run's frame size
    and with their background removed if the run trained so."""
    sources = videos or run.videos
    if not sources:
        raise UserError(f"{run.run_dir} records no training videos; pass --video.")
    missing = [] if videos else [s for s in sources if not Path(s).exists()]
    if missing:
        where = "is not there now" if Path(missing[0]).is_absolute() else "(relative to the folder `anmc train` ran in) is not found from here"
        raise UserError(f"{run.run_dir} was trained on {missing[0]}, which {where}; give its videos with --video (eval, plot and intervene take it).")
    c, h, w = run.payload["frame_shape"]
    clips = load_clips(sources, size=h, gray=(c == 1), min_frames=run.vae.window + 1)
    return without_background(clips) if run.config.background == "remove" else clips
