"""GaussianMixture: construction, stratified reparameterized sampling, log_prob (against torch.distributions
and a float64 brute force), chunking, no samples x components x d tensor, stability (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from _mixtures import random_components
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal
from torch.utils._python_dispatch import TorchDispatchMode

import anmc.prior._logdensity as logdensity
from anmc.prior import GaussianMixture, gmm_kl_monte_carlo

F64 = torch.float64


def random_mixture(batch, K, d, *, full, dtype=F64, seed=0, spread=3.0, scale=(0.3, 1.5)):
    g = torch.Generator().manual_seed(seed)
    logw = torch.randn(*batch, K, generator=g, dtype=F64)
    loc = spread * torch.randn(*batch, K, d, generator=g, dtype=F64)
    std = scale[0] + (scale[1] - scale[0]) * torch.rand(*batch, K, d, generator=g, dtype=F64)
    if not full:
        return GaussianMixture(logw.to(dtype), loc.to(dtype), scale_diag=std.to(dtype))
    A = torch.randn(*batch, K, d, d, generator=g, dtype=F64)
    corr = A @ A.mT + d * torch.eye(d, dtype=F64)
    s = corr.diagonal(dim1=-2, dim2=-1).sqrt()
    L = std[..., None] * torch.linalg.cholesky(corr / s[..., :, None] / s[..., None, :])
    return GaussianMixture(logw.to(dtype), loc.to(dtype), scale_tril=L.to(dtype))


def torch_mixture(mix: GaussianMixture):
    if mix.is_diagonal:
        comp = Independent(Normal(mix.loc, mix.scale_diag), 1)
    else:
        comp = MultivariateNormal(mix.loc, scale_tril=mix.scale_tril)
    return MixtureSameFamily(Categorical(logits=mix.log_weights), comp)


def brute_log_prob(z, mix: GaussianMixture):
    """float64, materializing (n, K, d): the reference. z (n, d) against an unbatched mixture."""
    L = mix.tril().to(F64)
    diff = z.to(F64)[:, None, :] - mix.loc.to(F64)[None]
    y = torch.linalg.solve_triangular(L.expand(z.shape[0], *L.shape), diff[..., None], upper=False)[..., 0]
    half_logdet = L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    ell = mix.log_weights.to(F64) - 0.5 * y.square().sum(-1) - half_logdet - 0.5 * mix.d * math.log(2 * math.pi)
    return torch.logsumexp(ell, -1)


# ---------------------------------------------------------------------------------------------- construction


def test_weights_are_normalized_and_shapes_broadcast():
    loc = torch.randn(4, 3, 2)
    mix = GaussianMixture(torch.tensor([0.0, 1.0, 2.0]), loc, scale_diag=torch.ones(2))
    assert mix.batch_shape == (4,) and mix.num_components == 3 and mix.d == 2
    assert torch.allclose(mix.weights.sum(-1), torch.ones(4))
    assert torch.allclose(mix.weights[0], torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0))
    assert mix.scale_diag.shape == (4, 3, 2) and mix.is_diagonal
    assert mix.covariance().shape == (4, 3, 2, 2)


def test_gaussian_is_a_one_component_mixture():
    loc, L = torch.randn(5, 3, dtype=F64), torch.linalg.cholesky(torch.eye(3, dtype=F64) * 2).expand(5, 3, 3)
    mix = GaussianMixture.gaussian(loc, scale_tril=L)
    assert mix.batch_shape == (5,) and mix.num_components == 1
    z = torch.randn(7, 5, 3, dtype=F64)
    ref = MultivariateNormal(loc, scale_tril=L).log_prob(z)
    assert torch.allclose(mix.log_prob(z), ref, atol=1e-12)


def test_exactly_one_scale_is_required():
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(2), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(2), torch.zeros(2, 3), scale_diag=torch.ones(2, 3), scale_tril=torch.eye(3))


def test_pool_merges_the_batch_into_components():
    mix = random_mixture((4,), 3, 2, full=True)
    pooled = mix.pool()
    assert pooled.batch_shape == () and pooled.num_components == 12
    z = torch.randn(10, 2, dtype=F64)
    ref = torch.logsumexp(mix.log_prob(z[:, None, :]), -1) - math.log(4)  # (1/N) sum_i p_i(z)
    assert torch.allclose(pooled.log_prob(z), ref, atol=1e-12)


def test_to_changes_dtype_and_device():
    mix = random_mixture((2,), 3, 4, full=True, dtype=torch.float32)
    mix64 = mix.to(F64)
    assert mix64.dtype == F64 and mix64.scale_tril.dtype == F64
    z = torch.randn(5, 2, 4)
    assert torch.allclose(mix64.log_prob(z.double()).float(), mix.log_prob(z), atol=1e-4)
    if torch.cuda.is_available():
        on_gpu = mix.to("cuda")
        assert on_gpu.device.type == "cuda"
        assert torch.allclose(on_gpu.log_prob(z.cuda()).cpu(), mix.log_prob(z), atol=1e-4)


# ---------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("full", [False, True])
def test_rsample_draws_from_every_component(full):
    mix = random_mixture((2,), 3, 2, full=full, seed=1)
    S = 20000
    z = mix.rsample(S, generator=torch.Generator().manual_seed(0))
    assert z.shape == (S, 2, 3, 2)  # (S, *batch, K, d): S draws from every component, whatever its weight
    mean, cov = z.mean(0), torch.einsum("sbki,sbkj->bkij", z - z.mean(0), z - z.mean(0)) / (S - 1)
    se_mean = (mix.covariance().diagonal(dim1=-2, dim2=-1) / S).sqrt()
    assert ((mean - mix.loc).abs() < 5 * se_mean).all()
    true_cov = mix.covariance()
    se_cov = ((true_cov.square() + true_cov.diagonal(dim1=-2, dim2=-1)[..., :, None]
               * true_cov.diagonal(dim1=-2, dim2=-1)[..., None, :]) / S).sqrt()  # fmt: skip
    assert ((cov - true_cov).abs() < 5 * se_cov).all()


@pytest.mark.parametrize("full", [False, True])
def test_rsample_is_reparameterized(full):
    mix = random_mixture((), 2, 3, full=full)
    loc = mix.loc.clone().requires_grad_()
    scale = (mix.scale_tril if full else mix.scale_diag).clone().requires_grad_()
    kw = {"scale_tril": scale} if full else {"scale_diag": scale}
    g = torch.Generator().manual_seed(3)
    z = GaussianMixture(mix.log_weights, loc, **kw).rsample(5, generator=g)
    z.sum().backward()
    assert torch.allclose(loc.grad, torch.full_like(loc, 5.0))  # dz/dm = I for every draw
    noise = GaussianMixture(mix.log_weights, loc, **kw).sample_noise(5, torch.Generator().manual_seed(3))
    expect = noise.sum(-2)  # diagonal: d/dσ_ki Σ_s (m_k + σ_k ε_ks)_i = Σ_s ε_ksi
    if full:  # z_ki = m_ki + Σ_j L_kij ε_kj: d/dL_kij = Σ_s ε_ksj
        expect = expect[..., None, :].expand(*expect.shape[:-1], 3, 3)
    assert torch.allclose(scale.grad, expect, atol=1e-12)


# ---------------------------------------------------------------------------------------------- log_prob


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("batch,K,d", [((), 1, 1), ((3,), 4, 2), ((2, 3), 5, 6), ((), 7, 8)])
def test_log_prob_matches_torch_distributions(dtype, full, batch, K, d):
    mix = random_mixture(batch, K, d, full=full, dtype=dtype, seed=K + d)
    g = torch.Generator().manual_seed(0)
    z = (mix.rsample(3, g).reshape(-1, *batch, d) + 0.5 * torch.randn(3 * K, *batch, d, generator=g).to(dtype))
    ours, ref = mix.log_prob(z), torch_mixture(mix).log_prob(z)
    assert ours.shape == ref.shape == (3 * K, *batch)
    # where both are stable: float64 to 1e-5 absolute (in fact ~1e-13); float32 to 1e-5 relative
    if dtype == F64:
        assert (ours - ref).abs().max() < 1e-5
    else:
        assert ((ours - ref).abs() / ref.abs().clamp_min(1.0)).max() < 1e-5


def test_log_prob_broadcasts_like_torch_distributions():
    mix = random_mixture((3,), 2, 2, full=True)
    for shape in [(2,), (3, 2), (1, 2), (5, 3, 2), (4, 1, 2), (2, 4, 3, 2)]:
        z = torch.randn(shape, dtype=F64)
        assert torch.allclose(mix.log_prob(z), torch_mixture(mix).log_prob(z), atol=1e-12), shape


@pytest.mark.parametrize("full", [False, True])
def test_chunking_does_not_change_the_result(full):
    mix = random_mixture((2,), 9, 3, full=full)
    z = torch.randn(2, 500, 3, dtype=F64) * 3
    whole = mix.log_prob_points(z)
    comps = logdensity.Components([mix.components()])
    for entries in (1, 37, 2 * 9 * 64):
        assert torch.allclose(logdensity.mixture_log_probs(z, comps, max_chunk_entries=entries)[0], whole, atol=1e-12)


@pytest.mark.parametrize("entries", [logdensity.MAX_CHUNK_ENTRIES, 37])
def test_stacked_mixtures_have_autograds_gradients(entries):
    """Two mixtures of different sizes (3 diagonal, 5 full components) scored in one pass, whole or in chunks
    of 37 entries: the written-out backward pass gives the gradients that autograd gives through the float64
    brute force, for the points and every parameter of both (each log-density weighted differently)."""
    q = random_mixture((2,), 3, 4, full=False, seed=3)
    p = random_mixture((2,), 5, 4, full=True, seed=4)
    tensors = [t.clone().requires_grad_() for t in (q.log_weights, q.loc, q.scale_diag, p.log_weights, p.loc,
                                                    p.scale_tril)]  # fmt: skip
    z = (3 * torch.randn(2, 40, 4, generator=torch.Generator().manual_seed(0), dtype=F64)).requires_grad_()
    q = GaussianMixture(tensors[0], tensors[1], scale_diag=tensors[2])
    p = GaussianMixture(tensors[3], tensors[4], scale_tril=tensors[5])
    comps = logdensity.Components([q.components(), p.components()])
    log_q, log_p = logdensity.mixture_log_probs(z, comps, entries)
    w_q, w_p = torch.rand(2, 40, dtype=F64), torch.randn(2, 40, dtype=F64)
    ours = torch.autograd.grad((w_q * log_q).sum() + (w_p * log_p).sum(), [z, *tensors], retain_graph=True)
    ref_q = torch.stack([brute_log_prob(z[b], GaussianMixture(q.log_weights[b], q.loc[b], scale_diag=q.scale_diag[b]))
                         for b in range(2)])  # fmt: skip
    ref_p = torch.stack([brute_log_prob(z[b], GaussianMixture(p.log_weights[b], p.loc[b], scale_tril=p.scale_tril[b]))
                         for b in range(2)])  # fmt: skip
    assert torch.allclose(log_q, ref_q, atol=1e-12) and torch.allclose(log_p, ref_p, atol=1e-12)
    ref = torch.autograd.grad((w_q * ref_q).sum() + (w_p * ref_p).sum(), [z, *tensors])
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_far_components_fall_back_to_exact_solves(monkeypatch):
    """Components 1e3 stds apart with widths from 1e-4 to 1e2: the GEMM expansion would cancel; the rows at
    risk get their leading entries recomputed by triangular solves, and float32 matches a float64 brute force."""
    calls = []
    whiten = logdensity.Components.whiten

    def counting(self, diff, b=None, k=None):
        if b is not None:
            calls.append(int(b.numel()))
        return whiten(self, diff, b, k)

    monkeypatch.setattr(logdensity.Components, "whiten", counting)
    std = torch.tensor([[1e-4, 1e-4, 1e-4], [1e2, 1e2, 1e2], [1e-2, 1.0, 1e-3]], dtype=F64)
    loc = 1e3 * std * torch.tensor([[1.0, -1.0, 0.5], [0.3, 1.0, -1.0], [-1.0, 0.2, 1.0]], dtype=F64)
    A = torch.tensor([[1.0, 0, 0], [0.5, 1, 0], [-0.3, 0.4, 1]], dtype=F64)
    L = std[..., None] * (A / A.norm(dim=-1, keepdim=True))
    for dtype in (torch.float32, F64):
        mix = GaussianMixture(torch.tensor([0.0, -1.0, 1.0], dtype=dtype), loc.to(dtype), scale_tril=L.to(dtype))
        z = mix.rsample(6, torch.Generator().manual_seed(0)).reshape(-1, 3)
        ref = brute_log_prob(z, mix)
        out = mix.log_prob(z).to(F64)
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        assert ((out - ref).abs() / ref.abs().clamp_min(1.0)).max() < tol, dtype
    assert sum(calls) > 0


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest, self.calls = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("full", [False, True])
def test_never_materializes_samples_by_components_by_d(full):
    N, S, d = 96, 8, 6
    q = random_mixture((), N, d, full=False, dtype=torch.float32)
    p = random_mixture((), N, d, full=full, dtype=torch.float32, seed=1)
    loc = p.loc.clone().requires_grad_()
    scale = (p.scale_tril if full else p.scale_diag).clone().requires_grad_()
    p = GaussianMixture(p.log_weights, loc, **({"scale_tril": scale} if full else {"scale_diag": scale}))
    with LargestTensor() as mode:
        kl = gmm_kl_monte_carlo(q, p, S, generator=torch.Generator().manual_seed(0))
        forward_calls = mode.calls
        kl.backward()
    assert mode.calls > forward_calls + 10  # the mode saw the backward pass too
    # the largest is the (samples x components) log-density matrix, q's and p's side by side; never x d
    assert mode.largest <= N * S * (N + N) < N * S * N * d


# ---------------------------------------------------------------------------------------------- stability


@st.composite
def hard_mixtures(draw):
    """Per-coordinate variances anywhere in [1e-8, 1e4], means up to 1e3 of their stds apart, d <= 8."""
    d = draw(st.integers(1, 8))
    K = draw(st.integers(1, 4))
    full = draw(st.booleans())
    dtype = draw(st.sampled_from([torch.float32, F64]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logw, loc, scale = random_components(K, d, full, g, weight_scale=3.0)
    return logw.to(dtype), loc.to(dtype), scale.to(dtype), full, seed


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(hard_mixtures())
def test_log_prob_is_finite_with_finite_gradients(case):
    logw, loc, scale, full, seed = case
    params = [t.clone().requires_grad_() for t in (logw, loc, scale)]
    mix = GaussianMixture(params[0], params[1], **({"scale_tril": params[2]} if full else {"scale_diag": params[2]}))
    g = torch.Generator().manual_seed(seed)
    z = torch.cat([mix.rsample(3, g).detach().reshape(-1, mix.d), loc.mean(0, keepdim=True),
                   loc.mean(0, keepdim=True) + 1e4 * scale.reshape(-1).abs().max()]).requires_grad_()  # fmt: skip
    lp = mix.log_prob(z)
    assert lp.dtype == loc.dtype and torch.isfinite(lp).all()
    grads = torch.autograd.grad(lp.sum(), [*params, z])
    assert all(torch.isfinite(gr).all() for gr in grads)
    ref = brute_log_prob(z.detach(), mix)
    own = lp.detach().to(F64)[: -2]  # the samples: accurate, not just finite
    tol = 1e-4 if loc.dtype == torch.float32 else 1e-9
    assert ((own - ref[:-2]).abs() / ref[:-2].abs().clamp_min(1.0)).max() < tol
