"""Class recognition: a small CNN trained on the study's real training images scores how often a
sample is recognised as the class it was drawn for. Its accuracy on real held-out images is the
ceiling a perfect generator would reach.

The classifier is trained once per (dataset, resolution, settings) and cached beside the reference
statistics, like them named by what made it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import binomtest
from tqdm import tqdm

from d2it.config import digest
from d2it.data.folder import ImageFolderDataset, load_all
from d2it.data.manifest import Manifest
from d2it.files import save_torch_atomic

log = logging.getLogger(__name__)


class ClassifierNet(nn.Module):
    """Three stages of two 3x3 convolutions (BatchNorm, ReLU) and a 2x max-pool, a global average
    pool and a linear head (a VGG-style net: on the CPU study's 32 px images, width 16 and 15
    epochs reach 0.999 held-out accuracy in under two minutes on one core).

    | stage | channels   | side  |
    |-------|------------|-------|
    | 1     | width      | R / 2 |
    | 2     | 2 x width  | R / 4 |
    | 3     | 4 x width  | R / 8 |
    """

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (width, 2 * width, 4 * width):
            for conv_in in (c_in, c_out):
                layers += [nn.Conv2d(conv_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                           nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: uint8 N x 3 x R x R -> logits N x classes."""
        x = images.float() / 127.5 - 1  # N x 3 x R x R in [-1, 1]
        x = self.features(x)  # N x 4w x R/8 x R/8
        return self.head(x.mean((2, 3)))  # N x classes


@torch.enable_grad()  # also when called under no_grad (the DVAE's decode ceiling)
def fit(images: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: dict,
        flip: bool) -> ClassifierNet:
    """Train on uint8 images with AdamW and a cosine schedule; horizontal flips when the
    generator trained on flipped images too."""
    gen = torch.Generator().manual_seed(settings["seed"])
    torch.manual_seed(settings["seed"])
    net = ClassifierNet(num_classes, settings["width"])
    batch = settings["batch_size"]
    steps = settings["epochs"] * -(-len(images) // batch)
    opt = torch.optim.AdamW(net.parameters(), lr=settings["lr"], weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings["lr"], total_steps=steps)
    net.train()
    progress = tqdm(total=steps, desc="classifier", unit="step", leave=False)
    for _ in range(settings["epochs"]):
        for idx in torch.randperm(len(images), generator=gen).split(batch):
            x = images[idx]
            if flip:
                flipped = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(flipped[:, None, None, None], x.flip(3), x)
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            progress.update()
    progress.close()
    return net.eval()


@torch.no_grad()
def predict(net: ClassifierNet, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted class of uint8 N x 3 x R x R images."""
    return torch.cat([net(x).argmax(1) for x in images.split(batch_size)])


def accuracy(net: ClassifierNet, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Fraction recognised as their label, with its 95 % Wilson interval."""
    correct = int((predict(net, images) == labels).sum())
    interval = binomtest(correct, len(labels)).proportion_ci(0.95, method="wilson")
    return {"accuracy": correct / len(labels),
            "ci95": (float(interval.low), float(interval.high)),  # plain floats: JSON, torch.save
            "n": len(labels)}


def study_classifier(study: dict, cache_dir: Path) -> tuple[ClassifierNet, dict]:
    """The classifier of a study's data (trained here the first time, then loaded) and its record:
    settings and accuracy on the real held-out images (the ceiling)."""
    data = study["data"]
    settings = study["metrics"]["classifier"]
    manifest = Manifest.load(data["manifest"])
    key = {"dataset": manifest.digest(), "resolution": data["resolution"], "flip": data["flip"],
           **settings}
    path = Path(cache_dir) / f"classifier-{manifest.digest()[:12]}-{digest(key)[:12]}.pt"
    num_classes = len(manifest.classes)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = ClassifierNet(num_classes, settings["width"])
        net.load_state_dict(saved["state_dict"])
        return net.eval(), saved["record"]
    res = data["resolution"]
    train = load_all(ImageFolderDataset(manifest, "train", res), "classifier train images")
    heldout = load_all(ImageFolderDataset(manifest, "heldout", res), "classifier held-out images")
    net = fit(*train, num_classes, settings, data["flip"])
    ceiling = accuracy(net, *heldout)
    record = {"file": str(path), "settings": settings, "n_train": len(train[0]),
              "heldout_accuracy": ceiling["accuracy"], "heldout_ci95": ceiling["ci95"],
              "n_heldout": ceiling["n"]}
    log.info("classifier: held-out accuracy %.4f on %d images", ceiling["accuracy"], ceiling["n"])
    save_torch_atomic(path, {"state_dict": net.state_dict(), "record": record})
    return net, record
