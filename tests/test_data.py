"""Embedded dataset determinism, manifests, image folders and their errors."""
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from d2it.data.folder import ImageFolderDataset, center_crop, prepare, read_image
from d2it.data.manifest import Manifest
from d2it.data.synth import CLASSES, LOOK, render, synthesize
from d2it.errors import D2itError
from tests_support import ONE_LINE, error_outcome


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = synthesize(tmp_path / "a", seed=3, resolution=32, n_train=20, n_heldout=10)
    synthesize(tmp_path / "b", seed=3, resolution=32, n_train=20, n_heldout=10)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    synthesize(tmp_path / "c", seed=4, resolution=32, n_train=20, n_heldout=10)
    assert tree_bytes(tmp_path / "a") != tree_bytes(tmp_path / "c")
    # a larger dataset starts with the same images
    synthesize(tmp_path / "d", seed=3, resolution=32, n_train=40, n_heldout=10)
    assert all((tmp_path / "d" / e.path).read_bytes() == (tmp_path / "a" / e.path).read_bytes()
               for e in a.files)


def test_manifest_lists_every_file_with_its_hash_and_class(tmp_path):
    manifest = synthesize(tmp_path / "s", seed=0, resolution=32, n_train=30, n_heldout=10)
    assert manifest.generator["seed"] == 0 and manifest.generator["version"]
    assert len(manifest.split("train")) == 30 and len(manifest.split("heldout")) == 10
    assert len(CLASSES) == 10 and manifest.classes == list(CLASSES)
    for entry in manifest.files:
        path = tmp_path / "s" / entry.path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
        assert path.parent.name == CLASSES[entry.label]
    loaded = Manifest.load(tmp_path / "s" / "manifest.json")
    assert loaded.files == manifest.files and loaded.digest() == manifest.digest()


