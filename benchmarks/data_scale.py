"""Resident memory and step time as the training set grows: frames in memory against frames on disk (--cache).

    python benchmarks/data_scale.py --frames 10000 100000 1000000 [--dir /tmp/anmc_scale] [--steps 20] [--keep] [--quick]

Synthetic 64x64 gray clips of 10,000 frames (a bright disc on a pendulum's path, written as .npy) make
each data set; every measurement runs in a fresh process: load the data (decode into the cache the
first time), then `--steps` training steps of the default model (smoother posterior, batch 8 x 32,
frames at 64x64, one torch thread) through the trainer's own batches (`anmc.vae.train._epoch_batches`:
a DataLoader with `--workers` processes for the cache). Reported: the decode/load time, the median
step, and the peak resident set (ru_maxrss) of the training process and of its DataLoader workers.
In memory is measured up to `--in-memory-up-to` frames (it holds every frame, and stacking them holds
them twice). The data and the cache are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLIP = 10_000
ROOT = Path(__file__).resolve().parent.parent


def make_data(folder: Path, frames: int) -> None:
    """frames // 10,000 clips of a disc swinging on a pendulum's path, 64x64 uint8 (the same clip repeated)."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(CLIP) / 30.0
    theta = 1.2 * np.sin(2 * np.pi * t / 2.0)
    yy, xx = np.mgrid[0:64, 0:64]
    clip = np.empty((CLIP, 64, 64), dtype=np.uint8)
    for s in range(0, CLIP, 1000):
        cx = 32 + 20 * np.sin(theta[s : s + 1000])[:, None, None]
        cy = 12 + 20 * np.cos(theta[s : s + 1000])[:, None, None]
        clip[s : s + 1000] = 255 * (((xx - cx) ** 2 + (yy - cy) ** 2) < 25)
    for i in range(frames // CLIP):
        np.save(folder / f"clip_{i:04d}.npy", clip)


def measure(data: str, cache: str | None, steps: int, workers: int) -> dict:
    """In this process: load, then `steps` training steps; times and peak RSS."""
    import torch

    from anmc.codegen.compile import compile_prior
    from anmc.vae import train as train_mod
    from anmc.vae.config import TrainConfig
    from anmc.vae.distributed import DistContext

    torch.set_num_threads(1)
    config = TrainConfig(size=64, cache=cache, workers=workers, steps_per_epoch=steps + 2, epochs=1, device="cpu", val_fraction=0.0)
    t0 = time.perf_counter()
    from anmc.data.dataset import frame_datasets

    train_data, _ = frame_datasets([data], length=config.seq_len, size=64, val_fraction=0.0, cache=cache)
    load = time.perf_counter() - t0
    vae = train_mod.on_device(train_mod.build_vae(compile_prior(ROOT / "priors" / "pendulum.anm"), train_data.frame_shape, config), "cpu")
    model = train_mod._LossModule(vae, config)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    session = train_mod._Session(Path("."), config, None, vae, optimizer, [], train_data, None, DistContext(), videos=[], model=model)
    times = []
    t = time.perf_counter()
    for frames, starts in train_mod._epoch_batches(session, 0):
        out = model(frames, 1.0, None, starts)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
    return {
        "frames": sum(c.n_frames for c in train_data.clips),
        "load_s": load,
        "step_ms": 1e3 * statistics.median(times[2:]),
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dir", type=Path, default=None, help="where the data and the cache go [default: a new temporary folder]")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--in-memory-up-to", type=int, default=100_000)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--quick", action="store_true", help="10,000 frames, one step (a smoke test)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        data, cache = args.child
        print(json.dumps(measure(data, None if cache == "-" else cache, args.steps, args.workers)))
        return
    if args.quick:
        args.frames, args.steps, args.workers = [CLIP], 1, 1
    args.dir = args.dir or Path(tempfile.mkdtemp(prefix="anmc_scale_"))
    rows = []
    try:
        for n in args.frames:
            data = args.dir / f"data_{n}"
            make_data(data, n)
            modes = [("disk (--cache)", str(args.dir / f"cache_{n}"))] * 2  # the second run reopens the cache
            if n <= args.in_memory_up_to:
                modes.insert(0, ("memory", "-"))
            for i, (mode, cache) in enumerate(modes):
                cmd = [sys.executable, __file__, "--child", str(data), cache, "--steps", str(args.steps), "--workers", str(args.workers)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                row = json.loads(out) | {"mode": mode + (" reopened" if i and mode == modes[i - 1][0] else "")}
                rows.append(row)
                print(f"{row['frames']:>9} {row['mode']:<24} load {row['load_s']:7.1f} s  step {row['step_ms']:7.0f} ms  "
                      f"peak RSS {row['rss_mib']:7.0f} MiB  workers {row['workers_rss_mib']:6.0f} MiB", flush=True)  # fmt: skip
            if not args.keep:
                shutil.rmtree(data, ignore_errors=True)
                shutil.rmtree(args.dir / f"cache_{n}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
