"""The sprite decoder: a learned sprite drawn where the prior's declared camera puts it (docs/method.md,
"Physical units: the sprite decoder"), in the spirit of physics-as-inverse-graphics (Jaques et al. 2020).

The prior declares, among its observations h(z), where the object appears in the frame anmc trains on
(the camera roles: `px`, `py` the object's centre in pixels, x from the left and y from the top; optionally
`size`, its radius in pixels, and `brightness` in [0, 1]). The decoder reads those RAW values (in pixels,
not normalised) and composites a learned sprite over a learned background, front over back:

    e      = 2 size            (the sprite's half-extent in pixels; 0.25 S when `size` is not declared)
    s(u)   = ((u_x - px) / e, (u_y - py) / e)          sprite coordinates of pixel centre u, in [-1, 1]
    a(u)   = alpha(s(u)),  k(u) = colour(s(u))         bilinear samples of the learned patch (grid_sample)
    p(u)   = bg(u) (1 - a(u)) + brightness k(u) a(u)    per channel, in (0, 1)
    out(u) = log p - log(1 - p)                        logits, as every decoder returns

The sprite is point-symmetric about its centre (alpha(s) = alpha(-s), the same for the colour), so the
declared (px, py) is the centre of the object as drawn: an offset of the latents cannot hide in a sprite
drawn off-centre in its patch (measured on the falling object: a free sprite sat 0.5-0.9 px off, the
latent height 0.06-0.12 m off; weighting a recentring by alpha or by contrast left faint halos to shift
it). A symmetric object (a ball, a block, a disc, an LED) is drawn exactly; an asymmetric one by its
symmetric part. The image position is thus fixed by the declared camera, and the latents are in the
prior's units by construction: the decoder cannot rescale or shift them. A coordinate the prior does
not declare (`py` of a block sliding sideways) is a learned constant, initially the frame's centre; at
least one of `px`, `py` must be declared.

The gradient with respect to (px, py) comes from the sprite's spatial gradient where it overlaps the
object. A sharp sprite far from the object gives none, so the alpha patch starts as a wide Gaussian
blob (std 0.35 of the half-extent, ~5.6 px at 64x64 without `size`) whose soft tails overlap an object
several pixels away; it sharpens as it learns.

Shapes: `SpriteDecoder(observations, channels, size)(y)`, y (N, m) raw observations in the order of
`observations` -> logits (N, C, S, S).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anmc.errors import UserError
from anmc.synthetic.roles import CAMERA_ROLES

# The camera roles (anmc.synthetic.roles, the one table) the sprite decoder reads: the object's centre in
# pixels of the training frame, its radius in pixels, its brightness in [0, 1]. Half a position is
# enough: an object moving along one axis declares only that coordinate (a constant one is not an
# observation), and the decoder learns the other.
SPRITE_ROLES = tuple(role for role in CAMERA_ROLES if role in ("px", "py", "size", "brightness"))

BLOB_STD = 0.35  # the initial alpha blob's std, in units of the sprite's half-extent
DEFAULT_EXTENT = 0.25  # the sprite's half-extent without a declared `size`, as a fraction of the frame's side
SIZE_EXTENT = 2.0  # the sprite's half-extent with a declared `size`, in radii
# The sprite's, the background's and the centre's numbers are stored divided by GAIN: Adam moves a parameter
# by about lr per step whatever its scale, and at the networks' lr (1e-3) a logit stored as itself would need
# thousands of steps to go from a blob to a sharp sprite; stored /20 it moves ~0.02 per step.
GAIN = 20.0


class SpriteDecoder(nn.Module):
    """Raw observations (N, m) -> logits (N, C, S, S): a learned RGBA patch placed at the declared (px, py).

    Learned (each stored divided by GAIN): `colour` (C, P, P) and `alpha` (1, P, P) logits of the sprite,
    `background` (C, S, S) logits, and `centre` (2,) pixels, the position used for a coordinate the prior
    does not declare.
    """

    # VideoVAE.decode gives this decoder the raw observation function h(z), not normalised readings
    reads_raw_observations = True

    def __init__(self, observations: Sequence[str], channels: int, size: int, patch: int = 32):
        super().__init__()
        observations = tuple(observations)
        if "px" not in observations and "py" not in observations:
            raise UserError(
                f"--decoder sprite draws the object where the prior's camera puts it, but the prior observes "
                f"{', '.join(observations) or 'nothing'} and declares no px or py: add e.g. 'observe px = cx + scale * x' "
                "(pixels of the training frame; docs/method.md, 'Physical units: the sprite decoder') or use --decoder deconv."
            )
        self.index = {role: observations.index(role) for role in SPRITE_ROLES if role in observations}
        self.size, self.channels = size, channels
        c = torch.linspace(-1 + 1 / patch, 1 - 1 / patch, patch)  # the patch's pixel centres in sprite coordinates
        r2 = c[None, :] ** 2 + c[:, None] ** 2
        blob = 0.95 * torch.exp(-0.5 * r2 / BLOB_STD**2) + 1e-3
        self.alpha = nn.Parameter(torch.log(blob / (1 - blob))[None] / GAIN)  # (1, P, P)
        self.colour = nn.Parameter(torch.full((channels, patch, patch), 3.0 / GAIN))  # white-ish
        self.background = nn.Parameter(torch.full((channels, size, size), -3.0 / GAIN))  # dark
        self.centre = nn.Parameter(torch.full((2,), size / 2.0 / GAIN))

    def placement(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centre (px, py) and half-extent e, each (N,), in pixels, from raw observations y (N, m)."""
        n = y.shape[0]
        px = y[:, self.index["px"]] if "px" in self.index else GAIN * self.centre[0].expand(n)
        py = y[:, self.index["py"]] if "py" in self.index else GAIN * self.centre[1].expand(n)
        if "size" in self.index:
            e = SIZE_EXTENT * y[:, self.index["size"]].abs().clamp_min(0.5)
        else:
            e = torch.full_like(px, DEFAULT_EXTENT * self.size)
        return px, py, e

    def sprite(self) -> torch.Tensor:
        """The sprite (C + 1, P, P) in [0, 1], colour channels then alpha: point-symmetric about the patch's
        centre (the mean of the learned patch and its 180-degree rotation), so that the centre of what it
        draws is the declared (px, py) exactly."""
        patch = torch.sigmoid(GAIN * torch.cat([self.colour, self.alpha]))
        return 0.5 * (patch + patch.flip(-1, -2))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y (N, m) raw observations (pixels; brightness in [0, 1]) -> logits (N, C, S, S)."""
        y = y.float()
        n, s = y.shape[0], self.size
        px, py, e = self.placement(y)
        # affine_grid maps the output's normalised coordinates v (pixel u = (v + 1) S / 2) to the sprite's:
        # (u - p) / e = v S / (2 e) + (S / 2 - p) / e
        k = s / (2 * e)
        zero = torch.zeros_like(k)
        theta = torch.stack([torch.stack([k, zero, (s / 2 - px) / e], -1), torch.stack([zero, k, (s / 2 - py) / e], -1)], -2)
        grid = F.affine_grid(theta, (n, 1, s, s), align_corners=False)
        patch = self.sprite()[None].expand(n, -1, -1, -1)
        drawn = F.grid_sample(patch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        colour, a = drawn[:, :-1], drawn[:, -1:]
        if "brightness" in self.index:
            colour = colour * y[:, self.index["brightness"]].clamp(0.0, 1.0)[:, None, None, None]
        p = torch.sigmoid(GAIN * self.background) * (1 - a) + colour * a
        p = p.clamp(1e-6, 1 - 1e-6)
        return torch.log(p) - torch.log1p(-p)

