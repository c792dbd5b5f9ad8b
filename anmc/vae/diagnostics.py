"""Failures that announce themselves: a collapsed posterior, a param stuck on its bound, latents off the prior's scale, a camera off the frame.

    findings = epoch_diagnostics(vae, data, config, row, device)   # the training loop, at each epoch's end
    findings = latent_diagnostics(module, mu, kl_per_frame, recon, baseline, floor)   # evaluate, from its own numbers

Each finding is a plain dict `{"code", "message", "advice", "evidence"}` (JSON-ready: it goes into
metrics.jsonl and `anmc eval --json`'s `"diagnostics"`). The checks (docs/cli.md, *Diagnostics*):

- `posterior_collapse`: at least two of three signs (docs/method.md §6: the KL term can win over a
  likelihood that gives the latents little to explain):
  KL per frame below `KL_NEAR_ZERO` nats; the observed latents' spread over frames, std_t(mu_t) / s0
  (s0 the prior's spread: that of its own simulated clips as long as the data's, `prior_spread`, or
  its initial std), below `CONSTANT_SPREAD`; the reconstruction explains less than
  `MEAN_IMAGE_LEVEL` of what separates the mean image from a perfect one,

      explained = (L_mean_image - L_recon) / (L_mean_image - L_floor),

  L the reconstruction loss per frame (its floor: 0 for a squared error, the targets' own binary
  entropy for the Bernoulli likelihood, which a mid-grey background makes large).
- `param_at_bound`: a bounded learnable param whose position in its range, s = (v - lo) / (hi - lo)
  (the sigmoid of its raw value), is within `AT_BOUND` of 0 or 1, where its gradient s(1 - s) vanishes;
  the same for a learnable noise std declared `in [lo, hi]`, s = log(v / lo) / log(hi / lo).
- `latent_scale`: a latent whose spread std_t(mu_t) / s0 is outside [1 / SCALE_DRIFT, SCALE_DRIFT]
  (and not collapsed): the latents are not in the prior's units, so learned params mean little.
- `camera_off_frame` (the sprite decoder): an object whose declared place (its `px`, `py` observations,
  pixels of the stored video) falls outside the frames the model trains on in more than `OFF_FRAME` of
  the prior's initial states: a camera measured on another video (its side S) or an initial
  distribution far wider than the clips.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from anmc.prior.marginals import simulated_clips

KL_NEAR_ZERO = 0.02  # nats per frame (a collapsed run in issue 19 had 3e-6; trained pendulums have several)
CONSTANT_SPREAD = 0.05  # std over frames of a latent mean, in units of the prior's initial std
MEAN_IMAGE_LEVEL = 0.05  # fraction of the mean-image-to-perfect gap the reconstruction closes
AT_BOUND = 0.005  # position in a param's range, s or 1 - s
OFF_FRAME = 0.25  # share of the prior's initial states that put a declared object outside the frame
SCALE_DRIFT = 5.0  # spread ratio outside [1/5, 5]
CHECK_AFTER_FREEZE = 1  # collapse and scale are judged from this many epochs after the params' freeze ends (and at
# the last epoch); bounds every epoch


def finding(code: str, message: str, advice: str, **evidence) -> dict:
    return {"code": code, "message": message, "advice": advice, "evidence": evidence}


def describe(f: dict) -> str:
    """One line for a terminal or a log: the message, then what to try."""
    return f"{f['message']} Try: {f['advice']}"


def describe_all(findings: list[dict]) -> list[str]:
    """`describe` of each finding, except that several states not recovered are said in one line, with
    the advice once (a model of a dozen states that learned none of them is one finding to a reader)."""
    lost = [f for f in findings if f["code"] == "state_not_recovered"]
    out = []
    for f in findings:
        if f["code"] != "state_not_recovered" or len(lost) == 1:
            out.append(describe(f))
        elif f is lost[0]:
            states = ", ".join(f"{g['evidence']['state']} {g['evidence']['r']:.2f}" for g in lost)
            out.append(
                f"{len(lost)} latents follow their true states at |r| below {NOT_RECOVERED} ({states}): the model did not "
                f"learn them. Try: {f['advice']}"
            )
    return out


def collapse_finding(kl_per_frame: float | None, spread: dict[str, float], explained: float | None) -> dict | None:
    """`posterior_collapse` when two of its three signs hold (a missing sign counts as absent)."""
    signs = {
        "kl_near_zero": kl_per_frame is not None and kl_per_frame < KL_NEAR_ZERO,
        "latents_constant": bool(spread) and max(spread.values()) < CONSTANT_SPREAD,
        "mean_image_reconstruction": explained is not None and explained < MEAN_IMAGE_LEVEL,
    }
    if sum(signs.values()) < 2:
        return None
    said = []
    if signs["kl_near_zero"]:
        said.append(f"KL {kl_per_frame:.2g} nats per frame")
    if signs["latents_constant"]:
        said.append("latents nearly constant (spread " + ", ".join(f"{k} {v:.2g}" for k, v in spread.items()) + " of the prior's std)")
    if signs["mean_image_reconstruction"]:
        said.append(f"the reconstruction is no better than the mean image ({explained:+.1%} of the way from it to a perfect one)")
    return finding(
        "posterior_collapse",
        "the posterior has collapsed onto the prior: " + "; ".join(said) + "; the latents carry no information about the frames.",
        "--background remove (the Bernoulli likelihood gives a grey or bright background little to explain; removing "
        "it leaves what moves on black); --recon gaussian; frames with the object in contrast to a plain background "
        "(crop, --size); a smaller --beta; a longer --warmup. "
        "docs/data.md, 'The background matters'.",
        kl_per_frame=kl_per_frame, spread=spread, recon_explained=explained, signs=signs,
    )  # fmt: skip


def scale_findings(spread: dict[str, float]) -> list[dict]:
    """`latent_scale` for each latent whose spread is outside [1/SCALE_DRIFT, SCALE_DRIFT] but not collapsed."""
    out = []
    for name, ratio in spread.items():
        if CONSTANT_SPREAD <= ratio < 1 / SCALE_DRIFT or ratio > SCALE_DRIFT:
            way = "narrower" if ratio < 1 else "wider"
            out.append(finding(
                "latent_scale",
                f"latent {name} spreads {ratio:.3g}x as wide as the prior's own clips over the frames ({way} than the "
                f"prior's scale); the latents are not in the prior's units, so learned params (and slopes) mean little.",
                "check the prior's initial distribution and dt against the recording (--fps, docs/data.md); if the "
                f"true {name} really moves that little, narrow its `state {name} ~ ...` line; otherwise --recon gaussian "
                "or more epochs.",
                state=name, spread=ratio,
            ))  # fmt: skip
    return out


def _at_bound(what: str, key: str, v: float, lo: float, hi: float, s: float, advice: str) -> dict | None:
    """`param_at_bound` for `what` (its value v in [lo, hi], at position s of its stored range) when s is within
    AT_BOUND of 0 or 1; else None."""
    if AT_BOUND <= s <= 1 - AT_BOUND:
        return None
    end, bound = ("lower", lo) if s < 0.5 else ("upper", hi)
    return finding(
        "param_at_bound",
        f"{what} = {v:.4g} sits at the {end} bound {bound:g} of its range [{lo:g}, {hi:g}], where it can no longer learn "
        "(its gradient vanishes there).",
        advice, param=key, value=v, bounds=[lo, hi], position=s,
    )  # fmt: skip


def param_findings(module) -> list[dict]:
    """`param_at_bound` for each bounded learnable param, and each learnable noise std declared `in [lo, hi]`,
    within AT_BOUND of an end of its range (params on a linear scale, stds on the log scale they are stored on)."""
    out = []
    values = module.param_values()
    for name in module.learnable_param_names:
        if name in module.param_bounds:
            lo, hi = module.param_bounds[name]
            v = float(values[name].detach())
            out.append(_at_bound(
                f"param {name}", name, v, lo, hi, (v - lo) / (hi - lo),
                f"widen `in [{lo:g}, {hi:g}]` in the .anm if {name} may lie outside it; start it inside the range; check "
                "dt against the video's frame rate (--fps); a collapsed posterior also drives params to a bound.",
            ))  # fmt: skip
    stds = module.noise_std.detach().tolist()
    for i, name in enumerate(module.state_names):
        if name in module.noise_bounds:
            lo, hi = module.noise_bounds[name]
            out.append(_at_bound(
                f"the noise std of {name}", f"noise_{name}", stds[i], lo, hi, math.log(stds[i] / lo) / math.log(hi / lo),
                f"widen `noise {name} = ... in [{lo:g}, {hi:g}] learn` if the data may need more or less noise; a std at "
                "its upper bound can also mean the latents do not follow the dynamics (check |r| and the slopes).",
            ))  # fmt: skip
    return [f for f in out if f is not None]


@torch.no_grad()
def camera_findings(vae, n: int = 4096) -> list[dict]:
    """`camera_off_frame` for each object the sprite decoder places (`px` and/or `py` declared) whose place,
    over n draws of the prior's initial states (a fixed seed) through h and the decoder's camera (the
    stored video's pixels -> the training frame's), is outside the frame more than OFF_FRAME of the time.
    Cheap (one h of n states), so it is judged every epoch: a learnable camera can walk off, too."""
    decoder, module = vae.decoder, vae.prior
    objects = {k: r for k, r in getattr(decoder, "objects", {}).items() if {"px", "py"} & set(r)}
    if not objects:
        return []
    generator = torch.Generator(device=module.initial_a.device).manual_seed(0)
    h = module.observe(module.sample_initial(n, generator)).float()
    height, width = decoder.camera[3:].tolist()  # the stored video's
    out = []
    for key, roles in objects.items():
        px, py, _ = decoder.placement(h, key)  # pixels of the training frame, as the decoder draws it
        declared = [role for role in ("px", "py") if role in roles]  # an undeclared coordinate is the learned centre
        outside = torch.zeros(n, dtype=torch.bool, device=h.device)
        for u in (px if role == "px" else py for role in declared):
            outside |= (u < 0) | (u > decoder.size)
        where = [f"{module.observations[roles[role]]} {float(h[:, roles[role]].mean()):.3g}" for role in declared]
        share = float(outside.float().mean())
        if share > OFF_FRAME:
            name = f"object {key}" if key else "the object"
            out.append(finding(
                "camera_off_frame",
                f"the prior's camera puts {name} outside the {width:g}x{height:g} video in {share:.0%} of its initial "
                f"states (on average at {', '.join(where)} px): a camera measured on another video?",
                "measure the camera on these videos (a pendulum's: `anmc swing VIDEOS --prior PRIOR`; else their side S "
                "and where the objects are, on a frame: docs/data.md, 'Declare the camera'); or narrow the initial "
                "distribution to the states the clips show.",
                object=key, share=share,
            ))  # fmt: skip
    return out


def prior_spread(module, frames: int | None = None) -> torch.Tensor:
    """The scale a latent's spread over frames is judged against, (d,): with `frames`, the spread of the
    prior's own clips of that many frames (anmc.prior.marginals.simulated_clips; robust: the interquartile
    range / 1.349 over every frame of every clip), since a system that drifts (an object falling toward the
    camera: v from 0 to -10 m/s) spreads far wider over a clip than its initial distribution; without, the
    initial std s0."""
    s0 = module.initial_std.detach()
    if not frames or frames < 2:
        return s0
    flat = simulated_clips(module, int(frames), samples=256).reshape(-1, s0.shape[0])
    q = torch.quantile(flat, torch.tensor([0.25, 0.75], dtype=flat.dtype), dim=0)
    return torch.maximum((q[1] - q[0]) / 1.349, 1e-3 * s0.to(flat)).to(s0)


def spread_ratios(module, mu: torch.Tensor, states=None, frames: int | None = None) -> dict[str, float]:
    """std over frames of each latent mean, mu (N, d) flattened over clips and frames, over the prior's
    spread (`prior_spread`: over clips of `frames` frames, or the initial std)."""
    s0 = prior_spread(module, frames).to(mu)
    std = mu.detach().reshape(-1, mu.shape[-1]).std(0)
    names = module.state_names
    index = range(len(names)) if states is None else states
    return {names[i]: float(std[i] / s0[i]) for i in index}


def explained_fraction(recon: float, baseline: float, floor: float = 0.0) -> float | None:
    """(baseline - recon) / (baseline - floor): 0 at the mean image, 1 at a perfect reconstruction."""
    gap = baseline - floor
    return None if not gap > 1e-12 else float((baseline - recon) / gap)


def latent_diagnostics(
    module, mu: torch.Tensor, kl_per_frame: float | None, explained: float | None, observed, frames: int | None = None
) -> list[dict]:
    """Every finding from a run's latent means mu (N, d), its KL per frame and its reconstruction's explained
    fraction; `frames`, the clips' length, sets the scale the spreads are judged against (`prior_spread`)."""
    observed_spread = spread_ratios(module, mu, observed, frames)
    findings = [collapse_finding(kl_per_frame, observed_spread, explained)]
    findings = [f for f in findings if f is not None]
    if not findings:
        findings += scale_findings(spread_ratios(module, mu, frames=frames))
    return findings + param_findings(module)


