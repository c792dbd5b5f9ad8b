"""The test session's compiled-prior cache lives in a temporary directory, never in the user's; one tiny
pendulum run serves every test file that needs a trained run (plots, interventions)."""

import os
import tempfile

import pytest

os.environ["ANMC_CACHE_DIR"] = tempfile.mkdtemp(prefix="anmc-test-cache-")


@pytest.fixture(scope="session")
def tiny_pendulum_run_dir(tmp_path_factory):
    """A pendulum run trained for seconds (3 clips of 24 frames at 16x16, 2 epochs of 6 steps, physics
    learned from epoch 2): what tests of the machinery around a run need, not a model of any quality."""
    import torch

    from anmc.synthetic.synth import synthesize
    from anmc.vae.config import TrainConfig
    from anmc.vae.train import train

    torch.set_num_threads(1)
    data, run = tmp_path_factory.mktemp("pend"), tmp_path_factory.mktemp("run")
    synthesize("priors/pendulum.anm", out_dir=data, clips=3, frames=24, size=16, seed=3, fmt="npz")
    config = TrainConfig(size=16, batch=4, seq_len=4, steps_per_epoch=6, epochs=2, learn_params_after=1, val_fraction=0.34)
    train("priors/pendulum.anm", [str(data)], run, config)
    return run
