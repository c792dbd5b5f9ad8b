"""The decoded-frame cache (anmc/data/cache.py): the same windows as frames held in memory, decoded once,
decoded again when the video changes, read in chunks; and training from it through a DataLoader."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anmc.data.cache import DiskFrames, cached_clips
from anmc.data.dataset import frame_datasets
from anmc.data.io import write_video


@pytest.fixture()
def videos(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "videos"
    folder.mkdir()
    for i, n in enumerate((30, 41, 25)):
        np.save(folder / f"clip_{i}.npy", rng.integers(0, 256, (n, 20, 20), dtype=np.uint8))
    write_video(folder / "rgb.npz", rng.integers(0, 256, (33, 20, 20, 3), dtype=np.uint8))
    return folder


@pytest.mark.parametrize("gray", [True, False])
def test_cached_windows_equal_windows_in_memory(videos, tmp_path, gray):
    for val_fraction in (0.0, 0.25):
        kw = dict(length=7, size=16, gray=gray, val_fraction=val_fraction, seed=1)
        mem_tr, mem_va = frame_datasets(videos, **kw)
        disk_tr, disk_va = frame_datasets(videos, cache=tmp_path / "cache", **kw)
        assert disk_tr.on_disk and not mem_tr.on_disk and disk_tr.frames is None
        assert disk_tr.names == mem_tr.names and disk_tr.frame_shape == mem_tr.frame_shape
        everything = torch.arange(len(mem_tr))
        assert torch.equal(disk_tr.batch(everything), mem_tr.batch(everything))
        if mem_va is not None:
            assert torch.equal(disk_va.batch(torch.arange(len(mem_va))), mem_va.batch(torch.arange(len(mem_va))))


def test_a_single_clip_splits_in_time_from_the_cache(videos, tmp_path):
    kw = dict(length=5, size=None, val_fraction=0.25, seed=0)
    mem = frame_datasets(videos / "clip_1.npy", **kw)
    disk = frame_datasets(videos / "clip_1.npy", cache=tmp_path / "c", **kw)
    for m, d in zip(mem, disk):
        assert m.names == d.names and torch.equal(m.batch(range(len(m))), d.batch(range(len(d))))


def test_decoded_once_and_again_when_the_video_changes(videos, tmp_path):
    cache = tmp_path / "cache"
    first = cached_clips(videos, cache, size=16)
    files = sorted(cache.glob("*.u8"))
    stamps = [f.stat().st_mtime_ns for f in files]
    cached_clips(videos, cache, size=16)  # reopened: nothing written
    assert [f.stat().st_mtime_ns for f in sorted(cache.glob("*.u8"))] == stamps
    np.save(videos / "clip_0.npy", np.zeros((30, 20, 20), dtype=np.uint8))
    os.utime(videos / "clip_0.npy", ns=(1, 1))  # a different modification time, whatever the clock
    again = cached_clips(videos, cache, size=16)
    assert len(list(cache.glob("*.u8"))) == len(files) + 1
    assert np.asarray(again[0].frames).max() == 0 and np.asarray(first[0].frames).max() > 0
    cached_clips(videos, cache, size=8)  # another size is another entry
    assert len(list(cache.glob("*.u8"))) == 2 * len(files) + 1
    assert not list(cache.glob(".*tmp*"))


@settings(max_examples=30, deadline=None)
@given(a=st.integers(0, 40), n=st.integers(0, 40), start=st.integers(0, 20), stop=st.integers(0, 41))
def test_disk_frames_read_like_an_array(tmp_path_factory, a, n, start, stop):
    path = tmp_path_factory.getbasetemp() / "frames.u8"
    frames = (np.arange(41 * 3 * 2) % 251).astype(np.uint8).reshape(41, 3, 2)
    if not path.exists():
        path.write_bytes(frames.tobytes())
    view = DiskFrames(path, (3, 2), 0, 41)[start:stop]
    ref = frames[start:stop]
    assert view.shape == ref.shape and len(view) == len(ref)
    assert np.array_equal(np.asarray(view), ref)
    b = min(a + n, len(ref))
    if a <= b:
        assert np.array_equal(view.read(a, b), ref[a:b])
    else:
        with pytest.raises(IndexError):
            view.read(a, b)
