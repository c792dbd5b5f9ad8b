"""The video VAE's networks: an encoder over a window of k frames, a decoder from the observed quantities.

    q(z_t | x_{t-k+1..t}) = N(mu_t, diag sigma_t^2)      Encoder: (B, k*C, H, W) -> mu, log_var (B, d)
    p(x_t | h(z_t)) = Bernoulli or Gaussian             Decoder: (B, m) -> logits or means (B, C, H, W)

The encoder sees k frames because one frame cannot show a velocity; the decoder sees only what a
single frame shows, the prior's observation function h (its `observe` lines: states, or expressions
of the state), so velocities must be carried by the dynamics, not by the pixels (docs/method.md §5).
Frames are square, 2^n pixels on a side (16..128).
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING

import torch
from torch import nn

from anmc.errors import UserError
from anmc.vae.config import POSTERIORS
from anmc.synthetic.roles import split_role
from anmc.vae.sprite import SpriteDecoder
from anmc.posterior.smoother import SmoothedPosterior, kalman_filter, kalman_smoother, marginal_std

if TYPE_CHECKING:  # build_vae's argument types; importing them at run time would run the layers upward
    from anmc.codegen.compile import CompiledPrior
    from anmc.vae.config import TrainConfig


def _levels(size: int) -> int:
    """Stride-2 stages from `size` down to 4x4."""
    n = int(round(math.log2(size / 4)))
    if size < 8 or 4 * 2**n != size:
        raise ValueError(f"frames must be square with a power-of-two side of at least 8 pixels, got {size}; load them with --size 64")
    return n


# The encoder starts with narrow posteriors, sigma = exp(-3) s0: with sigma = s0 the decoder's input is
# mostly noise, and the reconstruction pushes the means apart until they sit at a fixed point of f far
# from the data (theta = pi for the pendulum: measured in docs/results.md).
INITIAL_LOG_VAR = -6.0


class Encoder(nn.Module):
    """A window of k frames -> (mu, log_var), each (B, d).

    Every frame goes through the same CNN (strided 4x4 convolutions down to 4x4, then a linear map to
    `features` numbers); an MLP reads the k feature vectors of a window. Frames shared by overlapping
    windows are encoded once, and a velocity is a difference of two frames' features, which the
    MLP can form directly.
    """

    def __init__(self, window: int, channels: int, size: int, d: int, width: int = 32, hidden: int = 256, features: int = 64, context: int = 0):
        super().__init__()
        layers, c_in = [], channels
        for i in range(_levels(size)):
            c_out = width * min(2 ** (i // 2), 4)
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.SiLU()]
            c_in = c_out
        self.conv = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * 16, features), nn.SiLU())
        self.head = nn.Sequential(nn.Linear(window * features, hidden), nn.SiLU(), nn.Linear(hidden, 2 * d))
        self.window, self.d, self.context = window, d, context
        # context > 0: a residual, non-causal temporal convolution mixes each frame's features with those of
        # the `context` frames on either side (a smoother: q(z_t | x_{t-k+1-2c .. t+2c}))
        self.temporal = None
        if context:
            conv = lambda: nn.Conv1d(features, features, 2 * context + 1, padding=context, padding_mode="replicate")  # noqa: E731
            self.temporal = nn.Sequential(conv(), nn.SiLU(), conv())
        with torch.no_grad():  # narrow posteriors from the start (INITIAL_LOG_VAR)
            self.head[-1].bias[d:] = INITIAL_LOG_VAR

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (N, C, H, W) in [0, 1] -> (N, features)."""
        return self.conv(frames * 2 - 1)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T, C, H, W) in [0, 1] -> mu, log_var (B, T-k+1, d), latent t for the window ending at frame t+k-1."""
        b, t = frames.shape[:2]
        h = self.frame_features(frames.flatten(0, 1)).unflatten(0, (b, t))
        if self.temporal is not None:
            h = h + self.temporal(h.transpose(1, 2)).transpose(1, 2)
        windows = h.unfold(1, self.window, 1).transpose(-1, -2).flatten(-2)  # (B, T-k+1, k*features), oldest first
        mu, log_var = self.head(windows).chunk(2, dim=-1)
        return mu, leaky_clamp(log_var, *LOG_VAR_RANGE)


# The encoder's log-variances are held to this range (a reading's std from e^-9 to e^4 of its scale)
# by `leaky_clamp`, which keeps a small slope outside it: a hard clamp passes no gradient once a
# log-variance is past its bound, so an encoder that had given up on a reading (while the physical
# params were frozen far from the truth, following the readings cost more KL than it saved in
# reconstruction) could never trust it again (the looming object's readings sat at std e^4 s0 for
# the whole run; docs/results.md §1b).
LOG_VAR_RANGE = (-18.0, 8.0)
LEAK = 0.01


def leaky_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """x inside [low, high]; outside, the bound plus LEAK times the excess (gradient LEAK, never 0)."""
    inside = x.clamp(low, high)
    return inside + LEAK * (x - inside)


class DeconvDecoder(nn.Module):
    """Observed states (B, d_obs) -> frame (B, C, H, W): an MLP to 4x4 features, then transposed convolutions."""

    def __init__(self, d_obs: int, channels: int, size: int, width: int = 32, hidden: int = 256):
        super().__init__()
        n = _levels(size)
        widths = [width * min(2 ** (i // 2), 4) for i in range(n)][::-1]
        self.fc = nn.Sequential(nn.Linear(d_obs, hidden), nn.SiLU(), nn.Linear(hidden, widths[0] * 16), nn.SiLU())
        layers = []
        for i in range(n):
            c_in, last = widths[i], i == n - 1
            c_out = channels if last else widths[i + 1]
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.SiLU())
        self.deconv = nn.Sequential(*layers)
        self.c0 = widths[0]

    def forward(self, z_obs: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z_obs).unflatten(-1, (self.c0, 4, 4)))


class BroadcastDecoder(nn.Module):
    """Spatial-broadcast decoder (Watters et al. 2019): tile z over the image with x/y coordinates, 1x1-free convs.

    Good at placing objects; slower than the deconvolution decoder at 64x64 on a CPU.
    """

    def __init__(self, d_obs: int, channels: int, size: int, width: int = 32):
        super().__init__()
        self.size = size
        self.net = nn.Sequential(
            nn.Conv2d(d_obs + 2, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, channels, 3, padding=1),
        )  # fmt: skip
        lin = torch.linspace(-1, 1, size)
        self.register_buffer("grid", torch.stack(torch.meshgrid(lin, lin, indexing="ij")), persistent=False)

    def forward(self, z_obs: torch.Tensor) -> torch.Tensor:
        b = z_obs.shape[0]
        tiled = z_obs[:, :, None, None].expand(b, z_obs.shape[1], self.size, self.size)
        return self.net(torch.cat([tiled, self.grid.expand(b, 2, self.size, self.size)], dim=1))


# A decoder class with `reads_raw_observations = True` is built from the prior's observation names and
# decodes the raw h(z) (pixels, for the sprite decoder); the others, from their input width, decode the
# normalized (h(z) - mean) / std (or every latent, for --kl standard).
DECODERS = {"deconv": DeconvDecoder, "broadcast": BroadcastDecoder, "sprite": SpriteDecoder}


class VideoVAE(nn.Module):
    """Encoder + decoder + the compiled prior module (whose learnable physical params train jointly).

    Shapes: `encode(x)` x (B, T, C, H, W) uint8 or float -> mu, std (B, T-k+1, d), latent t for the window
    ending at frame t + k - 1; `decode(z)` z (..., d) -> logits/means (..., C, H, W) from the m observed
    quantities h(z) (`prior.observe`): decoder((h(z) − mean) / std), with an expression observation
    normalized by its moments under the initial distribution (`prior.observation_moments()`) and a state
    observation (`observe theta`) as it is (mean 0, std 1; `observation_scales`), computed once here and
    kept as buffers, so a checkpoint carries them. `decode_latents` (the `--kl standard` baseline) decodes
    from every latent; a decoder that `reads_raw_observations` (the sprite decoder) gets h(z) itself, in pixels.

    Two posteriors (`posterior=`):
    - "factorized": q(z_t | x_{t-k+1..t}) = N(mu_t, diag sigma_t^2), every state read from a window of k frames;
    - "smoother": the encoder reads only the m observed quantities h(z_t), as pseudo-observations y_t with
      std r_t in their scale (`observation_scales`), and q(z_{1:T}) is the prior conditioned on them
      (anmc.posterior.smoother: an extended Kalman smoother, h linearized with its exact Jacobian), so
      unobserved states (velocities, or a phase seen through its brightness) are inferred through the
      dynamics from the whole sequence.

    `observed` lists the states the observations depend on (`prior.observed_index`; every latent with
    `decode_latents`).
    """

    def __init__(self, prior_module: nn.Module, channels: int, size: int, window: int = 2, decoder: str = "deconv", context: int = 0,
                 posterior: str = "factorized", decode_latents: bool = False, camera: dict | None = None):  # fmt: skip
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder {decoder!r}: must be one of {', '.join(DECODERS)}")
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior {posterior!r}: must be one of {', '.join(POSTERIORS)}")
        d = prior_module.d
        self.prior = prior_module
        self.window = window
        self.posterior = posterior
        self.decode_latents = decode_latents
        self.observed = list(range(d)) if decode_latents else list(prior_module.observed_index)
        m = len(prior_module.observations)
        # the scale of the encoder's readings (smoother) and of the decoder's input (see `decode`)
        for name, value in zip(self.SCALES, observation_scales(prior_module)):
            self.register_buffer(name, value)
        self.encoder = Encoder(window, channels, size, m if posterior == "smoother" else d, context=context)
        kind = DECODERS[decoder]
        if getattr(kind, "reads_raw_observations", False):
            if decode_latents:
                raise UserError(f"--kl standard decodes from every latent, which --decoder {decoder} cannot draw: use --decoder deconv.")
            self.decoder = kind(prior_module.observations, channels, size, camera=camera)
        else:
            self.decoder = kind(d if decode_latents else m, channels, size)

    SCALES = ("reading_mean", "reading_std", "decoder_mean", "decoder_std")

    def reading_of(self, state: str) -> int | None:
        """The index of the smoother's reading of the state `state`: the observation that is that state
        (`observe theta`), or None (an unobserved state, one seen only through an expression, or the
        factorized posterior)."""
        names = tuple(self.prior.observations)
        return names.index(state) if self.posterior == "smoother" and state in names else None

    def encoder_readings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's own per-window Gaussians, in the prior's units: for the factorized posterior every
        state, mu = m0 + s0 * out (an untrained encoder already proposes states of the right size),
        std = s0 * exp(log_var / 2); for the smoother posterior the m observed quantities h(z) in the
        scale of their moments, mean + std * out and std * exp(log_var / 2)."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        if x.shape[1] < self.window:
            raise ValueError(f"{x.shape[1]} frames cannot fill one window of {self.window}")
        out, log_var = (v.float() for v in self.encoder(x))  # float32 from here on, also under bf16 autocast
        if self.posterior == "smoother":
            m0, s0 = self.reading_mean.to(out), self.reading_std.to(out)
        else:
            m0, s0 = self.prior.initial_mean.to(out), self.prior.initial_std.to(out)
        return m0 + s0 * out, s0 * (0.5 * log_var).exp()

    def smoothed(self, x: torch.Tensor, prior=None) -> SmoothedPosterior:
        """The smoother posterior q(z_{1:T}) of each sequence in x (B, T, C, H, W) (posterior="smoother" only),
        under `prior` (default: this model's; training's warm-up passes a tempered one)."""
        if self.posterior != "smoother":
            raise ValueError("smoothed() needs a VideoVAE built with posterior='smoother'")
        y, r = self.encoder_readings(x)
        with torch.autocast(y.device.type, enabled=False):  # the prior's algebra in float32 / float64
            return kalman_smoother(self.prior if prior is None else prior, y, r)

    def encode(self, x: torch.Tensor, causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, std (B, T-k+1, d) in the prior's units. With the smoother posterior these are the smoothed
        marginals (each frame's state given the whole sequence), or with `causal` the filter's (given the
        frames up to it: what a prediction may use)."""
        if self.posterior == "factorized":
            return self.encoder_readings(x)
        if causal:
            y, r = self.encoder_readings(x)
            with torch.autocast(y.device.type, enabled=False):
                mean, cov = kalman_filter(self.prior, y, r)
            return mean, marginal_std(cov)
        post = self.smoothed(x)
        return post.mean, post.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits or means (..., C, H, W) of the frames of latents z (..., d): decoder((h(z) − mean) / std)."""
        lead = z.shape[:-1]
        if self.decode_latents:
            features = z
        elif getattr(self.decoder, "reads_raw_observations", False):  # the sprite decoder: h(z) in pixels
            features = self.prior.observe(z)
        else:
            features = (self.prior.observe(z) - self.decoder_mean.to(z)) / self.decoder_std.to(z)
        out = self.decoder(features.reshape(-1, features.shape[-1]))
        return out.reshape(*lead, *out.shape[1:])


@torch.no_grad()
def observation_scales(module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scales (m,) of the encoder's readings, y = reading_mean + reading_std * out, and of the
    decoder's input, (h(z) − decoder_mean) / decoder_std, for the observations of `module`.

    An expression observation (`observe b = 0.5 + 0.5*cos(phase)`, pixels `observe px = ...`) has any
    scale, and both use its moments under the initial distribution (`module.observation_moments()`). A
    state observation (`observe theta`) keeps the scales the VAE had before expressions existed: readings
    m0 + s0 * out with the state's exact initial mean and std, a decoder fed the state as it is. (Fed
    (θ − μ)/σ instead, the pendulum's L stood at 2.15 and 1.48 after 360 steps where it stood at 1.09
    and 1.03, seeds 0 and 1; with these scales training is the same as before, step for step.)"""
    mean, std = (v.detach().float() for v in module.observation_moments())
    reading_mean, reading_std, decoder_mean, decoder_std = mean.clone(), std.clone(), mean.clone(), std.clone()
    states = tuple(module.state_names)
    for i, name in enumerate(module.observations):
        if name in states:  # an observation named like a state is that state (the language's rule)
            j = states.index(name)
            reading_mean[i], reading_std[i] = module.initial_mean[j], module.initial_std[j]
            decoder_mean[i], decoder_std[i] = 0.0, 1.0
    return reading_mean, reading_std, decoder_mean, decoder_std


