"""Decoded frames cached on disk: training data that need not fit in memory.

    clips = cached_clips("videos/", "cache/", size=32)   # decodes once, then reopens the cache
    clips[0].frames                                      # DiskFrames (T, H, W[, 3]) uint8, read on demand

Each source (video file, array, frame folder) is decoded once, a chunk at a time (`iter_frames`), into
`CACHE/<key>.u8`, its frames as raw uint8 one after the other (the layout of a C-order array of shape
(T, H, W[, 3]), which np.memmap opens as is), with `CACHE/<key>.json` beside it (shape, source) written
last, so a cache entry exists only once complete. The key hashes the source's path, size and
modification time and the decoding options (size, gray, crop, background): a changed video or option
decodes again. With `background="remove"` an entry holds the clip's foreground (anmc.data.background):
decoded into a temporary file first, its background estimated from a sample of frames read back, then
written transformed a chunk at a time, so memory stays bounded by a chunk and the sample.

`DiskFrames` reads windows with os.pread, so the process holds only the frames of the current batch
(no pages of a mapping stay resident as the epochs touch the whole file; the operating system's page
cache keeps what fits). FrameSequences (anmc.data.dataset) and a DataLoader with workers read
through it; docs/scaling.md measures the resident memory as the data set grows.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from anmc.data.background import estimate_background, remove_background
from anmc.data.io import Clip, VideoError, _clip_name, clip_sources, iter_frames

VERSION = 1


class DiskFrames:
    """Frames start..stop of a cached clip file: uint8 `(n, H, W)` or `(n, H, W, 3)`, read on demand.

    Enough of an array for `Clip` and `split_clips` (`shape`, `ndim`, `dtype`, `len`, slicing with step 1,
    which returns another DiskFrames) plus `read(a, b)`, the frames a..b−1 as a NumPy array; `np.asarray`
    reads them all. Picklable (a DataLoader's workers open the file themselves)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, path: str | Path, frame_shape: tuple[int, ...], start: int, stop: int):
        self.path, self.frame_shape, self.start, self.stop = Path(path), tuple(frame_shape), int(start), int(stop)
        self._frame_bytes = int(np.prod(self.frame_shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.stop - self.start, *self.frame_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.frame_shape)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("DiskFrames supports slices with step 1 only; use read(a, b)")
        a, b, _ = key.indices(len(self))
        return DiskFrames(self.path, self.frame_shape, self.start + a, self.start + max(a, b))

    def read(self, a: int, b: int) -> np.ndarray:
        """Frames a..b−1 (relative to this view), uint8 `(b − a, H, W[, 3])`."""
        if not 0 <= a <= b <= len(self):
            raise IndexError(f"frames {a}..{b} of {len(self)}")
        n = (b - a) * self._frame_bytes
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, n, (self.start + a) * self._frame_bytes)
        finally:
            os.close(fd)
        if len(data) != n:
            raise VideoError(f"{self.path} is shorter than its cache entry says; delete the cache folder and train again.")
        return np.frombuffer(bytearray(data), dtype=np.uint8).reshape(b - a, *self.frame_shape)

    def __array__(self, dtype=None, copy=None):
        out = self.read(0, len(self))
        return out if dtype is None else out.astype(dtype)


def cached_clips(
    paths: str | Path | Sequence[str | Path],
    cache_dir: str | Path,
    size: int | tuple[int, int] | None = None,
    gray: bool = True,
    min_frames: int = 1,
    crop: tuple[int, int, int, int] | None = None,
    background: str = "keep",
) -> list[Clip]:
    """`load_clips` through the cache: the clips of `paths`, their frames DiskFrames in `cache_dir`
    (decoded there first when missing). Raises VideoError as load_clips does."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    sources = clip_sources(paths)
    roots = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    clips: list[Clip] = []
    for src in sources:
        frames = _entry(src, cache_dir, size, gray, crop, background)
        if len(frames) < min_frames:
            raise VideoError(
                f"{src} has {len(frames)} frame{'s' if len(frames) != 1 else ''} but one training window "
                f"needs {min_frames}; use longer clips, or shorter training sequences (anmc train --seq-len) or window."
            )
        if clips and frames.frame_shape != clips[0].frames.frame_shape:
            a, b = clips[0], frames.frame_shape
            raise VideoError(
                f"{src} is {b[0]}x{b[1]} but {a.path} is {a.frames.shape[1]}x{a.frames.shape[2]}; "
                f"pass a size (--size 64) to bring every clip to one size."
            )
        clips.append(Clip(name=_clip_name(src, roots), path=src, frames=frames))  # type: ignore[arg-type]
    return clips


def _key(src: Path, size, gray: bool, crop, background: str = "keep") -> str:
    stat = src.stat()
    if src.is_dir():  # a folder of frames: its files' names, sizes and times
        stat_list = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(src.iterdir())]
    else:
        stat_list = [(stat.st_size, stat.st_mtime_ns)]
    options = [size, gray, crop] + ([background] if background != "keep" else [])  # "keep" keeps the old keys
    text = json.dumps([VERSION, str(src.resolve()), stat_list, *options], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _foreground_file(decoded: Path, frame_shape, n: int, chunk: int = 64) -> Path:
    """A temporary file of the foreground of the `n` frames in `decoded`, which it replaces."""
    frames = DiskFrames(decoded, tuple(frame_shape), 0, n)
    bg = estimate_background(frames)
    out = decoded.with_name(decoded.name + ".fg")
    with open(out, "wb") as fh:
        for a in range(0, n, chunk):
            fh.write(remove_background(frames.read(a, min(n, a + chunk)), bg).tobytes())
    decoded.unlink()
    return out


def _entry(src: Path, cache_dir: Path, size, gray: bool, crop, background: str = "keep") -> DiskFrames:
    """The cache entry of one source, decoded into it first when missing."""
    key = _key(src, size, gray, crop, background)
    data, meta = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    if not meta.exists():
        tmp = cache_dir / f".{key}.u8.tmp-{os.getpid()}"
        n, frame_shape = 0, None
        with open(tmp, "wb") as fh:
            for chunk in iter_frames(src, size=size, gray=gray, crop=crop):
                frame_shape = chunk.shape[1:]
                fh.write(np.ascontiguousarray(chunk, dtype=np.uint8).tobytes())
                n += len(chunk)
        if frame_shape is None or n == 0:
            tmp.unlink()
            raise VideoError(f"{src} contains no frames; check that the file is complete.")
        if background == "remove":
            tmp = _foreground_file(tmp, frame_shape, n)
        os.replace(tmp, data)
        tmp_meta = cache_dir / f".{key}.json.tmp-{os.getpid()}"
        tmp_meta.write_text(json.dumps({"source": str(src), "frames": n, "frame_shape": list(frame_shape)}) + "\n")
        os.replace(tmp_meta, meta)
    info = json.loads(meta.read_text())
    return DiskFrames(data, tuple(info["frame_shape"]), 0, int(info["frames"]))
