"""Pictures of a trained run: what the model sees and draws, where its latents sit, and how it trained.

- `latent_figure`: the paper's Figure 2, in the plane of two states: the posterior q(z_t) of many
  encoded frames, the prior p(z_t) the linearization builds from the previous frames' posteriors
  (draws from N(f(mu_{t-1}), J Sigma_{t-1} J^T + Q), docs/method.md §3), and optionally the same prior
  under an intervention (f' in place of f) with arrows from f(mu) to f'(mu) (magnified: one frame of
  an intervention moves the prior little next to its spread); the loss curves beside it.
- `reconstruction_figure`: per clip, rows of frames x_t, reconstructions decode(mu_t), and n-step
  predictions decode(f^n(mu_{t0})) from the first column's causally encoded frame, n = t - t0.
- `states_figure`: per state, the latent mean against the true state with the least-squares line
  (slope +-1: the latent is in the prior's units, up to the free sign) and Pearson r.

Prior, posterior and intervened prior are blue circles, vermillion squares and black triangles
(colours that stay apart under the common colour-vision deficiencies, markers that differ as well); figures have fixed sizes, so a picture is the same at every call.
"""

from __future__ import annotations

import copy
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from anmc.analysis.evaluate import align_with_truth, encode_frames, find_truth  # noqa: E402
from anmc.errors import UserError  # noqa: E402
from anmc.vae.run import Run, load_run_clips  # noqa: E402
from anmc.prior.linearize import ekf_predict  # noqa: E402
from anmc.vae.run import read_metrics  # noqa: E402

# From Okabe & Ito's (2008) palette, the triple whose smallest CIELAB distance is largest under simulated
# protanopia, deuteranopia and tritanopia (Machado et al. 2009) as well as normal vision: Delta E >= 57
COLOURS = {"prior": "#0072B2", "posterior": "#D55E00", "intervened": "#000000"}
MARKERS = {"prior": "o", "posterior": "s", "intervened": "^"}
DPI = 100


def _prior_draws(module, mu_prev, std_prev, gen) -> np.ndarray:
    with torch.no_grad():
        mean, cov = ekf_predict(module, mu_prev, std=std_prev)
        cov = cov + 1e-9 * torch.eye(cov.shape[-1], dtype=cov.dtype)
        eps = torch.randn(mean.shape, generator=gen, dtype=mean.dtype)
        return (mean + (torch.linalg.cholesky(cov) @ eps[..., None])[..., 0]).numpy(), mean.numpy()


def _double_copy(module):
    """A float64 copy on the CPU (the run's own module is left as it is, also while it trains)."""
    return copy.deepcopy(module).cpu().double()


def latent_figure(
    run: Run, states: tuple[str, str] | None = None, videos=None, intervened=None,
    intervention_label: str = "intervened prior", max_points: int = 2000, clips: int | None = None,
):  # fmt: skip
    """Figure 2 and the loss curves: a matplotlib Figure (11 x 4.6 in)."""
    names = run.module.state_names
    states = states or (names[0], names[1] if len(names) > 1 else names[0])
    i, j = (names.index(s) for s in states)
    module = _double_copy(run.module)
    other = _double_copy(intervened) if intervened is not None else None
    gen = torch.Generator().manual_seed(0)
    post, prior, inter, shift, base = [], [], [], [], []
    for clip in load_run_clips(run, videos)[:clips]:
        mu, std = encode_frames(run, clip.frames)
        mu, std = mu.cpu().double(), std.cpu().double()
        post.append((mu[1:] + std[1:] * torch.randn(mu[1:].shape, generator=gen, dtype=mu.dtype)).numpy())
        draws, mean = _prior_draws(module, mu[:-1], std[:-1], gen)
        prior.append(draws)
        if other is not None:
            draws, other_mean = _prior_draws(other, mu[:-1], std[:-1], gen)
            inter.append(draws)
            base.append(mean)
            shift.append(other_mean - mean)
    post, prior = np.concatenate(post), np.concatenate(prior)
    pick = np.random.default_rng(0).permutation(len(post))[:max_points]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=DPI)
    ax = axes[0]
    series = [("prior", prior, "prior p(z_t), linearized"), ("posterior", post, "posterior q(z_t)")]
    if inter:
        series.append(("intervened", np.concatenate(inter), textwrap.fill(intervention_label, 40)))
    for key, points, label in series:
        ax.scatter(
            points[pick, i], points[pick, j], s=9, marker=MARKERS[key], c=COLOURS[key], alpha=0.45,
            linewidths=0, label=label, gid=key,
        )  # fmt: skip
    ax.set_xlabel(states[0])
    ax.set_ylabel(states[1])
    ax.set_title(f"{module.model_name}: latent space")
    if inter:
        # one frame of an intervention moves the prior little next to its spread: show where it moves it
        base, shift = np.concatenate(base), np.concatenate(shift)
        arrows = pick[:150]
        ax.quiver(
            base[arrows, i], base[arrows, j], shift[arrows, i], shift[arrows, j], color=COLOURS["intervened"],
            angles="xy", width=0.003, gid="shift", label="where it moves the prior's mean (magnified)",
        )  # fmt: skip
    legend = ax.legend(markerscale=2.0, fontsize=8, loc="upper right", framealpha=0.9)
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)
    loss_curves(run.run_dir, axes[1])
    fig.tight_layout()
    return fig