@torch.no_grad()
def batch_reconstruction(vae, frames: torch.Tensor, config) -> tuple[torch.Tensor, float, float, float]:
    """mu (B, T, d), and per frame the loss of decoding mu, of the batch's mean image, and the loss's floor."""
    if vae.posterior == "smoother":
        mu = vae.smoothed(frames).mean
    else:
        mu, _ = vae.encode(frames)
    out = vae.decode(mu)
    target = frames[:, vae.window - 1 :].float() / 255.0
    mean = target.mean((0, 1), keepdim=True).expand_as(target)
    if config.recon == "bernoulli":
        eps = 1e-4
        logit = torch.logit(mean.clamp(eps, 1 - eps))

        def loss(logits):
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).sum(-1).mean()

        floor = float(loss(torch.logit(target.clamp(eps, 1 - eps))))
        return mu, float(loss(out)), float(loss(logit)), floor
    scale = config.recon_std if config.recon == "gaussian" else 1.0  # calibrated: a quadratic too (the fraction explained ignores the scale)

    def sq(pred):
        return (0.5 * ((pred - target) / scale) ** 2).flatten(2).sum(-1).mean()

    return mu, float(sq(torch.sigmoid(out))), float(sq(mean)), 0.0


@torch.no_grad()
def epoch_diagnostics(vae, data, config, row: dict, device, sequences: int = 8) -> list[dict]:
    """The findings at the end of an epoch, from a fixed batch of `data` (FrameSequences) and the epoch's mean KL.

    Collapse and scale are judged from epoch learn_params_after + CHECK_AFTER_FREEZE on (or at the last
    epoch): the first epochs' latents are still the barely trained networks' (the issue's collapsed run
    had KL near 0 from epoch 5)."""
    epoch = row["epoch"]
    if epoch < min(config.learn_params_after + CHECK_AFTER_FREEZE, config.epochs):
        return param_findings(vae.prior) + camera_findings(vae)
    was_training = vae.training
    vae.eval()
    state = torch.get_rng_state()
    n = min(len(data), sequences)
    idx = torch.linspace(0, len(data) - 1, n).long()
    mu, recon, baseline, floor = batch_reconstruction(vae, data.batch(idx).to(device), config)
    torch.set_rng_state(state)
    vae.train(was_training)
    kl = row.get("val_kl", row.get("kl"))
    kl = None if kl is None or not math.isfinite(kl) else float(kl)
    clip = max(c.n_frames for c in data.clips)
    return latent_diagnostics(vae.prior, mu, kl, explained_fraction(recon, baseline, floor), vae.observed, clip) + camera_findings(vae)


