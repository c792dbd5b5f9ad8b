"""One process of the data-parallel tests (tests/test_distributed.py): train the tiny pendulum into RUN
(resuming with --resume) and save this rank's final weights to RUN/rank<R>.pt. Run alone or under torchrun."""

import os
import sys

import torch

import anmc.vae.train as train_mod
from anmc.vae.config import TrainConfig

TINY = dict(size=16, batch=4, seq_len=4, steps_per_epoch=3, learn_params_after=1, val_fraction=0.25, warmup=2, device="cpu", workers=0)


def main() -> None:
    data, run, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resume = "--resume" in sys.argv
    cache = sys.argv[sys.argv.index("--cache") + 1] if "--cache" in sys.argv else None
    torch.set_num_threads(1)
    seen = []
    init = train_mod._LossModule.__init__

    def keep(self, vae, config):  # the trainer's VAE, whose weights this rank ends with
        seen.append(vae)
        init(self, vae, config)

    train_mod._LossModule.__init__ = keep
    # --first-epoch: a 2-epoch run stopped after its first epoch (time limit 0), the LR schedule of 2 epochs
    config = TrainConfig(**TINY, epochs=epochs, cache=cache, time_limit=0.0 if "--first-epoch" in sys.argv else None)
    train_mod.train("priors/pendulum.anm", [data], run, config, resume=resume)
    torch.save(seen[-1].state_dict(), os.path.join(run, f"rank{os.environ.get('RANK', '0')}.pt"))


if __name__ == "__main__":
    main()
