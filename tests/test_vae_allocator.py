"""glibc's thresholds for a training process (anmc.vae.allocator): set by the CLI, left alone when asked
or when the process or its C library says otherwise."""

from __future__ import annotations

import pytest

from anmc.vae import allocator
from anmc.vae.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, tune_allocator


class FakeLibc:
    """Records mallopt's calls; answers 1 (success) or what it is told."""

    def __init__(self, answer: int = 1):
        self.calls, self.answer = [], answer

        class Mallopt:
            argtypes = restype = None

            def __call__(inner, param, value):
                self.calls.append((param, value))
                return self.answer

        self.mallopt = Mallopt()


@pytest.fixture
def fake(monkeypatch):
    for key in ("ANMC_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(key, raising=False)
    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    return libc


def test_sets_both_thresholds(fake):
    tuned, note = tune_allocator()
    assert tuned and "ANMC_MALLOC=0" in note
    assert fake.calls == [(M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 2**30)]


def test_left_alone_when_asked_or_when_the_process_set_its_own(fake, monkeypatch):
    monkeypatch.setenv("ANMC_MALLOC", "0")
    assert tune_allocator() == (False, "allocator: left alone (ANMC_MALLOC=0)")
    monkeypatch.delenv("ANMC_MALLOC")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    tuned, note = tune_allocator()
    assert not tuned and "kept" in note
    assert fake.calls == []


def test_not_glibc_or_refused(fake, monkeypatch):
    fake.answer = 0
    tuned, note = tune_allocator()
    assert not tuned and "refused" in note
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert tune_allocator() == (False, "allocator: left alone (not glibc)")


def test_the_real_glibc_accepts_them(monkeypatch):
    if allocator._glibc() is None:
        pytest.skip("the C library is not glibc")
    for key in ("ANMC_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(key, raising=False)
    assert tune_allocator()[0]
