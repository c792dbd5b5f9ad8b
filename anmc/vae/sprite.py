"""The sprite decoder: a learned sprite drawn where the prior's declared camera puts it (docs/method.md,
"Physical units: the sprite decoder"), in the spirit of physics-as-inverse-graphics (Jaques et al. 2020).

The prior declares, among its observations h(z), what a frame shows (the camera roles of
anmc.synthetic.roles): `px`, `py` the object's centre, `size` its radius, in pixels of the video as
stored (x from the left, y from the top), `brightness` in [0, 1], `level` the fraction of the frame's
height filled from the bottom. The decoder reads those RAW values, maps pixels of the stored video to
pixels of the frame it trains on (`camera`: the centre crop and resize of `--size`,
`anmc.data.io.resize_transform`), and composites, front over back, a learned sprite over a learned fill
over a learned background (the background and the fill start from the data: `start_from`):

    (px, py), r  -> ((px - left) k, (py - top) k), r k               k = camera scale (S / stored side)
    e      = 2 r               (the sprite's half-extent, training pixels; without `size`: 0.25 S for an
                                object at (px, py), 0.5 S for the centred object of a prior with neither)
    s(u)   = ((u_x - px) / e, (u_y - py) / e)          sprite coordinates of pixel centre u, in [-1, 1]
    a(u)   = alpha(s(u)),  c(u) = colour(s(u))         bilinear samples of the learned patch (grid_sample)
    w(u)   = the share of u's row below the level's line (height (1 - level) - top) k   (exact box coverage)
    p(u)   = [bg(u) (1 - w(u)) + fill(u) w(u)] (1 - a(u)) + brightness c(u) a(u)    per channel, clamped to (0, 1)
    out(u) = log p - log(1 - p)                        logits, as every decoder returns

A sprite is drawn when any of px, py, size, brightness is declared, a fill when `level` is (the declared
renderer of `anmc synth` draws the same two layers). The sprite is point-symmetric about its centre
(alpha(s) = alpha(-s), the same for the colour), so the declared (px, py) is the centre of the object as
drawn: an offset of the latents cannot hide in a sprite drawn off-centre in its patch (measured on the
falling object: a free sprite sat 0.5-0.9 px off, the latent height 0.06-0.12 m off; weighting a
recentring by alpha or by contrast left faint halos to shift it). A symmetric object (a ball, a block, a
disc, an LED) is drawn exactly; an asymmetric one by its symmetric part. The image position, size,
brightness and fill line are thus fixed by the declared camera, and the latents are in the prior's units
by construction: the decoder cannot rescale or shift them. A size would trade against the sprite's own
scale (a sprite that paints its disc over its whole patch, half-extent 2 radii, draws at a latent radius
half the true one the same frame as a disc of half the patch at the true radius), so with `size`
declared the sprite is drawn at a half-extent divided by its body's RMS radius (`body_radius`): the body
is drawn with the RMS radius of a disc of the declared size, whatever scale the sprite learns. A brightness would trade against the
sprite's own colour and opacity (a sprite drawn at 0.8 and a latent 1.25x too large draw the same
frame: measured on the LED, slope 1.49), so with `brightness` declared the sprite's colour is divided
by the mean of colour x alpha over the object's body (the pixels at least half as bright as its
brightest): brightness is the body's mean intensity over black. (Dividing colour and alpha by their
maxima did not hold: the LED learned a 0.7 sprite with one pixel at 1, and a slope of 1.43.) A coordinate the prior does not declare (`py` of a block sliding
sideways) is a learned constant, initially the frame's centre.

The gradient with respect to (px, py) comes from the sprite's spatial gradient where it overlaps the
object. A sharp sprite far from the object gives none, so the alpha patch starts as a wide Gaussian
blob (std 0.35 of the half-extent, ~5.6 px at 64x64 without `size`) whose soft tails overlap an object
several pixels away; it sharpens as it learns. The level's gradient comes from the row its line crosses,
which is informative at any distance (that row is water or not in the frame).

Shapes: `SpriteDecoder(observations, channels, size, camera=None)(y)`, y (N, m) raw observations in the
order of `observations` -> logits (N, C, S, S).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anmc.errors import UserError
from anmc.synthetic.roles import CAMERA_ROLES, objects_of

# The camera roles (anmc.synthetic.roles, the one table) the sprite decoder reads: an object's centre and
# radius in pixels of the stored video, its brightness in [0, 1], its turn, a fill level. Half a position
# is enough: an object moving along one axis declares only that coordinate (a constant one is not an
# observation), and the decoder learns the other. Several objects: the object roles with a suffix
# (px1, py1, angle1, px2, ...; anmc.synthetic.roles.objects_of), each object a sprite of its own.
SPRITE_ROLES = tuple(CAMERA_ROLES)

BLOB_STD = 0.35  # the initial alpha blob's std, in units of the sprite's half-extent
DEFAULT_EXTENT = 0.25  # the sprite's half-extent without a declared `size`, as a fraction of the frame's side
CENTRED_EXTENT = 0.5  # the same for a centred object (neither px nor py declared: an LED, a pulsar's disc)
SIZE_EXTENT = 2.0  # the sprite's half-extent with a declared `size`, in radii (before `body_radius`'s scaling)
DISC_RMS = 0.5 / 2**0.5  # the RMS radius of a disc of radius `size` drawn at that half-extent (0.5 in sprite coordinates)
GLOWING_BACKGROUND = 0.05  # the share of the frames, the darkest, a glowing object's background is the median of

# The sprite's, the background's and the centre's numbers are stored divided by GAIN: Adam moves a parameter
# by about lr per step whatever its scale, and at the networks' lr (1e-3) a logit stored as itself would need
# thousands of steps to go from a blob to a sharp sprite; stored /20 it moves ~0.02 per step.
GAIN = 20.0


class SpriteDecoder(nn.Module):
    """Raw observations (N, m) -> logits (N, C, S, S): a learned RGBA patch placed at the declared (px, py)
    over a learned fill up to the declared level over a learned background.

    Learned (each stored divided by GAIN, each only where the roles use it): `background` (C, S, S) logits,
    `fill` (C, S, S) logits (with `level`), `colour` (C, P, P) and `alpha` (1, P, P) logits of the sprite
    (with any of px, py, size, brightness), and `centre` (2,) pixels of the training frame, the position
    used for a coordinate the prior does not declare. The buffer `camera` (5,) holds
    `resize_transform`'s scale, left, top, height and width (the stored video's), saved with the weights.
    """

    # VideoVAE.decode gives this decoder the raw observation function h(z), not normalised readings
    reads_raw_observations = True
    CAMERA = ("scale", "left", "top", "height", "width")

    def __init__(self, observations: Sequence[str], channels: int, size: int, patch: int = 32, camera: dict | None = None):
        super().__init__()
        observations = tuple(observations)
        self.objects = objects_of(observations)
        if turned_only := [observations[roles["angle"]] for roles in self.objects.values() if set(roles) == {"angle"}]:
            raise UserError(
                f"{', '.join(turned_only)} turns an object that the prior does not place: declare where it is "
                "(px, py with the same suffix; docs/method.md, 'Physical units: the sprite decoder')."
            )
        self.level = observations.index("level") if "level" in observations else None  # the frame's fill line
        if not self.objects and self.level is None:
            raise UserError(
                f"--decoder sprite draws what the prior's camera declares, but the prior observes "
                f"{', '.join(observations) or 'nothing'} and declares no camera role ({', '.join(SPRITE_ROLES)}): add e.g. "
                "'observe px = cx + scale * x' (pixels of the video; docs/method.md, 'Physical units: the sprite decoder') "
                "or use --decoder deconv."
            )
        self.size, self.channels = size, channels
        camera = camera or {"scale": 1.0, "left": 0.0, "top": 0.0, "height": float(size), "width": float(size)}
        self.register_buffer("camera", torch.tensor([float(camera[k]) for k in self.CAMERA]))
        # only the layers the roles draw have parameters (DistributedDataParallel wants every one used)
        # An object that glows in place (`brightness` without px, py: an LED) is drawn over a background that
        # is the scene with the light at its dimmest (`start_from`) and is not learned: a learned one trades
        # with a brightness offset (the LED's latents came out 0.974 b - 0.011 over a background risen to 0.05
        # behind a 79% opaque sprite, and an offset below zero makes a decay look 5-7% faster; docs/results.md §1b)
        self.glowing = any("brightness" in roles and not {"px", "py"} & set(roles) for roles in self.objects.values())
        self.background = nn.Parameter(torch.full((channels, size, size), -3.0 / GAIN), requires_grad=not self.glowing)  # dark
        if self.level is not None:
            self.fill = nn.Parameter(torch.full((channels, size, size), 3.0 / GAIN))  # light
        c = torch.linspace(-1 + 1 / patch, 1 - 1 / patch, patch)  # the patch's pixel centres in sprite coordinates
        r2 = c[None, :] ** 2 + c[:, None] ** 2
        blob = 0.95 * torch.exp(-0.5 * r2 / BLOB_STD**2) + 1e-3
        for key, roles in self.objects.items():  # each object's sprite: alpha, colour (and centre) + its suffix
            self.register_parameter(self._name("alpha", key), nn.Parameter(torch.log(blob / (1 - blob))[None] / GAIN))  # (1, P, P)
            self.register_parameter(self._name("colour", key), nn.Parameter(torch.full((channels, patch, patch), 3.0 / GAIN)))  # white-ish
            if "px" not in roles or "py" not in roles:
                self.register_parameter(self._name("centre", key), nn.Parameter(torch.full((2,), size / 2.0 / GAIN)))

    def shape_parameters(self) -> list[nn.Parameter]:
        """The sprites' alpha and colour patches (what an object looks like, not where it is)."""
        return [getattr(self, self._name(what, key)) for key in self.objects for what in ("alpha", "colour")]

    @staticmethod
    def _name(what: str, key: str) -> str:
        """The parameter `what` of object `key`: alpha, colour, centre for the unsuffixed object (the names
        of a one-object decoder), alpha_1 ... for object 1."""
        return f"{what}_{key}" if key else what

    @torch.no_grad()
    def start_from(self, frames: torch.Tensor) -> None:
        """Start the background (and the fill) from a sample of the training frames (N, C, S, S), values in
        [0, 1], instead of from a dark background and a light fill, which suit anmc's own renders and are
        the opposite of, say, dark water in a tank on a light wall (measured: the fill then learned the
        mean image, the level left the frame and lost its gradient; docs/results.md §1c).

        Without `level`: the background is the per-pixel median over the frames, the scene with the
        moving object mostly gone; behind an object that glows in place (`brightness` without `px`, `py`:
        `glowing`) the per-pixel median of the darkest 5% of the frames, the scene with the light at its
        dimmest, and it stays there (not learned; see `glowing`). With `level`: each column's mean over the top eighth of the rows (the
        air above the fill) for the background and over the bottom eighth (the filled part) for the fill,
        spread over the column's rows. Clamped to [0.02, 0.98], where the sigmoid still passes gradient."""
        frames = frames.to(self.background).clamp(0.0, 1.0)
        if frames.shape[1:] != self.background.shape:
            raise ValueError(f"frames of shape {tuple(frames.shape[1:])} for a decoder of {tuple(self.background.shape)}")
        logit = lambda p: torch.logit(p.clamp(0.02, 0.98)) / GAIN  # noqa: E731
        if self.level is not None:
            band = max(1, self.size // 8)
            top = frames[:, :, :band].mean((0, 2), keepdim=True)[0]  # (C, 1, S)
            bottom = frames[:, :, -band:].mean((0, 2), keepdim=True)[0]
            self.background.copy_(logit(top.expand_as(self.background)))
            self.fill.copy_(logit(bottom.expand_as(self.fill)))
        elif self.glowing:
            darkest = frames.flatten(1).mean(1).argsort()[: max(1, round(GLOWING_BACKGROUND * frames.shape[0]))]
            self.background.copy_(logit(frames[darkest].median(0).values))
        else:
            self.background.copy_(logit(frames.median(0).values))

    def placement(self, y: torch.Tensor, key: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centre (px, py) and half-extent e, each (N,), in pixels of the training frame, of object `key`
        (the first declared when None) from raw observations y (N, m) in pixels of the stored video."""
        key = next(iter(self.objects)) if key is None else key
        index = self.objects[key]
        n = y.shape[0]
        k, left, top = self.camera[0].to(y), self.camera[1].to(y), self.camera[2].to(y)
        if "px" not in index or "py" not in index:
            centre = getattr(self, self._name("centre", key))
        px = (y[:, index["px"]] - left) * k if "px" in index else GAIN * centre[0].expand(n)
        py = (y[:, index["py"]] - top) * k if "py" in index else GAIN * centre[1].expand(n)
        if "size" in index:
            e = SIZE_EXTENT * (y[:, index["size"]].abs() * k).clamp_min(0.5) * (DISC_RMS / self.body_radius(key))
        else:
            extent = DEFAULT_EXTENT if ("px" in index or "py" in index) else CENTRED_EXTENT
            e = torch.full_like(px, extent * self.size)
        return px, py, e

    def body_radius(self, key: str | None = None) -> torch.Tensor:
        """The root-mean-square radius of object `key`'s body in sprite coordinates (a scalar): over the
        patch, weighted by how far its alpha rises above a quarter of its peak (a faint halo weighs
        nothing). A declared `size` draws the sprite at a half-extent scaled by DISC_RMS / this, so the
        body is drawn with the RMS radius of a disc of radius `size` whatever scale the sprite learns."""
        key = next(iter(self.objects)) if key is None else key
        alpha = self.sprite(key)[-1]
        p = alpha.shape[-1]
        c = torch.linspace(-1 + 1 / p, 1 - 1 / p, p, dtype=alpha.dtype, device=alpha.device)
        r2 = c[None, :] ** 2 + c[:, None] ** 2
        w = (alpha - 0.25 * alpha.detach().amax()).clamp_min(0.0)
        return ((w * r2).sum() / w.sum().clamp_min(1e-6)).clamp_min(1e-4).sqrt()

    def level_line(self, y: torch.Tensor) -> torch.Tensor:
        """The level's line (N,), in rows of the training frame from its top: the stored frame's
        height (1 - level), mapped by the camera."""
        k, top, height = self.camera[0].to(y), self.camera[2].to(y), self.camera[3].to(y)
        return (height * (1 - y[:, self.level].clamp(0.0, 1.0)) - top) * k

    def sprite(self, key: str | None = None) -> torch.Tensor:
        """The sprite of object `key` (the first declared when None), (C + 1, P, P), colour channels then
        alpha in [0, 1]: point-symmetric about the patch's centre (the mean of the learned patch and its
        180-degree rotation), so that the centre of what it draws is the declared (px, py) exactly, unless
        the object declares its `angle` (then the sprite turns with the state and any point of it is a
        point of the rigid body: a pendulum's rod drawn from its pivot); with `brightness` declared, the
        colour divided by the mean colour x alpha over the object's body (drawn over black, the body's
        mean is the brightness)."""
        key = next(iter(self.objects)) if key is None else key
        index = self.objects[key]
        patch = torch.sigmoid(GAIN * torch.cat([getattr(self, self._name("colour", key)), getattr(self, self._name("alpha", key))]))
        if "angle" not in index:
            patch = 0.5 * (patch + patch.flip(-1, -2))
        if "brightness" in index:
            # `brightness` is the object's intensity over its body (the patch pixels whose colour x alpha is at
            # least half the brightest's): the colour is divided by the body's mean colour x alpha, so that a
            # dim or half-transparent sprite cannot absorb a latent drawn too bright (a peak normalisation
            # did not hold: the LED learned a sprite of 0.7 with one pixel at 1, and a latent 1.43x too large)
            colour, alpha = patch[:-1], patch[-1:]
            drawn = (colour * alpha).mean(0)  # (P, P)
            body = (drawn >= 0.5 * drawn.amax()).detach()
            patch = torch.cat([colour / drawn[body].mean().clamp_min(1e-3), alpha])
        return patch

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y (N, m) raw observations (pixels; brightness, level in [0, 1]; angles in radians) -> logits (N, C, S, S)."""
        y = y.float()
        n, s = y.shape[0], self.size
        p = torch.sigmoid(GAIN * self.background)[None].expand(n, -1, -1, -1)
        if self.level is not None:
            rows = torch.arange(s, dtype=y.dtype, device=y.device)
            w = (rows[None, :] + 1 - self.level_line(y)[:, None]).clamp(0.0, 1.0)  # (N, S): row i spans [i, i + 1)
            p = p + (torch.sigmoid(GAIN * self.fill)[None] - p) * w[:, None, :, None]
        for key, index in self.objects.items():  # back to front, in the order the prior declares them
            px, py, e = self.placement(y, key)
            # affine_grid maps the output's normalised coordinates v (pixel u = (v + 1) S / 2) to the sprite's:
            # w = (u - p) / e = v S / (2 e) + (S / 2 - p) / e, turned back by the object's angle a (the sprite's
            # down axis (0, 1) drawn along (sin a, cos a)): s = R(a)^T w, R(a) = [[cos a, sin a], [-sin a, cos a]]
            k = s / (2 * e)
            bx, by = (s / 2 - px) / e, (s / 2 - py) / e
            if "angle" in index:
                a = y[:, index["angle"]]
                cos, sin = torch.cos(a), torch.sin(a)
                rows = [torch.stack([cos * k, -sin * k, cos * bx - sin * by], -1), torch.stack([sin * k, cos * k, sin * bx + cos * by], -1)]
            else:
                zero = torch.zeros_like(k)
                rows = [torch.stack([k, zero, bx], -1), torch.stack([zero, k, by], -1)]
            grid = F.affine_grid(torch.stack(rows, -2), (n, 1, s, s), align_corners=False)
            patch = self.sprite(key)[None].expand(n, -1, -1, -1)
            drawn = F.grid_sample(patch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            colour, a = drawn[:, :-1], drawn[:, -1:]
            if "brightness" in index:
                colour = colour * y[:, index["brightness"]].clamp(0.0, 1.0)[:, None, None, None]
            p = p * (1 - a) + colour * a
        p = p.clamp(1e-6, 1 - 1e-6)
        return torch.log(p) - torch.log1p(-p)