NOT_RECOVERED = 0.5  # |r| below this against the truth: the state was not learned
UNITS = 1.5  # a slope outside [1/UNITS, UNITS] against the truth: not in the prior's units
OFFSET = 1.0  # a latent whose mean is off the truth's by more than this many of the truth's stds: not at its place


def truth_findings(states: dict[str, dict], camera: bool = False) -> list[dict]:
    """Findings that need the truth (`anmc eval` of a run on `anmc synth` data or a truth.csv): for each
    state of `evaluate`'s report, `state_not_recovered` when the latent follows the truth at |r| below
    NOT_RECOVERED, else `not_in_units` when its slope is outside [1/UNITS, UNITS] (a state found, in
    other units: learned params then hold in those units only), else `offset` when its mean is off the
    truth's by more than OFFSET of the true state's stds (found and in units, but shifted: the prior's
    dynamics then act where the state is not, e.g. a pendulum's equilibrium away from the latent's 0).
    `camera`: the run's decoder draws the prior's declared camera (the sprite decoder), so a scale off the
    truth points at that camera."""
    if camera:  # the sprite decoder fixes the units, so a wrong scale is a camera that does not fit the video
        units_advice = (
            "check the declared camera against this video (its side S, where the objects are; a pendulum's pivot and "
            "R as `anmc swing VIDEOS` measures them: docs/data.md, 'Declare the camera'); a camera a few pixels off can be "
            "made learnable params started there, but learning refines a measurement, it does not find one from far off."
        )
    else:
        units_advice = (
            "declare the camera (observe px = ..., --decoder sprite: docs/method.md, 'Physical units'); an initial "
            "distribution that covers the states a clip passes through (every window's first frame gets it as its prior)."
        )
    out = []
    for name, m in states.items():
        r, slope = abs(m["pearson"]), m.get("slope")
        if not math.isfinite(r) or r < NOT_RECOVERED:
            out.append(finding(
                "state_not_recovered",
                f"latent {name} follows the true {name} at |r| {r:.2f}: the model did not learn {name}.",
                "the collapse and scale findings above, if any; --recon gaussian; frames with the object in contrast; "
                "more epochs; check dt against the video (--fps) and that the prior's observe lines say what a frame shows.",
                state=name, r=r,
            ))  # fmt: skip
        elif slope is not None and math.isfinite(slope) and not 1 / UNITS <= abs(slope) <= UNITS:
            out.append(finding(
                "not_in_units",
                f"latent {name} is {slope:+.3g}x the true {name} (|r| {r:.3f}): found, but not in the prior's units, so "
                "learned params hold in the latents' units only.",
                units_advice,
                state=name, slope=slope, r=r,
            ))  # fmt: skip
        elif m.get("offset") is not None and m.get("spread") and abs(m["offset"]) > OFFSET * m["spread"]:
            out.append(finding(
                "offset",
                f"latent {name} is the true {name} shifted by {m['offset']:+.3g} ({abs(m['offset']) / m['spread']:.3g} times its "
                f"spread; |r| {r:.3f}, slope {slope:+.3g}): found and in the prior's units, but not at its place, so the "
                "prior's dynamics act where the state is not (an equilibrium at 0 sits elsewhere in the latents) and "
                "learned params mean little.",
                "a start that settled away from the prior's place: train longer or from several starts (--restarts 3 keeps "
                f"the best of three), or another --seed; an initial distribution centred where {name} starts (`state {name} ~ "
                "...`); a learnable noise std that grew lets the latents stray from the dynamics; " + units_advice,
                state=name, offset=m["offset"], spread=m["spread"], r=r,
            ))  # fmt: skip
    return out


def run_diagnostics(run, mus, recon_mse: float, moments, frames: int) -> list[dict]:
    """The findings of a trained run (`anmc eval`): latent means `mus` (a list of (T, d) arrays, one a clip),
    the reconstruction MSE, and `moments` = (sum of frames, sum of squared frames) over `frames` frames, whose
    per-pixel variance is the mean image's MSE. The KL is the checkpoint's last epoch's."""
    mu = torch.as_tensor(np.concatenate(mus))
    mean_image_mse = float((moments[1] / frames - (moments[0] / frames) ** 2).mean()) if frames else None
    explained = None if mean_image_mse is None else explained_fraction(recon_mse, mean_image_mse)
    last = run.payload.get("metrics") or {}
    kl = last.get("val_kl", last.get("kl"))
    kl = None if kl is None or not math.isfinite(kl) else float(kl)
    return latent_diagnostics(run.module, mu, kl, explained, run.vae.observed, max(len(m) for m in mus)) + camera_findings(run.vae)
