"""Perceptual losses: LPIPS-VGG (torch-fidelity's, when its weights are on disk) or the offline
EfficientNet-Lite0 distance. Never downloads: missing weights are one clear error."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from d2it.errors import D2itError
from d2it.metrics.effnet import EffNetPerceptual

# File names torch-fidelity's LPIPS looks up in the torch hub cache (torchvision's VGG16 and the
# LPIPS linear heads); placed there by a machine with network access, or given in the config.
LPIPS_FILES = {"lpips_weights": "weights-vgg16-lpips.pth", "vgg16_weights": "vgg16-397923af.pth"}


class LPIPS(nn.Module):
    """torch-fidelity's LPIPS-VGG16 on images in [-1, 1]; loads its weights from the given files."""

    def __init__(self, lpips_weights: str | None, vgg16_weights: str | None):
        super().__init__()
        paths = {"lpips_weights": lpips_weights, "vgg16_weights": vgg16_weights}
        missing = [f"metrics.{k} ({LPIPS_FILES[k]})" for k, p in paths.items()
                   if not p or not Path(p).is_file()]
        if missing:
            raise D2itError("LPIPS weights not found: set " + " and ".join(missing)
                            + " to files downloaded on a machine with network access, "
                            "or use dvae.perceptual: effnet (offline)")
        from torch_fidelity.sample_similarity_lpips import SampleSimilarityLPIPS

        # torch-fidelity and torchvision read both files from the torch hub cache; point it at
        # links.
        old_dir = torch.hub.get_dir()
        with tempfile.TemporaryDirectory() as hub:
            (Path(hub) / "checkpoints").mkdir()
            for key, name in LPIPS_FILES.items():
                (Path(hub) / "checkpoints" / name).symlink_to(Path(paths[key]).resolve())
            torch.hub.set_dir(hub)
            try:
                self.net = SampleSimilarityLPIPS("lpips-vgg16")
            finally:
                torch.hub.set_dir(old_dir)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net((a + 1) * 127.5, (b + 1) * 127.5).flatten()


def build(kind: str, settings: dict) -> nn.Module | None:
    if kind == "none":
        return None
    if kind == "effnet":
        return EffNetPerceptual()
    return LPIPS(settings["lpips_weights"], settings["vgg16_weights"])
