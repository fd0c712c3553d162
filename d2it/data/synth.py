"""The embedded dataset: class-conditional images whose information density varies across regions.

Each image is a smooth two-colour gradient (low entropy) with one textured object on it (high
entropy); class = shape x texture. Every image is drawn from its own seed (seed, split, index), so
a larger dataset starts with the same images and the same seed gives byte-identical files.

The nuisance a generator must learn besides the class (rotation, size, placement, colours, the
noise's grain) is set by a `look` (the study's `data.synth` keys of the same names):

| key          | meaning                                                    | LOOK (widest) |
|--------------|------------------------------------------------------------|---------------|
| rotation     | largest rotation of the object, degrees either way         | 180           |
| radius       | object radius range, fraction of the image side            | [0.22, 0.38]  |
| placement    | fraction of the free room the centre moves in (0: centred) | 1.0           |
| colour_range | fraction of the widest colour ranges (0: fixed colours)    | 1.0           |
| noise_cell   | side of one noise-texture cell, pixels                     | 1             |
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from d2it.data.manifest import Manifest, ManifestEntry
from d2it.files import sha256_file
from d2it.errors import D2itError

GENERATOR_VERSION = "synth-3"
LOOK = {"rotation": 180.0, "radius": [0.22, 0.38], "placement": 1.0, "colour_range": 1.0,
        "noise_cell": 1}
SHAPES = ("disc", "square", "triangle", "ring", "cross")
TEXTURES = ("stripes", "noise")
CLASSES = tuple(f"{shape}-{texture}" for shape in SHAPES for texture in TEXTURES)
SPLITS = ("train", "heldout")


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test on coordinates (u, v) already centred, rotated and scaled to the object's
    radius."""
    if shape == "disc":
        return u**2 + v**2 <= 1
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.8
    if shape == "triangle":
        return (v <= 0.6) & (v >= -1 + 2.2 * abs(u))
    if shape == "ring":
        r2 = u**2 + v**2
        return (r2 <= 1) & (r2 >= 0.3)
    if shape == "cross":
        return (np.maximum(abs(u), abs(v)) <= 0.95) & (np.minimum(abs(u), abs(v)) <= 0.32)
    raise ValueError(shape)


