"""The VAE with a general observation function h (anmc/vae/nets.py): the smoother's encoder reports the m
observed quantities in the scale of their moments, the decoder draws from h(z), a VAE with a nonlinear h
and a learnable param inside it trains, and checkpoints saved before the moments existed load as the
model they were."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import anmc
from anmc.vae.config import TrainConfig
from anmc.vae.loss import sequence_loss
from anmc.vae.nets import VideoVAE, build_vae
from anmc.vae.run import CHECKPOINT, load_checkpoint, load_run, save_checkpoint

from _observations import circle
from test_posterior_observe import pendulum_bob

PRIORS = Path(__file__).resolve().parent.parent / "priors"
SIZE = 16


def frames(b=2, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)


def test_readings_are_of_h_in_the_scale_of_its_moments():
    """The pulsar seen as (cos φ, sin φ), expressions of the phase: the smoother's encoder gives 2 readings
    per frame, mean + std * out with h's moments under the initial distribution (≈ 0 and 1/√2 for a
    uniform phase), kept as buffers."""
    torch.manual_seed(0)
    module = circle(anmc.compile_prior(PRIORS / "pulsar.anm").module())
    vae = VideoVAE(module, 1, SIZE, window=1, posterior="smoother")
    mean, std = module.observation_moments()
    torch.testing.assert_close(vae.reading_mean, mean)
    torch.testing.assert_close(vae.reading_std, std)
    assert vae.reading_mean.abs().max() < 0.05 and (vae.reading_std - 0.5**0.5).abs().max() < 0.02
    assert set(VideoVAE.SCALES) <= set(vae.state_dict())
    x = frames()
    y, r = vae.encoder_readings(x)
    assert y.shape == r.shape == (2, 5, 2)
    out, log_var = vae.encoder(x.float() / 255)
    torch.testing.assert_close(y, mean + std * out)
    torch.testing.assert_close(r, std * (0.5 * log_var).exp())
    post = vae.smoothed(x)
    assert post.mean.shape == (2, 5, 2) and torch.isfinite(post.cov).all()
    assert vae.reading_of("phase") is None  # seen only through an expression: no reading of its own


def test_decode_draws_from_h():
    """decode(z) = decoder((h(z) − mean) / std): two states with the same h (phases 2π apart, any ω) draw
    the same frame, and the decoder's input is h normalized by its moments."""
    torch.manual_seed(0)
    module = circle(anmc.compile_prior(PRIORS / "pulsar.anm").module())
    vae = VideoVAE(module, 1, SIZE, window=1, posterior="smoother")
    z = torch.tensor([[0.7, 6.0], [0.7 + 2 * torch.pi, -3.0], [2.0, 6.0]])
    out = vae.decode(z)
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)
    assert (out[0] - out[2]).abs().max() > 1e-4
    expected = vae.decoder((module.observe(z) - vae.decoder_mean) / vae.decoder_std)
    torch.testing.assert_close(out, expected)


def test_standard_baseline_decodes_from_every_latent():
    prior = anmc.compile_prior(PRIORS / "pendulum.anm")
    vae = build_vae(prior, (1, SIZE, SIZE), TrainConfig(kl="standard", size=SIZE))
    assert vae.decode_latents and vae.observed == [0, 1] and vae.decoder.fc[0].in_features == 2
    z = torch.randn(3, 2)
    torch.testing.assert_close(vae.decode(z), vae.decoder(z))
    z2 = z.clone()
    z2[:, 1] += 1.0  # omega, which the observation does not show, changes the frame
    assert (vae.decode(z) - vae.decode(z2)).abs().max() > 1e-4


def test_a_vae_with_a_nonlinear_h_and_a_param_inside_it_trains():
    """The pendulum seen as its bob's position (L sin θ, −L cos θ): a few Adam steps of the smoother VAE
    keep the loss finite, and the gradients reach the encoder, the decoder and L (through f and h)."""
    torch.manual_seed(0)
    module = pendulum_bob().float()
    vae = VideoVAE(module, 1, SIZE, window=1, posterior="smoother")
    config = TrainConfig(size=SIZE, batch=2, seq_len=4)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    x = frames(2, 4, seed=1)
    raw = dict(module.named_parameters())["_raw_L"]
    losses = []
    for _ in range(3):
        out = sequence_loss(vae, x, config, warm=1.0)
        optimizer.zero_grad()
        out["loss"].backward()
        assert torch.isfinite(out["loss"]) and out["mu"].shape == (2, 4, 2)
        for p in (vae.encoder.head[-1].weight, vae.decoder.fc[0].weight, raw):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        optimizer.step()
        losses.append(float(out["loss"]))
    assert len(set(losses)) == 3  # it moved


