"""Side-by-side panels with a title strip above each: for factual / counterfactual videos.

Frames are often small (a run trains at 32 x 32): the panels are enlarged by a whole factor (nearest
neighbour, no blur) until every title fits above its panel, so that no label is ever cut.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 2  # pixels between panels
PAD = 3  # pixels around a title


def _font():
    return ImageFont.load_default()


def title_size(title: str) -> tuple[int, int]:
    """(width, height) in pixels of a title as drawn."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), title, font=_font())
    return right - left, bottom - top


def panel_scale(width: int, titles: list[str]) -> int:
    """The smallest whole enlargement of a `width`-pixel panel under which every title fits."""
    widest = max(title_size(t)[0] for t in titles)
    return max(1, math.ceil((widest + 2 * PAD) / width))


def label_panels(panels: list[np.ndarray], titles: list[str]) -> np.ndarray:
    """panels: each uint8 (T, H, W) or (T, H, W, 3), same T/H/W -> (T, strip + sH, n*sW + gaps, 3) uint8,
    s = `panel_scale(W, titles)`, strip = the titles' height plus padding."""
    rgb = [p if p.ndim == 4 else np.repeat(p[..., None], 3, axis=-1) for p in panels]
    s = panel_scale(rgb[0].shape[2], titles)
    rgb = [p.repeat(s, axis=1).repeat(s, axis=2) for p in rgb]
    t, h, w, _ = rgb[0].shape
    font = _font()
    strip = max(title_size(title)[1] for title in titles) + 2 * PAD + 2
    width = len(rgb) * w + (len(rgb) - 1) * GAP
    header = Image.new("RGB", (width, strip), (24, 24, 24))
    draw = ImageDraw.Draw(header)
    for i, title in enumerate(titles):
        left, top, right, _ = draw.textbbox((0, 0), title, font=font)
        x0 = i * (w + GAP) + (w - (right - left)) // 2 - left
        draw.text((x0, PAD - top), title, fill=(235, 235, 235), font=font)
    out = np.zeros((t, strip + h, width, 3), dtype=np.uint8)
    out[:, :strip] = np.asarray(header)[None]
    for i, panel in enumerate(rgb):
        x0 = i * (w + GAP)
        out[:, strip:, x0 : x0 + w] = panel
        if i:
            out[:, strip:, x0 - GAP : x0] = 80
    return out
