"""Stand-ins for files that cannot be downloaded here, made locally with the real files' layout
(state-dict keys and shapes, the .npz's arrays), so that the real loading code runs on them.
Their weights are random: every number computed with them is a rehearsal, never a result.

| stand-in            | real file                                 | layout                         |
|---------------------|-------------------------------------------|--------------------------------|
| `inception_weights` | weights-inception-2015-12-05-6726825d.pth | torch-fidelity's state dict    |
| `lpips_weights`     | weights-vgg16-lpips.pth                   | torch-fidelity's LPIPS heads   |
|                     | vgg16-397923af.pth                        | torchvision's VGG16 state dict |
| `sd_vae`            | stabilityai/sd-vae-ft-ema                 | diffusers AutoencoderKL folder |
| `dit_checkpoint`    | DiT-XL-2-256x256.pt                       | DiT's released state dict      |
| `adm_reference`     | VIRTUAL_imagenet256_labeled.npz           | arr_0, mu, sigma (+ _s)        |
"""
from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import torch

from d2it.files import atomic, save_torch_atomic

# stabilityai/sd-vae-ft-ema's config.json: the architecture, not the weights
SD_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "act_fn": "silu", "norm_num_groups": 32, "sample_size": 256, "scaling_factor": 0.18215,
}


def inception_weights(path: Path, seed: int = 0) -> Path:
    """torch-fidelity's InceptionV3 state dict (keys and shapes), randomly initialised."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(seed)
    # built without loading weights: its constructor would read the file being made
    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", return_value={}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(path))
    save_torch_atomic(path, net.state_dict())
    return Path(path)


def lpips_weights(heads: Path, vgg16: Path, seed: int = 0) -> tuple[Path, Path]:
    """torch-fidelity's LPIPS heads (lin0 ... lin4) and torchvision's VGG16, randomly
    initialised."""
    import torchvision
    from torch_fidelity.sample_similarity_lpips import NetLinLayer

    torch.manual_seed(seed)
    channels = (64, 128, 256, 512, 512)  # VGG16's five feature stages
    lins = {f"lin{i}.{k}": v for i, c in enumerate(channels)
            for k, v in NetLinLayer(c, use_dropout=True).state_dict().items()}
    save_torch_atomic(heads, lins)
    save_torch_atomic(vgg16, torchvision.models.vgg16().state_dict())
    return Path(heads), Path(vgg16)


def sd_vae(folder: Path, seed: int = 0) -> Path:
    """A diffusers AutoencoderKL folder with the SD-VAE's architecture, randomly initialised."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(**SD_VAE_CONFIG).save_pretrained(folder)
    return Path(folder)


def dit_checkpoint(path: Path, size: str = "S/2", input_size: int = 8, seed: int = 0) -> Path:
    """A released-style DiT state dict (the official key layout) of a DiT registry model."""
    from baselines.dit import dit

    torch.manual_seed(seed)
    with atomic(Path(path)) as tmp:
        torch.save(dit(size, input_size=input_size, num_classes=1000).state_dict(), tmp)
    return Path(path)


def adm_reference(path: Path, images: np.ndarray, features: int = 2048, seed: int = 0) -> Path:
    """An ADM reference batch: `images` (N x H x W x 3 uint8) as arr_0, and statistics of the
    right shapes (a random mean and a well-conditioned covariance) in place of ImageNet's."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((features, features)) / features**0.5
    arrays = {"arr_0": images, "mu": rng.standard_normal(features),
              "sigma": basis @ basis.T + np.eye(features),
              "mu_s": rng.standard_normal(2023), "sigma_s": np.eye(2023)}
    with atomic(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return Path(path)
