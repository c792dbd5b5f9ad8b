"""Video in and out: decode any supported source into uint8 frames, write frames back out.

Sources: a video file (`.mp4 .avi .mov .mkv .webm .m4v` through imageio-ffmpeg, `.gif` through
Pillow), a NumPy array (`.npy`, or `.npz` holding `frames` or a single array) of shape `(T, H, W)`,
`(T, H, W, 1|3|4)`, uint8 or float in [0, 1], or a folder of PNG/JPG frames (natural order:
`f2.png` before `f10.png`). Every reader returns uint8 `(T, H, W)` (gray) or `(T, H, W, 3)` (RGB).

Conversion, in this order: alpha is composited onto black; `crop=(top, left, height, width)` in
source pixels; gray = ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B; `size` (an int for a square,
or `(height, width)`) centre-crops to the target aspect ratio and then area-averages (each output
pixel is the mean of the source area it covers; enlarging repeats pixels).

A training set is one source, several, or a folder of them (`load_clips`): each file is one clip,
and a folder holding only image frames is one clip. Anything wrong with the inputs raises
`VideoError`, whose text is one sentence saying what is wrong and what to do.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from anmc.errors import UserError

FFMPEG_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
VIDEO_SUFFIXES = FFMPEG_SUFFIXES + (".gif", ".npy", ".npz")  # what read_video reads (and IMAGE_SUFFIXES in a folder)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
WRITE_SUFFIXES = (".mp4", ".gif", ".npy", ".npz")  # what write_video writes

MP4_CRF = 12  # x264 quality: 0 is lossless, 23 its default; 12 keeps synthetic 64x64 frames within a few levels

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class VideoError(UserError):
    """A video input or output problem; `str(err)` is one sentence: what is wrong and what to do.

    A `UserError`, so the command line prints it and exits with code 2, without a traceback.
    """


@dataclass
class Clip:
    """One continuous clip: `frames` is uint8 `(T, H, W)` (gray) or `(T, H, W, 3)` (RGB); `first` is the
    index of frames[0] in the recorded clip (a part held out in time starts later than 0)."""

    name: str
    path: Path
    frames: np.ndarray
    first: int = 0

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.frames.shape[1:])


# ---------------------------------------------------------------------------------------------
# reading


def read_video(
    path: str | Path,
    size: int | tuple[int, int] | None = None,
    gray: bool = True,
    crop: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Decode a video file, array file or frame folder into uint8 `(T, H, W)` or `(T, H, W, 3)`."""
    out = list(iter_frames(path, size, gray, crop))
    if not out or sum(len(c) for c in out) == 0:
        raise VideoError(f"{path} contains no frames; check that the file is complete.")
    return np.concatenate(out, axis=0)


def iter_frames(
    path: str | Path,
    size: int | tuple[int, int] | None = None,
    gray: bool = True,
    crop: tuple[int, int, int, int] | None = None,
) -> Iterator[np.ndarray]:
    """`read_video`'s frames a chunk at a time, uint8 `(t, H, W)` or `(t, H, W, 3)` each: a long video
    never has to sit in memory whole (anmc.data.cache writes the chunks to disk)."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path} does not exist; check the path.")
    target = _target_size(size)
    crop = _check_crop(crop)
    if path.is_dir():
        frames = _frame_files(path)
        if not frames and _expand_folder(path):
            raise VideoError(
                f"{path} is a folder of clips, not a folder of frames; load it with load_clips (one clip per file)."
            )
        if not frames:
            raise VideoError(
                f"{path} holds no video files and no PNG/JPG frames; point at a video, an array or a folder of frames."
            )
        chunks = _read_frame_folder(path, frames)
    else:
        suffix = path.suffix.lower()
        if suffix in FFMPEG_SUFFIXES:
            chunks = _read_ffmpeg(path)
        elif suffix == ".gif":
            chunks = _read_gif(path)
        elif suffix in (".npy", ".npz"):
            chunks = _read_array(path)
        else:
            raise VideoError(
                f"{path} is not a video ({suffix or 'no suffix'}); use {', '.join(VIDEO_SUFFIXES)} or a folder of PNG/JPG frames."
            )
    shape = None
    for raw in chunks:
        converted = _convert(raw, path, target, gray, crop)
        if shape is not None and converted.shape[1:] != shape:
            raise VideoError(f"{path} has frames of different sizes; give every frame the same size.")
        shape = converted.shape[1:]
        yield converted


def source_frame_shape(path: str | Path) -> tuple[int, int]:
    """(height, width) of a video's frames as stored, before any crop or resize (decodes its first chunk)."""
    chunks = iter_frames(path)
    try:
        first = next(chunks)
    except StopIteration:
        raise VideoError(f"{path} contains no frames; check that the file is complete.") from None
    finally:
        chunks.close()
    return int(first.shape[1]), int(first.shape[2])


