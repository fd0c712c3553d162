"""Reconstruction evaluation and the latent cache of a (briefly) trained DVAE."""
import json

import numpy as np
import pytest
import torch

from d2it.data.manifest import sha256_file
from d2it.metrics import effnet
from d2it.stage1 import encode_latents, evaluate_recon, psnr
from tests_support import N_HELDOUT, N_TRAIN


def test_psnr_matches_formula():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8) for _ in range(2))
    mse = ((a.astype(float) - b.astype(float)) ** 2).reshape(4, -1).mean(1)
    np.testing.assert_allclose(psnr(torch.from_numpy(a), torch.from_numpy(b)).numpy(), 10 * np.log10(255**2 / mse))


def test_recon_metrics_name_their_protocol(trained):
    cfg, out = trained
    result = evaluate_recon(cfg, out / "run", out / "recon.json")
    assert json.loads((out / "recon.json").read_text()) == pytest.approx(result)
    assert np.isfinite(result["psnr"]) and result[f"rfd_effnet_{N_HELDOUT}"] > 0
    assert result["extractor_sha256"] == sha256_file(effnet.weights_path())
    assert "not comparable to published rFID" in result["protocol"]


def test_latent_cache(trained):
    cfg, out = trained
    info = encode_latents(cfg, out / "run", out / "latents.pt")
    cache = torch.load(out / "latents.pt", weights_only=False)
    z, grain = cache["latents"]["train"], cache["grain"]["train"]
    assert z.shape == (N_TRAIN, 2, 4, 16, 16) and grain.shape == (N_TRAIN, 2, 8, 8)
    assert cache["latents"]["heldout"].shape[0] == N_HELDOUT and cache["labels"]["train"].shape == (N_TRAIN,)
    assert (z * info["scale_factor"]).std().item() == pytest.approx(1.0, rel=1e-4)
    # entropy ignores pixel order inside a region, so the mirror image's grain map is the mirrored map
    assert torch.equal(grain[:, 1], grain[:, 0].flip(-1))
    # coarse regions hold one code copied 2x2
    blocks = z.reshape(N_TRAIN, 2, 4, 8, 2, 8, 2)
    constant = (blocks == blocks[:, :, :, :, :1, :, :1]).all(4).all(5).all(2)
    assert constant[~grain].all()
    assert grain.any() and not grain.all()