def loss_curves(run_dir: str | Path, ax) -> None:
    """Train (solid) and validation (dashed) loss, reconstruction and KL per epoch, on a log scale."""
    rows = read_metrics(run_dir)
    if not rows:
        ax.set_title("loss per frame (no metrics.jsonl yet)")
        return
    epochs = [r["epoch"] for r in rows]
    for key, colour in (("loss", "black"), ("recon", COLOURS["prior"]), ("kl", COLOURS["posterior"])):
        ax.plot(epochs, [r[key] for r in rows], color=colour, label=f"train {key}", marker=".")
        if f"val_{key}" in rows[0]:
            ax.plot(epochs, [r[f"val_{key}"] for r in rows], color=colour, ls="--", label=f"val {key}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title("loss per frame")
    ax.legend(fontsize=8, loc="best", ncols=2)


@torch.no_grad()
def _strip_rows(run: Run, frames: np.ndarray, columns: int) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """(frame indices (columns,), [frames, reconstructions, predictions] each (columns, H, W[, 3]) in [0, 1], n per column)."""
    k = run.vae.window
    T = frames.shape[0]
    t = np.unique(np.linspace(k - 1, T - 1, columns).round().astype(int))
    mu, _ = encode_frames(run, frames)  # (T - k + 1, d): frame k - 1 onwards
    start, _ = encode_frames(run, frames[: t[0] + 1], causal=True)
    z, preds = start[-1:], []
    for n in range(int(t[-1] - t[0]) + 1):
        if n:
            z = run.module(z)
        preds.append(z)
    preds = torch.cat(preds)[torch.as_tensor(t - t[0])]
    decode = lambda z: torch.sigmoid(run.vae.decode(z.float())).cpu().numpy()  # noqa: E731
    recon = decode(mu[torch.as_tensor(t - (k - 1))])
    pred = decode(preds)
    real = frames[t].astype(np.float32) / 255.0

    def images(x):  # (N, C, H, W) -> (N, H, W[, 3])
        return x[:, 0] if x.shape[1] == 1 else np.moveaxis(x, 1, -1)

    return t, [real, images(recon), images(pred)], [int(v - t[0]) for v in t]


def reconstruction_figure(run: Run, videos=None, clips: int = 3, columns: int = 8):
    """Per clip three rows: frames, reconstructions, n-step predictions from the first column."""
    loaded = load_run_clips(run, videos)[:clips]
    rows = 3 * len(loaded)
    fig, axes = plt.subplots(rows, columns, figsize=(1.1 * columns + 1.6, 1.15 * rows + 0.5), dpi=DPI, squeeze=False)
    labels = ("frame", "reconstruction", "prediction")
    for c, clip in enumerate(loaded):
        t, images, ahead = _strip_rows(run, clip.frames, columns)
        for r, (label, imgs) in enumerate(zip(labels, images)):
            for col in range(columns):
                ax = axes[3 * c + r, col]
                ax.set_xticks([])
                ax.set_yticks([])
                if col >= len(t):
                    ax.axis("off")
                    continue
                ax.imshow(imgs[col], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if r == 0:
                    ax.set_title(f"t = {t[col]}", fontsize=7, pad=2)
                if r == 2:
                    ax.set_xlabel(f"{ahead[col]} ahead", fontsize=7, labelpad=1)
            axes[3 * c + r, 0].set_ylabel(f"{clip.name}\n{label}" if r == 0 else label, fontsize=7)
    fig.suptitle(f"{run.module.model_name}: frames, reconstructions, predictions rolled from the first column", fontsize=9)
    fig.tight_layout(h_pad=0.3, w_pad=0.2)
    return fig


STATES_PER_ROW = 4  # panels of states_figure in a row


def state_grid(n: int) -> tuple[int, int]:
    """(rows, columns) of n panels: one row up to STATES_PER_ROW, then a grid (a chain of 6 pendulums
    was 12 panels in one 50-inch row)."""
    columns = max(1, min(n, STATES_PER_ROW))
    return max(1, math.ceil(n / columns)), columns


def states_figure(run: Run, videos=None, truth=None, clips: int | None = None):
    """Per state: latent mean against the true state, the least-squares line, r and the slope; None without truth."""
    truth_data = find_truth(run, videos, truth)
    if truth_data is None:
        return None
    names = run.module.state_names
    mus = [encode_frames(run, clip.frames)[0].cpu().numpy() for clip in load_run_clips(run, videos)[:clips]]
    lat, tru, _ = align_with_truth(mus, truth_data, run.vae.window, truth)
    shown = [n for n in truth_data["state_names"] if n in names]
    rows, columns = state_grid(len(shown))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.0 * rows), dpi=DPI, squeeze=False)
    for ax in axes.flat[len(shown) :]:
        ax.remove()
    rng = np.random.default_rng(0)
    for a, name in enumerate(shown):
        ax = axes.flat[a]
        x, y = tru[:, truth_data["state_names"].index(name)], lat[:, names.index(name)]
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        pick = rng.permutation(len(x))[:3000]
        ax.scatter(x[pick], y[pick], s=5, c=COLOURS["posterior"], alpha=0.35, linewidths=0, label="latent mean", gid="latent")
        if len(x) > 1 and x.std() > 0:
            slope, intercept = np.polyfit(x, y, 1)
            r = float(np.corrcoef(x, y)[0, 1]) if y.std() > 0 else 0.0
            grid = np.array([x.min(), x.max()])
            ax.plot(grid, slope * grid + intercept, color=COLOURS["prior"], lw=2, label=f"fit: slope {slope:.3f}", gid="fit")
            unit = 1.0 if slope >= 0 else -1.0  # the sign is free: (theta, omega) -> (-theta, -omega) is a symmetry
            ax.plot(grid, unit * grid, color="black", lw=1, ls=":", label=f"slope {unit:+.0f} (prior's units)", gid="identity")
            ax.set_title(f"{name}: r = {r:+.3f}, slope {slope:+.3f}", fontsize=9)
        else:
            ax.set_title(f"{name}: constant", fontsize=9)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"latent {name}")
        ax.legend(fontsize=7, loc="best", markerscale=2)
    fig.tight_layout()
    return fig


