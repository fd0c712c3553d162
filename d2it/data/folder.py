"""Image folders (FFHQ: flat; ImageNet: one sub-folder per class) as datasets of uint8 tensors."""
from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from d2it.data.manifest import Manifest, ManifestEntry
from d2it.files import sha256_file
from d2it.errors import D2itError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def center_crop(image: Image.Image, resolution: int) -> np.ndarray:
    """ADM's centre crop: halve with a box filter while possible, bicubic to size, crop the
    centre."""
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - resolution) // 2, (array.shape[1] - resolution) // 2
    return array[top:top + resolution, left:left + resolution]


# 16-bit grey PNGs: PIL's convert("RGB") clips them at 255 (near-white); scale 65535 -> 255.
SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def decode(path: Path, sha256: str | None = None) -> tuple[Image.Image, str]:
    """(RGB image, the file's own mode), decoded fully, so a truncated or corrupt file fails here
    with its name, not later. With `sha256` (its manifest's), a file changed since is refused.
    16-bit grey is scaled to 8 bits; 32-bit integer or float images, whose range no convention
    fixes, are refused by name."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise D2itError(f"{path}: cannot read image ({e})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise D2itError(f"{path}: changed since its manifest was made (sha256 differs); "
                        "restore the file or remake the manifest")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            if mode in SIXTEEN_BIT:
                grey = np.round(np.asarray(image, dtype=np.float64) / 257).astype(np.uint8)
                return Image.fromarray(grey).convert("RGB"), mode
            if mode in ("I", "F"):
                kind = "integer" if mode == "I" else "float"
                raise D2itError(f"{path}: mode {mode} (32-bit {kind}) has no defined range; save "
                                "it with 8 or 16 bits per channel")
            return image.convert("RGB"), mode
    except (OSError, SyntaxError, ValueError) as e:
        raise D2itError(f"{path}: cannot read image ({e})") from None


def read_image(path: Path, sha256: str | None = None) -> Image.Image:
    return decode(path, sha256)[0]


class ImageFolderDataset(torch.utils.data.Dataset):
    """One split of a manifest; items are (uint8 tensor 3 x R x R, label). Flips happen in
    training."""

    def __init__(self, manifest: Manifest, split: str, resolution: int):
        self.root = manifest.root_dir
        self.entries = manifest.split(split)
        self.resolution = resolution
        self.num_classes = len(manifest.classes)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        entry = self.entries[i]
        array = center_crop(read_image(self.root / entry.path, entry.sha256), self.resolution)
        return torch.from_numpy(array.copy()).permute(2, 0, 1), entry.label

    def labels(self) -> torch.Tensor:
        return torch.tensor([e.label for e in self.entries])


def loader_workers(setting: int | str) -> int:
    """DataLoader worker processes for a config's `num_workers`: `auto` leaves one core to the main
    process and stops at 8, past which image decoding no longer limits a GPU."""
    return min(8, len(os.sched_getaffinity(0)) - 1) if setting == "auto" else setting


def load_all(dataset: ImageFolderDataset, desc: str = "load") -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as one uint8 N x 3 x R x R tensor plus labels (for small datasets)."""
    images = torch.stack([dataset[i][0] for i in tqdm(range(len(dataset)), desc=desc, unit="img")])
    return images, dataset.labels()


def in_heldout(rel: str, fraction: float) -> bool:
    # Split by a hash of the path: stable when files are added, independent of listing order.
    return int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) < fraction * 2**32


def prepare(src: Path, out: Path, heldout_fraction: float) -> Manifest:
    """Manifest for a user's folder: class sub-folders (ImageNet) or a flat folder (FFHQ, one
    class)."""
    src = Path(src).resolve()
    if not src.is_dir():
        raise D2itError(f"{src}: not a folder")
    if not 0 <= heldout_fraction < 1:
        raise D2itError(f"heldout fraction {heldout_fraction} outside [0, 1)")
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise D2itError(f"{src}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    nested = any(p.parent != src for p in files)
    if nested and any(p.parent == src for p in files):
        raise D2itError(f"{src}: mixes images at the top level with class sub-folders")
    classes = sorted({p.relative_to(src).parts[0] for p in files}) if nested else [src.name]
    entries, converted = [], Counter()
    for p in tqdm(files, desc=f"prepare {src.name}", unit="img"):
        mode = decode(p)[1]
        if mode != "RGB":
            converted[mode] += 1
        rel = p.relative_to(src).as_posix()
        label = classes.index(rel.split("/")[0]) if nested else 0
        split = "heldout" if in_heldout(rel, heldout_fraction) else "train"
        entries.append(ManifestEntry(rel, label, split, sha256_file(p)))
    if converted:
        log.info("%s: read as RGB: %s", src, ", ".join(
            f"{n} {mode}{CONVERSIONS.get(mode, '')}" for mode, n in sorted(converted.items())))
    if heldout_fraction > 0 and not any(e.split == "heldout" for e in entries):
        log.warning("%s: none of the %d images fell in the held-out split (fraction %g): held-out "
                    "metrics will have nothing to read", src, len(entries), heldout_fraction)
    manifest = Manifest(root=str(src), classes=classes, files=entries)
    manifest.save(out)
    return manifest


CONVERSIONS = {"RGBA": " (alpha dropped)", "LA": " (alpha dropped)", "P": " (palette)",
               **{mode: " (16-bit, scaled by 1/257)" for mode in SIXTEEN_BIT}}
