"""The smoother as it was before the parallel scans (issue 16), kept verbatim as the tests' reference:
the dense (T·d)² precision path (fixed point of batched Cholesky passes, two differentiable passes, one
dense solve) and the extended Kalman filter + Rauch-Tung-Striebel recursions under autograd (a loop over
frames). anmc/posterior/smoother.py must give their values and gradients. Its `markov_kl` and
`initial_cross_entropy`, which the scans did not change, are not copied: the tests use the package's.

A posterior over whole sequences: an extended Kalman smoother over per-frame pseudo-observations.

The factorized posterior q(z_t | x_{t-k+1..t}) must read every state, velocities included, from a
few frames; its errors in a velocity (two frames at 32x32: ~0.6 rad/s for the pendulum) far exceed the
prior's process noise (0.05 rad/s per frame), and the transition KL then pays the encoder to shrink
the latents (docs/results.md §3b). The smoother posterior lets the encoder report only what a frame
shows: a pseudo-observation y_t of the observed states with its std r_t. The posterior over the
sequence is the prior's dynamics conditioned on them,

    q(z_{1:T}) ∝ p(z_1) Π_t p(z_t | z_{t-1}) Π_t N(y_t | H z_t, diag r_t²)      (f linearized)

so velocities are inferred through the dynamics, from every frame of the sequence (a structured
posterior as in Krishnan et al. 2017 and Fraccaro et al. 2017, with the prior's own exact Jacobian).

    post = kalman_smoother(module, y, y_std)     # y (B, T, m) for the m observed states
    post.mean, post.cov, post.cross, post.entropy
    markov_kl(module, post)                       # KL(q(z_{1:T}) ‖ p(z_{1:T})), the `elbo` reading, (B,)
    mean, cov = kalman_filter(module, y, y_std)   # causal marginals q(z_t | y_1..y_t), for predictions

In training there is no Python loop over frames. The filter's means l are the fixed point of "linearize
f at l, then filter", and the filter of a linearized model is block elimination on its precision, so
a few batched Cholesky passes find l (exact after T passes by causality, ~5 in practice); two more
passes under autograd give l the gradient the recursions would give it (to ~1e-7); one more solves
the smoother. Same posterior and gradients as the filter + Rauch-Tung-Striebel recursions under
autograd, at a step 1.2x the N(0, I) step instead of 1.57x (benchmarks/train_step.py), and a few dozen
batched kernels instead of thousands of small ones on a GPU.

`markov_kl` is the `elbo` reading of the transition KL for a posterior that is correlated in time:
linearized at the posterior means, with Cov(z_t, z_{t-1}) from the smoother,

    KL = −H[q] + E_q[−log p(z_1)] + Σ_{t>1} ½[ rᵀQ⁻¹r + tr(Q⁻¹ V_t) + log det 2πQ ],
    r = μ_t − f(μ_{t−1}),  V_t = Σ_t − J C_tᵀ − C_t Jᵀ + J Σ_{t−1} Jᵀ,  C_t = Cov(z_t, z_{t−1}),

which is exactly the factorized `elbo` reading when C_t = 0.

The solves run in float64 (the states are a handful of numbers; Q can be 1e-4 of the state variance)
and return the input dtype. For linear dynamics they are exact: the smoothed marginals equal dense
Gaussian conditioning, and E_q[log N(y | Hz, R)] − KL equals the Kalman log-likelihood log p(y)
(tests/test_prior_smoother.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.functional import pad as F_pad


@dataclass
class SmoothedPosterior:
    """q(z_{1:T}) for B sequences: marginal means (B, T, d) and covariances (B, T, d, d), the cross
    covariances Cov(z_{t+1}, z_t) (B, T-1, d, d) and the entropy of the whole sequence (B,)."""

    mean: Tensor
    cov: Tensor
    cross: Tensor
    entropy: Tensor

    @property
    def std(self) -> Tensor:
        """Marginal standard deviations (B, T, d)."""
        return marginal_std(self.cov)


def marginal_std(cov: Tensor) -> Tensor:
    """Standard deviations (..., d) from covariances (..., d, d)."""
    return torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(0).sqrt()


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


def _logdet_pd(a: Tensor) -> Tensor:
    return 2.0 * torch.linalg.cholesky(_sym(a)).diagonal(dim1=-2, dim2=-1).log().sum(-1)


def kalman_smoother(module, y: Tensor, y_std: Tensor, dense_up_to: int = 512, unroll: int = 2) -> SmoothedPosterior:
    """Condition the prior of `module` on pseudo-observations y (B, T, m) of its observed states with std
    y_std (B, T, m): the extended Kalman smoother, f linearized at the filter's means.

    When T·d <= `dense_up_to` (training's sequences), nothing loops over frames. The filter's means l,
    where f is linearized, are the fixed point l = F(l, y) of "linearize at l, then filter", F computed
    for all frames at once from the Cholesky factor of the linearized model's precision
    (`_filtered_means`); batched passes without autograd find it (`_filter_fixed_point`). Each of
    `unroll` differentiable passes of F leaves l's value unchanged and adds one order of its gradient
    (the series of the implicit function theorem, which terminates since l_t depends on l_{<t} only);
    two reproduce the recursions' gradient to ~1e-7 (tests/test_prior_smoother.py). The model
    linearized at l is then solved in one batched Cholesky factorization (`_solve_dense`). Longer
    sequences run the filter and Rauch-Tung-Striebel smoother under autograd (memory linear in T);
    both give the same posterior.
    """
    _check_readings(module, y)
    t_len = y.shape[1]
    y64, r2 = y.double(), y_std.double().square()
    if t_len * module.d > dense_up_to:
        post = _rts(module, *_filter(module, y64, r2))
    else:
        readings = _readings_information(module, y64, r2)
        start = module.initial_mean.expand(y.shape[0], t_len, module.d)
        # to 1e-7 only: each differentiable pass below squares the remaining error (1e-7 -> ~1e-14)
        lin = _filter_fixed_point(module, readings, start, tol=1e-7 if unroll else 1e-10)
        for _ in range(unroll):
            lin = _filtered_means(module, readings, lin)
        post = _solve_dense(module, readings, *_linearize(module, lin))
    return SmoothedPosterior(*(x.to(y.dtype) for x in (post.mean, post.cov, post.cross, post.entropy)))


def kalman_filter(module, y: Tensor, y_std: Tensor) -> tuple[Tensor, Tensor]:
    """The causal marginals q(z_t | y_1..y_t), means (B, T, d) and covariances (B, T, d, d): the extended
    Kalman filter alone (what a prediction may use: it must not see the frames it predicts)."""
    _check_readings(module, y)
    filt_m, filt_p, *_ = _filter(module, y.double(), y_std.double().square())
    return torch.stack(filt_m, 1).to(y.dtype), torch.stack(filt_p, 1).to(y.dtype)


def _check_readings(module, y: Tensor) -> None:
    if y.shape[-1] != len(module.observed_index):
        raise ValueError(f"{y.shape[-1]} pseudo-observations per frame for {len(module.observed_index)} observed states")


@torch.no_grad()
def _filter_fixed_point(module, readings: tuple[Tensor, Tensor, Tensor], start: Tensor, tol: float = 1e-10) -> Tensor:
    """The extended Kalman filter's means (B, T, d), as the fixed point l = F(l) of `_filtered_means`,
    iterated from `start` (B, T, d) (training: the initial mean at every frame), with the readings'
    information from `_readings_information`. Frame t's filtered mean depends on the points of
    frames before it only, so pass k makes frames 1..k exact and T passes end it whatever the dynamics;
    in practice the change falls quadratically (2e-1, 1e-4, 5e-8, 3e-11 for the pendulum) and the
    loop stops once it is below `tol` initial-state stds: ~5 batched passes instead of T sequential
    filter steps."""
    eta0 = readings[1]
    scale = module.initial_std.to(eta0)
    lin = start.to(eta0)
    for _ in range(lin.shape[1]):
        new = _filtered_means(module, readings, lin)
        if float(((new - lin) / scale).abs().max()) <= tol:
            return new
        lin = new
    return lin


def _filtered_means(module, readings: tuple[Tensor, Tensor, Tensor], lin: Tensor) -> Tensor:
    """The filtered means of the model linearized at the points lin (B, T, d), all frames at once.

    Eliminating z_1 .. z_{t−1} from the precision Λ leaves D_t = L_tt L_ttᵀ and h_t = L_tt w_t (L = chol Λ,
    w = L⁻¹η: block forward elimination is the Kalman filter); they still hold the next transition's
    terms J_{t+1}ᵀQ⁻¹J_{t+1} and −J_{t+1}ᵀQ⁻¹b_{t+1}, and without them they are the information form of
    q(z_t | y_1..y_t): m_t = (D_t − J_{t+1}ᵀQ⁻¹J_{t+1})⁻¹ (h_t + J_{t+1}ᵀQ⁻¹b_{t+1})."""
    b, t_len, d = lin.shape
    lam, eta, next_prec, next_info = _precision(readings, *_linearize(module, lin))
    chol = torch.linalg.cholesky(lam)
    w = torch.linalg.solve_triangular(chol, eta.reshape(b, t_len * d, 1), upper=False).reshape(b, t_len, d)
    steps = torch.arange(t_len, device=lin.device)
    blocks = chol.reshape(b, t_len, d, t_len, d)[:, steps, :, steps].transpose(0, 1)  # L_tt, (B, T, d, d)
    info = (blocks @ w[..., None])[..., 0] + next_info
    return torch.linalg.solve(blocks @ blocks.mT - next_prec, info[..., None])[..., 0]


def _linearize(module, lin: Tensor) -> tuple[Tensor, Tensor]:
    """The transitions linearized at the points lin (B, T, d): offsets b_t = f(l_{t−1}) − J_t l_{t−1}
    (B, T−1, d) and Jacobians J_t (B, T−1, d, d), float64, from one batched call."""
    b, t_len, d = lin.shape
    if t_len == 1:
        return lin.new_zeros(b, 0, d), lin.new_zeros(b, 0, d, d)
    points = lin[:, :-1].reshape(-1, d)
    f, jm = module.f_and_jacobian(points)
    jm = jm.double().reshape(b, t_len - 1, d, d)
    offset = f.double().reshape(b, t_len - 1, d) - (jm @ points.reshape(b, t_len - 1, d, 1))[..., 0]
    return offset, jm


def _filter(module, y: Tensor, r2: Tensor):
    """The extended Kalman filter (f and J at each filtered mean in turn, Joseph-form updates) in float64:
    filtered and predicted means and covariances, and the Jacobians J_t."""
    b, t_len, _ = y.shape
    d = module.d
    dev = y.device
    obs = torch.tensor(module.observed_index, device=dev)
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    h = eye[obs]  # (m, d)
    r_mat = torch.diag_embed(r2)  # (B, T, m, m)
    q_mat = torch.diag(module.noise_std.to(device=dev, dtype=torch.float64).square())
    mean = module.initial_mean.to(device=dev, dtype=torch.float64).expand(b, d)
    cov = torch.diag_embed(module.initial_std.to(device=dev, dtype=torch.float64).square()).expand(b, d, d)
    filt_m, filt_p, pred_m, pred_p, jac = [], [], [], [], []
    for t in range(t_len):
        if t:
            mean, jm = (x.double() for x in module.f_and_jacobian(filt_m[-1]))
            cov = _sym(jm @ filt_p[-1] @ jm.mT) + q_mat
            pred_m.append(mean)
            pred_p.append(cov)
            jac.append(jm)
        ph = cov.index_select(-1, obs)  # P Hᵀ (B, d, m)
        gain = torch.linalg.solve(ph.index_select(-2, obs) + r_mat[:, t], ph.mT).mT  # P Hᵀ S⁻¹ (B, d, m)
        mean = mean + (gain @ (y[:, t] - mean.index_select(-1, obs))[..., None])[..., 0]
        a = eye - gain @ h
        cov = _sym(a @ cov @ a.mT + gain @ r_mat[:, t] @ gain.mT)
        filt_m.append(mean)
        filt_p.append(cov)
    return filt_m, filt_p, pred_m, pred_p, jac


def _rts(module, filt_m, filt_p, pred_m, pred_p, jac) -> SmoothedPosterior:
    """The Rauch-Tung-Striebel smoother over the filter's output, and the entropy of q(z_{1:T})."""
    b, d = filt_m[0].shape
    t_len = len(filt_m)
    q2 = module.noise_std.to(filt_m[0]).square()
    means, covs, crosses = [filt_m[-1]], [filt_p[-1]], []
    if t_len > 1:
        # every RTS gain at once, P_t|t Fᵀ P_{t+1|t}⁻¹, (B, T-1, d, d); the recursion then needs only products
        fp, pp, jm = torch.stack(filt_p[:-1], 1), torch.stack(pred_p, 1), torch.stack(jac, 1)
        gains = torch.linalg.solve(pp, jm @ fp).transpose(-1, -2)
        for t in range(t_len - 2, -1, -1):
            gain = gains[:, t]
            means.append(filt_m[t] + (gain @ (means[-1] - pred_m[t])[..., None])[..., 0])
            crosses.append(covs[-1] @ gain.transpose(-1, -2))  # Cov(z_{t+1}, z_t)
            covs.append(_sym(filt_p[t] + gain @ (covs[-1] - pred_p[t]) @ gain.transpose(-1, -2)))
    # H = H(z_T) + Σ_t H(z_t | z_{t+1}), and by the determinant lemma
    # log det Cov(z_t | z_{t+1}) = −log det(P_t|t⁻¹ + Fᵀ Q⁻¹ F) = log det P_t|t + log det Q − log det P_{t+1|t}
    logdets = _logdet_pd(torch.stack(filt_p + pred_p, 1))  # (B, T + T - 1)
    entropy = 0.5 * (
        logdets[:, :t_len].sum(1) - logdets[:, t_len:].sum(1) + (t_len - 1) * q2.log().sum() + t_len * d * math.log(2 * math.pi * math.e)
    )
    mean = torch.stack(means[::-1], 1)
    cov = torch.stack(covs[::-1], 1)
    cross = torch.stack(crosses[::-1], 1) if crosses else cov.new_zeros(b, 0, d, d)
    return SmoothedPosterior(mean, cov, cross, entropy)


def _readings_information(module, y: Tensor, r2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """What does not depend on the linearization, in information form: the readings on the observed
    coordinates, the initial prior on frame 1 and Q⁻¹ on the others: diagonal blocks (B, T, d, d) and
    η (B, T, d) (see `_precision`), and diag Q⁻¹ (d,). Computed once per smoother call, shared by every
    pass."""
    b, t_len, _ = y.shape
    d = module.d
    dev = y.device
    obs = torch.tensor(module.observed_index, device=dev)
    q_inv = module.noise_std.to(device=dev, dtype=torch.float64).square().reciprocal()  # (d,)
    p0_inv = module.initial_std.to(device=dev, dtype=torch.float64).square().reciprocal()
    m0 = module.initial_mean.to(device=dev, dtype=torch.float64)
    first = torch.zeros(t_len, 1, dtype=torch.float64, device=dev)
    first[0] = 1.0
    zeros = torch.zeros(b, t_len, d, dtype=torch.float64, device=dev)
    diag = torch.diag_embed(zeros.index_copy(2, obs, r2.reciprocal()) + first * p0_inv + (1.0 - first) * q_inv)
    eta = zeros.index_copy(2, obs, y / r2) + first * (p0_inv * m0)
    return diag, eta, q_inv


def _precision(readings: tuple[Tensor, Tensor, Tensor], offset: Tensor, jm: Tensor):
    """The linearized model z_t = J_t z_{t−1} + b_t + ε conditioned on the readings, in information form:

        Λ_tt = P0⁻¹[t=1] + Q⁻¹[t>1] + J_{t+1}ᵀQ⁻¹J_{t+1}[t<T] + Hᵀ R_t⁻¹ H,   Λ_{t,t−1} = −Q⁻¹ J_t,
        η_t  = P0⁻¹ m0[t=1] + Q⁻¹ b_t[t>1] − J_{t+1}ᵀ Q⁻¹ b_{t+1}[t<T] + Hᵀ R_t⁻¹ y_t,

    from the terms without J or b (`readings`, from `_readings_information`). Returns the dense
    precision (B, T·d, T·d), η (B, T, d), and the next transition's terms J_{t+1}ᵀQ⁻¹J_{t+1}
    (B, T, d, d) and J_{t+1}ᵀQ⁻¹b_{t+1} (B, T, d) (zero at t = T)."""
    diag, eta, q_inv = readings
    b, t_len, d = eta.shape
    dev = eta.device
    qj = q_inv[:, None] * jm  # Q⁻¹ J_t (B, T-1, d, d)
    next_prec = F_pad(jm.mT @ qj, (0, 0, 0, 0, 0, 1))
    next_info = F_pad((qj.mT @ offset[..., None])[..., 0], (0, 0, 0, 1))
    diag = diag + next_prec
    eta = eta + F_pad(q_inv * offset, (0, 0, 1, 0)) - next_info
    # the dense (T·d)² precision from its blocks: (B, T, T, d, d) -> (B, T·d, T·d)
    seqs, steps = torch.arange(b, device=dev)[:, None], torch.arange(t_len, device=dev)
    lam = torch.zeros(b, t_len, t_len, d, d, dtype=torch.float64, device=dev).index_put((seqs, steps, steps), diag)
    if t_len > 1:
        lam = lam.index_put((seqs, steps[1:], steps[:-1]), -qj).index_put((seqs, steps[:-1], steps[1:]), -qj.mT)
    return lam.transpose(2, 3).reshape(b, t_len * d, t_len * d), eta, next_prec, next_info


def _solve_dense(module, readings: tuple[Tensor, Tensor, Tensor], offset: Tensor, jm: Tensor) -> SmoothedPosterior:
    """The linearized model's posterior as one linear solve: with Λ = L Lᵀ (`_precision`), mean Λ⁻¹η,
    covariance Λ⁻¹ (its diagonal and first sub-diagonal blocks are the marginals and cross-covariances),
    entropy ½ T·d log 2πe − Σ log diag L."""
    lam, eta, _, _ = _precision(readings, offset, jm)
    b, t_len, d = eta.shape
    chol = torch.linalg.cholesky(lam)
    cov_all = torch.cholesky_inverse(chol).reshape(b, t_len, d, t_len, d)
    mean = torch.cholesky_solve(eta.reshape(b, t_len * d, 1), chol).reshape(b, t_len, d)
    steps = torch.arange(t_len, device=eta.device)
    # contiguous, like the recursions' stacks: a sample drawn with randn_like(std) follows std's layout
    cov = _sym(cov_all[:, steps, :, steps].transpose(0, 1)).contiguous()  # (B, T, d, d)
    cross = cov_all[:, steps[1:], :, steps[:-1]].transpose(0, 1).contiguous()  # Cov(z_{t+1}, z_t) (B, T-1, d, d)
    entropy = 0.5 * t_len * d * math.log(2 * math.pi * math.e) - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return SmoothedPosterior(mean, cov, cross, entropy)
