"""Block cyclic reduction (anmc/posterior/tridiagonal.py) against the dense inverse of the same
block-tridiagonal precision: means, marginal and cross covariances, log det, for every length (odd,
even, the two- and one-position bases) and gradients (gradcheck); the means-only reduction likewise."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anmc.posterior.tridiagonal as tridiagonal
from anmc.posterior.tridiagonal import block_tridiagonal_gaussian, block_tridiagonal_mean


def _random_chain(b: int, n: int, d: int, seed: int):
    """A symmetric positive definite block-tridiagonal precision, diagonally dominant by a margin so that
    it is well conditioned, as blocks and as the dense (n·d)² matrix."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    upper = randn(b, max(n - 1, 0), d, d)
    a = randn(b, n, d, d)
    diag = a @ a.mT + (1.0 + 2.0 * d) * torch.eye(d, dtype=torch.float64)
    dense = torch.zeros(b, n * d, n * d, dtype=torch.float64)
    for k in range(n):
        dense[:, k * d : (k + 1) * d, k * d : (k + 1) * d] = diag[:, k]
        if k < n - 1:
            dense[:, k * d : (k + 1) * d, (k + 1) * d : (k + 2) * d] = upper[:, k]
            dense[:, (k + 1) * d : (k + 2) * d, k * d : (k + 1) * d] = upper[:, k].mT
    dense = dense + (2.0 * d) * torch.eye(n * d, dtype=torch.float64)  # keep it positive definite
    diag = diag + (2.0 * d) * torch.eye(d, dtype=torch.float64)
    return diag, upper, randn(b, n, d, 1), dense


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 4), seed=st.integers(0, 10_000), dense_up_to=st.sampled_from([0, 8, tridiagonal.DENSE_UP_TO]))
def test_cyclic_reduction_equals_the_dense_inverse(n, d, seed, dense_up_to):
    """Every length, with the recursion's dense base at two positions only (0), at a few numbers, and
    as shipped."""
    diag, upper, eta, dense = _random_chain(2, n, d, seed)
    shipped, tridiagonal.DENSE_UP_TO = tridiagonal.DENSE_UP_TO, dense_up_to
    try:
        mean, cov, cross, logdet = block_tridiagonal_gaussian(diag, upper, eta)
    finally:
        tridiagonal.DENSE_UP_TO = shipped
    sigma = torch.linalg.inv(dense)
    blocks = sigma.unflatten(1, (n, d)).unflatten(-1, (n, d))  # (B, n, d, n, d)
    k = torch.arange(n)
    torch.testing.assert_close(mean, (sigma @ eta.flatten(1, 2)).unflatten(1, (n, d)), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(cov, blocks[:, k, :, k].movedim(0, 1), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(cross, blocks[:, k[1:], :, k[:-1]].movedim(0, 1), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(logdet, torch.logdet(dense), rtol=1e-10, atol=1e-10)
    assert mean.shape == (2, n, d, 1) and cov.shape == (2, n, d, d) and cross.shape == (2, n - 1, d, d) and logdet.shape == (2,)
    assert all(x.is_contiguous() for x in (mean, cov, cross))  # a randn_like of them draws in position order


def test_cyclic_reduction_gradients(monkeypatch):
    monkeypatch.setattr(tridiagonal, "DENSE_UP_TO", 0)  # the reduction's levels, not only its dense base
    for n in (1, 2, 5, 6, 9):
        diag, upper, eta, _ = _random_chain(1, n, 2, n)
        inputs = tuple(x.clone().requires_grad_() for x in (diag, upper, eta))

        def moments(diag, upper, eta):
            mean, cov, cross, logdet = block_tridiagonal_gaussian(0.5 * (diag + diag.mT), upper, eta)
            return mean.sin().sum() + cov.square().sum() + cross.sum() + logdet.sum()

        assert torch.autograd.gradcheck(moments, inputs)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 4), seed=st.integers(0, 10_000), dense_up_to=st.sampled_from([0, 8, tridiagonal.DENSE_UP_TO]))
def test_the_means_alone_equal_the_dense_solve(n, d, seed, dense_up_to):
    """`block_tridiagonal_mean` (the search for linearization points: no covariances) gives Λ⁻¹ η, as the
    full reduction does, at every length and with the dense base anywhere."""
    diag, upper, eta, dense = _random_chain(2, n, d, seed)
    shipped, tridiagonal.DENSE_UP_TO = tridiagonal.DENSE_UP_TO, dense_up_to
    try:
        mean = block_tridiagonal_mean(diag, upper, eta)
        full = block_tridiagonal_gaussian(diag, upper, eta)[0]
    finally:
        tridiagonal.DENSE_UP_TO = shipped
    expected = torch.linalg.solve(dense, eta.flatten(1, 2)).unflatten(1, (n, d))
    torch.testing.assert_close(mean, expected, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(mean, full, rtol=1e-10, atol=1e-12)
    assert mean.shape == (2, n, d, 1) and mean.is_contiguous()


def test_the_means_alone_gradients(monkeypatch):
    for dense_up_to in (0, tridiagonal.DENSE_UP_TO):
        monkeypatch.setattr(tridiagonal, "DENSE_UP_TO", dense_up_to)
        for n in (1, 2, 5, 6, 9):
            diag, upper, eta, _ = _random_chain(1, n, 2, n)
            inputs = tuple(x.clone().requires_grad_() for x in (diag, upper, eta))
            assert torch.autograd.gradcheck(lambda a, u, e: block_tridiagonal_mean(0.5 * (a + a.mT), u, e).sin().sum(), inputs)
