"""Metric computations through torch-fidelity, with keys that name their protocol."""
from __future__ import annotations

import torch
import torch_fidelity

from d2it.metrics import effnet


class UInt8Images(torch.utils.data.Dataset):
    """A uint8 N x 3 x H x W tensor as the dataset torch-fidelity expects."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def protocol_key(metric: str, extractor: str, n: int) -> str:
    """e.g. fd_effnet_2k: the metric, the extractor that made it and the sample count."""
    count = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    return f"{metric}_{extractor}_{count}"


def frechet_distance_effnet(generated: torch.Tensor, reference: torch.Tensor, batch_size: int = 64) -> float:
    """FD between two uint8 image sets on EfficientNet-Lite0 pooled features (offline)."""
    result = torch_fidelity.calculate_metrics(
        input1=UInt8Images(generated), input2=UInt8Images(reference), fid=True,
        feature_extractor=effnet.register(), batch_size=batch_size, cuda=torch.cuda.is_available(),
        cache=False, verbose=False, save_cpu_ram=True, datasets_download=False)
    return float(result["frechet_inception_distance"])  # torch-fidelity's key; the features are EffNet's
