"""A TensorBoard view of a training run, written beside metrics.jsonl (which stays the record).

    log = TensorBoardLog(run_dir / "tensorboard")
    train(prior, videos, run_dir, config, progress=log.progress, on_epoch=log.on_epoch)

Fed the same values the trainer reports: every step's loss terms and physical params (tags
`step/<name>`, `params/<name>`), every epoch's metrics.jsonl row, flattened (`epoch/<key>`,
`epoch/<group>.<key>` for a nested dict such as the params), and, when a `pictures(vae, row)`
callable is given, its matplotlib figures as images (`pictures/<name>`). Needs the `tensorboard`
package (`pip install 'anmc[tensorboard]'`).
"""

from __future__ import annotations

import math
from pathlib import Path

from anmc.errors import UserError

MISSING = "--tensorboard needs the tensorboard package, which is not installed: pip install 'anmc[tensorboard]'."


def flatten(row: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) metrics row: {"params": {"L": 1.0}} -> {"params.L": 1.0}; bools as 0/1."""
    out = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
    return out


class TensorBoardLog:
    """Scalars per step and per epoch, and pictures per epoch, into one TensorBoard log folder."""

    def __init__(self, log_dir: str | Path, pictures=None, params=()):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(MISSING) from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.pictures = pictures  # (vae, row) -> {name: matplotlib Figure}
        self.params = set(params)  # names in a step's values that are physical params
        self.steps_per_epoch = None

    def progress(self, epoch: int, step: int, steps: int, values: dict) -> None:
        """The trainer's per-step callback: step `step` (1-based) of `steps` in epoch `epoch` (0-based)."""
        self.steps_per_epoch = steps
        global_step = epoch * steps + step
        for name, value in flatten(values).items():
            tag = f"params/{name}" if name in self.params else f"step/{name}"
            self.writer.add_scalar(tag, value, global_step)

    def on_epoch(self, vae, row: dict) -> None:
        """The trainer's per-epoch callback: the metrics.jsonl row, then the pictures, at the epoch's last step."""
        step = int(row.get("step", row.get("epoch", 0)))
        for name, value in flatten(row).items():
            if name not in ("epoch", "step"):
                self.writer.add_scalar(f"epoch/{name}", value, step)
        if self.pictures is not None:
            import matplotlib.pyplot as plt

            for name, fig in self.pictures(vae, row).items():
                self.writer.add_figure(f"pictures/{name}", fig, step, close=True)
            plt.close("all")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
