"""FD, IS, KID and precision/recall of generated images against a reference, computed by
torch-fidelity's metric functions on features extracted once; keys name their protocol."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch_fidelity.utils
from tqdm import tqdm
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from d2it.data.folder import loader_workers
from d2it.errors import D2itError
from d2it.files import atomic
from d2it.metrics.extractors import Extractor, metric_key

class UInt8Images(torch.utils.data.Dataset):
    """A uint8 N x 3 x H x W tensor as the dataset torch-fidelity reads."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _images(items: list) -> torch.Tensor:
    """Collate dataset items, (image, label) or bare images, into one uint8 batch."""
    return torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])


def extract(images: torch.Tensor | torch.utils.data.Dataset, extractor: Extractor, batch_size: int,
            device: torch.device, workers: int = 0,
            desc: str = "features") -> dict[str, torch.Tensor]:
    """Pooled features and logits of uint8 N x 3 x H x W images: a tensor, or a dataset whose images
    `workers` processes decode batch by batch, so a large reference set never sits in memory
    whole."""
    net = extractor.create(device)
    if torch.is_tensor(images):
        images = UInt8Images(images)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=workers,
                                         collate_fn=_images)
    parts = [torch_fidelity.utils.get_featuresdict_from_dataset(UInt8Images(batch), net, batch_size,
                                                                cuda=device.type == "cuda",
                                                                save_cpu_ram=True, verbose=False)
             for batch in tqdm(loader, desc=desc, unit="batch", leave=False)]
    return {key: torch.cat([part[name] for part in parts]).double()
            for key, name in zip(("pool", "logits"), extractor.features)}


def frechet_distance(stats_a: dict, stats_b: dict) -> float:
    return fid_statistics_to_metric(stats_a, stats_b, verbose=False)["frechet_inception_distance"]


def frechet_distance_to(features: torch.Tensor, reference: dict) -> float:
    """FD of raw features against reference statistics, exact, without a d x d matrix square root:
    tr sqrt(Σ_g Σ_r) is the sum of the square roots of the eigenvalues of Σ_g Σ_r, which are
    those of the symmetric min(n, d)-square Gram matrix of X Σ_r^½ (X: the centred features). An
    eigvalsh of that, instead of SciPy's sqrtm of a non-symmetric d x d product, is what makes
    bootstrap rounds cheap (0.6 s -> 0.1 s at d = 1280, n = 1000)."""
    x = features.double().numpy()
    mu = x.mean(0)
    centred = (x - mu) / np.sqrt(len(x) - 1)
    root = reference.get("sigma_root")
    if root is None:
        root = _symmetric_root(reference["sigma"])
    a = centred @ root
    gram = a @ a.T if len(a) <= a.shape[1] else a.T @ a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)).sum()
    return float(((mu - reference["mu"]) ** 2).sum() + (centred ** 2).sum()
                 + np.trace(reference["sigma"]) - 2 * trace_root)


def _symmetric_root(sigma: np.ndarray) -> np.ndarray:
    """Σ^½ of a covariance matrix (symmetric, positive semi-definite)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def bootstrap_fd(features: torch.Tensor, reference: dict, rounds: int,
                 seed: int) -> tuple[float, float]:
    """95 % interval of FD from the spread of FD over resamplings (with replacement) of the
    generated features: point estimate ± 1.96 bootstrap standard errors. Resampling duplicates
    samples, which biases FD upwards, so the resamples' percentiles would not bracket the estimate;
    their spread does."""
    rng = np.random.default_rng(seed)
    point = frechet_distance(fid_features_to_statistics(features), reference)
    reference = {**reference, "sigma_root": _symmetric_root(reference["sigma"])}
    values = [frechet_distance_to(features[rng.integers(0, len(features), len(features))],
                                  reference)
              for _ in tqdm(range(rounds), desc="FD bootstrap", unit="round", leave=False)]
    half = 1.96 * float(np.std(values, ddof=1))
    return point - half, point + half


# Precision / recall's k nearest neighbours (torch-fidelity's default, as in Kynkäänniemi et al.):
# each set needs more than k images.
NEIGHBOURS = 3
MIN_IMAGES = NEIGHBOURS + 1


def enough_images(n: int, what: str) -> None:
    """One error, not torch-fidelity's kthvalue traceback, for a set too small to score."""
    if n < MIN_IMAGES:
        raise D2itError(f"{what}: {n} image(s); precision / recall ({NEIGHBOURS} nearest "
                        f"neighbours) need {MIN_IMAGES} at least")


