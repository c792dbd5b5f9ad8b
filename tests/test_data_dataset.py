"""Windowed frame datasets: windows stay inside one clip, splits are deterministic and disjoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anmc.data.dataset import FrameSequences, frame_datasets, split_clips, train_val_split
from anmc.data.io import Clip, VideoError, write_video


def numbered_clip(i: int, n: int, h=8, w=8, rgb=False) -> Clip:
    """Frame t of clip i is filled with 10 i + t, so a window's frames say where they came from."""
    frames = (10 * i + np.arange(n, dtype=np.uint8))[:, None, None] * np.ones((1, h, w), np.uint8)
    if rgb:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    return Clip(name=f"c{i}", path=Path(f"c{i}"), frames=frames)


def test_windows_never_cross_clips():
    clips = [numbered_clip(0, 5), numbered_clip(1, 3), numbered_clip(2, 7)]
    ds = FrameSequences(clips, length=3)
    assert len(ds) == (5 - 2) + (3 - 2) + (7 - 2)
    for i in range(len(ds)):
        w = ds[i]
        assert w.dtype == torch.uint8 and w.shape == (3, 1, 8, 8)
        c, s = ds.clip_of(i), ds.start_of(i)
        np.testing.assert_array_equal(w[:, 0, 0, 0].numpy(), 10 * c + s + np.arange(3))


def test_batch_matches_items_and_frames_stored_once():
    clips = [numbered_clip(0, 6, rgb=True), numbered_clip(1, 4, rgb=True)]
    ds = FrameSequences(clips, length=2, device="cpu")
    assert ds.frames.shape == (10, 3, 8, 8) and ds.frame_shape == (3, 8, 8)
    idx = [0, 4, len(ds) - 1]
    b = ds.batch(idx)
    assert b.shape == (3, 2, 3, 8, 8)
    for k, i in enumerate(idx):
        assert torch.equal(b[k], ds[i])
        assert ds[i].data_ptr() >= ds.frames.data_ptr()  # a view into the one stored tensor


def test_stride():
    ds = FrameSequences([numbered_clip(0, 10)], length=3, stride=4)
    assert [ds.start_of(i) for i in range(len(ds))] == [0, 4]


def test_too_short_clip_is_a_video_error():
    with pytest.raises(VideoError, match="needs 4"):
        FrameSequences([numbered_clip(0, 3)], length=4)


def test_train_val_split_is_deterministic_and_disjoint():
    tr, va = train_val_split(10, 0.2, seed=3)
    assert (tr, va) == train_val_split(10, 0.2, seed=3)
    assert len(va) == 2 and sorted(tr + va) == list(range(10))
    assert train_val_split(1, 0.2) == ([0], [])
    assert train_val_split(2, 0.2) in (([0], [1]), ([1], [0]))
    assert train_val_split(5, 0.0) == ([0, 1, 2, 3, 4], [])


def test_single_clip_is_split_in_time():
    clip = numbered_clip(0, 20)
    tr, va = split_clips([clip], val_fraction=0.2, seed=0, min_frames=3)
    assert split_clips([clip], 0.2, 0, 3)[1][0].name == va[0].name  # deterministic
    assert len(va) == 1 and va[0].n_frames == 4
    covered = np.concatenate([c.frames[:, 0, 0] for c in tr + va])
    assert sorted(covered.tolist()) == list(range(20))  # every frame once, chunks contiguous
    for c in tr + va:
        v = c.frames[:, 0, 0].astype(int)
        assert (np.diff(v) == 1).all()
    ds_tr, ds_va = FrameSequences(tr, 3), FrameSequences(va, 3)
    held = set(va[0].frames[:, 0, 0].tolist())
    for i in range(len(ds_tr)):
        assert not held & set(ds_tr[i][:, 0, 0, 0].tolist())
    assert len(ds_va) == 2


def test_single_clip_too_short_to_split():
    with pytest.raises(VideoError, match="too few"):
        split_clips([numbered_clip(0, 5)], 0.2, 0, min_frames=3)


def test_frame_datasets_from_a_folder(tmp_path):
    for i in range(5):
        write_video(tmp_path / f"clip_{i:03d}.npy", numbered_clip(i, 12, 16, 16).frames)
    (tmp_path / "truth.csv").write_text("clip,frame,x\n")
    train, val = frame_datasets(tmp_path, length=3, size=8, val_fraction=0.2, seed=0)
    assert len(train.clips) == 4 and len(val.clips) == 1
    assert train.frames.shape[1:] == (1, 8, 8)
    assert not {c.name for c in train.clips} & {c.name for c in val.clips}
    train0, val0 = frame_datasets(tmp_path, length=3, size=8, val_fraction=0.0)
    assert val0 is None and len(train0.clips) == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_frames_live_on_the_gpu_when_they_fit():
    ds = FrameSequences([numbered_clip(0, 6), numbered_clip(1, 5)], length=3, device="cuda")
    assert ds.device.type == "cuda" and ds.frames.is_cuda
    b = ds.batch(torch.arange(len(ds)))
    assert b.is_cuda and torch.equal(b[len(ds) - 1].cpu(), ds[len(ds) - 1].cpu())


def test_storage_device_defaults_to_cpu():
    from anmc.data.dataset import storage_device

    assert storage_device(10, None).type == "cpu" and storage_device(10, "cpu").type == "cpu"


def test_a_still_clip_is_told_from_one_that_moves():
    """`is_still`: no pixel ranges over more than 8 of 255 in time (a codec's noise on a still scene); a single
    pixel leaving that range, in any frame, is motion."""
    from anmc.data.dataset import is_still

    rng = np.random.default_rng(0)
    scene = rng.integers(10, 240, (1, 16, 16), dtype=np.uint8)
    noisy = (scene.astype(np.int16) + rng.integers(-4, 5, (200, 16, 16))).astype(np.uint8)  # codec noise, 200 frames
    assert is_still(noisy) and is_still(scene)
    moved = noisy.copy()
    moved[150, 7, 9] = scene[0, 7, 9] + 9  # one pixel, late in the clip (past the first chunk of frames)
    assert not is_still(moved)
    assert not is_still(numbered_clip(0, 10).frames) and is_still(numbered_clip(0, 9).frames)  # frame t is 10 i + t


def test_frame_datasets_refuse_clips_in_which_nothing_moves(tmp_path):
    """Every clip still: a VideoError naming them (training would run and learn nothing, and no diagnostic
    could say so: the mean image reconstructs a still clip perfectly); one still clip among moving ones trains."""
    still = Clip(name="s", path=Path("s.npy"), frames=np.full((12, 8, 8), 77, np.uint8))
    with pytest.raises(VideoError, match=r"nothing moves in any of the 2 clips \(s.npy, s.npy\): no pixel changes by more than 8 of 255"):
        frame_datasets([still, still], length=3, val_fraction=0.0)
    train, _ = frame_datasets([still, numbered_clip(1, 12)], length=3, val_fraction=0.0)
    assert len(train.clips) == 2
    write_video(tmp_path / "still.npy", still.frames)  # from disk, through the cache too
    for cache in (None, tmp_path / "cache"):
        with pytest.raises(VideoError, match=r"nothing moves in the clip \(.*still.npy\)"):
            frame_datasets(tmp_path / "still.npy", length=3, val_fraction=0.0, cache=cache)
