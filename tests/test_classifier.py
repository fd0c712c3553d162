"""The class score: a CNN trained on real images scores how often images are recognised as their
label. Checked on a toy set whose classes are trivially separable (mean brightness)."""
import numpy as np
import pytest
import torch

from d2it.metrics.classifier import accuracy, fit

SETTINGS = {"width": 8, "epochs": 4, "batch_size": 32, "lr": 3e-3, "seed": 0}


def toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 16 px images: dark, mid-grey and bright, with per-pixel noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    base = torch.tensor([40.0, 128.0, 215.0])[labels][:, None, None, None]
    images = base + 25 * torch.randn(n, 3, 16, 16, generator=gen)
    return images.clamp(0, 255).round().to(torch.uint8), labels


@pytest.fixture(scope="module")
def classifier():
    return fit(*toy(300, seed=0), num_classes=3, settings=SETTINGS, flip=True)


def test_recognises_every_held_out_image_of_a_separable_set(classifier):
    found = accuracy(classifier, *toy(300, seed=1))
    assert found["accuracy"] == 1.0 and found["n"] == 300
    assert found["ci95"][0] > 0.98 and found["ci95"][1] == pytest.approx(1.0)


def test_shuffled_labels_score_chance(classifier):
    images, labels = toy(3000, seed=2)
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    found = accuracy(classifier, images, shuffled)
    low, high = found["ci95"]
    assert low < 1 / 3 < high  # chance lies inside the interval
    assert high - low < 0.04


def test_wilson_interval_matches_its_formula(classifier):
    images, labels = toy(90, seed=4)
    wrong = (labels + torch.tensor([0, 1] * 45)) % 3  # every second label wrong
    found = accuracy(classifier, images, wrong)
    p, n, z = 0.5, 90, 1.959963984540054
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert found["accuracy"] == 0.5
    np.testing.assert_allclose(found["ci95"], (centre - half, centre + half), rtol=1e-9)


def test_the_study_classifier_is_trained_once_and_loaded_after(tmp_path, dataset, monkeypatch):
    from d2it import study as studies
    from d2it.metrics import classifier
    from tests_support import tiny_study

    study = studies.resolve(tiny_study(tmp_path, dataset, metrics={
        "extractor": "effnet", "class_score": True,
        "classifier": {"width": 4, "epochs": 1, "batch_size": 64}}), "t")
    net, record = classifier.study_classifier(study, tmp_path / "ref")

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(classifier, "fit", no_training)
    again, record_again = classifier.study_classifier(study, tmp_path / "ref")
    assert record_again == record and record["n_train"] == 160 and record["n_heldout"] == 40
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(net(images), again(images))
