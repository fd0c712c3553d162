"""Stage 1 jobs: train the DVAE, evaluate its reconstructions, cache latents for stage 2."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch_fidelity.metric_fid import fid_features_to_statistics
from tqdm import tqdm

from d2it import perceptual
from d2it.config import digest
from d2it.data.folder import ImageFolderDataset, loader_workers
from d2it.data.manifest import Manifest, sha256_file, write_json_atomic
from d2it.dvae import DVAE
from d2it.errors import D2itError
from d2it.grain import grain_map, load_thresholds, to_signed
from d2it.metrics.evaluate import extract, frechet_distance, metric_key
from d2it.metrics.extractors import resolve
from d2it.nn.patchgan import PatchDiscriminator, adaptive_weight, hinge_d_loss
from d2it.train import load_final, seed_all, train


def run_config(config: dict) -> dict:
    """What identifies a DVAE run: data, grain rule, model and training settings, and the digests
    of the dataset and threshold files they point to."""
    manifest = Manifest.load(config["data"]["manifest"])
    grain = {k: v for k, v in config["grain"].items() if k != "batch_size"}
    return {"seed": config["seed"], "data": {k: config["data"][k] for k in ("manifest", "resolution", "flip")},
            "dataset_digest": manifest.digest(), "grain": grain,
            "thresholds_sha256": sha256_file(Path(grain["thresholds"])),
            "dvae": config["dvae"]}


class DVAETask:
    name = "dvae"

    def __init__(self, config: dict):
        data, grain, cfg = config["data"], config["grain"], config["dvae"]
        manifest = Manifest.load(data["manifest"])
        self.dataset = ImageFolderDataset(manifest, "train", data["resolution"])
        self.thresholds = load_thresholds(grain["thresholds"], manifest.digest())
        self.fine_ratio, self.flip, self.cfg = grain["fine_ratio"], data["flip"], cfg
        self.model = DVAE(cfg["preset"], data["resolution"], dual=self.fine_ratio < 1)
        self.perceptual = perceptual.build(cfg["perceptual"], config["metrics"])
        self.modules, self.phases = {"model": self.model}, {"generator": self.model}
        self.disc = PatchDiscriminator() if cfg["gan_weight"] > 0 else None
        if self.disc is not None:
            self.modules["disc"] = self.phases["discriminator"] = self.disc
        self.net, self.disc_net = self.model, self.disc

    def to(self, device: torch.device) -> None:
        for module in (self.model, self.disc, self.perceptual):
            if module is not None:
                module.to(device)

    def distribute(self, wrap) -> None:
        # Batches whose regions are all fine leave the coarse head unused.
        self.net = wrap(self.model, find_unused=True)
        if self.disc is not None:
            self.disc_net = wrap(self.disc)

    def losses(self, batch, step: int, shard):
        images, _ = batch
        x = to_signed(images)
        if self.flip:
            flip = shard.rand(len(x)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        grain = grain_map(x, self.thresholds, self.fine_ratio)
        recon, posterior = self.net(x, grain, lambda shape: shard.randn(*shape))
        l1 = (recon - x).abs().mean()
        rec = l1
        logged = {"l1": l1.item(), "fine_fraction": grain.float().mean().item()}
        if self.perceptual is not None:
            p = self.perceptual(recon, x).mean()
            rec = rec + self.cfg["perceptual_weight"] * p
            logged["perceptual"] = p.item()
        # KL per pixel value, so kl_weight keeps LDM's ratio to the (summed) reconstruction terms.
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + self.cfg["kl_weight"] * kl
        logged["kl"] = kl.item()
        gan = self.disc is not None and step >= self.cfg["gan_start"]
        if gan:
            g = -self.disc_net(recon).mean()
            weight = adaptive_weight(rec, g, self.model.last_layer(), self.cfg["gan_adaptive_max"])
            loss = loss + self.cfg["gan_weight"] * weight * g
            logged.update(g_loss=g.item(), gan_adaptive_weight=weight.item())
        logged["loss"] = loss.item()
        yield "generator", loss, logged
        if gan:
            d = hinge_d_loss(self.disc_net(x), self.disc_net(recon.detach()))
            yield "discriminator", d, {"d_loss": d.item()}


def train_dvae(config: dict, out: Path) -> dict:
    seed_all(config["seed"])  # the model's initial weights
    task = DVAETask(config)
    return train(task, config["dvae"]["train"], out, run_config(config), config["tracking"], config["seed"],
                 loader_workers(config["data"]["num_workers"]))


def load_dvae(run_dir: Path) -> tuple[DVAE, dict]:
    """The EMA (else raw) DVAE of a finished run, in eval mode, with the run's config."""
    weights, run = load_final(run_dir)
    model = DVAE(run["dvae"]["preset"], run["data"]["resolution"], dual=run["grain"]["fine_ratio"] < 1)
    model.load_state_dict(weights)
    return model.eval(), run


