"""The anchor row: the official DiT-XL/2 checkpoint sampled by this harness's sampler, decoded by
the SD-VAE and scored by its evaluator against the ADM reference batch. Landing near DiT's
published FID-50K shows that the sampler and evaluator reproduce a known number; missing it
puts every other row of the study in doubt.

| cfg scale | DiT's FID-50K | DiT's setting                                   |
|-----------|---------------|-------------------------------------------------|
| 1.5       | 2.27          | 250 DDPM steps, guidance on 3 of 4 ε channels   |
| 1.0       | 9.62          | 250 DDPM steps                                  |
"""
from __future__ import annotations

from pathlib import Path

import torch

from d2it.diffusion import guided
from d2it.errors import D2itError
from d2it.files import write_json_atomic
from d2it.models.dit import DiT
from d2it.sample import DiTSampling, _sampler, draw
from d2it.device import Distributed

EXPECTED = {1.5: 2.27, 1.0: 9.62}  # DiT paper, DiT-XL/2 at 7M steps, FID-50K
SD_VAE_SCALE = 0.18215  # the SD-VAE latents' scale (DiT's train.py and sample.py)
DIT_HEADS = {1152: 16, 1024: 16, 768: 12, 384: 6}  # DiT's models.py: width -> heads


def official_architecture(state: dict) -> dict:
    """DiT's constructor arguments, read from the shapes of an official state dict."""
    try:
        proj = state["x_embedder.proj.weight"]  # hidden x C x p x p
        tokens = state["pos_embed"].shape[1]
        table = state["y_embedder.embedding_table.weight"]
        final = state["final_layer.linear.weight"]
    except KeyError as e:
        raise D2itError(f"not an official DiT state dict: no {e.args[0]}") from None
    hidden, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    return {"input_size": round(tokens**0.5) * patch, "patch_size": patch,
            "in_channels": channels, "hidden_size": hidden, "depth": depth,
            "num_heads": DIT_HEADS.get(hidden, hidden // 64),
            "num_classes": table.shape[0] - 1,  # the last row is the null class
            "learn_sigma": final.shape[0] == 2 * channels * patch * patch}


def load_official_dit(path: Path) -> tuple[DiT, dict]:
    """The network of an official DiT checkpoint (released state dict or training checkpoint)."""
    from baselines.dit import load_official, official_state

    if not Path(path).is_file():
        raise D2itError(f"--dit-checkpoint {path}: no such file (DiT-XL-2-256x256.pt of "
                        "facebookresearch/DiT; nothing is downloaded)")
    state = official_state(path)  # read once: 2.7 GB for DiT-XL/2
    arch = official_architecture(state)
    return load_official(path, DiT(class_dropout_prob=0.1, **arch), state), arch


class SDVAEDecoder(torch.nn.Module):
    """The SD-VAE (diffusers AutoencoderKL, e.g. stabilityai/sd-vae-ft-ema) as a DVAE decoder:
    latents (already divided by the scale) -> images in [-1, 1]."""

    def __init__(self, folder: Path):
        super().__init__()
        from diffusers import AutoencoderKL

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise D2itError(f"--vae {folder}: no config.json (a diffusers AutoencoderKL folder, "
                            "e.g. a copy of stabilityai/sd-vae-ft-ema; nothing is downloaded)")
        try:
            self.vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise D2itError(f"--vae {folder}: {e}") from None
        self.vae.eval().requires_grad_(False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


class OfficialSampling(DiTSampling):
    """DiTSampling of an official DiT network, decoded by the SD-VAE (guided on DiT's 3 ε
    channels where settings["cfg_scale"] > 1)."""

    def __init__(self, model: DiT, arch: dict, decoder: SDVAEDecoder, settings: dict,
                 device: torch.device):
        self.s, self.device = settings, device
        self.latent = {"channels": arch["in_channels"], "size": arch["input_size"],
                       "scale_factor": SD_VAE_SCALE, "fine_fraction": 1.0}
        self.classes = arch["num_classes"]
        self.params = {"params_M": sum(p.numel() for p in model.parameters()) / 1e6}
        self.dvae = decoder
        self.sampler = _sampler({"timesteps": 1000}, settings, arch["learn_sigma"])
        self.model = model.to(device)
        if settings["cfg_scale"] != 1:
            self.model = guided(self.model, self.classes, settings["cfg_scale"],
                                settings["cfg_channels"])


def anchor(study: dict, checkpoint: Path, vae: Path, out_dir: Path, json_path: Path,
           cfg_scales: tuple[float, ...] = (1.5, 1.0)) -> dict:
    """Sample the official checkpoint at each scale into `out_dir` with the study's `sampling`
    (n, steps, seed; guidance on DiT's 3 channels), score each set with the study's `metrics`,
    and write `json_path`: our number, DiT's published one and the protocol, per scale."""
    from d2it.metrics.job import evaluate_samples

    dist = Distributed()
    model, arch = load_official_dit(Path(checkpoint))
    decoder = SDVAEDecoder(Path(vae)).to(dist.device)
    rows = []
    for scale in cfg_scales:
        s = {**study["sampling"], "classes": None, "at_step": None, "grain_source": None,
             "cfg_scale": scale, "cfg_channels": 3}
        npz = Path(out_dir) / f"official-cfg{scale:g}.npz"
        job = OfficialSampling(model, arch, decoder, s, dist.device)
        drawn = draw(job, dist, npz, None, {"run": str(checkpoint), "grain_run": None})
        if not dist.main:
            continue
        found = evaluate_samples(study, [npz], npz.with_suffix(".metrics.json"), [drawn])
        key = found["keys"]["fd"]
        rows.append({"cfg_scale": scale, "key": key, "ours": found[key],
                     "ours_ci95": found.get(f"{key}_ci95"),
                     "dit_published_fid50k": EXPECTED.get(scale), "n": drawn["n"],
                     "steps": s["steps"], "protocol": found["protocol"],
                     "comparable": found["comparable_with_paper"]})
    result = {"checkpoint": str(checkpoint), "vae": str(vae), "architecture": arch,
              "rows": rows}
    if dist.main:
        write_json_atomic(Path(json_path), result)
    return result