def test_look_sets_the_nuisance():
    """Upright centred objects: a disc's mask is centred on the image and a square's edges are
    axis-aligned; noise cells of 2 px are constant 2x2 blocks; no colour range gives one
    background per corner position whatever the seed."""
    look = {"rotation": 0, "placement": 0, "radius": [0.4, 0.4], "colour_range": 0,
            "noise_cell": 2}
    for index in range(0, 40, 10):  # discs with stripes
        _, label, mask = render(0, "train", index, 32, look)
        ys, xs = np.nonzero(mask)
        assert CLASSES[label] == "disc-stripes"
        assert abs(xs.mean() - 15.5) < 0.3 and abs(ys.mean() - 15.5) < 0.3
    _, _, square = render(0, "train", 2, 32, look)  # square-stripes
    rows = np.nonzero(square.any(1))[0]
    assert square[rows[0]].sum() == square[rows[len(rows) // 2]].sum()  # flat top edge
    noise, label, mask = render(0, "train", 1, 32, look)  # disc-noise
    assert CLASSES[label] == "disc-noise"
    inside = noise[12:20, 12:20].astype(int)
    assert (inside[0::2, 0::2] == inside[1::2, 1::2]).all()
    corners = [render(s, "train", 0, 32, look)[0][0, 0] for s in range(3)]
    assert all((c == corners[0]).all() for c in corners)
    assert not all((c == corners[0]).all()
                   for c in (render(s, "train", 0, 32)[0][0, 0] for s in range(3)))


def test_manifest_records_the_look(tmp_path):
    look = {**LOOK, "rotation": 0}
    manifest = synthesize(tmp_path / "s", seed=0, resolution=32, n_train=10, n_heldout=10,
                          look={"rotation": 0})
    assert manifest.generator["look"] == look
    with pytest.raises(D2itError, match="holds a dataset made with"):
        synthesize(tmp_path / "s", seed=0, resolution=32, n_train=10, n_heldout=10)


def test_existing_dataset_of_other_parameters_is_not_overwritten(tmp_path):
    synthesize(tmp_path / "s", seed=0, resolution=32, n_train=10, n_heldout=10)
    before = tree_bytes(tmp_path / "s")
    with pytest.raises(D2itError, match="holds a dataset made with"):
        synthesize(tmp_path / "s", seed=1, resolution=32, n_train=10, n_heldout=10)
    assert tree_bytes(tmp_path / "s") == before


def test_images_without_their_manifest_are_remade_and_other_files_refused(tmp_path):
    """A forced Snakemake rerun deletes manifest.json before the job: the generator's own images
    left behind are remade (the same bytes); a folder holding anything else is left untouched."""
    first = synthesize(tmp_path / "s", seed=0, resolution=32, n_train=10, n_heldout=10)
    (tmp_path / "s" / "manifest.json").unlink()
    again = synthesize(tmp_path / "s", seed=0, resolution=32, n_train=10, n_heldout=10)
    assert [e.sha256 for e in again.files] == [e.sha256 for e in first.files]
    (tmp_path / "s" / "manifest.json").unlink()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(D2itError, match="is not empty and has no manifest.json"):
        synthesize(tmp_path / "s", seed=0, resolution=32, n_train=10, n_heldout=10)
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"


def test_center_crop_is_adm_box_halving_then_centre(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    out = center_crop(Image.fromarray(array), 32)
    # one box halving (2x2 mean) gives 32 x 48 at scale 1; the centre crop keeps columns 8..39
    halved = array.reshape(32, 2, 48, 2, 3).astype(float).mean((1, 3))
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(float) - halved[:, 8:40]).max() <= 1


def write_png(path, value=128, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_prepare_flat_and_class_folders(tmp_path):
    for i in range(6):
        write_png(tmp_path / "ffhq" / f"{i:05d}.png", value=i * 10)
        write_png(tmp_path / "imnet" / ("n01" if i % 2 else "n02") / f"{i}.png")
    flat = prepare(tmp_path / "ffhq", tmp_path / "ffhq.json", heldout_fraction=0.3)
    assert flat.classes == ["ffhq"] and {e.label for e in flat.files} == {0}
    nested = prepare(tmp_path / "imnet", tmp_path / "imnet.json", heldout_fraction=0.0)
    assert nested.classes == ["n01", "n02"]
    assert all(nested.classes[e.label] == e.path.split("/")[0] for e in nested.files)
    ds = ImageFolderDataset(Manifest.load(tmp_path / "imnet.json"), "train", 16)
    image, label = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16) and label in (0, 1)


def test_sixteen_bit_and_other_modes_are_read_as_their_pixels(tmp_path, caplog):
    """A 16-bit grey gradient keeps its brightness (convert("RGB") clipped it to near-white);
    L, RGBA, P and CMYK convert as PIL does, prepare says what it converted and warns when no
    image fell in the held-out split; 32-bit float images are refused by name."""
    import logging

    gradient = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (8, 1))
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(gradient).save(folder / "a16.png")
    assert Image.open(folder / "a16.png").mode.startswith("I;16")
    Image.new("L", (20, 20), 100).save(folder / "b.png")
    Image.new("RGBA", (20, 20), (10, 20, 30, 0)).save(folder / "c.png")
    Image.new("P", (20, 20), 3).save(folder / "d.png")
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(folder / "e.jpg")
    grey = np.asarray(read_image(folder / "a16.png"))
    assert grey.shape == (8, 64, 3) and abs(grey.mean() - 127.5) < 0.5
    assert np.abs(grey[0, :, 0] - np.linspace(0, 255, 64)).max() <= 0.51
    assert np.asarray(read_image(folder / "c.png"))[0, 0].tolist() == [10, 20, 30]
    with caplog.at_level(logging.INFO, logger="d2it.data.folder"):
        prepare(folder, tmp_path / "m.json", heldout_fraction=0.01)
    assert "1 CMYK, 1 I;16 (16-bit, scaled by 1/257), 1 L, 1 P (palette), 1 RGBA (alpha dropped)" \
        in caplog.text
    assert "none of the 5 images fell in the held-out split" in caplog.text
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(D2itError, match=r"f\.tiff: mode F \(32-bit float\) has no defined range"):
        read_image(tmp_path / "f.tiff")


def test_truncated_png_is_named(tmp_path):
    for i in range(3):
        write_png(tmp_path / "src" / f"{i}.png")
    bad = tmp_path / "src" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(D2itError, match=r"1\.png: cannot read image"):
        prepare(tmp_path / "src", tmp_path / "m.json", heldout_fraction=0.0)
    assert not (tmp_path / "m.json").exists()


@pytest.mark.bad_input
def test_an_image_changed_after_its_manifest_is_named_when_loaded(tmp_path):
    """A file truncated, or replaced by another valid image, after the manifest was made: its
    sha256 no longer matches, and reading it is one error naming it."""
    manifest = synthesize(tmp_path / "s", seed=0, resolution=32, n_train=10, n_heldout=10)
    train = manifest.split("train")
    ds = ImageFolderDataset(Manifest.load(tmp_path / "s" / "manifest.json"), "train", 32)
    replaced = tmp_path / "s" / train[2].path
    replaced.write_bytes((tmp_path / "s" / train[5].path).read_bytes())
    cut = tmp_path / "s" / train[3].path
    cut.write_bytes(cut.read_bytes()[:100])
    for i, victim in ((2, replaced), (3, cut)):
        with pytest.raises(D2itError, match=f"{victim.name}: changed since its manifest") as e:
            ds[i]
        assert error_outcome(e.value) == ONE_LINE
    assert ds[4][0].shape == (3, 32, 32)  # the others read as before