def test_a_compiled_camera_observation_trains_through_build_vae():
    """A .anm that declares where the bob appears in pixels (`observe px = ..., py = ...`, L learnable),
    with the deconv decoder named (auto would draw a sprite there): build_vae reads and decodes the two
    pixel coordinates, and a training step reaches L through h."""
    source = (PRIORS / "pendulum.anm").read_text().replace(
        "observe theta ", "const scale = 6\nobserve px = 8 + scale * L * sin(theta), py = 2 + scale * L * cos(theta) "
    )
    prior = anmc.compile_prior(source)
    vae = build_vae(prior, (1, SIZE, SIZE), TrainConfig(size=SIZE, batch=2, seq_len=4, decoder="deconv"))
    assert vae.prior.observations == ("px", "py") and vae.decoder.fc[0].in_features == 2
    assert vae.encoder.head[-1].out_features == 4  # a reading and its log-variance for each of px, py
    torch.manual_seed(0)
    out = sequence_loss(vae, frames(2, 4), TrainConfig(size=SIZE, batch=2, seq_len=4, decoder="deconv"))
    out["loss"].backward()
    raw = dict(vae.prior.named_parameters())["_raw_L"]
    assert torch.isfinite(out["loss"]) and raw.grad is not None and raw.grad.abs() > 0


@pytest.fixture
def pendulum_run(tiny_pendulum_run_dir):
    return tiny_pendulum_run_dir


def test_checkpoints_carry_the_scales(pendulum_run):
    """The scales are buffers of the checkpoint; `observe theta` keeps the pendulum's scales from before
    expressions existed (readings m0 + s0 * out, the decoder fed θ as it is)."""
    run = load_run(pendulum_run)
    weights = load_checkpoint(pendulum_run)["vae"]
    for key in VideoVAE.SCALES:
        torch.testing.assert_close(getattr(run.vae, key), weights[key])
    torch.testing.assert_close(run.vae.reading_mean, run.module.initial_mean[[0]])
    torch.testing.assert_close(run.vae.reading_std, run.module.initial_std[[0]])
    assert run.vae.decoder_mean.tolist() == [0.0] and run.vae.decoder_std.tolist() == [1.0]


def test_states_and_expressions_in_one_prior_each_keep_their_scale():
    """The golden camera pendulum observes px, py (pixels) and theta: px and py are read and decoded in the
    scale of their moments, theta in its own (m0 + s0 * out; the decoder fed θ as it is)."""
    module = anmc.compile_prior(Path(__file__).parent / "golden" / "camera_pendulum.anm").module()
    assert module.observations == ("px", "py", "theta")
    torch.manual_seed(0)
    vae = VideoVAE(module, 1, SIZE, window=1, posterior="smoother")
    mean, std = module.observation_moments()
    torch.testing.assert_close(vae.reading_mean, torch.stack([mean[0], mean[1], module.initial_mean[0]]))
    torch.testing.assert_close(vae.reading_std, torch.stack([std[0], std[1], module.initial_std[0]]))
    torch.testing.assert_close(vae.decoder_mean, torch.stack([mean[0], mean[1], torch.tensor(0.0)]))
    torch.testing.assert_close(vae.decoder_std, torch.stack([std[0], std[1], torch.tensor(1.0)]))
    assert std[0] > 5  # pixels: a scale the decoder should not see raw
    z = torch.randn(4, 2)
    h = module.observe(z)
    features = torch.stack([(h[:, 0] - mean[0]) / std[0], (h[:, 1] - mean[1]) / std[1], z[:, 0]], -1)
    torch.testing.assert_close(vae.decode(z), vae.decoder(features))
    assert vae.reading_of("theta") == 2 and vae.reading_of("omega") is None


def test_checkpoints_from_before_the_scales_load_as_the_model_they_were(pendulum_run, tmp_path):
    """A checkpoint without the scale buffers (saved before them) loads, with the scales it was trained
    with: readings m0 + s0 * out of the observed states and a decoder fed the states as they are."""
    payload = load_checkpoint(pendulum_run)
    payload["vae"] = {k: v for k, v in payload["vae"].items() if k not in VideoVAE.SCALES}
    payload.pop("format")
    save_checkpoint(tmp_path, payload)
    assert (tmp_path / CHECKPOINT).exists()
    run = load_run(tmp_path)
    module = run.module
    torch.testing.assert_close(run.vae.reading_mean, module.initial_mean[[0]])
    torch.testing.assert_close(run.vae.reading_std, module.initial_std[[0]])
    z = torch.randn(3, 2)
    torch.testing.assert_close(run.vae.decode(z), run.vae.decoder(z[:, [0]]))
    x = frames(1, 4)
    out, log_var = run.vae.encoder(x.float() / 255)
    torch.testing.assert_close(run.vae.encoder_readings(x)[0], module.initial_mean[0] + module.initial_std[0] * out)
