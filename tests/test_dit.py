"""The DiT baseline against the official code: parameter counts, state-dict layout, outputs."""
import json
from pathlib import Path

import pytest
import torch

from baselines.dit import MODELS, dit, load_official
from d2it.models.dit import DiT

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name,count", [("XL/2", 675_129_632), ("L/2", 458_102_816),
                                        ("B/2", 130_512_416), ("S/2", 32_963_360)])
def test_parameter_counts_equal_the_official_code(name, count):
    """Published counts of facebookresearch/DiT (32x32x4 input, 1000 classes, fixed pos table
    counted)."""
    assert sum(p.numel() for p in dit(name).parameters()) == count


def test_state_dict_layout_equals_the_official_dit_s2():
    """tests/data/dit_s2_official_state_dict.json: keys and shapes of models.DiT_S_2() at
    ed81ce2."""
    official = json.loads((DATA / "dit_s2_official_state_dict.json").read_text())
    assert {k: list(v.shape) for k, v in dit("S/2").state_dict().items()} == official


@pytest.fixture(scope="module")
def official():
    """A small DiT built, randomised and run by the official code (weights, inputs and outputs
    saved)."""
    return torch.load(DATA / "dit_official_tiny.pt", weights_only=False)


def test_same_outputs_as_the_official_code(official):
    model = DiT(**official["config"]).eval()
    model.load_state_dict(official["state_dict"], strict=True)
    with torch.no_grad():
        out = model(official["x"], official["t"], official["y"])
    torch.testing.assert_close(out, official["out"], rtol=1e-5, atol=1e-6)


def test_official_training_checkpoint_loads_unconverted(official, tmp_path):
    ema = official["state_dict"]
    torch.save({"model": {k: v * 0 for k, v in ema.items()}, "ema": ema, "opt": {}, "args": None},
               tmp_path / "0400000.pt")
    model = load_official(tmp_path / "0400000.pt", DiT(**official["config"]))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())


def test_size_table():
    assert len(MODELS) == 15 and MODELS["DiT-B/4"]().patch_size == 4
    tiny = dit("tiny/2", input_size=16, num_classes=10)
    assert 1.2e6 < sum(p.numel() for p in tiny.parameters()) < 1.4e6
    assert tiny(torch.zeros(2, 4, 16, 16), torch.tensor([1, 2]),
                torch.tensor([0, 3])).shape == (2, 8, 16, 16)


def _expected_init(name: str, param: torch.Tensor) -> tuple[str, float]:
    """DiT's recipe for one parameter: ("zero" | "normal" | "xavier", std). Xavier-uniform on
    every Linear and on the patch embedding seen as a matrix; N(0, 0.02) on the label table and the
    timestep MLP; zero on adaLN's regressors, the output layers (fine and coarse) and every bias."""
    if name.endswith("bias") or "adaLN_modulation" in name or "_layer.linear." in name:
        return "zero", 0.0
    if name.startswith(("y_embedder.", "t_embedder.", "grain_embedder.")):
        return "normal", 0.02
    fan_out, fan_in = param.shape[0], param[0].numel()
    return "xavier", (2 / (fan_in + fan_out)) ** 0.5


@pytest.mark.parametrize("build", [
    lambda: DiT(input_size=16, in_channels=4, hidden_size=384, depth=2, num_heads=6,
                num_classes=1000),
    lambda: __import__("d2it.models.d2it", fromlist=["d2it"]).d2it("tiny", input_size=16,
                                                                 num_classes=10),
], ids=["dit", "d2it"])
def test_initialisation_follows_dits_recipe(build):
    torch.manual_seed(0)
    model = build()
    checked = 0
    for name, param in model.named_parameters():
        if name == "pos_embed":
            continue  # the sin-cos table, tested in test_d2it
        kind, std = _expected_init(name, param)
        if kind == "zero":
            assert param.abs().max() == 0, name
        else:
            assert abs(param.mean().item()) < 0.1 * std + 3 * std / param.numel() ** 0.5, name
            assert param.std().item() == pytest.approx(std, rel=0.1), name
            if kind == "xavier":  # uniform on [-a, a] with a = sqrt(3) std
                assert param.abs().max().item() <= 3**0.5 * std * (1 + 1e-6), name
        checked += 1
    assert checked == len(list(model.parameters())) - 1
