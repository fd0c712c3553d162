"""Stage 1 jobs: train a DVAE, evaluate its reconstructions, cache its latents for stage 2."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch_fidelity.metric_fid import fid_features_to_statistics
from tqdm import tqdm

from d2it import perceptual
from d2it.data.folder import ImageFolderDataset, loader_workers
from d2it.data.latents import CacheWriter
from d2it.data.manifest import Manifest
from d2it.files import sha256_file, write_json_atomic
from d2it.errors import D2itError
from d2it.grain import grain_map, load_thresholds, to_signed
from d2it.metrics.classifier import accuracy, study_classifier
from d2it.metrics.evaluate import extract, frechet_distance
from d2it.metrics.extractors import metric_key, resolve
from d2it.models import build, dvae_architecture
from d2it.models.patchgan import adaptive_weight, hinge_d_loss
from d2it.study import dvae_identity, run_digest
from d2it.device import seed_all
from d2it.run_folder import fit_weights, load_final
from d2it.train import train


def run_record(study: dict, fine_ratio: float, seed: int) -> dict:
    """A DVAE run's record (run.json, final.pt): its identity, the architecture that rebuilds it,
    and the files it was made from, with their digests (other data under the same names is
    refused)."""
    manifest = Manifest.load(study["data"]["manifest"])
    thresholds = Path(study["grain"]["thresholds"])
    load_thresholds(thresholds, manifest.digest())  # checked before the run folder is made
    arch = dvae_architecture(study["dvae"]["preset"], study["data"]["resolution"], fine_ratio)
    identity = dvae_identity(study, fine_ratio, seed)
    return {"identity": identity, "digest": run_digest(identity), "arch": arch,
            "inputs": {"dataset_digest": manifest.digest(),
                       "thresholds_sha256": sha256_file(thresholds)},
            "files": {"manifest": study["data"]["manifest"], "thresholds": str(thresholds)}}


@contextmanager
def frozen(module: torch.nn.Module):
    """No gradients into `module` inside the block (the generator's loss through the critic)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class DVAETask:
    """L1 + perceptual + KL (+ hinge PatchGAN with DQ-VAE's adaptive weight) on images with their
    entropy grain maps, computed on the fly at the run's fine ratio."""
    name = "dvae"

    def __init__(self, study: dict, record: dict):
        data = study["data"]
        settings = study["dvae"]
        manifest = Manifest.load(data["manifest"])
        self.dataset = ImageFolderDataset(manifest, "train", data["resolution"])
        self.thresholds = load_thresholds(study["grain"]["thresholds"], manifest.digest())
        self.fine_ratio = record["identity"]["grain_maps"]["fine_ratio"]
        self.flip = data["flip"]
        self.settings = settings
        self.model = build(record["arch"])
        self.perceptual = perceptual.build(settings["perceptual"], study["metrics"])
        self.modules, self.phases = {"model": self.model}, {"generator": self.model}
        self.disc = build({"kind": "patchgan"}) if settings["gan_weight"] > 0 else None
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

    def losses(self, batch, step: int, draws):
        images, _ = batch
        x = to_signed(images)
        if self.flip:
            flip = draws.rand(len(x)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        grain = grain_map(x, self.thresholds, self.fine_ratio)
        recon, posterior = self.net(x, grain, lambda shape: draws.randn(*shape))
        l1 = (recon - x).abs().mean()
        rec = l1
        logged = {"l1": l1.detach(), "fine_fraction": grain.float().mean()}
        if self.perceptual is not None:
            p = self.perceptual(recon, x).mean()
            rec = rec + self.settings["perceptual_weight"] * p
            logged["perceptual"] = p.detach()
        # KL per pixel value, so kl_weight keeps LDM's ratio to the (summed) reconstruction terms.
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + self.settings["kl_weight"] * kl
        logged["kl"] = kl.detach()
        gan = self.disc is not None and step >= self.settings["gan_start"]
        if gan:
            with frozen(self.disc):  # the critic's own update comes from its phase only
                g = -self.disc(recon).mean()
            last = self.model.last_layer()
            weight = adaptive_weight(rec, g, last, self.settings["gan_adaptive_max"])
            loss = loss + self.settings["gan_weight"] * weight * g
            logged.update(g_loss=g.detach(), gan_adaptive_weight=weight.detach())
        logged["loss"] = loss.detach()
        yield "generator", loss, logged
        if gan:
            d = hinge_d_loss(self.disc_net(x), self.disc_net(recon.detach()))
            yield "discriminator", d, {"d_loss": d.detach()}


def train_dvae(study: dict, fine_ratio: float, seed: int, out: Path) -> dict:
    record = run_record(study, fine_ratio, seed)
    seed_all(seed)  # the model's initial weights
    task = DVAETask(study, record)
    tracking = {**study["tracking"], "study": study["name"]}  # runs group under the study
    return train(task, study["dvae"]["train"], out, record, tracking, seed,
                 loader_workers(study["data"]["num_workers"]))


def load_dvae(run_dir: Path) -> tuple[torch.nn.Module, dict]:
    """The EMA (else raw) DVAE of a finished run, in eval mode, with the run's record."""
    weights, record = load_final(run_dir)
    if record.get("arch", {}).get("kind") != "dvae":
        raise D2itError(f"{run_dir}: not a DVAE run (its final.pt holds a "
                        f"{record.get('arch', {}).get('kind', 'pre-study')} model)")
    model = build(record["arch"])
    fit_weights(model, weights, Path(run_dir) / "final.pt", "dvae")
    return model.eval(), record


def _batches(study: dict, record: dict, split: str):
    """(uint8 images, labels, grain map) of a split, in order, with the run's grain rule."""
    files, maps = record["files"], record["identity"]["grain_maps"]
    manifest = Manifest.load(files["manifest"])
    if manifest.digest() != record["inputs"]["dataset_digest"]:
        raise D2itError(f"{files['manifest']}: not the dataset the DVAE trained on")
    dataset = ImageFolderDataset(manifest, split, maps["data"]["resolution"])
    thresholds = load_thresholds(files["thresholds"], manifest.digest())
    loader = torch.utils.data.DataLoader(dataset, batch_size=study["grain"]["batch_size"],
                                         num_workers=loader_workers(study["data"]["num_workers"]))
    for images, labels in tqdm(loader, desc=f"{split}", unit="batch"):
        grain = grain_map(to_signed(images), thresholds, maps["fine_ratio"])
        yield images, labels, grain


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB between uint8 image batches (peak 255)."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-12))


@torch.no_grad()
def evaluate_recon(study: dict, run_dir: Path, out: Path) -> dict:
    """PSNR and rFD of the posterior-mean reconstructions of the held-out split."""
    model, record = load_dvae(run_dir)
    originals, recons, labels, fine = [], [], [], []
    for images, label, grain in _batches(study, record, "heldout"):
        x = to_signed(images)
        recons.append(to_uint8(model.decode(model.encode(x, grain).latent())))
        originals.append(images)
        labels.append(label)
        fine.append(grain.float().mean())
    originals, recons, labels = torch.cat(originals), torch.cat(recons), torch.cat(labels)
    n, extractor = len(originals), resolve(study["metrics"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = study["metrics"]["batch_size"]
    stats = [fid_features_to_statistics(extract(x, extractor, batch, device)["pool"])
             for x in (recons, originals)]
    note = "" if extractor.comparable else " (not comparable to published rFID)"
    result = {"psnr": psnr(recons, originals).mean().item(),
              metric_key("rfd", extractor, n): frechet_distance(*stats),
              "n_images": n, "split": "heldout", "seed": record["identity"]["seed"],
              "fine_ratio": record["identity"]["grain_maps"]["fine_ratio"],
              "fine_fraction": torch.stack(fine).mean().item(),
              "extractor": extractor.name, "extractor_sha256": extractor.sha256,
              "protocol": f"posterior-mean reconstructions of {n} held-out images vs the "
                          f"originals; FD on {extractor.name} pooled features{note}",
              "run": str(run_dir), "run_digest": run_digest(record["identity"])}
    if study["metrics"]["class_score"] and study["data"]["classes"] > 1:
        # The decode ceiling: no latent model's samples score above what its DVAE decodes.
        net, classifier = study_classifier(study, Path(study["metrics"]["reference_dir"]))
        decoded = accuracy(net, recons, labels)
        result |= {"class_acc_decoded": decoded["accuracy"],
                   "class_acc_decoded_ci95": decoded["ci95"],
                   "class_acc_ceiling": classifier["heldout_accuracy"],
                   "class_acc_ceiling_ci95": classifier["heldout_ci95"]}
    if study["mark"]:
        result["mark"] = study["mark"]
    write_json_atomic(out, result)
    return result


@torch.no_grad()
def encode_latents(study: dict, run_dir: Path, out: Path) -> dict:
    """Cache posterior-mean latents of both splits (and of their mirror images when the run trained
    with flips), grain maps and labels, with the scale factor 1 / std of the training latents."""
    model, record = load_dvae(run_dir)
    identity = record["identity"]
    flip = identity["grain_maps"]["data"]["flip"]
    manifest = Manifest.load(record["files"]["manifest"])
    counts = {split: len(manifest.split(split)) for split in ("train", "heldout")}
    arch = record["arch"]
    side = arch["resolution"] // model.fine_factor
    writer = CacheWriter(Path(out), counts, 2 if flip else 1, model.latent_channels, side)
    for split in counts:
        for images, labels, grain in _batches(study, record, split):
            x = to_signed(images)
            views = [(x, grain), (x.flip(-1), grain.flip(-1))][:2 if flip else 1]
            latents = torch.stack([model.encode(v, g).latent() for v, g in views], 1)
            writer.add(split, latents, torch.stack([g for _, g in views], 1), labels)
    meta = writer.finish({"num_classes": len(manifest.classes), "dvae_run": str(run_dir),
                          "dvae_digest": run_digest(identity),
                          "grain_maps_digest": run_digest(identity["grain_maps"])})
    return {"cache": str(out), "scale_factor": meta["scale_factor"], "counts": meta["counts"]}