def compare(generated: dict, reference: dict, extractor: Extractor, settings: dict,
            seed: int) -> dict:
    """All metrics of generated features against reference features/statistics (see
    `reference_stats`)."""
    n = len(generated["pool"])
    stats = fid_features_to_statistics(generated["pool"])
    key = lambda m: metric_key(m, extractor, n)  # noqa: E731
    result = {key("fd"): frechet_distance(stats, reference)}
    if settings["bootstrap"]:
        result[key("fd") + "_ci95"] = bootstrap_fd(generated["pool"], reference,
                                                   settings["bootstrap"], seed)
    result[key("is")] = isc_features_to_metric(generated["logits"], splits=min(10, n),
                                               rng_seed=seed)["inception_score_mean"]
    ref_feats = reference.get("features")
    if ref_feats is not None:
        enough_images(n, "the samples")
        enough_images(len(ref_feats), f"the reference {reference.get('file')}")
        subset = min(settings["kid_subset_size"], n, len(ref_feats))
        kid = kid_features_to_metric(generated["pool"], ref_feats, kid_subsets=100,
                                     kid_subset_size=subset, kid_kernel="poly",
                                     kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                     kid_kernel_poly_coef0=1, rng_seed=seed, verbose=False)
        result[key("kid")] = kid["kernel_inception_distance_mean"]
        prc = prc_features_to_metric(generated["pool"].float(), ref_feats.float(),
                                     prc_neighborhood=NEIGHBOURS, prc_batch_size=10000,
                                     save_cpu_ram=True,
                                     verbose=False)
        result[key("precision")], result[key("recall")] = prc["precision"], prc["recall"]
    return result


def reference_stats(dataset_fn, key: dict, cache_dir: Path, extractor: Extractor, settings: dict,
                    device: torch.device) -> dict:
    """μ, Σ and (up to metrics.reference_features) features of a reference image set, computed
    once and cached as a file named by what made it (dataset, split, resolution, extractor
    weights)."""
    name = ("-".join(str(key[k]) for k in ("dataset", "split", "resolution"))
            + f"-{extractor.short}-{extractor.sha256[:12]}")
    path = Path(cache_dir) / f"{name}.npz"
    if path.exists():
        data = np.load(path)
        return {"mu": data["mu"], "sigma": data["sigma"],
                "features": torch.from_numpy(data["features"]),
                "n": int(data["n"]), "file": str(path)}
    features = extract(dataset_fn(), extractor, settings["batch_size"], device,
                       loader_workers(settings["num_workers"]), f"reference {key['split']}")["pool"]
    stats = fid_features_to_statistics(features)
    keep = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(0))
                    [:settings["reference_features"]]]
    with atomic(path) as tmp:
        np.savez(tmp, mu=stats["mu"], sigma=stats["sigma"], features=keep.numpy(), n=len(features))
    return {**stats, "features": keep, "n": len(features), "file": str(path)}


def adm_reference(path: Path, extractor: Extractor, settings: dict, device: torch.device) -> dict:
    """An ADM reference batch (e.g. VIRTUAL_imagenet256_labeled.npz): its mu/sigma (Inception
    pool_3 of the whole training set) and the features of its 10K images for precision/recall."""
    if not Path(path).is_file():
        raise D2itError(f"{path}: no such ADM reference batch (metrics.reference); download it "
                        "from the guided-diffusion evaluations page or point the key at yours")
    if not extractor.comparable:
        raise D2itError(f"{path}: ADM reference statistics are Inception features; "
                        "set metrics.extractor: inception")
    try:
        data = np.load(path)
        files = set(data.files)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise D2itError(f"{path}: not a readable .npz ({e})") from None
    missing = {"mu", "sigma", "arr_0"} - files
    if missing:
        raise D2itError(f"{path}: not an ADM reference batch "
                        f"(missing {', '.join(sorted(missing))})")
    enough_images(len(data["arr_0"]), f"{path}: its arr_0")
    images = torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2)
    features = extract(images, extractor, settings["batch_size"], device)["pool"]
    return {"mu": data["mu"].astype(np.float64), "sigma": data["sigma"].astype(np.float64),
            "features": features, "n": None, "file": str(path)}
