"""Data-parallel training through torchrun on the CPU (gloo): N ranks train as one process with the same
global batch, through torchrun's rendezvous as two "machines", and checkpoints resume across rank counts
(anmc/vae/distributed.py, docs/scaling.md). Each test starts fresh processes: marked slow."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anmc.synthetic.synth import synthesize
from anmc.vae.distributed import DistContext, RankBatches, batch_noise, rank_rows

ROOT = Path(__file__).resolve().parent.parent
WORKER = [str(ROOT / "tests" / "_ddp_worker.py")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("pend")
    synthesize(ROOT / "priors" / "pendulum.anm", out_dir=out, clips=4, frames=24, size=16, seed=3, fmt="npz")
    return out


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _alone(data, run, epochs, *extra):
    subprocess.run([sys.executable, *WORKER, str(data), str(run), str(epochs), *extra], cwd=ROOT, env=_env(), check=True, timeout=300)


def _torchrun(data, run, epochs, *extra, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(_port())]
    subprocess.run([*cmd, *WORKER, str(data), str(run), str(epochs), *extra], cwd=ROOT, env=_env(), check=True, timeout=300)


def _weights(path):
    return torch.load(path, weights_only=True)


def _assert_same(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
    assert worst < atol, worst


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    """The reference: 2 epochs of 3 steps of global batch 4 in one process."""
    run = tmp_path_factory.mktemp("alone")
    _alone(data, run, 2)
    return _weights(run / "rank0.pt")


def test_rank_batches_split_the_global_batch():
    """Every rank's rows, side by side, are the one-process batch; the noise of each rank's rows is the
    one-process draw's rows."""
    alone = list(RankBatches(10, 4, 5, seed=1, epoch=2, ctx=DistContext()))
    shares = [list(RankBatches(10, 4, 5, seed=1, epoch=2, ctx=DistContext(rank=r, world=2))) for r in range(2)]
    assert [a + b for a, b in zip(*shares)] == alone
    torch.manual_seed(0)
    full = batch_noise((4, 3, 2), 4, DistContext(), torch.device("cpu"))
    for r in range(2):
        torch.manual_seed(0)
        ctx = DistContext(rank=r, world=2)
        torch.testing.assert_close(batch_noise((2, 3, 2), 4, ctx, torch.device("cpu")), full[rank_rows(4, ctx)], rtol=0, atol=0)


@pytest.mark.slow
def test_two_ranks_end_with_the_one_process_weights(data, tmp_path, one_process):
    _torchrun(data, tmp_path, 2)
    r0, r1 = _weights(tmp_path / "rank0.pt"), _weights(tmp_path / "rank1.pt")
    _assert_same(r0, r1, atol=0.0 + 1e-12)  # the ranks agree exactly
    _assert_same(r0, one_process)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    _assert_same(saved["vae"], r0, atol=1e-12)  # rank 0 wrote the checkpoint


@pytest.mark.slow
def test_two_nodes_through_the_rendezvous(data, tmp_path, one_process):
    """Two torchrun launchers, one "machine" each, meeting at a c10d rendezvous on localhost."""
    port = _port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "anmc-test", *WORKER, str(data), str(tmp_path), "2"]  # fmt: skip
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_env()) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    _assert_same(_weights(tmp_path / "rank0.pt"), one_process)


@pytest.mark.slow
def test_checkpoints_resume_across_rank_counts(data, tmp_path, one_process):
    """Epoch 1 on two ranks, epoch 2 alone; and epoch 1 alone, epoch 2 on two ranks: both end where
    one process training both epochs ends."""
    a, b = tmp_path / "a", tmp_path / "b"
    _torchrun(data, a, 2, "--first-epoch")
    assert torch.load(a / "checkpoint.pt", weights_only=True)["epoch"] == 1
    _alone(data, a, 2, "--resume")
    _assert_same(_weights(a / "rank0.pt"), one_process)
    _alone(data, b, 2, "--first-epoch")
    _torchrun(data, b, 2, "--resume")
    _assert_same(_weights(b / "rank0.pt"), one_process)
