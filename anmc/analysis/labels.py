"""Side-by-side panels with a title strip above each: for factual / counterfactual videos."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def label_panels(panels: list[np.ndarray], titles: list[str], strip: int = 14) -> np.ndarray:
    """panels: each uint8 (T, H, W) or (T, H, W, 3), same T/H/W -> (T, strip + H, n*W + gaps, 3) uint8."""
    rgb = [p if p.ndim == 4 else np.repeat(p[..., None], 3, axis=-1) for p in panels]
    t, h, w, _ = rgb[0].shape
    gap = 2
    width = len(rgb) * w + (len(rgb) - 1) * gap
    header = Image.new("RGB", (width, strip), (24, 24, 24))
    draw = ImageDraw.Draw(header)
    font = ImageFont.load_default()
    for i, title in enumerate(titles):
        x0 = i * (w + gap)
        text = title if draw.textlength(title, font=font) <= w - 2 else title[: max(1, w // 7)]
        draw.text((x0 + 2, 1), text, fill=(235, 235, 235), font=font)
    out = np.zeros((t, strip + h, width, 3), dtype=np.uint8)
    out[:, :strip] = np.asarray(header)[None]
    for i, panel in enumerate(rgb):
        x0 = i * (w + gap)
        out[:, strip:, x0 : x0 + w] = panel
        if i:
            out[:, strip:, x0 - gap : x0] = 80
    return out
