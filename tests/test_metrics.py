"""Metrics: FD against SciPy and torch-fidelity, its response to degradations, P/R and IS limits,
protocol-named keys, the offline path and the Inception path (with a weights file made here)."""
import json
import re

import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity
from PIL import Image

from d2it import config
from d2it.data.folder import ImageFolderDataset, load_all
from d2it.data.manifest import Manifest
from d2it.errors import D2itError
from d2it.metrics.degrade import LEVELS, noise
from d2it.metrics.effnet import INPUT_SIZE, load_network, normalise_uint8_range
from d2it.metrics.evaluate import (UInt8Images, adm_reference, compare, extract, frechet_distance,
                                   frechet_distance_to, reference_stats)
from d2it.metrics.extractors import INCEPTION_FILE, metric_key, resolve
from tests_support import ONE_LINE, error_outcome, left_behind
from torch_fidelity.metric_fid import fid_features_to_statistics

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def effnet_extractor():
    return resolve(config.validate({"name": "t"})["metrics"] | {"extractor": "effnet"})


@pytest.fixture(scope="module")
def images(dataset):
    """The test dataset's 200 images (uint8 N x 3 x 32 x 32)."""
    manifest = Manifest.load(dataset)
    return torch.cat([load_all(ImageFolderDataset(manifest, split, 32))[0]
                      for split in ("train", "heldout")])


@pytest.fixture(scope="module")
def features(images, effnet_extractor):
    return extract(images, effnet_extractor, 64, CPU)


def test_extractor_features_are_the_packaged_networks(images, features):
    """The folded, padded-in-place, chunked extractor computes what EfficientNet-Lite0 as
    shipped computes (its own modules: BatchNorm, padded copies, NCHW), over batches larger than
    a chunk."""
    x = torch.nn.functional.interpolate(images[:40].float(), size=(INPUT_SIZE, INPUT_SIZE),
                                        mode="bilinear", align_corners=False, antialias=True)
    net = load_network()
    with torch.no_grad():
        pool = net.extract_features(normalise_uint8_range(x)).mean((2, 3))
        logits = net._fc(pool)
    assert torch.allclose(features["pool"][:40].float(), pool, rtol=0, atol=1e-4)
    assert torch.allclose(features["logits"][:40].float(), logits, rtol=0, atol=1e-4)
    assert pool.abs().mean() > 0.05  # features of that size, so the tolerance is relative 1e-3


