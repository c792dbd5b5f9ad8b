"""Frame rate against the prior's dt: a recording's frames are dt apart in time, and the physics needs that dt.

    rate = frame_rate(["data/pend"])            # FrameRate(fps=25.0, sources={...}) from the files' metadata
    check_frame_rate(["data/pend"], dt=1/30)    # raises UserError when they disagree, saying what to change
    check_frame_rate(["data/pend"], dt=1/30, fps=30)   # --fps: the user states the rate (metadata ignored)

Where the rate comes from: an mp4/avi/... its container's `fps` (imageio-ffmpeg); an `.npz` its `fps`
array (what `write_video` stores). A GIF's frame durations are whole hundredths of a second (30 fps
is stored as 30 ms, read back as 33.3 fps), so a GIF is not trusted for its rate, like a `.npy` or a
folder of images, which carry none. Rates within `TOLERANCE` of 1/dt agree (docs/data.md, *Frame rate
and dt*).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anmc.data.io import FFMPEG_SUFFIXES, clip_sources
from anmc.errors import UserError

TOLERANCE = 0.02  # relative (29.97 fps NTSC video agrees with dt = 1/30)


def source_fps(path: str | Path) -> float | None:
    """The frame rate a file carries, or None (no metadata, or unreadable: reading errors are the reader's to report)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in FFMPEG_SUFFIXES:
            import imageio.v2 as iio2

            reader = iio2.get_reader(path, format="FFMPEG")
            try:
                fps = reader.get_meta_data().get("fps")
            finally:
                reader.close()
            return float(fps) if fps else None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return float(z["fps"]) if "fps" in z.files else None
    except Exception:  # noqa: BLE001
        return None
    return None


@dataclass
class FrameRate:
    """The rate the sources agree on (None when none carries one) and each source's own."""

    fps: float | None
    sources: dict[str, float] = field(default_factory=dict)


def frame_rate(videos) -> FrameRate:
    """Read every source's rate; a UserError when two sources disagree (one training set is one rate)."""
    rates = {}
    for path in clip_sources(videos):
        fps = source_fps(path)
        if fps is not None:
            rates[str(path)] = fps
    if not rates:
        return FrameRate(None)
    values = list(rates.values())
    lo, hi = min(values), max(values)
    if hi > lo * (1 + TOLERANCE):
        a = next(k for k, v in rates.items() if v == lo)
        b = next(k for k, v in rates.items() if v == hi)
        raise UserError(
            f"the videos have different frame rates ({a}: {lo:.4g} fps, {b}: {hi:.4g} fps); one prior has one dt, "
            "so train on clips of one rate (re-encode the others, e.g. ffmpeg -r), or pass --fps if the metadata is wrong."
        )
    return FrameRate(float(np.median(values)), rates)


def dt_text(fps: float) -> str:
    """How to write dt in the .anm for a rate: `1/25`, `1/29.97` (the language evaluates the quotient)."""
    return f"1/{round(fps)}" if abs(fps - round(fps)) < 1e-6 * fps else f"1/{fps:.6g}"


def check_frame_rate(videos, dt: float, fps: float | None = None, prior_name: str = "the prior") -> float | None:
    """The rate training assumes (`fps`, else the files' own); raises UserError when it disagrees with 1/dt.

    Returns the rate found (None when no source carries one and `fps` is not given: nothing to check)."""
    if fps is not None and not fps > 0:
        raise UserError(f"--fps {fps:g}: a frame rate must be positive (frames per second of the recording).")
    found = frame_rate(videos)
    rate, source = (fps, "--fps") if fps is not None else (found.fps, "the video's metadata")
    if rate is None:
        return None
    if abs(rate * dt - 1) > TOLERANCE:
        files = f" ({next(iter(found.sources))})" if fps is None and found.sources else ""
        raise UserError(
            f"the frames are {1 / rate:.4g} s apart ({rate:.4g} fps, from {source}{files}) but {prior_name} steps "
            f"dt = {dt:.4g} s ({1 / dt:.4g} fps); write `dt = {dt_text(rate)}` in its dynamics line, or, if the "
            f"recording's true rate is {1 / dt:.4g} fps (slow motion, wrong metadata), pass --fps {1 / dt:.4g}."
        )
    return rate
