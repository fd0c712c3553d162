"""Figures of samples: each image beside its grain map overlay (the paper's Figs. 3 and 4)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from d2it.errors import D2itError


def overlay(image: np.ndarray, grain: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The image tinted red where the grain is fine and blue where it is coarse (as the paper's
    Fig. 3)."""
    factor = image.shape[0] // grain.shape[0]
    mask = np.kron(grain.astype(np.uint8), np.ones((factor, factor), np.uint8)).astype(bool)
    tint = np.where(mask[..., None], np.array([255, 0, 0]), np.array([0, 0, 255]))
    return ((1 - alpha) * image + alpha * tint).round().astype(np.uint8)


def write_grid(images: np.ndarray, grains: np.ndarray, path: Path, columns: int = 8,
               zoom: int = 4) -> None:
    """Pairs of (sample, sample with its grain map) in rows of `columns` pairs."""
    cells = [np.concatenate([im, overlay(im, g)], 1) for im, g in zip(images, grains)]
    while len(cells) % columns:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.concatenate(cells[i:i + columns], 1) for i in range(0, len(cells), columns)]
    grid = np.concatenate(rows, 0)
    Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom),
                                 Image.NEAREST).save(path)


def class_rows(images: np.ndarray, grains: np.ndarray, labels: np.ndarray,
               per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` samples of each class, class by class (Fig. 4: one row per class)."""
    picked = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    short = [int(c) for c, p in zip(np.unique(labels), picked) if len(p) < per_class]
    if short:
        raise D2itError(f"classes {short} have fewer than {per_class} samples")
    order = np.concatenate(picked)
    return images[order], grains[order]


def samples_figure(samples: Path, out: Path, by_class: bool, columns: int = 8) -> dict:
    """A grid of (sample, grain overlay) pairs from a `d2it sample` .npz; by_class: one row per
    class."""
    data = np.load(samples)
    images, grains = data["arr_0"], data["grain"]
    if by_class:
        images, grains = class_rows(images, grains, data["labels"], columns)
    else:
        images, grains = images[:4 * columns], grains[:4 * columns]
    write_grid(images, grains, Path(out), columns)
    return {"figure": str(out), "images": len(images)}
