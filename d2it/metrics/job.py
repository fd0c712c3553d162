"""`d2it metrics`: evaluate a sample file against the configured reference and write the JSON."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from d2it.data.folder import IMAGE_SUFFIXES, ImageFolderDataset, read_image
from d2it.data.manifest import Manifest
from d2it.files import write_json_atomic
from d2it.errors import D2itError
from d2it.metrics.classifier import accuracy, study_classifier
from d2it.metrics.evaluate import (adm_reference, compare, enough_images, extract,
                                   reference_stats)
from d2it.metrics.extractors import metric_key, resolve
from d2it.tracking import log_evaluation


def load_samples(path: Path, n: int | None) -> torch.Tensor:
    """uint8 N x 3 x H x W from an ADM-style .npz (arr_0: N x H x W x 3) or a folder of images."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise D2itError(f"{path}: no images")
        arr = np.stack([np.asarray(read_image(p)) for p in files[:n]])
    else:
        try:
            arr = np.load(path)["arr_0"]
        except (OSError, KeyError, ValueError) as e:
            raise D2itError(f"{path}: not a sample file with arr_0 ({e})") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise D2itError(f"{path}: images must be uint8 N x H x W x 3, got {arr.dtype} {arr.shape}")
    enough_images(len(arr), str(path))
    if n is not None and len(arr) < n:
        raise D2itError(f"{path}: holds {len(arr)} samples, metrics.n_samples asks for {n}")
    return torch.from_numpy(arr[:n]).permute(0, 3, 1, 2).contiguous()


def _npz_shapes(path: Path) -> dict[str, tuple]:
    """The shape of each array of an .npz, read from the headers alone (a 50K-sample file is
    gigabytes)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                with archive.open(name) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if major == 1
                            else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read(f)
                shapes[name.removesuffix(".npy")] = shape
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise D2itError(f"{path}: not a readable .npz ({e})") from None
    return shapes


def check_samples(path: Path, study: dict) -> None:
    """Samples that are not of this study, refused before any work: images of another
    resolution, labels of another length or beyond the study's classes."""
    path = Path(path)
    resolution, classes = study["data"]["resolution"], study["data"]["classes"]
    if path.is_dir():
        first = next((p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES),
                     None)
        size = read_image(first).size if first else None
        if size and size != (resolution, resolution):
            raise D2itError(f"{path}: images are {size[0]}x{size[1]} px, the study's "
                            f"data.resolution is {resolution}")
        return
    shapes = _npz_shapes(path)
    if "arr_0" not in shapes:
        raise D2itError(f"{path}: not a sample file (no arr_0)")
    images = shapes["arr_0"]
    enough_images(images[0] if images else 0, str(path))
    if len(images) == 4 and tuple(images[1:3]) != (resolution, resolution):
        raise D2itError(f"{path}: samples are {images[1]}x{images[2]} px, the study's "
                        f"data.resolution is {resolution}; samples of another study?")
    if "labels" in shapes:
        if shapes["labels"][:1] != images[:1]:
            raise D2itError(f"{path}: labels has {shapes['labels'][0]} entries for "
                            f"{images[0]} images")
        if classes > 1:
            top = int(np.load(path)["labels"].max(initial=0))
            if top >= classes:
                raise D2itError(f"{path}: a sample of class {top}, the study has "
                                f"data.classes = {classes}; samples of another study?")


def reference(study: dict, extractor, device: torch.device) -> dict:
    settings, data = study["metrics"], study["data"]
    if settings["reference"].endswith(".npz"):
        return adm_reference(Path(settings["reference"]), extractor, settings, device)
    manifest = Manifest.load(data["manifest"])
    split = settings["reference"]
    enough_images(len(manifest.split(split)), f"{data['manifest']}: its {split} split (the "
                  "reference, metrics.reference)")
    ref = reference_stats(lambda: ImageFolderDataset(manifest, split, data["resolution"]),
                          {"dataset": manifest.digest()[:12], "split": split,
                           "resolution": data["resolution"]},
                          Path(settings["reference_dir"]), extractor, settings, device)
    return {**ref, "split": split}


def class_scorer(study: dict):
    """None, or a function (sample file, images, its sampling JSON) -> the class-score fields of
    its metrics: the fraction of samples the study's classifier recognises as the class they were
    drawn for, its interval, and the classifier's accuracy on real held-out images (the
    ceiling)."""
    if not study["metrics"]["class_score"]:
        return None
    if study["data"]["classes"] < 2:
        raise D2itError("metrics.class_score needs class-conditional data (data.classes > 1)")
    net, record = study_classifier(study, Path(study["metrics"]["reference_dir"]))

    def score(path: Path, images: torch.Tensor, sampling: dict | None) -> dict:
        if sampling and not sampling.get("conditional", True):
            return {}  # an unconditional model's samples have no class to recognise
        try:
            labels = np.load(path)["labels"][:len(images)]
        except (OSError, KeyError, ValueError) as e:
            raise D2itError(f"{path}: metrics.class_score needs the samples' labels "
                            f"({e})") from None
        found = accuracy(net, images, torch.as_tensor(labels, dtype=torch.long))
        return {"class_acc": found["accuracy"], "class_acc_ci95": found["ci95"],
                "class_acc_ceiling": record["heldout_accuracy"],
                "class_acc_ceiling_ci95": record["heldout_ci95"]}

    return score


