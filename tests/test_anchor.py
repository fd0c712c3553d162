"""The anchor row: an official DiT checkpoint through this harness's sampler, the SD-VAE decoder
and the ADM-batch evaluator, end to end on stand-in weights of the real files' layouts."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.dit import dit
from d2it import standins
from d2it.anchor import load_official_dit, official_architecture
from d2it.errors import D2itError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["XL/2", "B/4", "S/8"])
def test_the_architecture_is_read_back_from_an_official_state_dict(name):
    """Every registry model's constructor arguments from its state dict's shapes alone (heads
    from DiT's width table: XL's 1152 has 16 heads of 72)."""
    size, patch = name.split("/")
    with torch.device("meta"):
        state = dit(name, input_size=32, num_classes=1000).state_dict()
    arch = official_architecture(state)
    depth, hidden, heads = {"XL": (28, 1152, 16), "B": (12, 768, 12), "S": (12, 384, 6)}[size]
    assert arch == {"input_size": 32, "patch_size": int(patch), "in_channels": 4,
                    "hidden_size": hidden, "depth": depth, "num_heads": heads,
                    "num_classes": 1000, "learn_sigma": True}


def test_the_sd_vae_stand_in_has_the_real_key_layout(tmp_path):
    """The diffusers AutoencoderKL of sd-vae-ft-ema's config: 83,653,863 parameters, the count
    of the released weights."""
    from d2it.anchor import SDVAEDecoder

    vae = SDVAEDecoder(standins.sd_vae(tmp_path / "vae")).vae
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    keys = vae.state_dict().keys()
    assert "decoder.up_blocks.0.resnets.0.conv1.weight" in keys
    assert "decoder.mid_block.attentions.0.to_q.weight" in keys
    with pytest.raises(D2itError, match="no config.json"):
        SDVAEDecoder(tmp_path / "nowhere")


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(D2itError, match="DiT-XL-2-256x256.pt"):
        load_official_dit(tmp_path / "DiT-XL-2-256x256.pt")


@pytest.mark.e2e
def test_anchor_command_runs_end_to_end_on_stand_ins(tmp_path):
    """`d2it study anchor` with the ImageNet config: a DiT-S/2 state dict at an 8 x 8 latent
    (64 px after the SD-VAE), 4 samples per scale, 2 steps, a 4-image ADM batch and stand-in
    Inception weights. It writes anchor.json: ours beside DiT's published FID per scale."""
    checkpoint = standins.dit_checkpoint(tmp_path / "DiT-S-2.pt", "S/2", input_size=8)
    vae = standins.sd_vae(tmp_path / "sd-vae")
    inception = standins.inception_weights(tmp_path / "inception.pth")
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    reference = standins.adm_reference(tmp_path / "ref.npz", images)
    sets = ["data.resolution=64",  # the stand-in's images: metrics refuse another resolution
            "sampling.n=4", "sampling.steps=2", "sampling.batch_size=4",
            f"metrics.reference={reference}", f"metrics.inception_weights={inception}",
            "metrics.bootstrap=0", "metrics.kid_subset_size=2", "tracking.uri=null",
            f"paths.runs={tmp_path / 'runs'}", f"paths.results={tmp_path / 'results'}"]
    args = [sys.executable, "-m", "d2it.cli", "study", "anchor",
            "--config", str(REPO / "config" / "imagenet256.yaml"),
            "--dit-checkpoint", str(checkpoint), "--vae", str(vae)]
    proc = subprocess.run(args + [a for s in sets for a in ("--set", s)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads((tmp_path / "results" / "imagenet256" / "anchor.json").read_text())
    assert found["architecture"]["hidden_size"] == 384 and found["architecture"]["depth"] == 12
    rows = {row["cfg_scale"]: row for row in found["rows"]}
    assert {s: row["dit_published_fid50k"] for s, row in rows.items()} == {1.5: 2.27, 1.0: 9.62}
    for row in rows.values():
        # 4 samples are not FID-50K: the number goes under a key that says so
        assert row["key"] == "fd_inception_4" and np.isfinite(row["ours"]) and row["n"] == 4
        assert row["comparable"]
    samples = np.load(tmp_path / "runs" / "imagenet256" / "anchor" / "official-cfg1.5.npz")
    assert samples["arr_0"].shape == (4, 64, 64, 3) and samples["labels"].max() < 1000
