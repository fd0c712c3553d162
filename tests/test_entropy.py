"""Region entropy against a direct NumPy evaluation of the formula, and its extreme values."""
import numpy as np
import pytest
import torch

from d2it.data.synth import render
from d2it.errors import D2itError
from d2it.grain import GREY, region_entropy, to_signed


def entropy_numpy(images: np.ndarray, region: int, bins: int, sigma: float) -> np.ndarray:
    """The paper's formula, densely, in float64: KDE at every bin, normalised, Shannon entropy."""
    grey = np.einsum("bchw,c->bhw", images.astype(np.float64), np.array(GREY))
    b, h, w = grey.shape
    centres = np.linspace(-1, 1, bins)
    out = np.zeros((b, h // region, w // region))
    for i in range(b):
        for r in range(h // region):
            for c in range(w // region):
                x = grey[i, r * region:(r + 1) * region, c * region:(c + 1) * region].reshape(-1, 1)
                pdf = np.exp(-((x - centres) ** 2) / (2 * sigma**2)).mean(0)
                p = pdf / pdf.sum()
                out[i, r, c] = -(p[p > 0] * np.log(p[p > 0])).sum()
    return out


@pytest.mark.parametrize("region,bins,sigma", [(4, 256, 0.01), (8, 32, 0.01), (16, 256, 0.05)])
def test_matches_numpy_formula(region, bins, sigma):
    rng = np.random.default_rng(0)
    synth = np.stack([render(0, "train", i, 32)[0] for i in range(3)]).transpose(0, 3, 1, 2)
    images = np.concatenate([to_signed(torch.from_numpy(synth)).numpy(),
                             rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)])
    ours = region_entropy(torch.from_numpy(images), region, bins, sigma).numpy()
    np.testing.assert_allclose(ours, entropy_numpy(images, region, bins, sigma), atol=1e-5, rtol=0)


def test_constant_region_is_the_minimum():
    """Entropy is concave in the density, so no region beats a constant one (at its best value)."""
    values = torch.linspace(-1, 1, 501)
    constants = region_entropy(values[:, None, None, None].expand(-1, 3, 4, 4), 4, 256,
                               0.01).flatten()
    images = torch.cat([torch.rand(200, 3, 4, 4) * 2 - 1,                      # noise
                        torch.rand(200, 1, 1, 1).expand(-1, 3, 4, 4) * 0.1 +   # shallow gradients
                        torch.linspace(0, 0.05, 4).repeat(4, 1)])
    others = region_entropy(images, 4, 256, 0.01).flatten()
    assert others.min() >= constants.min() - 1e-6
    grey = torch.einsum("bchw,c->bhw", images, torch.tensor(GREY)).flatten(1)
    # each region is at least as uncertain as a constant region at the least favourable of its
    # values
    per_value = region_entropy(grey.reshape(-1, 1, 1, 1).expand(-1, 3, 4, 4), 4, 256,
                               0.01).reshape(grey.shape)
    assert torch.all(others >= per_value.min(1).values - 1e-5)


def test_uniform_noise_is_near_the_maximum():
    """Uniform noise over a paper-sized 16 px region spreads over nearly all bins:
    close to log P."""
    noise = region_entropy(torch.rand(64, 3, 16, 16) * 2 - 1, 16, 256, 0.01)
    constant = region_entropy(torch.zeros(1, 3, 16, 16), 16, 256, 0.01)
    assert noise.mean() > 0.9 * np.log(256)
    assert noise.max() <= np.log(256) + 1e-6
    assert noise.min() > constant.max() + 3


def test_size_must_tile_into_regions():
    with pytest.raises(D2itError, match="not a multiple"):
        region_entropy(torch.zeros(1, 3, 30, 32), 4, 256, 0.01)


def test_mixed_precision_training_leaves_entropy_in_fp32():
    """Grain maps are computed inside the bf16-autocast training step; bf16 grey levels would blur
    the 0.01-wide kernels."""
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = region_entropy(images, 4, 256, 0.01)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, region_entropy(images, 4, 256, 0.01))
