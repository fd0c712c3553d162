"""Figures of samples: each image beside its grain map (the paper's Figs. 3 and 4)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from d2it.errors import D2itError
from d2it.files import atomic
from d2it.report import marks

FINE = (214, 39, 40)  # the grain map's colours: fine regions red, coarse light blue
COARSE = (174, 199, 232)


def grain_image(grain: np.ndarray, size: int) -> np.ndarray:
    """A grain map (True = fine) as a size x size RGB picture, to stand beside its sample: the
    sample itself is left untouched."""
    factor = size // grain.shape[0]
    mask = np.kron(grain.astype(np.uint8), np.ones((factor, factor), np.uint8)).astype(bool)
    return np.where(mask[..., None], np.array(FINE), np.array(COARSE)).astype(np.uint8)


def pair(image: np.ndarray, grain: np.ndarray) -> np.ndarray:
    """The sample, a white 1 px gap, its grain map: one cell of a D²iT grid."""
    gap = np.full((image.shape[0], 1, 3), 255, np.uint8)
    return np.concatenate([image, gap, grain_image(grain, image.shape[0])], 1)


def write_grid(images: np.ndarray, grains: np.ndarray | None, path: Path, columns: int = 8,
               zoom: int = 4, mark: str | None = None) -> None:
    """Pairs of (sample, its grain map) in rows of `columns` pairs; samples alone where there
    are no grain maps (DiT); under a band naming the study's mark."""
    if grains is None:
        cells = list(images)
    else:
        cells = [pair(im, g) for im, g in zip(images, grains)]
    while len(cells) % columns:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.concatenate(cells[i:i + columns], 1) for i in range(0, len(cells), columns)]
    grid = np.concatenate(rows, 0)
    grid = np.asarray(Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom),
                                                   Image.NEAREST))
    Image.fromarray(marks.banner(grid, mark)).save(path)


def class_rows(index: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """The first `per_class` samples of each class, class by class (Fig. 4: one row per class):
    positions into `index`."""
    picked = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    short = [int(c) for c, p in zip(np.unique(labels), picked) if len(p) < per_class]
    if short:
        raise D2itError(f"classes {short} have fewer than {per_class} samples")
    return index[np.concatenate(picked)]


def samples_figure(samples: Path, out: Path, by_class: bool, columns: int = 8,
                   class_names: list[str] | None = None, title: str | None = None,
                   mark: str | None = None) -> dict:
    """Figs. 3 and 4 from a `d2it sample` .npz: samples beside their grain maps (D²iT) or
    alone (DiT, which has no grain map), four rows or (by_class) one row per class named on the
    left, with a title and a legend of the grain maps' colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    data = np.load(samples)
    images, grains, labels = data["arr_0"], data["grain"], data["labels"]
    meta = Path(samples).with_suffix(".json")
    kind = json.loads(meta.read_text())["kind"] if meta.is_file() else "d2it"
    if by_class:
        order = class_rows(np.arange(len(images)), labels, columns)
        rows = [labels[order[i]] for i in range(0, len(order), columns)]
    else:
        order = np.arange(min(len(images), 4 * columns))
        rows = []
    images, grains = images[order], grains[order]
    if kind == "d2it":
        cells = [pair(im, g) for im, g in zip(images, grains)]
    else:
        cells = list(images)
    # a white border right of and below each cell, so that each pair reads as one picture
    cells = [np.pad(c, ((0, 3), (0, 3), (0, 0)), constant_values=255) for c in cells]
    while len(cells) % columns:
        cells.append(np.full_like(cells[0], 255))
    grid_rows = [np.concatenate(cells[i:i + columns], 1) for i in range(0, len(cells), columns)]
    grid = np.concatenate(grid_rows, 0)

    height = grid.shape[0] / grid.shape[1] * 10
    fig, ax = plt.subplots(figsize=(10, max(2.0, height + 0.8)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    cell = grid.shape[0] / len(grid_rows)
    if rows:
        names = [class_names[c] if class_names else f"class {c}" for c in rows]
        ax.set_yticks([cell * (i + 0.5) for i in range(len(rows))], names)
    else:
        ax.set_yticks([])
    if kind == "d2it":
        colours = [np.array(c) / 255 for c in (FINE, COARSE)]
        ax.legend(handles=[Patch(color=colours[0], label="fine grain"),
                           Patch(color=colours[1], label="coarse grain")],
                  title="each sample, then its grain map", loc="upper center",
                  bbox_to_anchor=(0.5, -0.01), ncol=2, frameon=False)
    ax.set_title(marks.title(mark, title or ("samples beside their grain maps"
                                                  if kind == "d2it" else "samples")))
    marks.stamp(fig, mark)
    with atomic(Path(out)) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return {"figure": str(out), "images": len(images), "kind": kind}
