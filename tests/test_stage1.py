"""Reconstruction evaluation and the latent cache of a (briefly) trained DVAE."""
import json

import numpy as np
import pytest
import torch

from d2it.data.latents import LatentCache
from d2it.errors import D2itError
from d2it.files import sha256_file
from d2it.metrics import effnet
from d2it.stage1 import encode_latents, evaluate_recon, psnr
from tests_support import N_HELDOUT, N_TRAIN


def test_psnr_matches_formula():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8) for _ in range(2))
    mse = ((a.astype(float) - b.astype(float)) ** 2).reshape(4, -1).mean(1)
    np.testing.assert_allclose(psnr(torch.from_numpy(a), torch.from_numpy(b)).numpy(),
                               10 * np.log10(255**2 / mse))


def test_recon_metrics_name_their_protocol(trained, tmp_path):
    study, _, run = trained
    result = evaluate_recon(study, run.folder, tmp_path / "recon.json")
    assert json.loads((tmp_path / "recon.json").read_text()) == pytest.approx(result)
    assert result["fine_ratio"] == 0.5 and result["seed"] == 0
    assert np.isfinite(result["psnr"]) and result[f"rfd_effnet_{N_HELDOUT}"] > 0
    assert result["extractor_sha256"] == sha256_file(effnet.weights_path())
    assert "not comparable to published rFID" in result["protocol"]


def test_recon_scores_the_decodes_with_the_study_classifier(trained, tmp_path):
    """The decode ceiling: the classifier (trained here, under evaluate_recon's no_grad) scores
    the DVAE's decodes of the held-out images, beside its score on the real ones."""
    from d2it.metrics.classifier import study_classifier

    study, _, run = trained
    study = json.loads(json.dumps(study))
    study["metrics"] |= {"class_score": True, "reference_dir": str(tmp_path / "reference"),
                         "classifier": {**study["metrics"]["classifier"], "epochs": 1}}
    result = evaluate_recon(study, run.folder, tmp_path / "recon.json")
    low, high = result["class_acc_decoded_ci95"]
    assert 0 <= low <= result["class_acc_decoded"] <= high <= 1
    _, record = study_classifier(study, tmp_path / "reference")  # cached: the same network
    assert result["class_acc_ceiling"] == record["heldout_accuracy"]


def test_latent_cache(trained, latent_cache):
    study, _, run = trained
    cache = LatentCache(latent_cache)
    z, grain = (torch.from_numpy(np.array(cache.array("train", a))) for a in ("latents", "grain"))
    assert z.shape == (N_TRAIN, 2, 4, 16, 16) and grain.shape == (N_TRAIN, 2, 8, 8)
    assert cache.array("heldout", "latents").shape[0] == N_HELDOUT
    assert cache.array("train", "labels").shape == (N_TRAIN,)
    assert (z * cache.scale_factor).std().item() == pytest.approx(1.0, rel=1e-4)
    assert cache.fine_fraction == pytest.approx(grain.float().mean().item())
    assert cache.meta["dvae_run"] == str(run.folder) and cache.num_classes == 10
    # entropy ignores pixel order inside a region, so the mirror image's grain map is the mirrored
    # map
    assert torch.equal(grain[:, 1], grain[:, 0].flip(-1))
    # coarse regions hold one code copied 2x2
    blocks = z.reshape(N_TRAIN, 2, 4, 8, 2, 8, 2)
    constant = (blocks == blocks[:, :, :, :, :1, :, :1]).all(4).all(5).all(2)
    assert constant[~grain].all()
    assert grain.any() and not grain.all()
    # the dataset reads rows in any order, as the stacked arrays hold them
    rows = [5, 0, 17]
    items = cache.dataset("train").__getitems__(rows)
    assert all(torch.equal(item[0], z[r]) and torch.equal(item[1], grain[r])
               for item, r in zip(items, rows))


def test_latent_cache_is_replaced_whole(trained, tmp_path):
    """A second encode into a folder swaps a complete cache in; a failed one leaves the old one."""
    study, _, run = trained
    encode_latents(study, run.folder, tmp_path / "cache")
    before = (tmp_path / "cache" / "meta.json").read_text()
    encode_latents(study, run.folder, tmp_path / "cache")
    assert (tmp_path / "cache" / "meta.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no .tmp / .old left behind
    with pytest.raises(D2itError, match="no latent cache"):
        LatentCache(tmp_path / "missing")
