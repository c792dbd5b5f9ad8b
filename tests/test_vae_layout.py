"""Where the networks are placed (anmc/vae/nets.py `on_device`): on a CPU the convolutions' weights take
the channels-last layout oneDNN computes in; the loss and its gradients are those of the default
layout, and checkpoints load across layouts both ways."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import anmc
from anmc.vae.config import TrainConfig
from anmc.vae.loss import sequence_loss
from anmc.vae.nets import build_vae, on_device
from anmc.vae.run import load_checkpoint, load_run, save_checkpoint

PRIORS = Path(__file__).resolve().parent.parent / "priors"
CL = torch.channels_last


def conv_weights(vae):
    return {name: p for name, p in vae.named_parameters() if p.dim() == 4}


@pytest.mark.parametrize(
    "prior, channels, decoder",
    [("pendulum.anm", 1, "deconv"), ("pendulum.anm", 3, "deconv"), ("spring_camera.anm", 1, "sprite")],
)
def test_channels_last_on_a_cpu_gives_the_same_loss_and_gradients(prior, channels, decoder):
    config = TrainConfig(size=16, batch=2, seq_len=4, decoder=decoder)
    torch.manual_seed(0)
    plain = build_vae(anmc.compile_prior(PRIORS / prior), (channels, 16, 16), config)
    placed = on_device(copy.deepcopy(plain), "cpu")
    weights = conv_weights(placed)
    assert weights and all(p.is_contiguous(memory_format=CL) for p in weights.values())
    assert not all(p.is_contiguous(memory_format=CL) for p in conv_weights(plain).values() if p.shape[1] > 1)
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (2, 5, channels, 16, 16), generator=g, dtype=torch.uint8)
    losses = []
    for vae in (plain, placed):
        torch.manual_seed(2)  # the same draws of the posterior's noise
        loss = sequence_loss(vae, frames, config)["loss"]
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (name, a), (_, b) in zip(plain.named_parameters(), placed.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_checkpoints_load_across_layouts(tiny_pendulum_run_dir, tmp_path):
    """A run trained on a CPU stores channels-last weights; they load into a model in the default layout
    (a GPU's, an older anmc's) with the same values, and weights saved in the default layout load back
    into `load_run`'s channels-last model."""
    payload = load_checkpoint(tiny_pendulum_run_dir)
    stored = {k: v for k, v in payload["vae"].items() if v.dim() == 4}
    assert stored and all(v.is_contiguous(memory_format=CL) for v in stored.values())
    run = load_run(tiny_pendulum_run_dir)
    assert all(p.is_contiguous(memory_format=CL) for p in conv_weights(run.vae).values())
    plain = build_vae(run.prior, payload["frame_shape"], run.config)
    plain.load_state_dict(payload["vae"])
    assert all(p.is_contiguous() for p in conv_weights(plain).values())
    x = torch.randint(0, 256, (1, 4, *payload["frame_shape"]), dtype=torch.uint8)
    torch.testing.assert_close(plain.eval().encoder_readings(x)[0], run.vae.encoder_readings(x)[0], rtol=1e-5, atol=1e-5)

    payload["vae"] = {k: v.contiguous() for k, v in payload["vae"].items()}  # as an older anmc wrote them
    save_checkpoint(tmp_path, payload)
    again = load_run(tmp_path)
    for (name, a), (_, b) in zip(run.vae.state_dict().items(), again.vae.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert all(p.is_contiguous(memory_format=CL) for p in conv_weights(again.vae).values())
