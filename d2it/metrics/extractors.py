"""Which network makes the features: Inception (paper-comparable) or the offline
EfficientNet-Lite0."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from d2it.files import sha256_file
from d2it.errors import D2itError
from d2it.metrics import effnet

log = logging.getLogger(__name__)
# torch-fidelity's inception-v3-compat weights
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
PAPER_COUNTS = (10_000, 50_000)  # FID-10K (FFHQ) and FID-50K (ImageNet)


@dataclass(frozen=True)
class Extractor:
    name: str  # torch-fidelity registry name
    short: str  # what metric keys call it
    features: tuple[str, str]  # (pooled features for FD/KID/P/R, logits for IS)
    weights: str | None  # the weights file
    sha256: str | None
    comparable: bool  # numbers comparable with the paper's (Inception only)

    def create(self, device: torch.device):
        import torch_fidelity.utils

        kwargs = ({"feature_extractor_weights_path": self.weights} if self.short == "inception"
                  else {})
        try:
            return torch_fidelity.utils.create_feature_extractor(self.name, list(self.features),
                                                                 cuda=device.type == "cuda",
                                                                 verbose=False, **kwargs)
        except OSError as e:
            # torch-fidelity's download of the Inception weights failed (no network)
            raise D2itError(f"Inception weights could not be loaded or downloaded ({e}); "
                            f"set metrics.inception_weights to a copy of {INCEPTION_FILE}, "
                            "or use metrics.extractor: effnet") from None


def _inception_file(configured: str | None) -> Path | None:
    if configured:
        if not Path(configured).is_file():
            raise D2itError(f"metrics.inception_weights: {configured} is not a file")
        return Path(configured)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return cached if cached.is_file() else None


def resolve(settings: dict) -> Extractor:
    """metrics.extractor: `inception` (its weights from metrics.inception_weights, the torch hub
    cache, or a download where the network allows), `effnet` (offline), or `auto` (Inception when
    its weights are on disk, else EfficientNet-Lite0). The choice is logged."""
    choice, weights = settings["extractor"], _inception_file(settings["inception_weights"])
    if choice == "inception" or (choice == "auto" and weights is not None):
        extractor = Extractor("inception-v3-compat", "inception", ("2048", "logits_unbiased"),
                              str(weights) if weights else None,
                              sha256_file(weights) if weights else None, True)
    else:
        extractor = Extractor(effnet.register(), "effnet", ("pool", "logits"),
                              effnet.weights_path(), effnet.weights_sha256(), False)
    log.info("metrics: features from %s (%s)%s", extractor.name,
             extractor.weights or "downloaded by torch-fidelity",
             "" if extractor.comparable else "; not comparable with published Inception numbers")
    return extractor


def metric_key(metric: str, extractor: Extractor, n: int) -> str:
    """fid50k / is10k ... only for Inception features of exactly a paper's sample count; otherwise
    the extractor and count are spelled out, e.g. fd_effnet_2k, so no number lands under a paper
    column made another way."""
    count = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    if extractor.comparable and n in PAPER_COUNTS:
        return f"{ {'fd': 'fid', 'rfd': 'rfid'}.get(metric, metric)}{count}"
    return f"{metric}_{extractor.short}_{count}"


def protocol_key(settings: dict, n: int) -> str:
    """The FD key `d2it metrics` will write for n samples under this config, known before any
    weights are read (with `auto`, from whether the Inception weights are on disk now)."""
    choice = settings["extractor"]
    if choice == "auto":
        configured = settings["inception_weights"]
        on_disk = Path(configured).is_file() if configured else (
            Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE).is_file()
        choice = "inception" if on_disk else "effnet"
    planned = Extractor("", choice, ("", ""), None, None, choice == "inception")
    return metric_key("fd", planned, n)
