"""How physical are a trained run's latents? Latent means against the true states, and prediction error.

    run = load_run("runs/pend")
    report = evaluate(run, videos=["data/pend"], truth="data/pend/truth.csv")

Per state (latent j against true state j, both over every frame that has a full encoder window):

| key | meaning |
|---|---|
| `pearson` | correlation of latent and truth (circular correlation for a phase) |
| `sign` | its sign: (theta, omega) -> (-theta, -omega) is an exact symmetry of many priors |
| `slope` | least-squares slope of latent against truth: 1.0 means the latent is in the prior's units |
| `r2` | 1 - SSE/SST of the sign-corrected latent read directly as the state (units and offset count) |
| `knn_r2` | R^2 of a k-nearest-neighbour regression of the state from all latents, fitted on half of the clips and scored on the others: high when the state is present but folded |
| `mae` | mean absolute error of the sign-corrected latent, in the state's units |
| `offset` | mean of the sign-corrected latent minus the truth, in the state's units: where the latent's zero is (None for a phase) |
| `spread` | the true state's standard deviation over those frames (the scale `offset` is judged on) |

plus learned vs true params, reconstruction MSE, and n-step prediction: encode frame t, roll the
prior n frames, decode, compare with frame t + n, against repeating frame t.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from anmc.data.io import Clip, read_truth
from anmc.errors import UserError
from anmc.vae.diagnostics import run_diagnostics, truth_findings
from anmc.vae.run import Run, load_run_clips


def frames_tensor(frames: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames))
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (T, C, H, W)


@torch.no_grad()
def encode_frames(run: Run, frames: np.ndarray, chunk: int = 256, causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std for every frame t >= window - 1 of one clip: (T - k + 1, d) each.

    The smoother posterior reads the whole clip at once (each state given every frame; with `causal`,
    given the frames up to it); the factorized one encodes windows in chunks of `chunk` frames."""
    x = frames_tensor(frames).to(next(run.vae.parameters()).device)
    k = run.vae.window
    if run.vae.posterior == "smoother":
        chunk = x.shape[0]
    mus, stds = [], []
    for start in range(0, x.shape[0] - k + 1, chunk):
        piece = x[start : start + chunk + k - 1]
        mu, std = run.vae.encode(piece[None], causal=causal)
        mus.append(mu[0])
        stds.append(std[0])
    return torch.cat(mus), torch.cat(stds)


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def circular_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Jammalamadaka's circular correlation of two angle samples."""
    ma = math.atan2(np.sin(a).mean(), np.cos(a).mean())
    mb = math.atan2(np.sin(b).mean(), np.cos(b).mean())
    sa, sb = np.sin(a - ma), np.sin(b - mb)
    den = math.sqrt((sa**2).sum() * (sb**2).sum())
    return float((sa * sb).sum() / den) if den > 0 else 0.0


def knn_r2(latents_fit, target_fit, latents_score, target_score, k: int = 10) -> float:
    """R^2 on the scoring set of a k-NN mean regression fitted on the fitting set (standardized latents)."""
    mean, std = latents_fit.mean(0), latents_fit.std(0) + 1e-9
    a = torch.as_tensor((latents_fit - mean) / std, dtype=torch.float64)
    b = torch.as_tensor((latents_score - mean) / std, dtype=torch.float64)
    t = torch.as_tensor(target_fit, dtype=torch.float64)
    preds = []
    for chunk in b.split(2048):
        idx = torch.cdist(chunk, a).topk(min(k, len(a)), largest=False).indices
        preds.append(t[idx].mean(1))
    pred = torch.cat(preds).numpy()
    sst = ((target_score - target_score.mean()) ** 2).sum()
    return float(1 - ((target_score - pred) ** 2).sum() / sst) if sst > 0 else float("nan")


