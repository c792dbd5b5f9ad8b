"""The associative scans of anmc/posterior/scan.py: every switch point from halving to doubling gives
the sequential fold, for an operation that is associative and not commutative (2×2 matrix products)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anmc.posterior.scan import doubling_below, prefix_scan


def _matmul(a, b):
    """a earlier, b later: the product b @ a of 2×2 matrices packed as 4 numbers (B, T, 4)."""
    return (b.unflatten(-1, (2, 2)) @ a.unflatten(-1, (2, 2))).flatten(-2)


@settings(max_examples=40, deadline=None)
@given(t_len=st.integers(1, 70), short=st.integers(1, 40), seed=st.integers(0, 1000))
def test_scans_equal_the_sequential_fold(t_len, short, seed):
    elems = torch.randn(3, t_len, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / 1.5
    prefix, acc = [], None
    for t in range(t_len):
        acc = elems[:, t] if acc is None else _matmul(acc, elems[:, t])
        prefix.append(acc)
    torch.testing.assert_close(prefix_scan(_matmul, elems, short), torch.stack(prefix, 1), rtol=1e-10, atol=1e-12)


def test_the_switch_moves_toward_halving_as_d_grows():
    assert [doubling_below(d) for d in (1, 2, 4, 8, 16, 32, 64)] == [32, 16, 8, 4, 2, 2, 2]
