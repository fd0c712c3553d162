"""Entropy grain maps (the DGC module) and the grain-grid operations shared by every stage.

A grain map is a bool tensor B x h x w over grain regions (one coarse latent cell each): True =
fine, False = coarse. A region's entropy is the Shannon entropy (natural log) of a Gaussian-KDE
density of its grey values in [-1, 1], evaluated at uniform bins and normalised over the bins.
"""
from __future__ import annotations

import math
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from d2it.errors import D2itError
from d2it.files import read_json

GREY = (0.2989, 0.5870, 0.1140)  # ITU-R 601 luma, as DQ-VAE
PERCENTILES = np.linspace(0, 100, 1001)  # the stored table; other ratios interpolate


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]."""
    return images.float() / 127.5 - 1


def region_entropy(images: torch.Tensor, region: int, bins: int, sigma: float) -> torch.Tensor:
    """Entropy of every region x region block of images (B x 3 x H x W in [-1, 1]) -> B x H/r x W/r.

    Each pixel's kernel is evaluated only at the bins within 8 sigma of it (the rest is below
    1e-13 of its peak), which makes this ~20x faster than the dense pixels x bins evaluation.
    """
    b, _, h, w = images.shape
    if h % region or w % region:
        raise D2itError(f"image size {h}x{w} is not a multiple of the grain region {region}")
    # sigma = 0.01 needs fp32 grey levels, not bf16
    with torch.autocast(images.device.type, enabled=False):
        grey = torch.einsum("bchw,c->bhw", images.float(),
                            images.new_tensor(GREY, dtype=torch.float32))
    x = grey.reshape(b, h // region, region, w // region, region).permute(0, 1, 3, 2, 4)
    x = x.reshape(-1, region * region, 1) + 1  # bin j sits at j * step on this shifted axis
    step = 2 / (bins - 1)
    reach = math.ceil(8 * sigma / step)
    idx = torch.round(x / step).long() + torch.arange(-reach, reach + 1, device=x.device)
    kernel = torch.exp(-(x - idx * step) ** 2 / (2 * sigma**2))
    kernel = kernel.masked_fill((idx < 0) | (idx >= bins), 0)
    pdf = x.new_zeros(x.shape[0], bins + 2 * reach)
    pdf = pdf.scatter_add_(1, (idx + reach).flatten(1), kernel.flatten(1))[:, reach:bins + reach]
    p = pdf / pdf.sum(1, keepdim=True)  # the 1/S^2 of the KDE cancels here
    return torch.special.entr(p).sum(1).reshape(b, h // region, w // region)


def compute_thresholds(loader, region: int, bins: int, sigma: float, dataset_digest: str) -> dict:
    """Percentile table of region entropies over a split (`loader` yields (uint8 images,
    labels))."""
    values = torch.cat([region_entropy(to_signed(x), region, bins, sigma).flatten()
                        for x, _ in tqdm(loader, desc="entropy", unit="batch")]).double().numpy()
    return {"percentiles": PERCENTILES.tolist(),
            "values": np.percentile(values, PERCENTILES).tolist(),
            "region": region, "bins": bins, "sigma": sigma,
            "n_regions": int(values.size), "dataset": dataset_digest}


def threshold_for(thresholds: dict, fine_ratio: float) -> float:
    """Entropy above which a region is fine: the dataset's (1 - fine_ratio) percentile."""
    if not 0 <= fine_ratio <= 1:
        raise D2itError(f"fine_ratio {fine_ratio} outside [0, 1]")
    return float(np.interp(100 * (1 - fine_ratio), thresholds["percentiles"], thresholds["values"]))


def grain_map(images: torch.Tensor, thresholds: dict, fine_ratio: float) -> torch.Tensor:
    """Bool B x h x w (True = fine) for images in [-1, 1], with the table's region, bins and
    sigma."""
    b, _, h, w = images.shape
    region, threshold = thresholds["region"], threshold_for(thresholds, fine_ratio)
    if fine_ratio in (0, 1):  # all coarse / all fine by definition, whatever the ties at the ends
        return torch.full((b, h // region, w // region), bool(fine_ratio), device=images.device)
    return region_entropy(images, region, thresholds["bins"], thresholds["sigma"]) > threshold


def expand(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Copy every cell of the last two dims into a factor x factor block (neighbour copying)."""
    return x.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def block_mean(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Mean over each factor x factor block of a ... x C x H x W tensor, at the coarse
    resolution."""
    return F.avg_pool2d(x, factor)


def merge(fine: torch.Tensor, coarse: torch.Tensor, grain: torch.Tensor) -> torch.Tensor:
    """Fine-grid tensor: fine values where the grain is fine, coarse values copied 2x2 elsewhere."""
    return torch.where(expand(grain)[:, None], fine, expand(coarse))


def load_thresholds(path, dataset_digest: str) -> dict:
    """A percentile table from `d2it grain thresholds`, checked to belong to this dataset."""
    table = read_json(path, "grain thresholds file", "make one with `d2it grain thresholds`")
    if table.get("dataset") != dataset_digest:
        raise D2itError(f"{path}: thresholds were computed on another dataset "
                        "than the configured manifest")
    percentiles, values = table.get("percentiles"), table.get("values")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                  for v in [*(percentiles or []), *(values or [])])
    if (not isinstance(percentiles, list) or not isinstance(values, list) or not numbers
            or len(percentiles) != len(PERCENTILES) or len(values) != len(percentiles)):
        raise D2itError(f"{path}: `percentiles` and `values` must be {len(PERCENTILES)} numbers "
                        "each; remake it with `d2it grain thresholds`")
    for key in ("region", "bins"):
        if not isinstance(table.get(key), int) or table[key] < 1:
            raise D2itError(f"{path}: `{key}` must be a positive integer, got {table.get(key)!r}")
    return table


def project_coarse(x: torch.Tensor, grain: torch.Tensor) -> torch.Tensor:
    """Put x (B x C x H x W, fine grid) back on the grain map's subspace: every coarse 2x2 block
    becomes its mean, so copies that drifted apart in floating point agree again."""
    return merge(x, block_mean(x), grain)


def multigrain_noise(shape: tuple, grain: torch.Tensor,
                     generators: list[torch.Generator] | None = None,
                     dtype=torch.float32) -> torch.Tensor:
    """N(0, I) per fine position in fine regions; one N(0, I) draw per coarse region, copied 2x2.
    With `generators` (one per sample), sample i's noise depends only on its own generator."""
    b, c, h, w = shape
    fine = randn((b, c, h, w), generators, dtype)
    coarse = randn((b, c, h // 2, w // 2), generators, dtype)
    return merge(fine, coarse, grain)


def randn(shape: tuple, generators: list[torch.Generator] | None = None,
          dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise, drawn per sample from its own generator when generators are given."""
    if generators is None:
        return torch.randn(shape, dtype=dtype)
    return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype) for g in generators])
