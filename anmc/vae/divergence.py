"""Training that diverges stops with a message, and the last good checkpoint stays.

A prior whose dynamics blow up where the encoder puts the states (`x' = x^3` from a large start,
`1/x` or `x^-1` near zero) makes the transition's covariance J S Jᵀ + Q overflow or lose its rank:
the smoother's solve or Cholesky fails, or the loss or its gradient is inf or nan. Any of these
becomes `TrainingDiverged` (a UserError: exit 2, one sentence, no traceback) before the optimizer
takes the step, so the weights in memory and on disk are those of the last finished epoch.

    with guard(epoch, step, run_dir, last_good):      # LinAlgError -> TrainingDiverged
        out = sequence_loss(...)
    check_finite("the loss", out["loss"], ...)         # inf / nan -> TrainingDiverged
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from anmc.errors import UserError


class TrainingDiverged(UserError):
    """The loss, its gradient or the smoother's algebra became non-finite; the last good checkpoint is kept.
    `epochs_kept`: the epochs on disk when it happened (0: none)."""

    epochs_kept: int = 0


def diverged(what: str, epoch: int, step: int, run_dir: str | Path, last_good: int) -> TrainingDiverged:
    """The error for `what` went wrong at (1-based) `epoch`, `step`; `last_good` epochs are on disk."""
    kept = (
        f"the last good checkpoint (epoch {last_good}) is kept in {run_dir}"
        if last_good > 0
        else f"no checkpoint was written to {run_dir} yet"
    )
    error = TrainingDiverged(
        f"training diverged at epoch {epoch}, step {step} ({what}); {kept}: the prior's dynamics may blow up where "
        "the encoder puts the states (x' = x^3 far out, 1/x near 0; early in training its readings can wander far from "
        "the prior's range), so try a smaller dt or more substeps, bound the equation (tanh, min/max), a lower --lr or "
        "another --seed, then train again (or --resume)."
    )
    error.epochs_kept = last_good  # 0: it diverged before its first checkpoint, and nothing of it is lost
    return error


def where_diverged(message: str) -> str:
    """' at epoch 1, step 13 (linalg.cholesky failed ...)': where and why, from a message `diverged` wrote (kept
    as text in RUN/starts.json); '' for another message."""
    head = message.split(";", 1)[0]
    return " " + head.split("diverged ", 1)[1] if head.startswith("training diverged ") else ""


@contextlib.contextmanager
def guard(epoch: int, step: int, run_dir: str | Path, last_good: int):
    """Turn the smoother's and the KL's linear-algebra failures inside the block into TrainingDiverged."""
    try:
        yield
    except torch.linalg.LinAlgError as err:
        first = str(err).split(":", 1)[0].strip() or "a linear solve"
        raise diverged(f"{first} failed on a singular or non-finite covariance", epoch, step, run_dir, last_good) from None


def check_finite(name: str, value, epoch: int, step: int, run_dir: str | Path, last_good: int) -> None:
    """TrainingDiverged unless `value` (a scalar tensor or float) is finite."""
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        raise diverged(f"{name} became {v}", epoch, step, run_dir, last_good)


def finite_weights(module: torch.nn.Module) -> bool:
    """Whether every parameter and buffer of `module` is finite (checked before a checkpoint is written)."""
    return all(bool(torch.isfinite(t).all()) for t in [*module.parameters(), *module.buffers()] if t.is_floating_point())
