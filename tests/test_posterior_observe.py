"""The smoother with a general observation function h (anmc/posterior/smoother.py, docs/method.md §6):
exact against dense Gaussian conditioning and the Kalman log-likelihood for a linear h that is not a
selection of states, the iterated extended Kalman filter of a sequential loop for a nonlinear h, a
hidden state recovered from nonlinear readings, and gradients for the readings, their stds and the
parameters inside h."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anmc
from anmc.posterior.smoother import kalman_filter, kalman_smoother, markov_kl

import _smoother_reference as reference
from _observations import circle, linear, observed_through
from test_posterior_smoother import assert_dense_posterior, dense_joint

F64 = torch.float64
PRIORS = Path(__file__).resolve().parent.parent / "priors"

# two readings of the spring that are not states: a mix of displacement and velocity with an offset,
# and a second mix (m = 2: a full 2 x 2 innovation covariance)
MIX = torch.tensor([[1.5, 0.2], [0.4, -0.3]], dtype=F64)
SHIFT = torch.tensor([0.3, -1.0], dtype=F64)


def mixed_spring(m):
    module = anmc.compile_prior(PRIORS / "spring.anm").module().double()
    return linear(module, ("a", "b")[:m], MIX[:m], SHIFT[:m])


def pulsar_circle():
    return circle(anmc.compile_prior(PRIORS / "pulsar.anm").module().double())


def pendulum_bob():
    """The pendulum seen as its bob's position (L sin θ, −L cos θ) in metres: h depends on the learnable L."""
    module = anmc.compile_prior(PRIORS / "pendulum.anm").module().double()

    def observe(self, z):
        length = self.param("L").to(z)
        return torch.stack([length * torch.sin(z[..., 0]), -length * torch.cos(z[..., 0])], -1)

    def jacobian(self, z):
        length = self.param("L").to(z)
        zero = torch.zeros_like(z[..., 0])
        rows = [[length * torch.cos(z[..., 0]), zero], [length * torch.sin(z[..., 0]), zero]]
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    return observed_through(module, ("px", "py"), observe, jacobian)


