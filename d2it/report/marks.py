"""The mark every output of a rehearsal carries (`d2it study rehearse`, the study's `rehearsal`
key): its data and weights are stand-ins and its counts are cut, so no number in it is a result."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

REHEARSAL = "REHEARSAL"
NOTE = "REHEARSAL: stand-in data and weights, counts cut to the least; not a result"


def title(rehearsal: bool, text: str) -> str:
    """A figure's or document's title, led by the mark in a rehearsal."""
    return f"{REHEARSAL}: {text}" if rehearsal else text


def stamp(fig, rehearsal: bool) -> None:
    """A matplotlib figure watermarked across its middle in a rehearsal."""
    if rehearsal:
        fig.text(0.5, 0.5, REHEARSAL, ha="center", va="center", rotation=25, fontsize=48,
                 color="red", alpha=0.35)


def banner(grid: np.ndarray, rehearsal: bool) -> np.ndarray:
    """An image grid (H x W x 3 uint8) with a red band naming the mark above it in a rehearsal."""
    if not rehearsal:
        return grid
    band = Image.new("RGB", (grid.shape[1], 12), (200, 0, 0))
    ImageDraw.Draw(band).text((2, 0), NOTE, fill=(255, 255, 255))
    return np.concatenate([np.asarray(band), grid], 0)
