"""Pictures of a trained run: the paper's Figure 2 kind of latent plot, and the loss curves.

Latent plot, in the plane of two states: the posterior q(z_t) of many encoded frames (red), the
prior p(z_t) the linearization builds from the previous frames' posteriors (blue: draws from
N(f(mu_{t-1}), J Sigma_{t-1} J^T + Q)), and optionally the same prior under an intervention (green).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import copy  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from anmc.analysis.evaluate import encode_frames  # noqa: E402
from anmc.vae.run import Run, load_run_clips  # noqa: E402
from anmc.prior.linearize import ekf_predict  # noqa: E402
from anmc.vae.run import read_metrics  # noqa: E402


def _prior_draws(module, mu_prev, std_prev, gen) -> np.ndarray:
    with torch.no_grad():
        mean, cov = ekf_predict(module, mu_prev, std=std_prev)
        cov = cov + 1e-9 * torch.eye(cov.shape[-1], dtype=cov.dtype)
        eps = torch.randn(mean.shape, generator=gen, dtype=mean.dtype)
        return (mean + (torch.linalg.cholesky(cov) @ eps[..., None])[..., 0]).numpy()


def latent_plot(
    run: Run, out: str | Path, states: tuple[str, str] | None = None, videos=None,
    intervened=None, intervention_label: str = "intervened prior", max_points: int = 3000,
) -> Path:  # fmt: skip
    """Write the Figure-2 style picture (and the loss curves beside it) to `out`; returns the path."""
    module = copy.deepcopy(run.module).cpu()  # the draws run on the CPU, wherever the networks are
    intervened = None if intervened is None else copy.deepcopy(intervened).cpu()
    names = module.state_names
    states = states or (names[0], names[1] if len(names) > 1 else names[0])
    i, j = (names.index(s) for s in states)
    gen = torch.Generator().manual_seed(0)
    post, prior, inter = [], [], []
    for clip in load_run_clips(run, videos):
        mu, std = encode_frames(run, clip.frames)
        mu, std = mu.cpu().double(), std.cpu().double()
        post.append((mu[1:] + std[1:] * torch.randn(mu[1:].shape, generator=gen, dtype=mu.dtype)).numpy())
        prior.append(_prior_draws(module.double(), mu[:-1], std[:-1], gen))
        if intervened is not None:
            inter.append(_prior_draws(intervened.double(), mu[:-1], std[:-1], gen))
    module.float()
    post, prior = np.concatenate(post), np.concatenate(prior)
    pick = np.random.default_rng(0).permutation(len(post))[:max_points]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    ax = axes[0]
    ax.scatter(prior[pick, i], prior[pick, j], s=3, c="tab:blue", alpha=0.35, label="prior p(z_t) (linearized)")
    ax.scatter(post[pick, i], post[pick, j], s=3, c="tab:red", alpha=0.35, label="posterior q(z_t)")
    if inter:
        inter = np.concatenate(inter)
        ax.scatter(inter[pick, i], inter[pick, j], s=3, c="tab:green", alpha=0.35, label=intervention_label)
    ax.set_xlabel(states[0])
    ax.set_ylabel(states[1])
    ax.set_title(f"{module.model_name}: latent space")
    ax.legend(markerscale=4, fontsize=8, loc="best")
    loss_curves(run.run_dir, axes[1])
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def loss_curves(run_dir: str | Path, ax) -> None:
    rows = read_metrics(run_dir)
    if not rows:
        ax.set_title("no metrics.jsonl")
        return
    epochs = [r["epoch"] for r in rows]
    for key, colour in (("loss", "black"), ("recon", "tab:purple"), ("kl", "tab:orange")):
        ax.plot(epochs, [r[key] for r in rows], color=colour, label=f"train {key}")
        if f"val_{key}" in rows[0]:
            ax.plot(epochs, [r[f"val_{key}"] for r in rows], color=colour, ls="--", label=f"val {key}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_title("loss per frame")
    ax.legend(fontsize=8)
