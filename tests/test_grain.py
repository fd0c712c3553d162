"""Grain maps: the dataset-level fine ratio, where fine regions land, and the grain-grid
operations."""
import json

import numpy as np
import pytest
import torch

from d2it.data.folder import ImageFolderDataset, load_all
from d2it.data.manifest import Manifest
from d2it.data.synth import render
from d2it.errors import D2itError
from d2it.grain import (block_mean, expand, grain_map, load_thresholds, merge, threshold_for,
                        to_signed)


@pytest.fixture(scope="module")
def train_split(dataset):
    manifest = Manifest.load(dataset)
    images, _ = load_all(ImageFolderDataset(manifest, "train", 32))
    return to_signed(images), json.loads((dataset.parent / "thresholds.json").read_text())


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.75, 0.9])
def test_fine_fraction_over_training_split_equals_ratio(train_split, ratio):
    images, thresholds = train_split
    assert abs(grain_map(images, thresholds, ratio).float().mean().item() - ratio) < 0.01


def test_textured_objects_are_fine_more_often_than_background(train_split):
    images, thresholds = train_split
    grain = grain_map(images, thresholds, 0.5)
    masks = torch.from_numpy(np.stack([render(0, "train", i, 32)[2] for i in range(len(images))]))
    cover = masks.float().reshape(-1, 8, 4, 8, 4).mean((2, 4))  # object share of each 4 px region
    p_object, p_background = grain[cover == 1].float().mean(), grain[cover == 0].float().mean()
    # half the regions are fine and objects cover less than half the image: the rest are edges and
    # the steepest background gradients
    assert p_object > 0.9 and p_object - p_background > 0.5, (p_object, p_background)


def test_ratio_ends_and_range(train_split):
    images, thresholds = train_split
    assert grain_map(images[:4], thresholds, 1.0).all()
    assert not grain_map(images[:4], thresholds, 0.0).any()
    for bad in (-0.1, 1.5):
        with pytest.raises(D2itError, match=f"fine_ratio {bad} outside"):
            grain_map(images[:4], thresholds, bad)
    assert threshold_for(thresholds, 0.25) > threshold_for(thresholds, 0.75)


def test_thresholds_of_another_dataset_are_refused(dataset):
    with pytest.raises(D2itError, match="another dataset"):
        load_thresholds(dataset.parent / "thresholds.json", "0" * 64)


def test_grid_operations():
    x = torch.randn(2, 4, 3, 5)
    up = expand(x)
    assert up.shape == (2, 4, 6, 10)
    assert torch.equal(up[..., 0::2, 1::2], x) and torch.equal(up[..., 1::2, 0::2], x)
    assert torch.allclose(block_mean(up), x)
    fine, coarse = torch.randn(2, 4, 6, 10), torch.randn(2, 4, 3, 5)
    grain = torch.rand(2, 3, 5) < 0.5
    merged = merge(fine, coarse, grain)
    g = expand(grain)[:, None].expand_as(fine)
    assert torch.equal(merged[g], fine[g])
    assert torch.equal(merged[~g], expand(coarse)[~g])
