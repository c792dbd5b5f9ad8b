"""A posterior over whole sequences: an extended Kalman smoother over per-frame pseudo-observations.

The factorized posterior q(z_t | x_{t-k+1..t}) must read every state, velocities included, from a
few frames; its errors in a velocity (two frames at 32x32: ~0.6 rad/s for the pendulum) far exceed the
prior's process noise (0.05 rad/s per frame), and the transition KL then pays the encoder to shrink
the latents (docs/results.md §3b). The smoother posterior lets the encoder report only what a frame
shows: a pseudo-observation y_t of the observed quantities h(z_t) (the module's `observe`: the
observed states, or `observe NAME = EXPR` expressions of the state) with its std r_t. The posterior
over the sequence is the prior's dynamics conditioned on them,

    q(z_{1:T}) ∝ p(z_1) Π_t p(z_t | z_{t-1}) Π_t N(y_t | h(z_t), diag r_t²)      (f and h linearized)

so velocities are inferred through the dynamics, from every frame of the sequence (a structured
posterior as in Krishnan et al. 2017 and Fraccaro et al. 2017, with the prior's own exact Jacobian).

    post = kalman_smoother(module, y, y_std)     # y (B, T, m) for the m observations h(z) (module.observations)
    post.mean, post.cov, post.cross, post.entropy
    markov_kl(module, post)                       # KL(q(z_{1:T}) ‖ p(z_{1:T})), the `elbo` reading, (B,)
    mean, cov = kalman_filter(module, y, y_std)   # causal marginals q(z_t | y_1..y_t), for predictions

There is no Python loop over frames, for any T and d. The filter's means l are the fixed point of
"linearize f at l_{t-1} and h at l_t, then filter" (h linearized at the filtered mean it produces: an
iterated extended Kalman update); the Kalman filter of a linearized model is a parallel prefix scan of
affine-Gaussian elements (`_filter`, Särkkä & García-Fernández 2021), so a few scans find l (~4 in
practice); two more under autograd give l the gradient the recursions would
give it (to ~1e-7). The posterior of the model linearized at l is then one Gaussian with a
block-tridiagonal precision, solved by block cyclic reduction (`_smooth`, `anmc.posterior.tridiagonal`).
O(T·d³) time and O(T·d²) memory; the same values and gradients as the filter + RTS recursions under
autograd and as the dense (T·d)² precision path this replaced (tests/test_posterior_smoother.py), at a
training step 1.1-1.3x the N(0, I) step from T = 32 to 256 and at d = 16 (benchmarks/train_step.py,
docs/scaling.md).

`markov_kl` is the `elbo` reading of the transition KL for a posterior that is correlated in time:
linearized at the posterior means, with Cov(z_t, z_{t-1}) from the smoother,

    KL = −H[q] + E_q[−log p(z_1)] + Σ_{t>1} ½[ rᵀQ⁻¹r + tr(Q⁻¹ V_t) + log det 2πQ ],
    r = μ_t − f(μ_{t−1}),  V_t = Σ_t − J C_tᵀ − C_t Jᵀ + J Σ_{t−1} Jᵀ,  C_t = Cov(z_t, z_{t−1}),

which is exactly the factorized `elbo` reading when C_t = 0.

The solves run in float64 (the states are a handful of numbers; Q can be 1e-4 of the state variance)
and return the input dtype. For linear dynamics and a linear h they are exact: the smoothed marginals
equal dense Gaussian conditioning, and E_q[log N(y | Hz, R)] − KL equals the Kalman log-likelihood
log p(y) (tests/test_posterior_smoother.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from anmc.posterior.scan import doubling_below, prefix_scan
from anmc.posterior.tridiagonal import block_tridiagonal_gaussian, block_tridiagonal_mean
from anmc.codegen.runtime import constant_tensor


@dataclass
class SmoothedPosterior:
    """q(z_{1:T}) for B sequences: marginal means (B, T, d) and covariances (B, T, d, d), the cross
    covariances Cov(z_{t+1}, z_t) (B, T-1, d, d) and the entropy of the whole sequence (B,)."""

    mean: Tensor
    cov: Tensor
    cross: Tensor
    entropy: Tensor
    # for an f affine in the states: (module, f(0), J) as the smoother evaluated them, so that markov_kl
    # under the same module reuses them instead of calling the generated code again
    affine: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def std(self) -> Tensor:
        """Marginal standard deviations (B, T, d)."""
        return marginal_std(self.cov)


def marginal_std(cov: Tensor) -> Tensor:
    """Standard deviations (..., d) from covariances (..., d, d)."""
    return torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(0).sqrt()


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


def kalman_smoother(module, y: Tensor, y_std: Tensor, unroll: int = 2) -> SmoothedPosterior:
    """Condition the prior of `module` on pseudo-observations y (B, T, m) of its observations h(z)
    (`module.observe`, m = len(module.observations)) with std y_std (B, T, m): the extended Kalman
    smoother, f linearized at the filter's means l_{t−1} and h at l_t (an iterated extended Kalman
    update: the reading's linearization point is the filtered mean it produces).

    Nothing loops over frames, for any T and d. The filter's means l, where f and h are linearized, are
    the fixed point l = F(l, y) of "linearize at l, then filter", F computed for all frames at once by a
    parallel scan (`_filter`); passes without autograd find it (`_filter_fixed_point`). Each of
    `unroll` differentiable passes of F leaves l's value unchanged and adds one order of its gradient
    (the series of the implicit function theorem; it terminates when h is linear, since l_t then
    depends on l_{<t} only, and converges geometrically otherwise); two reproduce the recursions'
    gradient to ~1e-7 (tests/test_posterior_smoother.py). The posterior of the model linearized at l
    is then solved from its block-tridiagonal precision by cyclic reduction (`_smooth`): O(T·d³) time and
    O(T·d²) memory, log₂ T batched levels. This is for an h affine in the states
    (`module.observation_affine`); otherwise l is the smoother's own means, from a global start
    (`_smoothed_points`, `_best_rollout`). When f is affine as well (`module.transition_affine`: a
    spring, a decay, coupled masses) the model is linear-Gaussian, any l gives the exact smoother, and only
    the cyclic reduction runs.
    """
    readings, points = _readings_and_points(module, y, y_std, unroll)
    post = _smooth(module, readings, points)
    return SmoothedPosterior(*(x.to(y.dtype) for x in (post.mean, post.cov, post.cross, post.entropy)), affine=post.affine)


def kalman_filter(module, y: Tensor, y_std: Tensor, unroll: int = 2) -> tuple[Tensor, Tensor]:
    """The causal marginals q(z_t | y_1..y_t), means (B, T, d) and covariances (B, T, d, d): the extended
    Kalman filter alone (what a prediction may use: it must not see the frames it predicts), linearized
    where `kalman_smoother` linearizes. For an h affine in the states (a reading of states, a linear
    camera) those are the filter's own means, causal throughout. For an h that is not (a pulse profile), they are the iterated smoother's points: each
    filtered mean is a function of y_1..y_t of the model linearized there, but the points themselves
    were chosen from every frame given (the filter's own points leave a pulse-profile phase at the
    prior's centre: docs/method.md §6). To predict from frame t without that, pass frames 1..t only."""
    readings, points = _readings_and_points(module, y, y_std, unroll)
    mean, cov = _filter(module, readings, points)
    return mean.to(y.dtype), cov.to(y.dtype)


def _readings_and_points(module, y: Tensor, y_std: Tensor, unroll: int) -> tuple["_Readings", Tensor]:
    """The checked readings in float64 and where both `kalman_smoother` and `kalman_filter` linearize:
    the filter's own means for an h affine in the states, the iterated smoother's otherwise."""
    _check_readings(module, y, y_std)
    readings = _Readings.build(module, y.double(), y_std.double().square())
    points = _points(module, readings, unroll) if module.observation_affine else _smoothed_points(module, readings, unroll)
    return readings, points


def _points(module, readings: "_Readings", unroll: int) -> Tensor:
    """The linearization points (B, T, d): the filter's fixed point, then `unroll` differentiable passes.
    With f and h both affine the model is linear-Gaussian: linearizing anywhere is exact, so the initial
    mean serves for every frame and no scan is spent finding points."""
    if module.transition_affine and module.observation_affine:
        return readings.m0.unsqueeze(-2).expand(*readings.y.shape[:2], -1)
    # to 1e-7 only: each differentiable pass below squares the remaining error (1e-7 -> ~1e-14)
    lin = _filter_fixed_point(module, readings, tol=1e-7 if unroll else 1e-10)
    for _ in range(unroll):
        lin = _filter(module, readings, lin)[0]
    return lin


def _smoothed_points(module, readings: "_Readings", unroll: int, tol: float = 1e-7, passes: int = 32) -> Tensor:
    """The linearization points (B, T, d) of the iterated extended Kalman smoother, for an h that is not
    affine in the states: the smoothed means l = S(l) of "linearize f and h at l, then filter and smooth"
    (Gauss-Newton on the whole trajectory; Bell 1994), iterated without autograd from the best of the
    prior's noiseless rollouts (`_best_rollout`) for at most `passes` passes, then `unroll`
    differentiable passes. A filter's own means cannot serve here: before a many-to-one h has shown a
    distinctive reading (a pulse), the causal mean sits at the prior's, far from where the later frames
    put the state, and h linearized there (H ≈ 0 between pulses) holds it there (docs/method.md §6)."""
    scale = _scale(module, readings)
    with torch.no_grad():
        lin = _best_rollout(module, readings)
        for _ in range(passes):
            new = _smoothed_mean(module, readings, lin)
            change = float(((new - lin) / scale).abs().max())
            lin = new
            if change <= tol:
                break
    for _ in range(unroll):
        lin = _smoothed_mean(module, readings, lin)
    return lin


def _check_readings(module, y: Tensor, y_std: Tensor) -> None:
    m = len(module.observations)
    if y.shape[-1] != m:
        raise ValueError(f"{y.shape[-1]} pseudo-observations per frame for the {m} observations of the prior ({', '.join(module.observations)})")
    if y_std.shape != y.shape:
        raise ValueError(f"the readings' stds have shape {tuple(y_std.shape)}, the readings {tuple(y.shape)}: give one std per reading")


@dataclass
class _Readings:
    """What the filter needs that does not depend on the linearization, float64, computed once per
    smoother call and shared by every pass: the readings y (B, T, m) and R_t = diag r_t² (B, T, m, m),
    the noise variances q2 = diag Q (d,), the initial prior's mean m0 and variances p0 (d,), and each
    frame's prior covariance before its reading given the previous state, prior_cov (T, d, d): diag P0
    on frame 1, Q after. A module whose first-frame prior is one per sequence (`anmc.prior.marginals.
    StartedPrior`: initial_mean and initial_std (B, d)) gives m0, p0 (B, d) and prior_cov (B, T, d, d)."""

    y: Tensor
    r_cov: Tensor
    q2: Tensor
    m0: Tensor
    p0: Tensor
    prior_cov: Tensor

    @classmethod
    def build(cls, module, y: Tensor, r2: Tensor) -> "_Readings":
        dev, t_len = y.device, y.shape[1]
        as64 = lambda x: x.to(device=dev, dtype=torch.float64)  # noqa: E731
        q2, p0 = as64(module.noise_std).square(), as64(module.initial_std).square()
        var = torch.cat([p0.unsqueeze(-2), q2.expand(*p0.shape[:-1], t_len - 1, -1)], -2)
        return cls(y, torch.diag_embed(r2), q2, as64(module.initial_mean), p0, torch.diag_embed(var))


def _scale(module, readings: _Readings) -> Tensor:
    """The initial-state stds that convergence is measured in, (d,) or (B, 1, d) for a prior per sequence."""
    scale = module.initial_std.to(readings.y)
    return scale.unsqueeze(-2) if scale.dim() > 1 else scale


def _update(module, readings: _Readings, lin: Tensor, prior_mean: Tensor, prior_cov: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each frame's reading applied to a prior N(prior_mean_t, V_t) (prior_mean (B, T, d), V (…, T, d, d)),
    h linearized at the points lin (B, T, d): h(z) ≈ h(l_t) + H_t (z − l_t), so the reading is of H_t z with
    the effective value ỹ_t = y_t − h(l_t) + H_t l_t (float64, from one batched `observe_and_jacobian`).
    With S_t = H_t V_t H_tᵀ + R_t = L_t L_tᵀ (m × m), G_t = L_t⁻¹ H_t (m, d) and
    v_t = L_t⁻¹ (ỹ_t − H_t prior_mean_t) (m,), the Kalman update is

        mean = prior_mean + (G V)ᵀ v,   cov = V − (G V)ᵀ (G V)     (K = V Hᵀ S⁻¹ = (G V)ᵀ L⁻¹),

    returned with G (B, T, m, d) and v (B, T, m, 1)."""
    h, hm = module.observe_and_jacobian(lin)
    h, hm = h.double(), hm.double()
    d = hm.shape[-1]
    innovation = readings.y[..., None] - h[..., None] + hm @ (lin - prior_mean)[..., None]  # ỹ − H prior_mean
    hv = hm @ prior_cov  # H V
    chol = torch.linalg.cholesky(hv @ hm.mT + readings.r_cov)
    solved = torch.linalg.solve_triangular(chol, torch.cat([hm, hv, innovation], -1), upper=False)  # one solve
    g, gv, v = solved[..., :d], solved[..., d : 2 * d], solved[..., 2 * d :]  # G, G V, v
    return prior_mean + (gv.mT @ v)[..., 0], prior_cov - gv.mT @ gv, g, v


@torch.no_grad()
def _filter_fixed_point(module, readings: _Readings, tol: float = 1e-10, inner: int = 8, stall: int = 4) -> Tensor:
    """The extended Kalman filter's means (B, T, d), as the fixed point l = F(l) of `_filter`, iterated from
    each frame's reading alone applied to the initial prior (h linearized at the initial mean; for a
    reading of a state, ≈ the reading there and the initial mean elsewhere). With h linear, frame t's
    filtered mean depends on the points of frames before it only, so pass k makes frames 1..k exact and
    T passes end it whatever the dynamics; in practice the change falls quadratically (2, 3e-3, 7e-6,
    1e-8 for the pendulum) and the loop stops once it is below `tol` initial-state stds: ~4 scans
    instead of T sequential filter steps. A nonlinear h adds each frame's own Gauss-Newton iteration
    for its update (the iterated update), which converges linearly, at a rate ρ that grows with the
    reading's residual and h's curvature and shrinks with the prediction's precision. So after each
    scan up to `inner` such iterations refine every frame's point at once from the scan's predictions
    (`_iterate_updates`, no scan; the fixed point is the same), and the remaining error is estimated as
    change / (1 − ρ), ρ the ratio of successive changes. Where a frame's update has two modes (a
    brightness that cannot tell φ from −φ) the iteration may never settle: past the T scans a linear h
    needs, it stops once the change has not reached a new low for `stall` scans, and after T + 32 at most."""
    b, t_len, _ = readings.y.shape
    scale = _scale(module, readings)
    start = readings.m0.unsqueeze(-2).expand(b, t_len, -1)
    lin = _update(module, readings, start, start, readings.prior_cov[..., :1, :, :])[0]
    before = lowest = math.inf
    since_lowest = 0
    for scan in range(t_len + 32):
        linearized = _linearize(module, lin)
        filtered = _filter(module, readings, lin, linearized)
        # an h affine in the states reads the same wherever it is linearized: the filter's means are final
        new = filtered[0] if module.observation_affine else _iterate_updates(module, readings, *filtered, *linearized, inner, tol * scale)
        change = float(((new - lin) / scale).abs().max())
        if change <= tol * max(0.0, 1.0 - change / before):
            return new
        lowest, since_lowest = (change, 0) if change < lowest else (lowest, since_lowest + 1)
        if scan >= t_len and since_lowest >= stall:
            return new
        lin, before = new, change
    return lin


ROLLOUTS = 512  # candidate starts of the global search for a nonlinear h (`_best_rollout`) per ROLLOUT_FRAMES frames
ROLLOUT_FRAMES = 32  # (the training sequence's default length); a longer sequence gets proportionally more,
MAX_ROLLOUTS = 8192  # up to this many


def rollout_candidates(frames: int) -> int:
    """How many candidate starts `_best_rollout` draws for a sequence of `frames` frames: ROLLOUTS per
    ROLLOUT_FRAMES frames, at most MAX_ROLLOUTS. The misfit sharpens with the length (a rate off by δ
    puts the phase δ T off by the end), so its basin shrinks like 1/T: 512 starts found the pulsar's spin
    in 23 of 24 whole 128-frame clips, one settling on half its rate; 2048 found all 24, within 0.03 rad/s."""
    return min(MAX_ROLLOUTS, ROLLOUTS * max(1, math.ceil(frames / ROLLOUT_FRAMES)))


@torch.no_grad()
def _best_rollout(module, readings: _Readings, candidates: int | None = None, seed: int = 0) -> Tensor:
    """Where the fixed point starts when h is not affine in the states: for each sequence, the noiseless
    rollout z_t = f(z_{t−1}) of the one of `candidates` initial states (default `rollout_candidates(T)`;
    drawn from the initial prior, a fixed seed, shared by every sequence) whose readings h(z_t) best
    match y_t (least Σ_t ‖(y_t − h(z_t)) / r_t‖²), (B, T, d). An iterated EKF only refines: from the initial mean it follows whichever
    mode a many-to-one h leads it to (a pulse profile read at the uniform prior's centre has H ≈ 0 and
    leaves the phase where it is), while a global search over whole trajectories uses every frame to
    pick the basin (docs/method.md §6). T calls of f on `candidates` states, O(B·candidates·T·m) to score.
    With a first-frame prior per sequence (m0 (B, d)), each sequence draws its own candidates from its
    N(m0, diag p0) (B times the rollouts)."""
    gen = torch.Generator(device=module.initial_a.device).manual_seed(seed)
    b, t_len = readings.y.shape[:2]
    candidates = candidates or rollout_candidates(t_len)
    if readings.m0.dim() > 1:
        eps = torch.randn((b, candidates, readings.m0.shape[-1]), generator=gen, dtype=torch.float64, device=gen.device)
        z0 = readings.m0[:, None] + readings.p0.sqrt()[:, None] * eps.to(readings.y)
        paths = module.rollout(z0.flatten(0, 1), t_len).double().unflatten(0, (b, candidates))  # (B, K, T, d)
        seen = module.observe(paths).double()  # (B, K, T, m)
    else:
        z0 = module.sample_initial(candidates, gen).to(readings.y)
        paths = module.rollout(z0, t_len).double()  # (K, T, d)
        seen = module.observe(paths).double()[None]  # (1, K, T, m)
    var = torch.diagonal(readings.r_cov, dim1=-2, dim2=-1)  # (B, T, m)
    misfit = ((readings.y[:, None] - seen).square() / var[:, None]).sum((-2, -1))  # (B, K)
    best = misfit.argmin(1)
    return paths[torch.arange(b, device=best.device), best] if paths.dim() == 4 else paths[best]


def _iterate_updates(module, readings: _Readings, mean: Tensor, cov: Tensor, offset: Tensor, jm: Tensor, steps: int, tol: Tensor) -> Tensor:
    """Each frame's update iterated (h relinearized at its result) from the predictions of the filtered
    marginals mean (B, T, d), cov (B, T, d, d) of the model linearized by (offset, jm): N(m0, P0) on
    frame 1, N(J_t m_{t−1} + u_t, J_t P_{t−1} J_tᵀ + Q) after; at most `steps` times, until no point
    moves by more than `tol` (d,). Returns the points (B, T, d)."""
    b, t_len, d = mean.shape
    prior_mean = torch.cat([readings.m0.unsqueeze(-2).expand(b, 1, d), (jm @ mean[:, :-1, :, None])[..., 0] + offset], 1)
    first, after = readings.prior_cov[..., :1, :, :], readings.prior_cov[..., 1:, :, :]
    prior_cov = torch.cat([first.expand(b, 1, d, d), jm @ cov[:, :-1] @ jm.mT + after], 1)
    lin = mean
    for _ in range(steps):
        new = _update(module, readings, lin, prior_mean, prior_cov)[0]
        if bool(((new - lin).abs() <= tol).all()):
            return new
        lin = new
    return lin


def _linearize(module, lin: Tensor) -> tuple[Tensor, Tensor]:
    """The transitions linearized at the points lin (B, T, d): offsets u_t = f(l_{t−1}) − J_t l_{t−1}
    (B, T−1, d) and Jacobians J_t (B, T−1, d, d), float64, from one batched call."""
    b, t_len, d = lin.shape
    if t_len == 1:
        return lin.new_zeros(b, 0, d), lin.new_zeros(b, 0, d, d)
    if module.transition_affine:  # f(z) = f(0) + J z, the same J everywhere: one point serves every frame
        f0, jm = _affine_transition(module, lin)
        return f0.double().expand(b, t_len - 1, d), jm.double().expand(b, t_len - 1, d, d)
    points = lin[:, :-1].reshape(-1, d)
    f, jm = module.f_and_jacobian(points)
    jm = jm.double().reshape(b, t_len - 1, d, d)
    offset = f.double().reshape(b, t_len - 1, d) - (jm @ points.reshape(b, t_len - 1, d, 1))[..., 0]
    return offset, jm


def _f_and_jacobian(module, z: Tensor, affine: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """f and J at the points z (N, d): the module's, or for f affine in the states (`module.
    transition_affine`) f(0) + J z from one evaluation (`_affine_transition`, or `affine` = (f(0), J)
    when the caller has it)."""
    if affine is None and module.transition_affine:
        affine = _affine_transition(module, z)
    if affine is None:
        return module.f_and_jacobian(z)
    f0, jm = (x.to(z) for x in affine)
    return f0 + z @ jm.mT, jm.expand(z.shape[0], -1, -1)


def _affine_transition(module, like: Tensor) -> tuple[Tensor, Tensor]:
    """f(0) (d,) and the constant J (d, d) of an f affine in the states, in `like`'s dtype and device: the
    generated f and J cost the same at a point as at a few hundred (their time is their operations), so
    one evaluation serves every frame. Two points, not one: torch.compile (`compile_core`) specializes a
    batch of one and would compile another graph for it."""
    f0, jm = module.f_and_jacobian(like.new_zeros(2, like.shape[-1]))
    return f0[0], jm[0]


def _filter(module, readings: _Readings, lin: Tensor, linearized: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """The Kalman filter of the model linearized at the points lin (B, T, d), z_t = J_t z_{t−1} + u_t + ε
    and y_t = h(l_t) + H_t (z_t − l_t) + δ, as a parallel scan (Särkkä & García-Fernández 2021;
    docs/method.md §6): filtered means (B, T, d) and covariances (B, T, d, d). With the effective reading
    ỹ_t = y_t − h(l_t) + H_t l_t (`_update`), frame t's element is the map from z_{t−1} to
    q(z_t | z_{t−1}, y_t),

        A_t = (I − K_t H_t) J_t,   b_t = u_t + K_t (ỹ_t − H_t u_t),   C_t = (I − K_t H_t) Q,
        η_t = J_tᵀ H_tᵀ S_t⁻¹ (ỹ_t − H_t u_t),   Λ_t = J_tᵀ H_tᵀ S_t⁻¹ H_t J_t,
        S_t = H_t Q H_tᵀ + R_t,   K_t = Q H_tᵀ S_t⁻¹,

    with (A, η, Λ) = 0 on frame 1, whose (b, C) is the initial prior's update by H_1; the prefix scan of
    `_filter_combine` leaves the filtered mean in b and the covariance in C. Packed per frame as
    [A | b] (d, d+1), C (d, d), [Λ | η] (d, d+1). `linearized`: `_linearize(module, lin)` when the
    caller has it."""
    offset, jm = _linearize(module, lin) if linearized is None else linearized
    b, t_len, d = lin.shape
    prior_mean = torch.cat([readings.m0.unsqueeze(-2).expand(b, 1, d), offset], 1)  # m0, then u_t
    mean, cov, g, v = _update(module, readings, lin, prior_mean, readings.prior_cov)
    gj = g[:, 1:] @ jm  # L⁻¹ H J (B, T−1, m, d)
    gq = g[:, 1:] * readings.q2  # L⁻¹ H Q
    steps = torch.cat([jm - gq.mT @ gj, mean[:, 1:, :, None], cov[:, 1:], gj.mT @ gj, gj.mT @ v[:, 1:]], -1)  # (B, T−1, d, 3d + 2)
    first = torch.cat([lin.new_zeros(b, d, d), mean[:, 0, :, None], cov[:, 0], lin.new_zeros(b, d, d + 1)], -1)
    elems = torch.cat([first[:, None], steps], 1)
    out = prefix_scan(lambda i, j: _filter_combine(i, j, d), _pack(elems, d), doubling_below(d))
    out = out.unflatten(-1, (d, 3 * d + 2))  # [A | b | C | Λ | η]: the filtered mean in b, covariance in C
    return out[..., d], _sym(out[..., d + 1 : 2 * d + 1])


def _pack(blocks: Tensor, d: int) -> Tensor:
    """(B, T, d, 3d + 2) = [A | b | C | Λ | η] -> (B, T, d(3d + 2)): one tensor per frame for the scan."""
    return blocks.flatten(2)


def _filter_combine(first: Tensor, then: Tensor, d: int) -> Tensor:
    """(A, b, C, η, Λ)_i ⊗ (A, b, C, η, Λ)_j, i earlier (Särkkä & García-Fernández 2021, lemma 8): with
    M = I + C_i Λ_j, X = A_j M⁻¹ and Y = A_iᵀ M⁻ᵀ,

        A = X A_i,  b = X (b_i + C_i η_j) + b_j,  C = X C_i A_jᵀ + C_j,
        η = Y (η_j − Λ_j b_i) + η_i,  Λ = Y Λ_j A_i + Λ_i,

    on packed elements (`_pack`), every position flattened into one batch of d × (3d + 2) blocks so that
    each product is one `bmm` (a 4-D `@` is four or five operations: expand, reshape, bmm, view; this
    combine runs ~24 times a training step, and on a GPU each operation is a launch). Adjacent columns
    share products: X [A_i | b_i + C_i η_j | C_i] gives A, X (b_i + C_i η_j) and X C_i in one, and
    Λ_j [A_i | b_i] both Λ_j A_i and Λ_j b_i."""
    k = 3 * d + 2
    e_i, e_j = first.reshape(-1, d, k), then.reshape(-1, d, k)
    a_i, c_i = e_i[..., :d], e_i[..., d + 1 : 2 * d + 1]
    a_j, b_j, c_j, l_j, le_j = e_j[..., :d], e_j[..., d : d + 1], e_j[..., d + 1 : 2 * d + 1], e_j[..., 2 * d + 1 : 3 * d + 1], e_j[..., 2 * d + 1 :]
    cle = torch.bmm(c_i, le_j)  # [C_i Λ_j | C_i η_j]
    m_inv = torch.linalg.inv_ex(cle[..., :d] + _eye(d, first))[0]
    pad = torch.nn.functional.pad
    xabc = torch.bmm(torch.bmm(a_j, m_inv), e_i[..., : 2 * d + 1] + pad(cle[..., d:], (d, d)))  # X [A_i | b_i + C_i η_j | C_i]
    lab = torch.bmm(l_j, e_i[..., : d + 1])  # [Λ_j A_i | Λ_j b_i]
    le = torch.baddbmm(e_i[..., 2 * d + 1 :], torch.bmm(m_inv, a_i).mT, lab * _negated_last(d, first) + pad(le_j[..., d:], (d, 0)))
    ab = xabc[..., : d + 1] + pad(b_j, (d, 0))
    c = torch.baddbmm(c_j, xabc[..., d + 1 :], a_j.mT)
    return torch.cat([ab, c, le], -1).view(first.shape)


def _eye(d: int, like: Tensor) -> Tensor:
    return constant_tensor(("smoother eye", d, like.dtype, like.device), lambda: torch.eye(d, dtype=like.dtype, device=like.device))


def _negated_last(d: int, like: Tensor) -> Tensor:
    """(d + 1,): 1, …, 1, −1 ([Λ_j A_i | Λ_j b_i] -> [Λ_j A_i | −Λ_j b_i]). Made once per (d, dtype,
    device): every combine of every scan uses it, and making it anew cost operations and, on a GPU, a
    copy from the host that waits for the GPU."""
    return constant_tensor(("smoother negated last", d, like.dtype, like.device), lambda: 1.0 - 2.0 * (torch.arange(d + 1, device=like.device) == d).to(like.dtype))


def _smooth(module, readings: _Readings, lin: Tensor) -> SmoothedPosterior:
    """The posterior of the model linearized at lin (B, T, d), z_t = J_t z_{t−1} + u_t + ε and
    y_t ≈ h(l_t) + H_t (z_t − l_t) + δ, from its information form (`_information`): block cyclic reduction
    (`block_tridiagonal_gaussian`) gives the means, the marginal and the cross covariances, and the
    entropy ½ (T d log 2πe − log det Λ) in log₂ T levels of batched d × d work: O(T·d³) time, O(T·d²)
    memory."""
    t_len, d = lin.shape[1:]
    diag, upper, eta, affine = _information(module, readings, lin)
    mean, cov, cross, logdet = block_tridiagonal_gaussian(diag, upper, eta)
    entropy = 0.5 * (t_len * d * math.log(2 * math.pi * math.e) - logdet)
    return SmoothedPosterior(mean[..., 0], cov, cross, entropy, affine)


def _smoothed_mean(module, readings: _Readings, lin: Tensor) -> Tensor:
    """`_smooth`'s means alone (B, T, d): what a pass of the search for the linearization points needs, at
    about half the cost (`block_tridiagonal_mean`: no covariances)."""
    diag, upper, eta, _ = _information(module, readings, lin)
    return block_tridiagonal_mean(diag, upper, eta)[..., 0]


def _information(module, readings: _Readings, lin: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple | None]:
    """The information form of the model linearized at lin (B, T, d): the precision Λ of z_{1:T} is
    block-tridiagonal (docs/method.md §6),

        Λ_tt = P_t⁻¹ + J_{t+1}ᵀ Q⁻¹ J_{t+1} + H_tᵀ R_t⁻¹ H_t,   Λ_{t,t+1} = −J_{t+1}ᵀ Q⁻¹,
        η_t = P_t⁻¹ m_t − J_{t+1}ᵀ Q⁻¹ u_{t+1} + H_tᵀ R_t⁻¹ ỹ_t,

    (P_1, m_1 = P0, m0; P_t, m_t = Q, u_t after; the J terms absent on the last frame; ỹ_t = y_t − h(l_t)
    + H_t l_t). Q, P0 and the R_t are diagonal. Returns Λ's diagonal blocks (B, T, d, d), the blocks above
    them (B, T−1, d, d), η (B, T, d, 1), and for an affine f its one evaluation (module, f(0), J), which
    `markov_kl` reuses."""
    b, t_len, d = lin.shape
    offset, jm = _linearize(module, lin)
    # an affine f's one evaluation (f(0), J: every frame's offset and Jacobian), for markov_kl after
    affine = (module, offset[0, 0], jm[0, 0]) if module.transition_affine and t_len > 1 else None
    h, hm = module.observe_and_jacobian(lin)
    h, hm = h.double(), hm.double()
    reading = readings.y - h + (hm @ lin[..., None])[..., 0]  # ỹ
    hr = hm / torch.diagonal(readings.r_cov, dim1=-2, dim2=-1)[..., None]  # R⁻¹ H
    q_inv, p0_inv = 1.0 / readings.q2, 1.0 / readings.p0
    qj = jm * q_inv[:, None]  # Q⁻¹ J
    jq = jm.mT @ torch.cat([qj, (offset * q_inv)[..., None]], -1)  # Jᵀ Q⁻¹ [J | u]
    jq_dd, jq_u = torch.cat([jq, lin.new_zeros(b, 1, d, d + 1)], 1).split([d, 1], -1)  # none on the last frame
    prior_precision = torch.cat([p0_inv.expand(b, d)[:, None], q_inv.expand(b, t_len - 1, d)], 1)
    prior_eta = torch.cat([(p0_inv * readings.m0).expand(b, d)[:, None], offset * q_inv], 1)
    diag = hm.mT @ hr + torch.diag_embed(prior_precision) + jq_dd
    eta = hr.mT @ reading[..., None] + prior_eta[..., None] - jq_u
    return diag, -qj.mT, eta, affine


def initial_cross_entropy(module, mu: Tensor, var: Tensor) -> Tensor:
    """E_q[−log N(z | m0, diag s0²)] for q with mean mu and marginal variances var (..., d), without its
    constant ½ Σ log 2π s0², `-> (...)`: markov_kl's first frame, and training's warm-up anchor."""
    m0, s0 = module.initial_mean.to(mu), module.initial_std.to(mu)
    return 0.5 * (((mu - m0) / s0).square() + var / s0.square()).sum(-1)


def markov_kl(module, post: SmoothedPosterior) -> Tensor:
    """KL(q(z_{1:T}) ‖ p(z_1) Π p(z_t | z_{t−1})) for each sequence, linearized at the means, `-> (B,)`."""
    mu, cov = post.mean, post.cov
    b, t_len, d = mu.shape
    s0 = module.initial_std.to(mu)
    cross_entropy = initial_cross_entropy(module, mu[:, 0], torch.diagonal(cov[:, 0], dim1=-2, dim2=-1)) + 0.5 * torch.log(
        2 * math.pi * s0.square()
    ).sum(-1)
    if t_len > 1:
        affine = getattr(post, "affine", None)  # any object with the four moments will do
        shared = affine[1:] if affine is not None and affine[0] is module else None  # the smoother's f(0) and J
        f, jm = _f_and_jacobian(module, mu[:, :-1].reshape(-1, d), shared)
        f, jm = f.reshape(b, t_len - 1, d), jm.reshape(b, t_len - 1, d, d)
        q2 = module.noise_std.to(mu).square()
        c = post.cross  # Cov(z_t, z_{t-1})
        now, prev = cov.split([1, t_len - 1], 1)[1], cov.split([t_len - 1, 1], 1)[0]  # Σ_t, Σ_{t−1}
        # diag V_t only (Q is diagonal): diag(J Cᵀ)_i = Σ_k J_ik C_ik, diag(J Σ Jᵀ)_i = Σ_k (J Σ)_ik J_ik
        v_diag = torch.diagonal(now, dim1=-2, dim2=-1) - 2.0 * (jm * c).sum(-1) + ((jm @ prev) * jm).sum(-1)
        resid = mu[:, 1:] - f
        cross_entropy = cross_entropy + 0.5 * (
            (resid.square() / q2).sum((-2, -1))
            + (v_diag / q2).sum((-2, -1))
            + (t_len - 1) * torch.log(2 * math.pi * q2).sum()
        )
    return cross_entropy - post.entropy