def figure_path(out: str | Path) -> Path:
    """`out` as a Path, or a UserError when matplotlib cannot write its format (a wrong suffix failed only
    after the figures were computed, with a traceback)."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out)
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lower().lstrip(".") not in formats:
        raise UserError(f"{out}: a figure is written as .png, .pdf, .svg or another format matplotlib knows ({', '.join(sorted(formats))}); change the suffix.")
    return out


def save(fig, out: str | Path) -> Path:
    """Write a figure at its own size (no tight cropping: what was laid out is what is written)."""
    out = figure_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=fig.dpi)
    plt.close(fig)
    return out


def latent_plot(run: Run, out: str | Path, **kwargs) -> Path:
    """Write Figure 2 (and the loss curves beside it) to `out`; returns the path."""
    return save(latent_figure(run, **kwargs), out)


def write_pictures(run: Run, latent_png: str | Path, videos=None, truth=None, **latent_kwargs) -> list[Path]:
    """Figure 2 to `latent_png`, and beside it <stem>_reconstructions.png and (with truth) <stem>_states.png."""
    latent_png = figure_path(latent_png)
    paths = [latent_plot(run, latent_png, videos=videos, **latent_kwargs)]
    paths.append(save(reconstruction_figure(run, videos), latent_png.with_name(latent_png.stem + "_reconstructions.png")))
    fig = states_figure(run, videos, truth)
    if fig is not None:
        paths.append(save(fig, latent_png.with_name(latent_png.stem + "_states.png")))
    return paths


def training_pictures(run_dir: str | Path, prior, config, clips: int = 4):
    """A `pictures(vae, row)` for `anmc.vae.tensorboard.TensorBoardLog`: the three figures of the run as it
    stands after an epoch, from its first `clips` clips. The trainer's random state is left untouched."""
    from anmc.vae.run import load_checkpoint

    def pictures(vae, row) -> dict:
        payload = load_checkpoint(run_dir)  # written just before the epoch's callback: videos, frame shape
        run = Run(Path(run_dir), vae, prior, config, payload)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            figures = {
                "latent_space": latent_figure(run, clips=clips, max_points=1000),
                "reconstructions": reconstruction_figure(run, clips=min(clips, 2)),
            }
            states = states_figure(run, clips=clips)
            if states is not None:
                figures["latents_against_truth"] = states
        return figures

    return pictures