def state_metrics(latent: np.ndarray, truth: np.ndarray, all_latents: np.ndarray, halves, circular: bool) -> dict:
    """The per-state row of the report (see the module docstring)."""
    fit, score = halves
    if circular:
        r = circular_correlation(truth, latent)
        sign = 1.0 if r >= 0 else -1.0
        err = _wrap(truth - sign * latent - math.atan2(np.sin(truth - sign * latent).mean(), np.cos(truth - sign * latent).mean()))
        sst = (_wrap(truth - math.atan2(np.sin(truth).mean(), np.cos(truth).mean())) ** 2).sum()
        r2, slope, mae = 1 - (err**2).sum() / sst, None, float(np.abs(err).mean())
        offset = None  # a phase's zero is arbitrary
        target = _wrap(truth)
    else:
        r = float(np.corrcoef(latent, truth)[0, 1]) if latent.std() > 0 and truth.std() > 0 else 0.0
        sign = 1.0 if r >= 0 else -1.0
        slope = float(np.cov(latent, truth)[0, 1] / truth.var(ddof=1)) if truth.std() > 0 else float("nan")
        sst = ((truth - truth.mean()) ** 2).sum()
        err = sign * latent - truth
        r2 = float(1 - (err**2).sum() / sst) if sst > 0 else float("nan")
        mae, offset = float(np.abs(err).mean()), float(err.mean())
        target = truth
    knn = knn_r2(all_latents[fit], target[fit], all_latents[score], target[score])
    return {"pearson": float(r), "r2": float(r2), "slope": slope, "knn_r2": knn, "mae": mae, "sign": int(sign),
            "offset": offset, "spread": float(truth.std())}  # fmt: skip


@torch.no_grad()
def prediction_errors(run: Run, clips: list[Clip], horizons=(1, 5, 10), starts_per_clip: int = 8) -> dict:
    """MSE of decoded n-step prior rollouts from encoded frames vs the real frames, and of repeating the frame."""
    module, k = run.module, run.vae.window
    out = {}
    for n in horizons:
        model_err, copy_err, count = 0.0, 0.0, 0
        for clip in clips:
            x = frames_tensor(clip.frames).float() / 255.0
            mu, _ = encode_frames(run, clip.frames, causal=True)  # the start may not see the frames it predicts
            last = x.shape[0] - 1 - n
            if last < k - 1:
                continue
            ts = np.unique(np.linspace(k - 1, last, starts_per_clip).astype(int))
            z = mu[torch.as_tensor(ts - (k - 1))]
            for _ in range(n):
                z = module(z)
            pred = torch.sigmoid(run.vae.decode(z))  # the decoded mean image, for every likelihood
            target = x[torch.as_tensor(ts + n)].to(pred.device)
            model_err += float(((pred - target) ** 2).mean((1, 2, 3)).sum())
            copy_err += float(((x[torch.as_tensor(ts)].to(pred.device) - target) ** 2).mean((1, 2, 3)).sum())
            count += len(ts)
        if count:
            out[str(n)] = {"model": model_err / count, "repeat_last": copy_err / count}
    return out


def find_truth(run: Run, videos=None, truth=None) -> dict | None:
    """The read truth file: `truth` if given, else a truth.csv inside one of the video folders, else None."""
    if truth is None:
        sources = videos or run.videos
        candidates = [Path(s) / "truth.csv" for s in sources if Path(s).is_dir()]
        truth = next((c for c in candidates if c.exists()), None)
    return read_truth(truth) if truth is not None else None