def _batches(config: dict, run: dict, split: str):
    """(uint8 images, labels, grain map) of a split, in order, with the run's grain rule."""
    manifest = Manifest.load(run["data"]["manifest"])
    dataset = ImageFolderDataset(manifest, split, run["data"]["resolution"])
    thresholds = load_thresholds(run["grain"]["thresholds"], manifest.digest())
    loader = torch.utils.data.DataLoader(dataset, batch_size=config["grain"]["batch_size"],
                                         num_workers=loader_workers(config["data"]["num_workers"]))
    for images, labels in tqdm(loader, desc=f"{split}", unit="batch"):
        yield images, labels, grain_map(to_signed(images), thresholds, run["grain"]["fine_ratio"])


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB between uint8 image batches (peak 255)."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-12))


@torch.no_grad()
def evaluate_recon(config: dict, run_dir: Path, out: Path) -> dict:
    """PSNR and rFD (EfficientNet-Lite0 features) of the posterior-mean reconstructions of the
    held-out split."""
    model, run = load_dvae(run_dir)
    originals, recons, fine = [], [], []
    for images, _, grain in _batches(config, run, "heldout"):
        x = to_signed(images)
        recons.append(to_uint8(model.decode(model.encode(x, grain).latent())))
        originals.append(images)
        fine.append(grain.float().mean())
    originals, recons = torch.cat(originals), torch.cat(recons)
    n, extractor = len(originals), resolve(config["metrics"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stats = [fid_features_to_statistics(extract(x, extractor, config["metrics"]["batch_size"], device)["pool"])
             for x in (recons, originals)]
    result = {"psnr": psnr(recons, originals).mean().item(), metric_key("rfd", extractor, n): frechet_distance(*stats),
              "n_images": n, "split": "heldout", "fine_fraction": torch.stack(fine).mean().item(),
              "extractor": extractor.name, "extractor_sha256": extractor.sha256,
              "protocol": f"posterior-mean reconstructions of {n} held-out images vs the originals; FD on "
                          f"{extractor.name} pooled features" + ("" if extractor.comparable else
                                                                 " (not comparable to published rFID)"),
              "run": str(run_dir), "run_digest": digest(run)}
    write_json_atomic(out, result)
    return result


@torch.no_grad()
def encode_latents(config: dict, run_dir: Path, out: Path) -> dict:
    """Cache posterior-mean latents of both splits (and of their mirror images when the run trained
    with flips), grain maps and labels, plus the scale factor 1/std of the training latents."""
    model, run = load_dvae(run_dir)
    views = ["identity", "hflip"] if run["data"]["flip"] else ["identity"]
    classes = len(Manifest.load(run["data"]["manifest"]).classes)
    cache = {"views": views, "run_digest": digest(run), "run": run, "dvae_run": str(run_dir), "num_classes": classes,
             "latents": {}, "grain": {}, "labels": {}}
    for split in ("train", "heldout"):
        latents, grains, labels = [], [], []
        for images, y, grain in _batches(config, run, split):
            x = to_signed(images)
            per_view = [(x, grain), (x.flip(-1), grain.flip(-1))][:len(views)]
            latents.append(torch.stack([model.encode(v, g).latent() for v, g in per_view], 1))
            grains.append(torch.stack([g for _, g in per_view], 1))
            labels.append(y)
        cache["latents"][split], cache["grain"][split] = torch.cat(latents), torch.cat(grains)
        cache["labels"][split] = torch.cat(labels)
    train_latents = cache["latents"]["train"]
    cache["scale_factor"] = 1.0 / train_latents.std().item()
    if not math.isfinite(cache["scale_factor"]):
        raise D2itError(f"{run_dir}: latents have zero spread; the DVAE is degenerate")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(cache, tmp)
    os.replace(tmp, out)
    return {"scale_factor": cache["scale_factor"], "shape": list(train_latents.shape)}