def scipy_fd(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.e2e
def test_fd_matches_scipy_and_torch_fidelity(images, features, effnet_extractor):
    a = fid_features_to_statistics(features["pool"][:100])
    b = fid_features_to_statistics(features["pool"][100:])
    ours = frechet_distance(a, b)
    assert ours == pytest.approx(scipy_fd(a["mu"], a["sigma"], b["mu"], b["sigma"]), rel=1e-6)
    whole = torch_fidelity.calculate_metrics(input1=UInt8Images(images[:100]),
                                             input2=UInt8Images(images[100:]),
                                             fid=True, feature_extractor=effnet_extractor.name,
                                             cuda=False, batch_size=64, cache=False, verbose=False,
                                             save_cpu_ram=True)
    assert ours == pytest.approx(whole["frechet_inception_distance"], rel=1e-6)


@pytest.mark.parametrize("n,d", [(60, 200), (300, 40)], ids=["n<d", "n>d"])
def test_fd_of_features_equals_torch_fidelity_fd(n, d):
    """The bootstrap's eigvalsh form of FD against torch-fidelity's sqrtm form, on correlated
    features with a shifted mean, fewer and more samples than dimensions."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    generated = torch.from_numpy(rng.normal(size=(n, d)) @ mix + 0.3)
    reference = fid_features_to_statistics(torch.from_numpy(rng.normal(size=(4 * d, d)) @ mix.T))
    expected = frechet_distance(fid_features_to_statistics(generated), reference)
    assert frechet_distance_to(generated, reference) == pytest.approx(expected, rel=1e-7)


def fd_to(reference_features, images, extractor):
    return frechet_distance(fid_features_to_statistics(reference_features),
                            fid_features_to_statistics(extract(images, extractor, 64, CPU)["pool"]))


@pytest.mark.e2e
def test_fd_of_a_set_with_itself_is_zero_and_halves_are_closer_than_degraded(images, features,
                                                                             effnet_extractor):
    stats = fid_features_to_statistics(features["pool"])
    # 1280-d covariance of 200 samples: rank-deficient, eigvals round
    assert abs(frechet_distance(stats, stats)) < 1e-3
    # Equal sample sizes on both sides, so FD's small-sample bias (large: 100 samples, 1280
    # dimensions) is the same in both comparisons; what is left over it is the degradation.
    a, b = features["pool"][0::2], images[1::2]
    halves = fd_to(a, b, effnet_extractor)
    degraded = fd_to(a, noise(b, 64), effnet_extractor)
    assert 1.4 * halves < degraded, (halves, degraded)  # measured: 199 vs 298


@pytest.mark.e2e
@pytest.mark.parametrize("degrade,levels", LEVELS.items(), ids=[f.__name__ for f in LEVELS])
def test_fd_grows_with_degradation(images, features, effnet_extractor, degrade, levels):
    fds = [fd_to(features["pool"][0::2], degrade(images[1::2], s), effnet_extractor)
           for s in levels]
    assert all(b > a for a, b in zip(fds, fds[1:])), fds


@pytest.mark.e2e
def test_precision_recall_and_is_limits(images, features, effnet_extractor):
    cfg = config.validate({"name": "t"})["metrics"] | {"bootstrap": 20, "kid_subset_size": 50}
    ref = {**fid_features_to_statistics(features["pool"]), "features": features["pool"]}
    own = compare(features, ref, effnet_extractor, cfg, seed=0)
    n = len(images)
    assert own[metric_key("recall", effnet_extractor, n)] == 1.0
    assert own[metric_key("precision", effnet_extractor, n)] == 1.0
    half = compare({k: v[:100] for k, v in features.items()}, ref, effnet_extractor, cfg, seed=0)
    assert 0 <= half[metric_key("recall", effnet_extractor, 100)] <= 1
    low, high = half[metric_key("fd", effnet_extractor, 100) + "_ci95"]
    assert low < half[metric_key("fd", effnet_extractor, 100)] < high
    copies = extract(images[:1].repeat(40, 1, 1, 1), effnet_extractor, 64, CPU)
    assert compare(copies, ref, effnet_extractor, cfg, seed=0)[
        metric_key("is", effnet_extractor, 40)] == pytest.approx(1.0, abs=1e-6)


def test_keys_name_their_protocol(effnet_extractor):
    inception = effnet_extractor.__class__("inception-v3-compat", "inception",
                                           ("2048", "logits_unbiased"), None, None, True)
    assert (metric_key("fd", inception, 50_000) == "fid50k"
            and metric_key("fd", inception, 10_000) == "fid10k")
    assert metric_key("fd", inception, 2_000) == "fd_inception_2k"
    assert metric_key("fd", effnet_extractor, 50_000) == "fd_effnet_50k"
    assert metric_key("rfd", effnet_extractor, 1_000) == "rfd_effnet_1k"


def test_reference_statistics_are_computed_once(images, effnet_extractor, tmp_path):
    cfg = config.validate({"name": "t"})["metrics"] | {"reference_features": 50}
    key = {"dataset": "abc", "split": "train", "resolution": 32}
    first = reference_stats(lambda: images[:80], key, tmp_path, effnet_extractor, cfg, CPU)
    again = reference_stats(lambda: pytest.fail("recomputed"), key, tmp_path, effnet_extractor, cfg,
                            CPU)
    assert (np.allclose(first["mu"], again["mu"]) and len(again["features"]) == 50
            and again["n"] == 80)


@pytest.mark.bad_input
def test_missing_or_single_samples_are_named_before_any_work(dataset, images, tmp_path):
    """A missing file is named before the reference statistics are computed (minutes at paper
    scale); one sample, whose covariance does not exist, is one error rather than LinAlgError."""
    from d2it.metrics.job import evaluate_samples

    cfg = config.validate({"name": "t", "data": {"manifest": str(dataset), "resolution": 32},
                           "grain": {"region": 4}, "dvae": {"preset": "tiny"},
                           "metrics": {"reference_dir": str(tmp_path / "ref")}})
    with pytest.raises(D2itError, match=r"nope\.npz: no such sample file or folder") as e:
        evaluate_samples(cfg, [tmp_path / "nope.npz"], tmp_path / "m.json")
    assert error_outcome(e.value) == ONE_LINE and not left_behind(tmp_path / "ref")
    np.savez(tmp_path / "one.npz", arr_0=images[:1].permute(0, 2, 3, 1).numpy())
    with pytest.raises(D2itError, match=r"one\.npz: 1 image\(s\); precision / recall \(3 "
                       r"nearest neighbours\) need 4 at least") as e:
        evaluate_samples(cfg, [tmp_path / "one.npz"], tmp_path / "m.json")
    assert error_outcome(e.value) == ONE_LINE


@pytest.mark.parametrize("arrays,cause", [
    ({"arr_0": np.zeros((4, 64, 64, 3), np.uint8)},
     "samples are 64x64 px, the study's data.resolution is 32"),
    ({"arr_0": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.array([0, 1, 9, 2])},
     "a sample of class 9, the study has data.classes = 2"),
    ({"arr_0": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.array([0, 1])},
     "labels has 2 entries for 4 images"),
])
@pytest.mark.bad_input
def test_samples_of_another_study_are_refused_before_any_work(dataset, tmp_path, arrays, cause):
    """Samples of another resolution or class count (another study's), or labels that do not
    match their images: one error, before the reference statistics are computed."""
    from d2it.metrics.job import evaluate_samples

    cfg = config.validate({"name": "t", "data": {"manifest": str(dataset), "resolution": 32,
                                                 "classes": 2},
                           "grain": {"region": 4}, "dvae": {"preset": "tiny"},
                           "metrics": {"reference_dir": str(tmp_path / "ref")}})
    np.savez(tmp_path / "s.npz", **arrays)
    with pytest.raises(D2itError, match=re.escape(cause)) as e:
        evaluate_samples(cfg, [tmp_path / "s.npz"], tmp_path / "m.json")
    assert error_outcome(e.value) == ONE_LINE
    assert not left_behind(tmp_path / "ref", tmp_path / "m.json")


@pytest.mark.e2e
def test_metrics_cli_runs_offline(dataset, images, features, tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=images[:60].permute(0, 2, 3, 1).numpy())
    cfg = config.validate({"name": "t", "data": {"manifest": str(dataset), "resolution": 32},
                           "grain": {"region": 4},
                           "dvae": {"preset": "tiny"},
                           "metrics": {"reference": "heldout",
                                       "reference_dir": str(tmp_path / "ref"),
                                       "bootstrap": 10, "kid_subset_size": 40}})
    from d2it.metrics.job import evaluate_samples

    result = evaluate_samples(cfg, [tmp_path / "s.npz"], tmp_path / "m.json")
    assert (json.loads((tmp_path / "m.json").read_text())["fd_effnet_60"]
            == pytest.approx(result["fd_effnet_60"]))
    assert result["extractor"] == "effnet-lite0" and result["comparable_with_paper"] is False
    assert "not comparable" in result["protocol"] and result["reference"]["n"] == 40
    # the reference split, decoded from its files by worker processes, has the in-memory images'
    # features
    held_out = fid_features_to_statistics(features["pool"][-40:])["mu"]
    assert np.allclose(np.load(result["reference"]["file"])["mu"], held_out, rtol=1e-5, atol=1e-6)
    # a folder of the same images gives the same numbers; two sets add their spread
    (tmp_path / "folder").mkdir()
    for i, image in enumerate(images[:60].permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(tmp_path / "folder" / f"{i:03d}.png")
    np.savez(tmp_path / "t.npz", arr_0=images[60:120].permute(0, 2, 3, 1).numpy())
    both = evaluate_samples(cfg, [tmp_path / "folder", tmp_path / "t.npz"], tmp_path / "m2.json")
    first, second = (s["fd_effnet_60"] for s in both["sets"])
    assert first == pytest.approx(result["fd_effnet_60"], rel=1e-6)
    assert both["fd_effnet_60"] == pytest.approx((first + second) / 2)
    assert both["fd_effnet_60_std"] == pytest.approx(abs(first - second) / np.sqrt(2))


@pytest.mark.bad_input
def test_inception_path_runs_with_a_given_weights_file(images, tmp_path, monkeypatch):
    """A weights file of the real layout with random values, made here: the path works, the
    values mean nothing."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda self, sd, *a, **k: None)
    skeleton = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    monkeypatch.undo()
    torch.save(skeleton.state_dict(), tmp_path / INCEPTION_FILE)
    extractor = resolve(config.validate({"name": "t"})["metrics"]
                        | {"inception_weights": str(tmp_path / INCEPTION_FILE)})
    assert extractor.short == "inception" and extractor.comparable
    feats = extract(images[:8], extractor, 8, CPU)
    assert feats["pool"].shape == (8, 2048) and torch.isfinite(feats["pool"]).all()
    assert metric_key("fd", extractor, 8) == "fd_inception_8"
    # an ADM reference batch: whole-training-set mu / sigma plus images for precision and recall
    np.savez(tmp_path / "VIRTUAL_ref.npz", arr_0=images[8:20].permute(0, 2, 3, 1).numpy(),
             mu=np.zeros(2048), sigma=np.eye(2048))
    cfg = config.validate({"name": "t"})["metrics"] | {"bootstrap": 0, "kid_subset_size": 8}
    ref = adm_reference(tmp_path / "VIRTUAL_ref.npz", extractor, cfg, CPU)
    result = compare(feats, ref, extractor, cfg, seed=0)
    assert result["fd_inception_8"] == pytest.approx(
        frechet_distance(fid_features_to_statistics(feats["pool"]),
                         {"mu": np.zeros(2048), "sigma": np.eye(2048)}))
    assert 0 <= result["recall_inception_8"] <= 1 and len(ref["features"]) == 12
    with pytest.raises(D2itError, match="not an ADM reference batch"):
        np.savez(tmp_path / "bad.npz", arr_0=np.zeros((1, 8, 8, 3), np.uint8))
        adm_reference(tmp_path / "bad.npz", extractor, cfg, CPU)
    # a missing or damaged file is named as such, whatever the extractor
    effnet = resolve(config.validate({"name": "t"})["metrics"] | {"extractor": "effnet"})
    with pytest.raises(D2itError, match="no such ADM reference batch") as e:
        adm_reference(tmp_path / "nope.npz", effnet, cfg, CPU)
    assert error_outcome(e.value) == ONE_LINE
    (tmp_path / "cut.npz").write_bytes((tmp_path / "VIRTUAL_ref.npz").read_bytes()[:100])
    with pytest.raises(D2itError, match="cut.npz: not a readable .npz") as e:
        adm_reference(tmp_path / "cut.npz", extractor, cfg, CPU)
    assert error_outcome(e.value) == ONE_LINE


def test_auto_falls_back_to_effnet_without_inception_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    extractor = resolve(config.validate({"name": "t"})["metrics"])
    assert extractor.short == "effnet" and not extractor.comparable
    with pytest.raises(D2itError, match="metrics.inception_weights: .*missing.pth is not a file"):
        resolve(config.validate({"name": "t"})["metrics"]
                | {"inception_weights": str(tmp_path / "missing.pth")})


@pytest.mark.bad_input
def test_a_reference_split_too_small_for_precision_recall_is_named(tmp_path):
    """FFHQ scores against its training split; a split of fewer than 4 images (found by the
    FFHQ rehearsal's 2-image stand-in) is one error before any work, not torch-fidelity's
    kthvalue traceback."""
    from d2it.data.synth import synthesize
    from d2it.metrics.job import evaluate_samples

    synthesize(tmp_path / "s", seed=0, resolution=32, n_train=2, n_heldout=4)
    cfg = config.validate({"name": "t", "data": {"manifest": str(tmp_path / "s/manifest.json"),
                                                 "resolution": 32},
                           "grain": {"region": 4}, "dvae": {"preset": "tiny"},
                           "metrics": {"reference": "train",
                                       "reference_dir": str(tmp_path / "ref")}})
    np.savez(tmp_path / "x.npz", arr_0=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(D2itError,
                       match=r"its train split .*: 2 image\(s\); precision / recall") as e:
        evaluate_samples(cfg, [tmp_path / "x.npz"], tmp_path / "m.json")
    assert error_outcome(e.value) == ONE_LINE and not left_behind(tmp_path / "ref")