def _log_evaluation(study: dict, path: Path, values: dict, names: dict, protocol: str,
                    sampling: dict | None, context: dict) -> None:
    """The sample set's metrics as a child run of the study in MLflow, its grid as an artifact.
    Metric names carry no protocol (`fd`, not `fd_effnet_1k`), so sets scored with other counts
    share a column in the UI; the protocol is a param. Intervals are `<metric>_lo` / `_hi`, and
    the run's DVAE's reconstruction scores are `recon_*`."""
    sampling = sampling or {}
    keep = ("kind", "seed", "cfg_scale", "grain_source", "sampler", "steps", "at_step", "n",
            "params_M", "grain_params_M")
    metrics = {}
    for short, name in names.items():
        if isinstance(values.get(name), (int, float)):
            metrics[short] = values[name]
        if values.get(f"{name}_ci95"):
            metrics[f"{short}_lo"], metrics[f"{short}_hi"] = values[f"{name}_ci95"]
    metrics.update({f"recon_{k}": v for k, v in context.get("recon", {}).items()})
    # settings a set does not have (a DiT set's grain model) are left out, not logged as "None",
    # and the run folders are tags: MLflow's parallel-coordinates plot opens on the first three
    # params that differ, by name, which then include `kind`
    params = {"sample_set": path.stem, "protocol": protocol,
              "metric_names": ", ".join(f"{k}={v}" for k, v in names.items()),
              **{k: sampling[k] for k in keep if sampling.get(k) is not None}}
    tags = {"d2it.uses": ", ".join(context.get("uses", [])), "d2it.spec": context.get("spec"),
            "d2it.run": sampling.get("run"), "d2it.grain_run": sampling.get("grain_run")}
    grid = [Path(sampling["grid"])] if sampling.get("grid") else []
    log_evaluation(study["tracking"], study["name"], _run_name(path, metrics, context), params,
                   metrics, grid, {k: v for k, v in tags.items() if v})


def _run_name(path: Path, metrics: dict, context: dict) -> str:
    """What the runs list shows without a column clicked in: where the set is used, its spec
    (with the training step of a snapshot's set), and FD with its interval, e.g.
    `table2/dit_xl dit: FD 214.6 [208.9, 220.3]` or `fig6 dit@2000: FD ...`."""
    where = " ".join(context.get("uses", [])[:2]) or path.stem
    fd = f"FD {metrics['fd']:.1f}" if "fd" in metrics else "FD -"
    if "fd_lo" in metrics:
        fd += f" [{metrics['fd_lo']:.1f}, {metrics['fd_hi']:.1f}]"
    spec = context.get("spec") or ""
    if context.get("at_step") is not None:
        spec += f"@{context['at_step']}"
    return f"{where} {spec}: {fd}".replace(" :", ":")


def _metric_names(extractor, n: int, values: dict) -> dict:
    """{metric: its name in the metrics JSON}: the protocol-free name and the one that spells out
    the extractor and sample count."""
    names = {m: metric_key(m, extractor, n) for m in ("fd", "is", "kid", "precision", "recall")}
    if "class_acc" in values:
        names["class_acc"] = "class_acc"
    return names


def _protocol(n: int, ref: dict, extractor) -> str:
    return (f"{n} samples per set vs {Path(ref['file']).name}; {extractor.name} features; "
            f"torch-fidelity FD/IS/KID, precision/recall k=3"
            + ("" if extractor.comparable else
               "; not comparable with published Inception numbers"))


def evaluate_samples(study: dict, samples: list[Path], out: Path,
                     records: list[dict | None] | None = None, context: dict | None = None) -> dict:
    """Metrics of one sample set, or of several (e.g. one per seed): then each set's values and, per
    metric, their mean and standard deviation across sets. `records` are the sets' sampling
    records (settings, provenance, measured fine fraction; `d2it sample` writes one), None where
    a set has none; `context` (from `d2it metrics --sample-set`: where the plan uses the set, its
    spec, its DVAE's scores) names the set's MLflow run."""
    records = records or [None] * len(samples)
    settings = study["metrics"]
    missing = [str(p) for p in samples if not Path(p).exists()]
    if missing:  # before the reference statistics, which may take minutes
        raise D2itError(f"{', '.join(missing)}: no such sample file or folder")
    for path in samples:
        check_samples(path, study)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    extractor = resolve(settings)
    ref = reference(study, extractor, device)
    classifier = class_scorer(study)
    runs = []
    for path, sampling in zip(samples, records):
        images = load_samples(path, settings["n_samples"])
        features = extract(images, extractor, settings["batch_size"], device)
        values = compare(features, ref, extractor, settings, settings["seed"])
        if classifier:
            values.update(classifier(path, images, sampling))
        runs.append({"samples": str(path), "n_generated": len(images), **values,
                     "sampling": sampling})
        names = _metric_names(extractor, len(images), values)
        _log_evaluation(study, Path(path), values, names, _protocol(len(images), ref, extractor),
                        sampling, context or {})
    result = {k: v for k, v in runs[0].items()} if len(runs) == 1 else {"sets": runs}
    if len(runs) > 1:
        for key in (k for k, v in runs[0].items() if isinstance(v, float)):
            values = [r[key] for r in runs]
            result[key] = float(np.mean(values))
            result[f"{key}_std"] = float(np.std(values, ddof=1))
    n = runs[0]["n_generated"]
    keys = _metric_names(extractor, n, runs[0])
    if not all("class_acc" in r for r in runs):
        keys.pop("class_acc", None)
    result.update(
        keys=keys,
        extractor=extractor.name, extractor_sha256=extractor.sha256,
        comparable_with_paper=extractor.comparable,
        seed=settings["seed"], n_sets=len(runs),
        reference={"file": ref["file"], "split": ref.get("split"), "n": ref["n"],
                   "n_features": len(ref["features"])},
        protocol=_protocol(n, ref, extractor))
    write_json_atomic(out, result)
    return result