def readings(module, b, t_len, seed, r=0.05):
    """Readings of h along noisy rollouts of the prior, with stds between r and 2r: z (B, T, d), y, std (B, T, m)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # data: no graph back to the learnable params
        z = module.rollout(module.sample_initial(b, generator=g), t_len, noise=True, generator=g)
        h = module.observe(z)
    y = h + r * torch.randn(h.shape, generator=g, dtype=F64)
    std = torch.full_like(y, r) * (1 + torch.rand(y.shape, generator=g, dtype=F64))
    return z, y, std


def dense_h(m, t_len, d):
    """The block-diagonal (T m, T d) matrix of the linear h over a whole sequence."""
    return torch.block_diag(*[MIX[:m]] * t_len)


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("t_len", [1, 2, 7, 23])
def test_linear_observation_equals_dense_conditioning(m, t_len):
    """y_t = M z_t + c + noise with M not a selection: the smoothed marginals, cross-covariances and entropy
    are those of conditioning the joint Gaussian of z_{1:T} on y_{1:T}."""
    spring = mixed_spring(m)
    d = spring.d
    _, y, r = readings(spring, 3, t_len, seed=t_len + 10 * m)
    post = kalman_smoother(spring, y, r)
    mean, cov = dense_joint(spring, t_len)
    h = dense_h(m, t_len, d)
    for i in range(3):
        s = h @ cov @ h.T + torch.diag(r[i].reshape(-1) ** 2)
        gain = cov @ h.T @ torch.linalg.inv(s)
        m_post = mean + gain @ (y[i].reshape(-1) - SHIFT[:m].repeat(t_len) - h @ mean)
        c_post = cov - gain @ h @ cov
        assert_dense_posterior(post, i, m_post, c_post)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), t_len=st.integers(1, 16), r=st.floats(1e-3, 1.0), m=st.sampled_from([1, 2]))
def test_linear_observation_elbo_equals_kalman_log_likelihood(seed, t_len, r, m):
    """With the exact posterior the ELBO is tight for any linear h: E_q[log N(y | Mz + c, R)] − KL = log p(y)."""
    spring = mixed_spring(m)
    _, y, std = readings(spring, 4, t_len, seed, r)
    post = kalman_smoother(spring, y, std)
    mix = MIX[:m]
    pred = post.mean @ mix.T + SHIFT[:m]
    pred_var = torch.diagonal(mix @ post.cov @ mix.T, dim1=-2, dim2=-1)
    expected_loglik = (-0.5 * (((y - pred) / std) ** 2 + pred_var / std**2 + torch.log(2 * math.pi * std**2))).sum((1, 2))
    mean, cov = dense_joint(spring, t_len)
    h = dense_h(m, t_len, spring.d)
    marginal = torch.distributions.MultivariateNormal(h @ mean + SHIFT[:m].repeat(t_len), h @ cov @ h.T + torch.diag_embed(std.reshape(4, -1) ** 2))
    torch.testing.assert_close(expected_loglik - markov_kl(spring, post), marginal.log_prob(y.reshape(4, -1)), rtol=1e-7, atol=1e-6)


def sequential_filter(module, y, std, points=None, iterations=100):
    """The extended Kalman filter as a loop over frames. With `points` (B, T, d): f linearized at
    points_{t−1} and h at points_t (what the iterated extended Kalman smoother runs at its fixed point,
    where the smoothed means are the points). Without: the iterated EKF, f and J at the previous filtered
    mean and the update iterated l <- m⁻ + K(l) (y − h(l) − H(l) (m⁻ − l)) to its fixed point. P = (I − K H) P⁻
    at the point. Returns what reference._rts takes."""
    b, t_len, _ = y.shape
    d = module.d
    r_cov = torch.diag_embed(std**2)
    mean = module.initial_mean.double().expand(b, d)
    cov = torch.diag_embed(module.initial_std.double() ** 2).expand(b, d, d)
    q = torch.diag(module.noise_std.double() ** 2)
    filt_m, filt_p, pred_m, pred_p, jac = [], [], [], [], []

    def update(point):
        h, hm = module.observe_and_jacobian(point)
        gain = cov @ hm.mT @ torch.linalg.inv(hm @ cov @ hm.mT + r_cov[:, t])
        return mean + (gain @ (y[:, t] - h - (hm @ (mean - point)[..., None])[..., 0])[..., None])[..., 0], cov - gain @ hm @ cov

    for t in range(t_len):
        if t:
            at = filt_m[-1] if points is None else points[:, t - 1]
            f, jm = module.f_and_jacobian(at)
            mean, cov = f + (jm @ (filt_m[-1] - at)[..., None])[..., 0], jm @ filt_p[-1] @ jm.mT + q
            pred_m.append(mean)
            pred_p.append(cov)
            jac.append(jm)
        point = mean if points is None else points[:, t]
        for _ in range(iterations if points is None else 0):
            point = update(point)[0]
        filtered = update(point)
        filt_m.append(filtered[0])
        filt_p.append(filtered[1])
    return filt_m, filt_p, pred_m, pred_p, jac


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), t_len=st.integers(1, 24), r=st.floats(0.01, 0.15))  # noisier: two modes (seed 297, r 0.2)
def test_nonlinear_observation_is_the_iterated_extended_kalman_smoother(seed, t_len, r):
    """h = (cos φ, sin φ) of the pulsar's phase: the filter at its own points is the sequential iterated
    EKF (h linearized at each frame's own filtered mean); the smoother is the iterated extended Kalman
    smoother (the Rauch-Tung-Striebel smoother of the model linearized at its own smoothed means), and
    `kalman_filter` the filter of the model linearized there. The start is
    declared within a radian (phase ~ Normal(1, 0.5)): from the uniform phase a reading half a turn from
    the prior's mean leaves frame 1 two modes, and the loop and the scans may settle in different ones."""
    source = pulsar_source("observe c = cos(phase), s = sin(phase)").replace("state phase ~ Uniform(0, 6.2832)", "state phase ~ Normal(1, 0.5)")
    pulsar = anmc.compile_prior(source).module().double()
    _, y, std = readings(pulsar, 3, t_len, seed, r)
    import anmc.posterior.smoother as smoother

    loop = sequential_filter(pulsar, y, std)
    data = smoother._Readings.build(pulsar, y, std.square())
    mean, cov = smoother._filter(pulsar, data, smoother._points(pulsar, data, 2))  # the filter's own points
    torch.testing.assert_close(mean, torch.stack(loop[0], 1), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(cov, torch.stack(loop[1], 1), rtol=1e-7, atol=1e-10)
    post = kalman_smoother(pulsar, y, std)
    at_points = sequential_filter(pulsar, y, std, post.mean)
    expected = reference._rts(pulsar, *at_points)
    for name in ("mean", "cov", "cross", "entropy"):
        torch.testing.assert_close(getattr(post, name), getattr(expected, name), rtol=1e-6, atol=1e-7)
    mean, cov = kalman_filter(pulsar, y, std)  # the filter linearized at the smoother's points
    torch.testing.assert_close(mean, torch.stack(at_points[0], 1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cov, torch.stack(at_points[1], 1), rtol=1e-6, atol=1e-8)


def test_circle_readings_recover_the_spin():
    """The pulsar seen as (cos φ, sin φ) with 0.1 error: the smoothed phase is within a few hundredths of
    a radian of the truth on the circle, and the spin ω, which no frame shows, within 0.1 rad/s where
    the prior's spread is 1 rad/s."""
    pulsar = pulsar_circle()
    z, y, std = readings(pulsar, 16, 48, seed=3, r=0.1)
    post = kalman_smoother(pulsar, y, std)
    phase_error = torch.remainder(post.mean[..., 0] - z[..., 0] + math.pi, 2 * math.pi) - math.pi
    assert phase_error.abs().mean() < 0.05, phase_error.abs().mean()
    omega_error = (post.mean[..., 1] - z[..., 1]).abs().mean()
    assert omega_error < 0.1, omega_error
    assert (post.std[..., 1] < 0.2).all()  # and knows it: the prior's omega std is 1
    assert (omega_error < 3 * post.std[..., 1].mean()).all()


def test_gradients_reach_readings_stds_and_the_length_inside_h():
    """The bob's position (L sin θ, −L cos θ): the KL and expected log-likelihood's gradients for the
    readings, their stds and L (in f and in h) match central finite differences."""
    pendulum = pendulum_bob()
    _, y, std = readings(pendulum, 2, 12, seed=5, r=0.05)
    raw = dict(pendulum.named_parameters())["_raw_L"]

    def objective(y, std):
        post = kalman_smoother(pendulum, y, std)
        pred = pendulum.observe(post.mean)
        return markov_kl(pendulum, post).sum() + (((y - pred) / std) ** 2).sum() + post.std.sum()

    y, std = y.clone().requires_grad_(), std.clone().requires_grad_()
    gy, gs, gl = torch.autograd.grad(objective(y, std), [y, std, raw])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in (gy, gs, gl))
    eps = 1e-6
    with torch.no_grad():
        for tensor, grad in ((y, gy), (std, gs)):
            for index in [(0, 0, 0), (0, 5, 1), (1, 11, 0), (1, 3, 1)]:
                tensor[index] += eps
                up = objective(y, std)
                tensor[index] -= 2 * eps
                down = objective(y, std)
                tensor[index] += eps
                assert abs((up - down) / (2 * eps) - grad[index]) <= 1e-4 * (1 + abs(grad[index])), (index, grad[index])
        raw += eps
        up = objective(y, std)
        raw -= 2 * eps
        down = objective(y, std)
        raw += eps
        assert abs((up - down) / (2 * eps) - gl) <= 1e-4 * (1 + abs(gl))


def pulsar_source(observe: str) -> str:
    """priors/pulsar.anm with its `observe phase` line replaced."""
    lines = (PRIORS / "pulsar.anm").read_text().splitlines()
    return "\n".join(observe if line.startswith("observe ") else line for line in lines) + "\n"


def test_a_compiled_expression_observation_is_the_hand_written_h():
    """`observe c = cos(phase), s = sin(phase)` compiled from a .anm: the smoother conditions on the
    generated h and H and gives the posterior of the hand-written circle (tests/_observations.py)."""
    compiled = anmc.compile_prior(pulsar_source("observe c = cos(phase), s = sin(phase)")).module().double()
    assert compiled.observations == ("c", "s") and compiled.observed_states == ("phase",)
    by_hand = pulsar_circle()
    _, y, std = readings(by_hand, 3, 20, seed=11, r=0.05)
    ours, theirs = kalman_smoother(compiled, y, std), kalman_smoother(by_hand, y, std)
    for name in ("mean", "cov", "cross", "entropy"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-10, atol=1e-12)


def test_a_compiled_brightness_reading_tracks_a_known_start():
    """`observe brightness = 0.5 + 0.5*cos(phase)` (the pulsar's frames): one reading cannot tell φ from −φ,
    so the start is declared near the truth (phase ~ Normal(1, 0.2)); from there the smoother follows the
    phase and finds the spin from the brightness alone."""
    source = pulsar_source("observe brightness = 0.5 + 0.5 * cos(phase)").replace("state phase ~ Uniform(0, 6.2832)", "state phase ~ Normal(1, 0.2)")
    pulsar = anmc.compile_prior(source).module().double()
    assert pulsar.observations == ("brightness",)
    z, y, std = readings(pulsar, 8, 60, seed=2, r=0.02)
    post = kalman_smoother(pulsar, y, std)
    phase_error = torch.remainder(post.mean[..., 0] - z[..., 0] + math.pi, 2 * math.pi) - math.pi
    assert phase_error.abs().median() < 0.05, phase_error.abs().median()
    assert (post.mean[:, -10:, 1] - z[:, -10:, 1]).abs().mean() < 0.2


def test_an_unsettled_iteration_stops_past_t_scans(monkeypatch):
    """priors/pulsar.anm (a pulse profile of the phase, flat between the pulses) read from a uniform phase:
    some sequences' first frames have several modes and the iteration does not settle; it stops 4 scans
    after its lowest change once past T, instead of running to T + 32, and the filtered marginals are finite."""
    import anmc.posterior.smoother as smoother

    pulsar = anmc.compile_prior(PRIORS / "pulsar.anm").module().double()
    _, y, std = readings(pulsar, 8, 32, seed=0, r=0.02)
    scans = []
    real = smoother._filter
    monkeypatch.setattr(smoother, "_filter", lambda *a, **k: scans.append(1) or real(*a, **k))
    data = smoother._Readings.build(pulsar, y, std.square())
    mean, cov = smoother._filter(pulsar, data, smoother._points(pulsar, data, 2))  # the filter's own points
    assert torch.isfinite(mean).all() and torch.isfinite(cov).all()
    assert 32 < len(scans) <= 32 + 4 + 1 + 3, len(scans)  # past T, the stall, the two unrolled and the last scan


def test_wrong_number_of_readings_is_refused():
    pulsar = pulsar_circle()
    y = torch.zeros(2, 5, 1, dtype=F64)
    with pytest.raises(ValueError, match="1 pseudo-observations per frame for the 2 observations of the prior"):
        kalman_smoother(pulsar, y, torch.ones_like(y))


def test_a_pulse_profile_from_a_uniform_phase_is_found_by_the_global_start():
    """priors/pulsar.anm as declared: a frame shows a narrow pulse profile of the phase (flat between the
    pulses, so H ≈ 0 at most phases) and the phase starts uniform. Linearized at the filter's means the
    smoother stays where the prior's centre leaves it; from the best noiseless rollout and linearized at
    its own smoothed means it finds the phase on every frame and the spin no frame shows."""
    pulsar = anmc.compile_prior("priors/pulsar.anm").module().double()
    generator = torch.Generator().manual_seed(0)
    z = pulsar.rollout(pulsar.sample_initial(16, generator), 32, noise=True, generator=generator)
    y = pulsar.observe(z) + 0.03 * torch.randn(z.shape[:-1] + (1,), generator=generator, dtype=z.dtype)
    post = kalman_smoother(pulsar, y, torch.full_like(y, 0.03))
    phase_error = (torch.remainder(post.mean[..., 0] - z[..., 0] + math.pi, 2 * math.pi) - math.pi).abs()
    assert float((phase_error < 0.2).double().mean()) == 1.0, phase_error.median(1).values
    assert float((post.mean[..., 1] - z[..., 1]).abs().median()) < 0.1
    import anmc.posterior.smoother as smoother

    readings = smoother._Readings.build(pulsar, y, torch.full_like(y, 0.03).square())
    own = smoother._filter(pulsar, readings, smoother._points(pulsar, readings, 0))[0]  # the filter's own points
    own_error = (torch.remainder(own[..., 0] - z[..., 0] + math.pi, 2 * math.pi) - math.pi).abs()
    assert float((own_error < 0.2).double().mean()) < 0.5


def test_whole_clips_of_fast_spins_are_found_with_more_candidates():
    """A 128-frame clip sharpens the misfit (a spin off by δ puts the phase 4.3 δ rad off by the end), so the
    global search draws candidates in proportion to the length (`rollout_candidates`): fast spins two prior
    stds above the mean, where few of the prior's draws fall, come back (median error under 0.05 rad/s), not
    at half their rate (what 512 starts gave one of the 24 clips of the pulsar's evaluation; 2048 none)."""
    import anmc.posterior.smoother as smoother

    assert [smoother.rollout_candidates(t) for t in (8, 32, 33, 128, 10_000)] == [512, 512, 1024, 2048, smoother.MAX_ROLLOUTS]
    pulsar = anmc.compile_prior("priors/pulsar.anm").module().double()
    generator = torch.Generator().manual_seed(1)
    start = torch.stack([torch.rand(6, generator=generator, dtype=F64) * 2 * math.pi,
                         2 * math.pi + torch.tensor([1.8, 2.0, 2.2, -1.8, 0.3, 1.0], dtype=F64)], -1)  # fmt: skip
    z = pulsar.rollout(start, 128, noise=True, generator=generator)
    y = pulsar.observe(z) + 0.03 * torch.randn(z.shape[:-1] + (1,), generator=generator, dtype=z.dtype)
    post = kalman_smoother(pulsar, y, torch.full_like(y, 0.03))
    error = (post.mean[..., 1] - z[..., 1]).abs()  # the true spin wanders by its process noise, 0.01 a frame
    assert float(error.median()) < 0.05 and float(error.max()) < 0.15