def build_vae(prior: "CompiledPrior", frame_shape, config: "TrainConfig", camera: dict | None = None) -> VideoVAE:
    """The VAE for a compiled prior and frames of `frame_shape` (C, H, W), as `config` describes it;
    `camera` (`anmc.data.io.resize_transform` of the stored videos) maps the sprite decoder's pixels of the
    stored video to the training frame's (None: they are the same; a loaded run's is in its weights)."""
    channels, height, width = frame_shape
    if height != width:
        raise UserError(f"frames are {height}x{width}; anmc trains on square frames: pass --size 64 (or crop).")
    module = prior.module()
    return VideoVAE(module, channels, height, window=config.window, decoder=chosen_decoder(config.decoder, module.observations), context=config.context,
                    posterior=config.posterior, decode_latents=config.kl == "standard", camera=camera)  # fmt: skip


def on_device(vae: VideoVAE, device) -> VideoVAE:
    """`vae` moved to `device`; on a CPU its convolutions' weights also take the channels-last layout
    (N, H, W, C in memory), the one oneDNN's convolutions compute in, so that no call reorders them: a
    training step 2–6% faster at the default 32×32 frames, 12–29% at 64×64, ~30% with 128-frame
    sequences on this 2-core VM (docs/results.md §4, *The convolutions' layout*). The values are the
    same; a checkpoint's weights load into either layout. Left as they are on a GPU, where it was not
    measured."""
    vae = vae.to(device)
    if torch.device(device).type == "cpu":
        vae = vae.to(memory_format=torch.channels_last)
    return vae


def chosen_decoder(decoder: str, observations) -> str:
    """The decoder `--decoder` names; for "auto", "sprite" when the prior's `observations` (names) declare
    camera roles (px, py, size, brightness, angle or level, with or without an object's suffix), else "deconv"."""
    if decoder != "auto":
        return decoder
    return "sprite" if any(split_role(name) is not None for name in observations) else "deconv"
