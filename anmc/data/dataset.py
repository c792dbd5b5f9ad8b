"""Windows of consecutive frames for training: decoded once, stored once as one uint8 tensor.

An item is `length` consecutive frames of one clip (k frames the encoder sees plus the next
frame(s) the prior predicts), uint8 `(length, C, H, W)`. Windows never cross from one clip to the
next: every clip is a separate continuous recording.

Splits are by clip (`train_val_split`), deterministic in the seed. With a single clip there is
nothing to split by, so `split_clips` cuts it in time into `round(1 / val_fraction)` contiguous
chunks (at least `min_frames` long each), holds out the chunk(s) the seed picks, and keeps
neighbouring training chunks joined, so no window crosses from a training chunk into a held-out one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from anmc.data.background import CHOICES, apply_background, auto_background
from anmc.data.cache import DiskFrames, cached_clips
from anmc.data.io import Clip, VideoError, load_clips


STILL_LEVELS = 8  # of 255: a pixel of a still scene moves this little under a codec's noise; a moving object far more


def is_still(frames, levels: int = STILL_LEVELS, chunk: int = 64) -> bool:
    """Whether no pixel of a clip (uint8 frames, an array or the cache's DiskFrames) ranges over more than `levels`
    of 255 in time: a clip with nothing to learn about motion. Reads `chunk` frames at a time and stops at the
    first sign of motion."""
    low = high = None
    for s in range(0, len(frames), chunk):
        part = np.asarray(frames[s : s + chunk])
        low = part.min(0) if low is None else np.minimum(low, part.min(0))
        high = part.max(0) if high is None else np.maximum(high, part.max(0))
        if int((high.astype(np.int16) - low).max()) > levels:
            return False
    return True


def check_motion(clips: Sequence[Clip]) -> None:
    """Raise VideoError when every clip is still (`is_still`): training would run to the end and learn nothing,
    and no diagnostic can tell, since the mean image is then a perfect reconstruction."""
    if clips and all(is_still(c.frames) for c in clips):
        where = ", ".join(str(c.path) for c in clips[:3]) + (f" and {len(clips) - 3} more" if len(clips) > 3 else "")
        raise VideoError(
            f"nothing moves in {'the clip' if len(clips) == 1 else f'any of the {len(clips)} clips'} ({where}): no pixel "
            f"changes by more than {STILL_LEVELS} of 255 over the frames, so there is no motion for the latents "
            "to follow; check that these are the recordings you meant (a folder of images is read as one clip, its "
            "frames in name order)."
        )


def train_val_split(n_clips: int, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic split of clip indices: `round(n val_fraction)` (at least 1, at most n - 1) held out.

    One clip, or `val_fraction == 0`, gives `([0 .. n-1], [])`; both lists are sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if n_clips < 2 or val_fraction == 0.0:
        return list(range(n_clips)), []
    n_val = min(n_clips - 1, max(1, round(n_clips * val_fraction)))
    order = np.random.default_rng(seed).permutation(n_clips)
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def split_clips(
    clips: Sequence[Clip], val_fraction: float = 0.2, seed: int = 0, min_frames: int = 1
) -> tuple[list[Clip], list[Clip]]:
    """Training and validation clips: by clip (`train_val_split`), or in time for a single clip.

    Time chunks are named `<name>[a:b]` (frames a..b-1 of the clip).
    """
    clips = list(clips)
    if len(clips) != 1 or val_fraction == 0.0:
        tr, va = train_val_split(len(clips), val_fraction, seed)
        return [clips[i] for i in tr], [clips[i] for i in va]
    clip = clips[0]
    n_chunks = min(max(2, round(1.0 / val_fraction)), clip.n_frames // max(1, min_frames))
    if n_chunks < 2:
        raise VideoError(
            f"{clip.path} has {clip.n_frames} frames, too few to hold out a validation part of "
            f"{min_frames} frames; use a longer clip, several clips, or no validation."
        )
    bounds = np.linspace(0, clip.n_frames, n_chunks + 1).round().astype(int)
    n_val = min(n_chunks - 1, max(1, round(n_chunks * val_fraction)))
    held = set(int(i) for i in np.random.default_rng(seed).permutation(n_chunks)[:n_val])

    def runs(chosen: bool) -> list[Clip]:
        out, start = [], None
        for i in range(n_chunks + 1):
            inside = i < n_chunks and ((i in held) == chosen)
            if inside and start is None:
                start = i
            elif not inside and start is not None:
                a, b = int(bounds[start]), int(bounds[i])
                out.append(Clip(name=f"{clip.name}[{a}:{b}]", path=clip.path, frames=clip.frames[a:b], first=clip.first + a))
                start = None
        return out

    return runs(False), runs(True)


def storage_device(nbytes: int, device: str | torch.device | None = None, fraction: float = 0.5) -> torch.device:
    """`device` when `nbytes` fit in `fraction` of its free memory (CUDA is asked; others assumed), else CPU."""
    if device is None:
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError):
            return torch.device("cpu")
        return device if nbytes <= fraction * free else torch.device("cpu")
    return device


class FrameSequences(Dataset):
    """Windows of `length` consecutive frames within one clip, as uint8 `(length, C, H, W)` tensors.

    `frames` is every clip's frames concatenated, uint8 `(N, C, H, W)`, stored once on `device` when
    it fits there (see `storage_device`; else on the CPU, `.device` says which). Item i is the view
    `frames[s_i : s_i + length]`; `batch(idx)` gathers `(B, length, C, H, W)` without a DataLoader.

    Clips whose frames are `DiskFrames` (anmc.data.cache) stay on disk (`on_disk`, `frames` is None):
    an item is read when asked for, so a DataLoader's workers can feed a data set larger than memory.
    """

    def __init__(self, clips: Sequence[Clip], length: int, device: str | torch.device | None = None, stride: int = 1):
        clips = list(clips)
        if length < 1 or stride < 1:
            raise ValueError(f"length and stride must be >= 1, got {length}, {stride}")
        if not clips:
            raise VideoError("there are no clips to train on; give at least one video.")
        shape = clips[0].frames.shape[1:]
        for c in clips:
            if c.frames.shape[1:] != shape:
                raise VideoError(
                    f"{c.path} has frames of shape {c.frames.shape[1:]} but {clips[0].path} has {shape}; load them at one --size."
                )
            if c.n_frames < length:
                raise VideoError(
                    f"{c.path} has {c.n_frames} frames but one training window needs {length}; use longer clips, or shorter training sequences (anmc train --seq-len) or window."
                )
        self.clips = clips
        self.length = int(length)
        self.names = [c.name for c in clips]
        self.background = "keep"  # what was done to the clips' background before (frame_datasets sets it)
        lengths = np.array([c.n_frames for c in clips])
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        starts, owner, local = [], [], []
        for i, (o, n) in enumerate(zip(self.offsets, lengths)):
            s = np.arange(0, n - length + 1, stride)
            starts.append(o + s)
            owner.append(np.full(len(s), i))
            local.append(s)
        self._starts = torch.as_tensor(np.concatenate(starts), dtype=torch.long)
        self._clip = np.concatenate(owner)
        self._local = np.concatenate(local)
        self._recorded = torch.as_tensor(self._local + np.array([c.first for c in clips])[self._clip], dtype=torch.long)
        self.on_disk = isinstance(clips[0].frames, DiskFrames)
        if self.on_disk:
            shape = clips[0].frames.frame_shape
            self._frame_shape = (1, *shape) if len(shape) == 2 else (shape[2], shape[0], shape[1])
            self.device, self.frames = torch.device("cpu"), None
            return
        stacked = np.concatenate([c.frames for c in clips], axis=0)
        stacked = stacked[:, None] if stacked.ndim == 3 else np.moveaxis(stacked, -1, 1)  # (N, C, H, W)
        self.device = storage_device(stacked.nbytes, device)
        self.frames = torch.from_numpy(np.ascontiguousarray(stacked)).to(self.device)
        self._steps = torch.arange(self.length, device=self.device)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        if self.on_disk:
            return self._frame_shape
        return tuple(self.frames.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self._starts.numel())

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.on_disk:
            a = int(self._local[i])
            window = self.clips[int(self._clip[i])].frames.read(a, a + self.length)
            window = window[:, None] if window.ndim == 3 else np.moveaxis(window, -1, 1)
            return torch.from_numpy(np.ascontiguousarray(window))
        s = int(self._starts[i])
        return self.frames[s : s + self.length]

    def batch(self, idx) -> torch.Tensor:
        """uint8 `(B, length, C, H, W)` for window indices `idx` (a list or a long tensor)."""
        if self.on_disk:
            return torch.stack([self[int(i)] for i in torch.as_tensor(idx, dtype=torch.long).reshape(-1)])
        idx = torch.as_tensor(idx, dtype=torch.long, device=self._starts.device)
        rows = self._starts[idx].to(self.device)[:, None] + self._steps
        return self.frames[rows]

    def clip_of(self, i: int) -> int:
        """Index (in `clips`) of the clip window i comes from."""
        return int(self._clip[i])

    def start_of(self, i: int) -> int:
        """Frame index, within its clip, of window i's first frame."""
        return int(self._local[i])

    def recorded_starts(self, idx) -> torch.Tensor:
        """(B,) long, on the CPU: for windows `idx`, the index of each first frame in its recorded clip
        (`start_of` counts within the clip as split; a part held out in time starts later)."""
        return self._recorded[torch.as_tensor(idx, dtype=torch.long).reshape(-1).cpu()]


def frame_datasets(
    source: str | Path | Sequence[str | Path] | Sequence[Clip],
    length: int,
    size: int | None = None,
    gray: bool = True,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str | torch.device | None = None,
    crop: tuple[int, int, int, int] | None = None,
    cache: str | Path | None = None,
    background: str = "keep",
) -> tuple[FrameSequences, FrameSequences | None]:
    """Training and validation windows from paths (videos, arrays, frame folders, folders of them) or clips.

    Validation is None when nothing is held out (`val_fraction == 0`). With a `cache` folder the frames
    are decoded into it once and read from disk (`cached_clips`), not held in memory. `background`
    "remove" replaces each clip by its foreground (anmc.data.background) before it is split; "auto"
    removes it unless the clips' background is dark (`auto_background`). The training set's
    `.background` says what was done ("keep" or "remove"). Raises VideoError when nothing moves in any clip
    (`check_motion`).
    """
    if background not in CHOICES:
        raise ValueError(f"background must be one of {CHOICES}, got {background!r}")
    if cache is not None and (isinstance(source, (str, Path)) or (len(source) and not isinstance(source[0], Clip))):
        first = "keep" if background == "auto" else background
        clips = cached_clips(source, cache, size=size, gray=gray, min_frames=length, crop=crop, background=first)
        check_motion(clips)  # (a removed background leaves a still clip black: still too)
        if background == "auto":  # decided on the decoded frames; a removal decodes into its own entry
            background = auto_background(clips)
            if background == "remove":
                clips = cached_clips(source, cache, size=size, gray=gray, min_frames=length, crop=crop, background="remove")
    else:
        if isinstance(source, (str, Path)) or (len(source) and not isinstance(source[0], Clip)):
            clips = load_clips(source, size=size, gray=gray, min_frames=length, crop=crop)
        else:
            clips = list(source)
        check_motion(clips)
        clips, background = apply_background(clips, background)
    train, val = split_clips(clips, val_fraction, seed, min_frames=length)
    train_set = FrameSequences(train, length, device)
    train_set.background = background
    return train_set, (FrameSequences(val, length, device) if val else None)
