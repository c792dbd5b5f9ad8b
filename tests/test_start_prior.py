"""`--start-prior rollout`: a training window that starts k frames into its clip gets the prior's own
marginal at frame k as its first frame's prior (anmc/prior/marginals.py), and the smoother and the
loss take one first-frame prior per sequence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import anmc
from anmc.cli import main
from anmc.data.dataset import FrameSequences, split_clips
from anmc.data.io import Clip
from anmc.errors import UserError
from anmc.posterior.smoother import kalman_smoother, markov_kl
from anmc.prior.marginals import SAMPLES, StartedPrior, state_marginals, window_priors
from anmc.synthetic.synth import synthesize
from anmc.vae.config import TrainConfig
from anmc.vae.loss import sequence_loss
from anmc.vae.nets import build_vae
from anmc.vae.train import train

F64 = torch.float64
PRIORS = Path(__file__).resolve().parent.parent / "priors"


@pytest.fixture(scope="module")
def looming():
    return anmc.compile_prior(PRIORS / "looming.anm").module().double()


@pytest.fixture(scope="module")
def spring():
    return anmc.compile_prior(PRIORS / "spring.anm").module().double()


def test_marginals_of_a_linear_system_are_its_exact_moments(looming):
    """d' = v, v' = -g (RK4 is exact on it): the simulated marginals' means are the fall of the initial
    mean and their stds those of A^k P0 A^kᵀ + Σ_j A^j Q A^jᵀ (A the one-frame map), within the
    Monte Carlo error of SAMPLES clips."""
    mean, std = state_marginals(looming, 121)
    t = torch.arange(121, dtype=F64) / 120
    m0, s0 = looming.initial_mean.double(), looming.initial_std.double()
    a = looming.f_and_jacobian(m0[None])[1][0].detach()
    p, q = torch.diag(s0.square()), torch.diag(looming.noise_std.double().square())
    exact_std = []
    for _ in range(121):
        exact_std.append(p.diagonal().sqrt())
        p = a @ p @ a.T + q
    exact_std = torch.stack(exact_std)
    se = exact_std / SAMPLES**0.5
    assert ((mean[:, 0] - (m0[0] - 0.5 * 9.81 * t**2)).abs() < 4 * se[:, 0]).all()
    assert ((mean[:, 1] - (m0[1] - 9.81 * t)).abs() < 4 * se[:, 1]).all()
    torch.testing.assert_close(std, exact_std, rtol=0.1, atol=0)


def test_marginals_match_simulated_clips_of_a_nonlinear_system():
    """A pendulum's swings drift out of phase: after 40 and 120 frames the marginals match 20000
    independently simulated clips (noise included)."""
    source = (PRIORS / "pendulum.anm").read_text().replace("Normal(0, 0.8)", "Normal(0, 0.6)").replace("Normal(0, 1.5)", "Normal(0, 0.6)")
    assert "Normal(0, 0.6)" in source  # swings that never go over the top (an unwrapped angle has heavy tails)
    module = anmc.compile_prior(source).module().double()
    mean, std = state_marginals(module, 121)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        z = module.rollout(module.sample_initial(20000, generator=g), 121, noise=True, generator=g)
    for k in (40, 120):
        assert ((mean[k] - z[:, k].mean(0)).abs() < 4 * std[k] / SAMPLES**0.5).all()
        torch.testing.assert_close(std[k], z[:, k].std(0), rtol=0.08, atol=0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), t_len=st.integers(1, 24), b=st.integers(1, 4))
def test_a_prior_per_sequence_equals_each_sequence_on_its_own(spring, seed, t_len, b):
    """The smoother and the Markov KL with first-frame priors (B, d) give, row by row, what the
    one-prior path gives for that row's prior: means, covariances, entropy, KL."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(b, spring.d, generator=g, dtype=F64)
    std = 0.05 + torch.rand(b, spring.d, generator=g, dtype=F64)
    y = torch.randn(b, t_len, len(spring.observations), generator=g, dtype=F64)
    r = 0.05 + 0.5 * torch.rand(y.shape, generator=g, dtype=F64)
    batched = StartedPrior(spring, mean, std)
    post = kalman_smoother(batched, y, r)
    kl = markov_kl(batched, post)
    for i in range(b):
        one = StartedPrior(spring, mean[i], std[i])
        alone = kalman_smoother(one, y[i : i + 1], r[i : i + 1])
        torch.testing.assert_close(post.mean[i : i + 1], alone.mean, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(post.cov[i : i + 1], alone.cov, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(post.entropy[i : i + 1], alone.entropy, rtol=1e-10, atol=1e-9)
        torch.testing.assert_close(kl[i : i + 1], markov_kl(one, alone), rtol=1e-10, atol=1e-9)


def test_a_nonlinear_reading_late_in_a_fall_is_found_from_the_marginal(looming):
    """looming's `observe size = s0 / d` is not affine: the global search draws each sequence's candidate
    starts from its own marginal. Windows 0, 50 and 97 frames into a fall, read from the mean fall:
    with the rollout prior the smoothed states are the fall's; with the initial distribution as every
    window's prior the late window is put far from it, at a KL thousands of times larger."""
    mean, _ = state_marginals(looming, 130)
    starts = torch.tensor([0, 50, 97])
    truth = torch.stack([mean[k : k + 32] for k in starts])
    y = looming.observe(truth)
    r = torch.full_like(y, 0.05)
    first, _ = window_priors(looming, starts, 32)
    post = kalman_smoother(first, y, r)
    torch.testing.assert_close(post.mean, truth, rtol=0, atol=0.05)
    kl = markov_kl(first, post)
    kl_initial = markov_kl(looming, kalman_smoother(looming, y, r))
    assert float(kl.max()) < 10 and float(kl_initial[2]) > 1000 * float(kl[2])


def test_window_priors_give_each_frame_its_marginal(looming):
    mean, std = state_marginals(looming, 40)
    first, every = window_priors(looming, torch.tensor([3, 0, 8]), 32)
    torch.testing.assert_close(first.initial_mean, mean[[3, 0, 8]].to(looming.initial_mean.dtype))
    torch.testing.assert_close(every.initial_std[2], std[8:40].to(looming.initial_mean.dtype))
    assert first.noise_std is looming.noise_std or torch.equal(first.noise_std, looming.noise_std)


def test_recorded_starts_count_from_the_recorded_clip():
    """A single clip split in time: the later part's windows start where they are in the recording."""
    clip = Clip("c", Path("c.npz"), np.zeros((40, 4, 4), np.uint8))
    train_clips, val_clips = split_clips([clip], val_fraction=0.25, min_frames=4)
    data = FrameSequences(train_clips + val_clips, 4)
    for i in range(len(data)):
        part = data.clips[data.clip_of(i)]
        assert int(data.recorded_starts([i])[0]) == part.first + data.start_of(i)
    assert {c.first for c in train_clips + val_clips} != {0}


def test_the_loss_with_the_rollout_start_prior(looming):
    """sequence_loss reads `starts` only with --start-prior rollout; without starts it is the default."""
    prior = anmc.compile_prior(PRIORS / "looming.anm")
    torch.manual_seed(0)
    vae = build_vae(prior, (1, 16, 16), TrainConfig(size=16))
    frames = torch.randint(0, 255, (2, 6, 1, 16, 16), dtype=torch.uint8)
    rollout = TrainConfig(size=16, start_prior="rollout")
    losses = {}
    for name, config, starts in [("initial", TrainConfig(size=16), torch.tensor([0, 90])), ("no starts", rollout, None),
                                 ("rollout at 0", rollout, torch.tensor([0, 0])), ("rollout", rollout, torch.tensor([0, 90]))]:  # fmt: skip
        torch.manual_seed(1)
        losses[name] = float(sequence_loss(vae, frames, config, starts=starts)["kl"])
    assert losses["initial"] == losses["no starts"]
    assert losses["rollout at 0"] == pytest.approx(losses["initial"], rel=0.05)  # frame 0's simulated moments
    assert abs(losses["rollout"] - losses["initial"]) > 0.05 * losses["initial"]
    with pytest.raises(UserError, match="--start-prior 'marginal'"):
        TrainConfig(start_prior="marginal")


def test_cli_trains_with_the_rollout_start_prior(tmp_path):
    data = tmp_path / "looming"
    synthesize(str(PRIORS / "looming.anm"), out_dir=data, clips=3, frames=24, size=16, seed=2, fmt="npz")
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(PRIORS / "looming.anm"), str(data), "-o", str(run), "--start-prior", "rollout",
                                    "--size", "16", "--epochs", "1", "--steps-per-epoch", "3", "--batch", "2", "--seq-len", "4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    config = json.loads((run / "config.json").read_text())
    assert config["start_prior"] == "rollout" and config["decoder"] == "sprite"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and np.isfinite(rows[-1]["loss"]) and np.isfinite(rows[-1]["val_loss"])