def align_with_truth(mus: list[np.ndarray], truth_data: dict, window: int, truth=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent means per clip (T_i - k + 1, d) against the truth's rows of the same frames:
    (latents (N, d), true states (N, d_truth), clip index (N,)) over every clip the truth covers."""
    lat, tru, clip_id = [], [], []
    for i, mu in enumerate(mus):
        if i not in truth_data["clips"]:
            continue
        t = truth_data["clips"][i]
        n = min(len(t) - (window - 1), len(mu))
        lat.append(mu[:n])
        tru.append(t[window - 1 : window - 1 + n])
        clip_id.append(np.full(n, i))
    if not lat:
        raise UserError(f"{truth or 'the truth file'} has no rows for the clips evaluated; check its clip column (0 = first file in sorted order).")
    return np.concatenate(lat), np.concatenate(tru), np.concatenate(clip_id)


def evaluate(run: Run, videos=None, truth=None, circular: tuple[str, ...] | None = None) -> dict:
    """The evaluation report as a plain dict (see the module docstring for its keys)."""
    names = run.module.state_names
    unknown = [c for c in circular or () if c not in names]
    if unknown:  # (checked first: it was ignored, and the state compared as a line)
        raise UserError(f"--circular {unknown[0]}: the run has no state of that name; its states are {', '.join(names)}.")
    clips = load_run_clips(run, videos)
    truth_data = find_truth(run, videos, truth)
    if truth_data is not None and not set(truth_data["state_names"]) & set(names):
        raise UserError(
            f"{truth} has the columns {', '.join(truth_data['state_names'])} but the run's states are {', '.join(names)}; "
            "name the truth columns after the prior's states."
        )
    k = run.vae.window
    mus, recon_err, frames_seen, moments = [], 0.0, 0, [0.0, 0.0]
    for clip in clips:
        mu, _ = encode_frames(run, clip.frames)
        mus.append(mu.cpu().numpy())
        with torch.no_grad():
            pred = torch.sigmoid(run.vae.decode(mu)).cpu()
        x = frames_tensor(clip.frames).float()[k - 1 :] / 255.0
        recon_err += float(((pred - x) ** 2).mean((1, 2, 3)).sum())
        frames_seen += x.shape[0]
        moments = [moments[0] + x.sum(0), moments[1] + (x**2).sum(0)]  # the mean image's error, for the diagnostics
    report: dict = {"states": {}, "params": {}, "recon_mse": recon_err / max(frames_seen, 1)}
    meta = truth_data["meta"] if truth_data else {}
    true_params = meta.get("params", {})
    for name, value in run.module.param_values().items():
        report["params"][name] = {
            "learned": float(value.detach()),
            "true": float(true_params[name]) if name in true_params else None,
            "learnable": name in run.module.learnable_param_names,
        }
    if truth_data is not None:
        circular = tuple(circular) if circular is not None else tuple(meta.get("circular", ()))
        if not circular and "pulsar" in ((meta.get("renderer", {}) or {}).get("name"), meta.get("model")):
            circular = ("phase",)
        lat, tru, clip_id = align_with_truth(mus, truth_data, k, truth)
        report["not_compared"] = {}  # states of the truth file that cannot be compared, and why
        ids = np.unique(clip_id)
        if len(ids) >= 2:
            fit = np.isin(clip_id, ids[::2])
        else:  # one clip: first half in time against the second
            fit = np.arange(len(clip_id)) < len(clip_id) // 2
        for j, name in enumerate(truth_data["state_names"]):
            if name not in names:
                continue
            col = tru[:, j]
            ok = np.isfinite(col)
            if ok.sum() < 3 or np.ptp(col[ok]) == 0:  # nothing to correlate with: said, not scored as unlearned
                report["not_compared"][name] = "has no values" if ok.sum() == 0 else "has fewer than 3 values" if ok.sum() < 3 else "does not vary"
                continue
            li = names.index(name)
            report["states"][name] = state_metrics(
                lat[ok, li], col[ok], lat[ok], (fit[ok], ~fit[ok]), circular=name in circular
            ) | {"frames": int(ok.sum())}  # the frames whose truth has a value (empty or NaN cells are left out)
        report["truth_frames"] = len(tru)  # the frames the truth covers, of
        report["latent_frames"] = sum(len(mu) for mu in mus)  # the frames evaluated (a truth may cover fewer)
        report["truth_clips"] = [int(i) for i in ids]
        report["truth_unused_clips"] = sorted(int(i) for i in set(truth_data["clips"]) - set(range(len(mus))))  # no such video
    report["prediction"] = prediction_errors(run, clips)
    camera = getattr(run.vae.decoder, "reads_raw_observations", False)  # the sprite decoder draws the declared camera
    report["diagnostics"] = run_diagnostics(run, mus, report["recon_mse"], moments, frames_seen) + truth_findings(report["states"], camera)
    return report
