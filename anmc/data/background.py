"""Background removal: what moves in a clip, drawn bright on black, before the VAE sees it.

    clips = without_background(load_clips("videos/", size=32))   # each clip's frames, background removed
    bg = estimate_background(frames)                              # Background(image, scale) of one clip
    fg = remove_background(frames, bg)                            # uint8, same shape as frames
    choice = auto_background(clips)                               # "auto": "remove" unless the backgrounds are dark

A static camera sees the same background in every frame; an object that moves covers each pixel
for part of the clip only. Each pixel's background is one of three values it takes over the clip (over
at most `SAMPLE` evenly spaced frames): its median, or its 10th or 90th percentile, whichever is most
common among all the clip's pixels (within `BAND` grey levels, each channel on its own). A pixel the
object crosses now and then keeps its median; one where an object rests for most of the clip (a
pendulum of small amplitude at the bottom of its swing, which a median would take for background and
draw as a hole) takes the tail on the background's side, because a background's level fills much of
the frame and an object's does not. That holds for objects brighter or darker than the background,
or both at once (a dark rod and a bright bob over a texture). The foreground is how far each frame is
from it, |frame − background| per channel, stretched so that its 99.9th percentile over the clip
becomes 255 (never by more than 255/5: a clip in which almost nothing moves is not amplified into
noise).

Why (docs/results.md §6, measured on benchmarks/robustness.py's videos): the default Bernoulli
likelihood is strong where the background is near 0 or 1 (its curvature is 1/(x(1 − x))) and weak on
a mid-grey one, where a dark bob on a grey background collapsed the posterior (the decoder drew the
mean image). On black every pixel the object covers is evidence; the frames this module makes look
like that whatever the background's level, colour or texture, and whether the object is darker or
brighter than it. What it cannot undo: a moving camera (the median blurs), a second moving object
(it stays, as it does in the raw frames), and an object that rests on one spot for most of a clip
(it becomes background).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from anmc.data.io import Clip

SAMPLE = 256  # frames read to estimate a clip's background and stretch
TAIL = 10.0  # the percentiles 10 and 90 are the candidates besides the median: an object may cover a pixel 90% of the time
BAND = 6  # grey levels either side counted as the same level when asking how common a value is
PERCENTILE = 99.9  # of the foreground over the clip, mapped to 255
MIN_SCALE = 5.0  # grey levels: the stretch is at most 255 / MIN_SCALE
CHOICES = ("keep", "remove", "auto")  # TrainConfig.background / `anmc train --background`
DARK = 26  # grey levels (a tenth of the range): "auto" keeps a background whose mean level is at most this


@dataclass(frozen=True)
class Background:
    """A clip's background `image` (uint8, the frame's shape) and the foreground level `scale` mapped to 255."""

    image: np.ndarray
    scale: float


def _sample(frames, n: int = SAMPLE) -> np.ndarray:
    """At most n evenly spaced frames of `frames` (an array or DiskFrames), as a uint8 array."""
    total = len(frames)
    if total <= n:
        return np.asarray(frames)
    idx = np.unique(np.linspace(0, total - 1, n).round().astype(int))
    if hasattr(frames, "read"):  # DiskFrames: read only the chosen frames
        return np.concatenate([frames.read(int(i), int(i) + 1) for i in idx])
    return np.asarray(frames[idx])


def estimate_background(frames) -> Background:
    """The background of (a sample of) a clip's uint8 frames `(T, H, W[, 3])`, and the stretch."""
    sample = _sample(frames)
    if len(sample) == 0:
        raise ValueError("a clip with no frames has no background")
    # candidates in the order ties are broken: the median first
    candidates = np.percentile(sample, [50.0, TAIL, 100.0 - TAIL], axis=0, method="nearest").astype(np.int64)
    channels = sample[..., None] if sample.ndim == 3 else sample
    kernel = np.ones(2 * BAND + 1)
    how_common = np.empty(candidates.shape)
    for c in range(channels.shape[-1]):
        counts = np.convolve(np.bincount(channels[..., c].ravel(), minlength=256), kernel, mode="same")
        sel = (..., c) if sample.ndim == 4 else (...,)
        how_common[sel] = counts[candidates[sel]]
    image = np.take_along_axis(candidates, how_common.argmax(axis=0)[None], axis=0)[0].astype(np.uint8)
    fg = np.abs(sample.astype(np.int16) - image.astype(np.int16))
    scale = max(float(np.percentile(fg, PERCENTILE)), MIN_SCALE)
    return Background(image=image, scale=scale)


def remove_background(frames, background: Background) -> np.ndarray:
    """uint8 frames `(T, H, W[, 3])`: |frames − background.image| · 255 / background.scale, clipped to 255."""
    fg = np.abs(np.asarray(frames).astype(np.int16) - background.image.astype(np.int16)).astype(np.float32)
    return np.clip(np.rint(fg * (255.0 / background.scale)), 0, 255).astype(np.uint8)


def without_background(clips: Sequence[Clip]) -> list[Clip]:
    """Each clip with its own background removed (in memory; DiskFrames go through anmc.data.cache)."""
    return apply_background(clips, "remove")[0]


def apply_background(clips: Sequence[Clip], choice: str) -> tuple[list[Clip], str]:
    """The clips as `choice` (one of CHOICES) says, and what was done ("keep" or "remove"); for "auto" each
    clip's background is estimated once, both to decide (`auto_background`) and to remove it."""
    if choice == "keep":
        return list(clips), "keep"
    found = [estimate_background(c.frames) for c in clips]
    if choice == "auto" and _choose(found) == "keep":
        return list(clips), "keep"
    return [replace(c, frames=remove_background(c.frames, bg)) for c, bg in zip(clips, found)], "remove"


def background_level(clips: Sequence[Clip]) -> float:
    """The clips' mean background level in grey levels (0-255): each clip's estimated background image
    averaged over its pixels and channels, then over the clips."""
    return _mean_level([estimate_background(c.frames) for c in clips])


def auto_background(clips: Sequence[Clip]) -> str:
    """What `--background auto` does with these clips: "keep" when their background is dark (mean level
    at most DARK), "remove" otherwise. On a dark background the Bernoulli likelihood already reads every
    pixel the object covers, and removal only costs (a static pivot or rod goes with the background, and
    each clip is stretched on its own); on a grey, bright, coloured or textured one the likelihood has
    little to explain and the posterior can collapse (docs/results.md §6)."""
    return _choose([estimate_background(c.frames) for c in clips])


def _mean_level(backgrounds: Sequence[Background]) -> float:
    return float(np.mean([bg.image.mean() for bg in backgrounds])) if backgrounds else 0.0


def _choose(backgrounds: Sequence[Background]) -> str:
    return "remove" if _mean_level(backgrounds) > DARK else "keep"
