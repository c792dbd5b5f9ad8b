"""The thread count training uses (anmc.vae.threads): the cores the load leaves free, at least one."""

from __future__ import annotations

import torch

from anmc.vae.threads import apply_thread_default, choose_threads


def test_choose_threads():
    assert choose_threads(2, 10.9, 2) == 1  # a loaded 2-core machine: one thread (measured 6-11x faster there)
    assert choose_threads(2, 0.1, 2) == 2
    assert choose_threads(16, 3.4, 16) == 13
    assert choose_threads(16, 0.0, 8) == 8  # never more than torch's own default


def test_env_overrides(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("ANMC_THREADS", "3")
        assert apply_thread_default() == (3, "ANMC_THREADS") and torch.get_num_threads() == 3
        monkeypatch.setenv("ANMC_THREADS", "x")
        n, why = apply_thread_default()
        assert n >= 1 and "load" in why and torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