def resize_transform(shape: tuple[int, int], size: int | tuple[int, int] | None) -> dict[str, float]:
    """Where a point of a frame of `shape` (height, width) as stored lands once `size` converts it (the
    centre crop to the target's aspect ratio, then the area resize of `_convert`): a point (u, v), in
    pixels from the stored frame's left and top edges, lands at ((u - left) scale, (v - top) scale).
    Returns {"scale", "left", "top", "height", "width"} (the last two: the stored frame's), the identity
    for `size=None`."""
    h, w = (int(s) for s in shape)
    out = {"scale": 1.0, "left": 0.0, "top": 0.0, "height": float(h), "width": float(w)}
    target = _target_size(size)
    if target is None:
        return out
    th, tw = target
    if h * tw > w * th:  # the same centre crop as `_convert`
        keep = max(1, round(w * th / tw))
        out["top"] = float((h - keep) // 2)
        out["scale"] = th / keep
    elif h * tw < w * th:
        keep = max(1, round(h * tw / th))
        out["left"] = float((w - keep) // 2)
        out["scale"] = tw / keep
    else:
        out["scale"] = th / h
    return out


def videos_transform(paths, size: int | tuple[int, int] | None) -> dict[str, float]:
    """`resize_transform` shared by every clip of `paths` (see `clip_sources`): what a point in pixels of
    the stored videos becomes in the frames `load_clips(paths, size)` returns. VideoError when the clips
    are stored at different sizes (pixels of the stored video then mean different places)."""
    shapes = {}
    for src in clip_sources(paths):
        shapes.setdefault(source_frame_shape(src), src)
    if len(shapes) > 1:
        (a, pa), (b, pb) = list(shapes.items())[:2]
        raise VideoError(
            f"{pa} is stored at {a[0]}x{a[1]} and {pb} at {b[0]}x{b[1]}, so the prior's pixel positions (its camera roles) "
            "cannot mean one place in both; resize the videos to one size first, or train them separately."
        )
    return resize_transform(next(iter(shapes)), size)


def _target_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if int(h) != h or int(w) != w or h < 1 or w < 1:
        raise VideoError(f"size {size!r} is not a positive whole number of pixels; use e.g. --size 64.")
    return int(h), int(w)


def _check_crop(crop) -> tuple[int, int, int, int] | None:
    if crop is None:
        return None
    if isinstance(crop, str):
        crop = parse_crop(crop)
    crop = tuple(int(c) for c in crop)
    if len(crop) != 4 or crop[0] < 0 or crop[1] < 0 or crop[2] < 1 or crop[3] < 1:
        raise VideoError(f"crop {crop!r} is not (top, left, height, width) with a positive height and width.")
    return crop


def parse_crop(text: str) -> tuple[int, int, int, int]:
    """`"top,left,height,width"` (pixels of the source video) as a tuple of 4 ints."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise VideoError(f"crop {text!r} is not four whole numbers top,left,height,width; use e.g. --crop 0,80,480,480.")
    return values  # type: ignore[return-value]


_NATURAL = re.compile(r"(\d+)")


def _natural_key(p: Path):
    return [int(s) if s.isdigit() else s.lower() for s in _NATURAL.split(p.name)]


def _visible(entries: Iterable[Path]) -> list[Path]:
    return sorted((p for p in entries if not p.name.startswith((".", "_"))), key=_natural_key)


def _frame_files(folder: Path) -> list[Path]:
    return [p for p in _visible(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def _corrupt(path: Path, err: BaseException | None = None) -> VideoError:
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        what, fix = "a NumPy array", "re-save it with numpy.save or numpy.savez"
    elif suffix in IMAGE_SUFFIXES:
        what, fix = "an image", "re-export that frame"
    else:
        what, fix = "a video", "re-encode it, e.g. with ffmpeg"
    return VideoError(f"{path} could not be decoded as {what}; check that the file is complete or {fix}.")


def _read_frame_folder(folder: Path, files: list[Path]) -> Iterator[np.ndarray]:
    import imageio.v3 as iio

    shape = None
    for f in files:
        try:
            img = np.asarray(iio.imread(f, plugin="pillow"))
        except Exception as err:  # noqa: BLE001 - any decoder failure is a corrupt frame
            raise _corrupt(f, err) from None
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if shape is not None and img.shape[:2] != shape:
            raise VideoError(
                f"{f.name} in {folder} is {img.shape[0]}x{img.shape[1]} but earlier frames are "
                f"{shape[0]}x{shape[1]}; give every frame the same size."
            )
        shape = img.shape[:2]
        yield img[None]


def _read_ffmpeg(path: Path, chunk: int = 16) -> Iterator[np.ndarray]:
    import imageio.v2 as iio2

    try:
        reader = iio2.get_reader(path, format="FFMPEG")
    except Exception as err:  # noqa: BLE001
        if "Could not load meta information" in str(err):
            # imageio-ffmpeg gives ffmpeg 10 s to print the stream header; a large video on a busy machine
            # takes longer (a valid 4000x4000 mp4 failed 2 of 4 times under load). Read it without that clock.
            yield from _read_ffmpeg_pipe(path, chunk)
            return
        raise _corrupt(path, err) from None
    try:
        buf = []
        it = iter(reader)
        while True:
            try:
                frame = next(it)
            except StopIteration:
                break
            except Exception as err:  # noqa: BLE001
                raise _corrupt(path, err) from None
            buf.append(np.asarray(frame))
            if len(buf) == chunk:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)
    finally:
        reader.close()


_STREAM = re.compile(r"Stream #\S+.*?: Video: .*?(?<![0-9a-fx])(\d{2,5})x(\d{2,5})(?![0-9])")


def _read_ffmpeg_pipe(path: Path, chunk: int = 16) -> Iterator[np.ndarray]:
    """Frames straight from the ffmpeg that imageio-ffmpeg ships, as rgb24 `(n, H, W, 3)` chunks: the
    stream header is read to its end (no time limit), then the raw frames from a pipe."""
    import subprocess

    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    probe = subprocess.run([exe, "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True, errors="replace")
    found = _STREAM.search(probe.stderr)
    if found is None:
        raise _corrupt(path)
    w, h = int(found.group(1)), int(found.group(2))
    size = w * h * 3
    cmd = [exe, "-nostdin", "-v", "error", "-i", str(path), "-f", "image2pipe", "-pix_fmt", "rgb24", "-vcodec", "rawvideo", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    complete = False
    try:
        while True:
            data = proc.stdout.read(size * chunk)
            n = len(data) // size
            if n:
                yield np.frombuffer(data[: n * size], dtype=np.uint8).reshape(n, h, w, 3)
            if len(data) < size * chunk:
                break
        complete = True
    finally:
        proc.stdout.close()
        if not complete:  # the reader stopped early (or failed): do not wait for ffmpeg to finish
            proc.kill()
        code = proc.wait()
    if code != 0:
        raise _corrupt(path)


def _read_gif(path: Path) -> Iterator[np.ndarray]:
    import imageio.v3 as iio

    try:
        frames = np.asarray(iio.imread(path, index=None, plugin="pillow", extension=".gif"))
    except Exception as err:  # noqa: BLE001
        raise _corrupt(path, err) from None
    yield frames


def _read_array(path: Path) -> Iterator[np.ndarray]:
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if "frames" in keys:
                    arr = z["frames"]
                elif len(keys) == 1:
                    arr = z[keys[0]]
                else:
                    raise VideoError(
                        f"{path} holds arrays {', '.join(keys)} and none is called 'frames'; save the video as frames=..."
                    )
    except VideoError:
        raise
    except Exception as err:  # noqa: BLE001
        raise _corrupt(path, err) from None
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3, 4)):
        raise VideoError(
            f"{path} holds an array of shape {tuple(arr.shape)}; a video array is (frames, height, width) or (frames, height, width, 1|3|4)."
        )
    step = max(1, 2**22 // max(1, int(np.prod(arr.shape[1:]))))
    for s in range(0, arr.shape[0], step):
        yield np.asarray(arr[s : s + step])


def _as_unit_float(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0
    if raw.dtype == np.bool_:
        return raw.astype(np.float32)
    if np.issubdtype(raw.dtype, np.floating):
        x = raw.astype(np.float32)
        if not np.isfinite(x).all():
            raise VideoError(f"{path} contains NaN or infinite pixel values; clean the array before loading it.")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise VideoError(
                f"{path} has float pixel values from {lo:.3g} to {hi:.3g}; scale float frames to [0, 1] (or save uint8)."
            )
        return np.clip(x, 0.0, 1.0)
    raise VideoError(f"{path} has pixels of type {raw.dtype}; use uint8, uint16 or float in [0, 1].")


def _convert(raw: np.ndarray, path: Path, target, gray: bool, crop) -> np.ndarray:
    """One chunk `(n, H, W[, C])` of any dtype -> uint8 `(n, h, w)` or `(n, h, w, 3)`."""
    if raw.ndim == 3:
        raw = raw[..., None]
    if raw.ndim != 4 or raw.shape[-1] not in (1, 2, 3, 4):
        raise VideoError(f"{path} decodes to frames of shape {raw.shape[1:]}; expected gray, RGB or RGBA frames.")
    n, h, w, c = raw.shape
    if crop is not None:
        top, left, ch, cw = crop
        if top + ch > h or left + cw > w:
            raise VideoError(
                f"crop (top={top}, left={left}, height={ch}, width={cw}) does not fit in the {h}x{w} frames of {path}; choose a smaller crop."
            )
        raw = raw[:, top : top + ch, left : left + cw]
        h, w = ch, cw
    if target is not None:
        th, tw = target
        # centre-crop to the target aspect ratio before area resampling
        if h * tw > w * th:
            keep = max(1, round(w * th / tw))
            off = (h - keep) // 2
            raw, h = raw[:, off : off + keep], keep
        elif h * tw < w * th:
            keep = max(1, round(h * tw / th))
            off = (w - keep) // 2
            raw, w = raw[:, :, off : off + keep], keep
    fast = raw.dtype == np.uint8 and (target is None or target == (h, w))
    if fast and c in (1, 3) and (c == 1) == gray:
        return np.ascontiguousarray(raw[..., 0] if gray else raw)
    x = _as_unit_float(raw, path)
    if c in (2, 4):  # alpha composited onto black
        x = x[..., :-1] * x[..., -1:]
        c -= 1
    if gray and c == 3:
        x = (x @ _LUMA)[..., None]
    elif not gray and c == 1:
        x = np.repeat(x, 3, axis=-1)
    if target is not None and target != (h, w):
        x = _resize(x, *target)
    out = to_uint8(x)
    return out[..., 0] if gray else out


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`(n_out, n_in)` weights: output pixel o averages input span [o s, (o+1) s), s = n_in / n_out."""
    s = n_in / n_out
    lo = np.arange(n_out)[:, None] * s
    i = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(i + 1, lo + s) - np.maximum(i, lo), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def _resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area-average float frames `(n, H, W, C)` to `(n, out_h, out_w, C)`."""
    n, h, w, c = x.shape
    y = np.matmul(_area_matrix(h, out_h), x.reshape(n, h, w * c))  # (n, out_h, w*c)
    y = y.reshape(n, out_h, w, c).transpose(0, 1, 3, 2)  # (n, out_h, c, w)
    y = np.matmul(y, _area_matrix(w, out_w).T)  # (n, out_h, c, out_w)
    return y.transpose(0, 1, 3, 2)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 gray frames `(T, H, W)` area-averaged to `(T, size, size)`, as `load_clips(..., size=size)` does
    to a square video (unchanged at their own size)."""
    frames = np.asarray(frames)
    if frames.shape[1:] == (size, size):
        return frames
    x = frames.astype(np.float32)[..., None] / 255.0
    return to_uint8(_resize(x, size, size))[..., 0]


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """uint8 frames unchanged; floats in [0, 1] rounded to 0..255 (tiny excursions from noise clipped)."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    if frames.dtype == np.bool_:
        return frames.astype(np.uint8) * 255
    if not np.issubdtype(frames.dtype, np.floating):
        raise VideoError(f"frames of type {frames.dtype} cannot be written; pass uint8 or float frames in [0, 1].")
    if frames.size and not np.isfinite(frames).all():
        raise VideoError("frames contain NaN or infinite values; clean them before writing.")
    if frames.size and (frames.min() < -0.01 or frames.max() > 1.01):
        raise VideoError(
            f"float frames range from {frames.min():.3g} to {frames.max():.3g}; scale them to [0, 1] before writing."
        )
    return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# writing


def write_video(path: str | Path, frames, fps: float = 30) -> Path:
    """Write uint8 (or float in [0, 1]) frames `(T, H, W)` / `(T, H, W, 1|3)` to `path`.

    The suffix picks the format: `.mp4` (H.264, crf 12; yuv420p, or yuv444p when a side is odd),
    `.gif` (lossless for gray), `.npy`, `.npz` (key `frames`, plus `fps`); a path with no suffix (or
    an existing folder) becomes a folder of `frame_00000.png`, ... (lossless).
    """
    path = Path(path)
    frames = to_uint8(np.asarray(frames))
    if frames.ndim == 4 and frames.shape[-1] == 1:
        frames = frames[..., 0]
    if frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[-1] != 3) or frames.shape[0] < 1:
        raise VideoError(
            f"frames of shape {frames.shape} cannot be written; pass (frames, height, width) gray or (frames, height, width, 3) RGB."
        )
    suffix = path.suffix.lower()
    is_folder = path.is_dir() or suffix == ""
    if not is_folder and suffix not in WRITE_SUFFIXES:
        raise VideoError(f"cannot write {path.name}; use one of {', '.join(WRITE_SUFFIXES)} or a folder name for PNG frames.")
    try:
        (path if is_folder else path.parent).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VideoError(f"cannot create the folder for {path} ({err.strerror}); choose a writable location.") from None
    # a file is written beside its name and moved onto it when complete: no half-written video is left, and a
    # location that cannot be written fails before any encoder holds the path (imageio's GIF writer, given a
    # path it could not open, raised again while being collected, a traceback after the one-sentence error)
    partial = path if is_folder else path.with_name(f".{path.stem}.partial-{os.getpid()}{suffix}")
    try:
        if is_folder:
            import imageio.v3 as iio

            for i, f in enumerate(frames):
                iio.imwrite(path / f"frame_{i:05d}.png", f, plugin="pillow")
        elif suffix == ".mp4":
            _write_mp4(partial, frames, fps)
        elif suffix == ".gif":
            import imageio.v3 as iio

            with open(partial, "wb") as fh:
                iio.imwrite(fh, frames, plugin="pillow", extension=".gif", duration=1000.0 / float(fps), loop=0)
        elif suffix == ".npy":
            np.save(partial, frames)
        else:
            np.savez_compressed(partial, frames=frames, fps=np.float64(fps))
        if not is_folder:
            os.replace(partial, path)
    except OSError as err:
        raise VideoError(f"cannot write {path} ({err.strerror or err}); check the location and free space.") from None
    finally:
        if not is_folder and partial.exists():
            partial.unlink()
    return path


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    import imageio.v2 as iio2

    h, w = frames.shape[1:3]
    # x264's 4:2:0 needs even sides; 4:4:4 plays in fewer players but takes any size.
    pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
    writer = iio2.get_writer(
        path,
        format="FFMPEG",
        fps=float(fps),
        codec="libx264",
        quality=None,
        pixelformat=pix_fmt,
        macro_block_size=1,  # keep the size as is; imageio would otherwise resize to multiples of 16
        output_params=["-crf", str(MP4_CRF)],
        ffmpeg_log_level="error",
    )
    try:
        for f in frames:
            writer.append_data(f)
    finally:
        writer.close()


# ---------------------------------------------------------------------------------------------
# training sets: one source, several, or folders of them


def clip_sources(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The clip sources in `paths`, in order: files as given, folders expanded (sorted, naturally).

    In a folder, every video/array file and every sub-folder that yields clips is a clip; other files
    (truth.csv, truth.json, notes) are skipped. A folder holding image frames and nothing that is a
    clip is itself one clip.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise VideoError(f"{p} does not exist; check the path.")
        if p.is_dir():
            found = _expand_folder(p)
            if not found:
                raise VideoError(
                    f"{p} holds no videos ({', '.join(VIDEO_SUFFIXES)}) and no PNG/JPG frames; point at a folder of clips."
                )
            out.extend(found)
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            out.append(p)
        else:
            raise VideoError(
                f"{p} is not a video ({p.suffix or 'no suffix'}); use {', '.join(VIDEO_SUFFIXES)} or a folder of PNG/JPG frames."
            )
    return out


def _expand_folder(folder: Path) -> list[Path]:
    entries = _visible(folder.iterdir())
    found: list[Path] = []
    for e in entries:
        if e.is_dir():
            found.extend(_expand_folder(e))
        elif e.suffix.lower() in VIDEO_SUFFIXES:
            found.append(e)
    if not found and any(e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES for e in entries):
        return [folder]
    return found


def load_clips(
    paths: str | Path | Sequence[str | Path],
    size: int | tuple[int, int] | None = None,
    gray: bool = True,
    min_frames: int = 1,
    crop: tuple[int, int, int, int] | None = None,
) -> list[Clip]:
    """Decode every clip in `paths` (see `clip_sources`) at one common frame size.

    Raises VideoError for a missing path, an undecodable file, a clip shorter than `min_frames`
    (one training window) and clips of different sizes when no `size` is given.
    """
    sources = clip_sources(paths)
    roots = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    clips: list[Clip] = []
    for src in sources:
        frames = read_video(src, size=size, gray=gray, crop=crop)
        if frames.shape[0] < min_frames:
            raise VideoError(
                f"{src} has {frames.shape[0]} frame{'s' if frames.shape[0] != 1 else ''} but one training window "
                f"needs {min_frames}; use longer clips, or shorter training sequences (anmc train --seq-len) or window."
            )
        if clips and frames.shape[1:] != clips[0].frames.shape[1:]:
            a, b = clips[0], frames.shape[1:3]
            raise VideoError(
                f"{src} is {b[0]}x{b[1]} but {a.path} is {a.frames.shape[1]}x{a.frames.shape[2]}; "
                f"pass a size (--size 64) to bring every clip to one size."
            )
        clips.append(Clip(name=_clip_name(src, roots), path=src, frames=frames))
    return clips


def _clip_name(src: Path, roots: list[Path]) -> str:
    for r in roots:
        if r.is_dir():
            try:
                rel = src.relative_to(r)
            except ValueError:
                continue
            return str(rel) if str(rel) != "." else src.name
    return src.name


# ---------------------------------------------------------------------------------------------
# ground truth: truth.csv (+ truth.json)


def write_truth(out_dir: str | Path, states: np.ndarray, state_names: Sequence[str], meta: dict) -> tuple[Path, Path]:
    """Write `truth.csv` (columns clip,frame,<state>...) and `truth.json` (meta) into `out_dir`.

    `states` is `(clips, frames, d)`; clip is the index of the clip file in sorted order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    states = np.asarray(states, dtype=np.float64)
    csv_path, json_path = out_dir / "truth.csv", out_dir / "truth.json"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clip", "frame", *state_names])
        for c in range(states.shape[0]):
            for t in range(states.shape[1]):
                w.writerow([c, t, *(f"{v:.17g}" for v in states[c, t])])
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return csv_path, json_path


def read_truth(path: str | Path) -> dict:
    """Read `truth.csv` (or the folder holding it) and the `truth.json` beside it, when there is one.

    Returns a dict with
      - `state_names`: the state columns, in file order (any subset of the model's states);
      - `clip`, `frame`: int arrays `(N,)`; `values`: float64 `(N, d)` (empty cells are NaN);
      - `clips`: {clip index: float64 `(n_frames, d)`}, row t = frame t, NaN for frames not listed;
      - `meta`: the truth.json content, or {} when absent.
    Users bring their own tracked ground truth in the same format (only `clip` and `frame` are fixed).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "truth.csv"
    if not path.exists():
        raise VideoError(f"{path} does not exist; give the truth.csv written by anmc synth or your own in that format.")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise VideoError(f"{path} could not be read as CSV ({err}); save it as plain-text comma-separated values.") from None
    rows = [r for r in rows if r and any(cell.strip() for cell in r)]
    if not rows:
        raise VideoError(f"{path} is empty; it needs a header clip,frame,<state>... and one row per frame.")
    header = [h.strip() for h in rows[0]]
    if header[:2] != ["clip", "frame"] or len(header) < 3:
        raise VideoError(
            f"{path} starts with columns {','.join(header[:4])}; a truth file needs clip,frame followed by one column per state."
        )
    names = header[2:]
    twice = next((h for h in names if names.count(h) > 1 or h in ("clip", "frame")), None)
    if twice is not None:
        raise VideoError(f"{path} has the column {twice!r} twice; keep one column per state.")
    if "" in names:
        raise VideoError(f"{path} has a column without a name (column {names.index('') + 3}); name it after its state or drop it.")
    n = len(rows) - 1
    clip = np.empty(n, dtype=np.int64)
    frame = np.empty(n, dtype=np.int64)
    values = np.full((n, len(names)), np.nan)
    for i, row in enumerate(rows[1:]):
        line = i + 2
        if len(row) != len(header):
            raise VideoError(f"{path} line {line} has {len(row)} cells but the header has {len(header)}; fix that row.")
        try:
            clip[i], frame[i] = int(row[0]), int(row[1])
        except ValueError:
            raise VideoError(f"{path} line {line}: clip and frame must be whole numbers, not {row[0]!r}, {row[1]!r}.") from None
        if clip[i] < 0 or frame[i] < 0:
            raise VideoError(f"{path} line {line}: clip and frame must not be negative; clip and frame count from 0.")
        for j, cell in enumerate(row[2:]):
            cell = cell.strip()
            if cell == "" or cell.lower() == "nan":
                continue
            try:
                values[i, j] = float(cell)
            except ValueError:
                raise VideoError(f"{path} line {line}: {cell!r} in column {names[j]} is not a number; fix that cell.") from None
    clips: dict[int, np.ndarray] = {}
    seen: set[tuple[int, int]] = set()
    for c in np.unique(clip):
        sel = np.flatnonzero(clip == c)
        table = np.full((int(frame[sel].max()) + 1, len(names)), np.nan)
        for i in sel:
            key = (int(c), int(frame[i]))
            if key in seen:
                raise VideoError(f"{path} lists clip {key[0]} frame {key[1]} twice; keep one row per frame.")
            seen.add(key)
            table[frame[i]] = values[i]
        clips[int(c)] = table
    meta: dict = {}
    json_path = path.with_name("truth.json")
    if json_path.exists():
        try:
            meta = json.loads(json_path.read_text())
        except (OSError, ValueError) as err:
            raise VideoError(f"{json_path} is not valid JSON ({err}); fix it or remove it.") from None
    return {"state_names": names, "clip": clip, "frame": frame, "values": values, "clips": clips, "meta": meta}
