"""`d2it metrics`: evaluate a sample file against the configured reference and write the JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from d2it.data.folder import ImageFolderDataset, load_all
from d2it.data.manifest import Manifest, write_json_atomic
from d2it.errors import D2itError
from d2it.metrics.evaluate import adm_reference, compare, extract, reference_stats
from d2it.metrics.extractors import resolve


def load_samples(path: Path, n: int | None) -> torch.Tensor:
    """uint8 N x 3 x H x W from an ADM-style .npz (arr_0: N x H x W x 3)."""
    try:
        arr = np.load(path)["arr_0"]
    except (OSError, KeyError, ValueError) as e:
        raise D2itError(f"{path}: not a sample file with arr_0 ({e})") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise D2itError(f"{path}: arr_0 must be uint8 N x H x W x 3, got {arr.dtype} {arr.shape}")
    if n is not None and len(arr) < n:
        raise D2itError(f"{path}: holds {len(arr)} samples, metrics.n_samples asks for {n}")
    return torch.from_numpy(arr[:n]).permute(0, 3, 1, 2).contiguous()


def reference(config: dict, extractor, device: torch.device) -> dict:
    cfg, data = config["metrics"], config["data"]
    if cfg["reference"].endswith(".npz"):
        return adm_reference(Path(cfg["reference"]), extractor, cfg, device)
    manifest = Manifest.load(data["manifest"])
    split = cfg["reference"]
    ref = reference_stats(lambda: load_all(ImageFolderDataset(manifest, split, data["resolution"]), f"reference {split}")[0],
                          {"dataset": manifest.digest()[:12], "split": split, "resolution": data["resolution"]},
                          Path(cfg["reference_dir"]), extractor, cfg, device)
    return {**ref, "split": split}


def evaluate_samples(config: dict, samples: Path, out: Path) -> dict:
    cfg = config["metrics"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = load_samples(samples, cfg["n_samples"])
    extractor = resolve(cfg)
    ref = reference(config, extractor, device)
    result = compare(extract(images, extractor, cfg["batch_size"], device), ref, extractor, cfg, cfg["seed"])
    meta_path = Path(samples).with_suffix(".json")
    result.update(
        samples=str(samples), n_generated=len(images), extractor=extractor.name, extractor_sha256=extractor.sha256,
        comparable_with_paper=extractor.comparable, seed=cfg["seed"],
        reference={"file": ref["file"], "split": ref.get("split"), "n": ref["n"], "n_features": len(ref["features"])},
        protocol=(f"{len(images)} samples vs {Path(ref['file']).name}; {extractor.name} features; torch-fidelity "
                  f"FD/IS/KID, precision/recall k=3" + ("" if extractor.comparable else
                                                         "; not comparable with published Inception numbers")),
        sampling=json.loads(meta_path.read_text()) if meta_path.exists() else None)
    write_json_atomic(out, result)
    return result
