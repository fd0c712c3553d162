"""Known degradations of uint8 images, for checking that a distance responds to image quality."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def blur(images: torch.Tensor, sigma: float, radius: int = 6) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x**2 / (2 * sigma**2))
    k = (k / k.sum()).repeat(3, 1, 1, 1)
    img = F.pad(images.float(), (radius, radius, 0, 0), mode="reflect")
    img = F.conv2d(img, k.reshape(3, 1, 1, -1), groups=3)
    img = F.conv2d(F.pad(img, (0, 0, radius, radius), mode="reflect"), k.reshape(3, 1, -1, 1),
                   groups=3)
    return img.round().clamp(0, 255).to(torch.uint8)


def noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Additive Gaussian noise of `std` grey levels."""
    z = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images.float() + z * std).round().clamp(0, 255).to(torch.uint8)


# Three strengths each, spaced so that EfficientNet FD on 100 vs 100 of the embedded 32 px images
# (a floor of ~200 between two clean halves) resolves each step; finer steps drown in its noise.
LEVELS = {blur: (1.0, 2.0, 4.0), noise: (16, 32, 64)}
