"""The mark an output carries when it is not a result (the study's `mark` key): a rehearsal's
(`d2it study rehearse`: stand-in data and weights, counts cut to the least) or a smoke run's
(`config/quick.yaml`: the whole chain in minutes). Every table, figure and verdict says so."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

LABELS = {"rehearsal": "REHEARSAL", "smoke": "SMOKE RUN"}
NOTES = {
    "rehearsal": "REHEARSAL: stand-in data and weights, counts cut to the least; not a result",
    "smoke": "SMOKE RUN: the whole chain at minutes' size; not evidence",
}


def note(mark: str | None) -> str | None:
    """The sentence a marked table, JSON or verdict carries (None for a result)."""
    return NOTES[mark] if mark else None


def title(mark: str | None, text: str) -> str:
    """A figure's or document's title, led by the mark."""
    return f"{LABELS[mark]}: {text}" if mark else text


def stamp(fig, mark: str | None) -> None:
    """A matplotlib figure watermarked across its middle."""
    if mark:
        fig.text(0.5, 0.5, LABELS[mark], ha="center", va="center", rotation=25, fontsize=48,
                 color="red", alpha=0.35)


def banner(grid: np.ndarray, mark: str | None) -> np.ndarray:
    """An image grid (H x W x 3 uint8) with a red band naming the mark above it."""
    if not mark:
        return grid
    band = Image.new("RGB", (grid.shape[1], 12), (200, 0, 0))
    ImageDraw.Draw(band).text((2, 0), NOTES[mark], fill=(255, 255, 255))
    return np.concatenate([np.asarray(band), grid], 0)