def _texture(texture: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
             res: int, cell: int) -> np.ndarray:
    """Mixing weight in [0, 1] per pixel: full-contrast patterns spread the grey values of a
    region."""
    if texture == "stripes":
        theta, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        # 4-7 px up to 64 px, scaled above: at least twice the Nyquist period at every size
        period = rng.uniform(4.0, 7.0) * max(1.0, res / 64)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period
                                  + phase)
    if texture == "noise":  # one value per cell x cell block
        coarse = rng.uniform(0, 1, size=(-(-x.shape[0] // cell), -(-x.shape[1] // cell)))
        return np.kron(coarse, np.ones((cell, cell)))[:x.shape[0], :x.shape[1]]
    raise ValueError(texture)


def render(seed: int, split: str, index: int, resolution: int,
           look: dict | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """One image (uint8 H x W x 3), its label and its object mask (bool H x W), under `look`
    (keys of LOOK; left out: LOOK's)."""
    look = {**LOOK, **(look or {})}
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    label = index % len(CLASSES)
    shape, texture = CLASSES[label].split("-")
    y, x = np.mgrid[0:resolution, 0:resolution].astype(np.float64)
    spread = look["colour_range"]

    # Background: a shallow gradient between two colours, so its regions keep a narrow grey range.
    c0 = 0.5 + spread * rng.uniform(-0.4, 0.4, 3)
    c1 = np.clip(c0 + spread * rng.uniform(-0.35, 0.35, 3), 0, 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (x * np.cos(angle) + y * np.sin(angle)) / resolution
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-12)
    img = c0 + ramp[..., None] * (c1 - c0)

    # Object: centre, radius and rotation within the look's ranges; two contrasting colours mixed
    # by the texture.
    radius = rng.uniform(*look["radius"]) * resolution
    middle = (resolution - 1) / 2  # pixel centres are at 0 ... resolution - 1
    room = max(middle - radius, 0.0)  # how far the centre may move and the object still fit
    cx, cy = middle + look["placement"] * rng.uniform(-room, room, 2)
    rot = np.deg2rad(look["rotation"]) * rng.uniform(-1, 1)
    u = ((x - cx) * np.cos(rot) + (y - cy) * np.sin(rot)) / radius
    v = (-(x - cx) * np.sin(rot) + (y - cy) * np.cos(rot)) / radius
    mask = _shape_mask(shape, u, v)
    a = 0.175 + spread * rng.uniform(-0.175, 0.175, 3)
    b = 0.825 + spread * rng.uniform(-0.175, 0.175, 3)
    if rng.random() < 0.5:
        a, b = b, a
    w = _texture(texture, rng, x, y, resolution, look["noise_cell"])[..., None]
    img = np.where(mask[..., None], a + w * (b - a), img)
    return np.round(img * 255).astype(np.uint8), label, mask


def _write_png(array: np.ndarray, path: Path) -> None:
    # Fixed encoder settings: same pixels -> same bytes.
    Image.fromarray(array).save(path, format="PNG", compress_level=6, optimize=False)


def synthesize(out: Path, *, seed: int, resolution: int, n_train: int, n_heldout: int,
               look: dict | None = None) -> Manifest:
    """Write the dataset under `out` (split/class/index.png + manifest.json); atomic: all or
    nothing."""
    out = Path(out)
    look = {**LOOK, **(look or {})}
    params = {"version": GENERATOR_VERSION, "seed": seed, "resolution": resolution,
              "n_train": n_train, "n_heldout": n_heldout, "look": look}
    if (out / "manifest.json").exists():
        existing = Manifest.load(out / "manifest.json")
        if existing.generator == params:
            return existing
        raise D2itError(f"{out} holds a dataset made with {existing.generator}, not {params}; "
                        "choose another folder or delete it")
    # A folder of this generator's images without its manifest (removed by a forced Snakemake
    # rerun, which deletes a job's outputs first) is remade; anything else is refused.
    earlier = out.exists() and any(out.iterdir())
    if earlier and not _generated_images_only(out):
        raise D2itError(f"{out} exists, is not empty and has no manifest.json: "
                        "refusing to write into it")

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    entries = []
    jobs = [(split, i) for split, n in zip(SPLITS, (n_train, n_heldout)) for i in range(n)]
    for split, i in tqdm(jobs, desc=f"synth {out.name}", unit="img"):
        array, label, _ = render(seed, split, i, resolution, look)
        rel = Path(split) / CLASSES[label] / f"{i:06d}.png"
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_png(array, tmp / rel)
        entries.append(ManifestEntry(rel.as_posix(), label, split, sha256_file(tmp / rel)))
    manifest = Manifest(root=".", classes=list(CLASSES), files=entries, generator=params)
    manifest.save(tmp / "manifest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if earlier:
        shutil.rmtree(out)  # this generator's images only, checked above
    elif out.exists():
        out.rmdir()  # empty, checked above
    os.replace(tmp, out)
    return manifest


def _generated_images_only(out: Path) -> bool:
    """Whether every file under `out` is one this generator writes (split/class/index.png)."""
    for path in out.rglob("*"):
        rel = path.relative_to(out).parts
        if path.is_dir():
            ok = (len(rel) == 1 and rel[0] in SPLITS) or (len(rel) == 2 and rel[1] in CLASSES)
        else:
            ok = (len(rel) == 3 and rel[0] in SPLITS and rel[1] in CLASSES
                  and re.fullmatch(r"\d{6}\.png", rel[2]) is not None)
        if not ok:
            return False
    return True
