"""An inclusive associative scan over the time axis, without a Python loop over frames.

    out = prefix_scan(combine, elems)    # out_t = e_1 ⊗ e_2 ⊗ … ⊗ e_t  (docs/method.md §6)
    out = prefix_scan(combine, elems, short=doubling_below(d))   # where to switch, for d×d blocks

`elems` (B, T, k) packs each position's element into k numbers; `combine(a, b)` takes two such
tensors of equal shape (a earlier, b later) and returns a ⊗ b for every position at once. ⊗ must be
associative, not commutative. Differentiable (slices and concatenation only).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Combine = Callable[[Tensor, Tensor], Tensor]


SHORT = 16  # below this many positions the doubling scan's fewer, fuller calls cost less than the halving


def doubling_below(d: int) -> int:
    """Where the scan of a smoother with d states switches from halving to doubling. Doubling does
    O(T log T) combines in log₂ T calls, halving O(T) in 2 log₂ T: the fewer calls win while a combine
    (a few d×d products and solves) is cheap, the less work once it is not. Measured (one thread,
    T = 32, smoother forward + backward of a chain of pendulums): the best switch was 16 positions
    at d = 2, 8 at d = 4, 4–8 at d = 8 and 2 (halving throughout: 219 ms against 323 at 16) at d = 16."""
    return max(2, 32 // max(1, d))


def prefix_scan(combine: Combine, elems: Tensor, short: int = SHORT) -> Tensor:
    """Inclusive scan along dim 1: out[:, t] = elems[:, 0] ⊗ … ⊗ elems[:, t], elems (B, T, k).

    Blelloch's odd-even halving down to `short` positions, then Hillis-Steele doubling: O(T) calls'
    worth of work in ~2 log₂(T / short) + log₂ short batched calls."""
    return _odd_even(combine, elems, max(1, short))


def _doubling(combine: Combine, x: Tensor) -> Tensor:
    """Hillis-Steele: ⌈log₂ T⌉ rounds of out_t ← out_{t−k} ⊗ out_t (k = 1, 2, 4, …); O(T log T) work."""
    t_len, k = x.shape[1], 1
    while k < t_len:
        x = torch.cat([x[:, :k], combine(x[:, : t_len - k], x[:, k:])], 1)
        k *= 2
    return x


def _odd_even(combine: Combine, elems: Tensor, short: int) -> Tensor:
    """Blelloch's odd-even recursion: combine neighbouring pairs, scan the T/2 pairs, fill the even
    positions from the scanned pairs; 2 calls of `combine` per halving, O(T) work."""
    t_len = elems.shape[1]
    if t_len <= short:
        return _doubling(combine, elems)
    n = t_len // 2
    odd = _odd_even(combine, combine(elems[:, 0 : 2 * n : 2], elems[:, 1 : 2 * n : 2]), short)  # positions 1, 3, …
    m = (t_len - 1) // 2  # even positions after the first: 2, 4, …
    even = torch.cat([elems[:, :1], combine(odd[:, :m], elems[:, 2::2])], 1) if m else elems[:, :1]
    if n < even.shape[1]:
        odd = torch.cat([odd, odd[:, -1:]], 1)  # a placeholder, cut off below
    return torch.stack([even, odd], 2).flatten(1, 2)[:, :t_len]
