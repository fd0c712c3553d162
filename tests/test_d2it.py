"""D²iT: multi-grained noise, the dynamic grain loss and every ablation switch."""
import pytest
import torch

from baselines.dit import dit
from d2it.diffusion import GaussianDiffusion
from d2it.grain import block_mean, expand, merge, multigrain_noise, project_coarse
from d2it.models.d2it import d2it
from d2it.stage2 import dynamic_grain_loss


def coarse_blocks_constant(x, grain, atol=0.0):
    blocks = x.reshape(x.shape[0], x.shape[1], x.shape[2] // 2, 2, x.shape[3] // 2, 2)
    spread = (blocks - blocks[:, :, :, :1, :, :1]).abs().amax((1, 3, 5))
    return bool((spread[~grain] <= atol).all())


def randomised(model):
    """Random weights everywhere (DiT zero-initialises its gates and heads, which hides the
    wiring)."""
    torch.manual_seed(1)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    return model.eval()


@pytest.fixture
def grain():
    torch.manual_seed(0)
    return torch.rand(3, 4, 4) < 0.5


def test_multigrain_noise_keeps_coarse_blocks_constant_at_every_t(grain):
    diffusion = GaussianDiffusion.dit(1000)
    x0 = merge(torch.randn(3, 4, 8, 8), torch.randn(3, 4, 4, 4), grain)
    noise = multigrain_noise(x0.shape, grain)
    assert coarse_blocks_constant(noise, grain) and not coarse_blocks_constant(noise, ~grain)
    for t in (0, 10, 500, 999):
        assert coarse_blocks_constant(diffusion.q_sample(x0, torch.full((3,), t), noise), grain)
    assert torch.allclose(noise[expand(grain)[:, None].expand_as(noise)].std(), torch.tensor(1.0),
                          atol=0.2)


def test_reverse_steps_stay_on_the_grain_subspace(grain):
    model = randomised(d2it("tiny", input_size=8, num_classes=3))
    diffusion = GaussianDiffusion.dit(1000, 20)
    labels = torch.tensor([0, 1, 2])
    seen = []

    def check(x):  # called after every reverse step, before any projection
        seen.append(coarse_blocks_constant(x, grain, atol=1e-5))
        return x

    diffusion.ddpm_sample(lambda x, t: model(x, t, labels, grain),
                          lambda s: multigrain_noise(s, grain), (3, 4, 8, 8), check)
    # routing copies coarse ε, so only rounding could move copies apart
    assert len(seen) == 21 and all(seen)
    x = torch.randn(3, 4, 8, 8)
    projected = project_coarse(x, grain)
    assert coarse_blocks_constant(projected, grain)
    # each block keeps its mean
    assert torch.allclose(block_mean(projected), block_mean(x), atol=1e-6)
    fine = expand(grain)[:, None].expand_as(x)
    assert torch.equal(projected[fine], x[fine])


def test_dynamic_grain_loss_weighs_each_grain_equally_whatever_its_area():
    torch.manual_seed(0)
    for fine_share in (0.1, 0.5, 0.9):
        grain = torch.rand(4, 8, 8) < fine_share
        grain[:, 0, 0], grain[:, 0, 1] = True, False  # every image has both grains
        fine_pos = expand(grain)
        coarse_err = torch.where(fine_pos, 0.0, 2.0)   # error 2 on every coarse region
        fine_err = torch.where(fine_pos, 2.0, 0.0)     # error 2 on every fine region
        assert dynamic_grain_loss(coarse_err, grain, 1.0, 1.0) == pytest.approx(2.0)
        assert dynamic_grain_loss(fine_err, grain, 1.0, 1.0) == pytest.approx(2.0)
        # the plain mean over the latent grid weighs them by area instead
        assert coarse_err.mean() == pytest.approx(2 * (1 - fine_pos.float().mean()))


def test_dynamic_grain_loss_is_a_mean_over_images():
    """Per image: λ_c x its coarse regions' mean (one value per 2x2 block) + λ_f x its fine
    positions' mean; a grain the image lacks adds 0. So any split of a batch averages to the
    same."""
    torch.manual_seed(1)
    grain = torch.rand(5, 3, 3) < 0.5
    grain[3] = True  # an image without coarse regions
    grain[4] = False  # and one without fine regions
    loss_map = torch.rand(5, 6, 6)
    loss_map = torch.where(expand(grain), loss_map, expand(block_mean(loss_map[:, None])[:, 0]))
    expected = []
    for m, g in zip(loss_map, grain):
        coarse = block_mean(m[None, None])[0, 0][~g]
        fine = m[expand(g)]
        expected.append(0.3 * (coarse.mean() if len(coarse) else 0)
                        + 0.7 * (fine.mean() if len(fine) else 0))
    assert (dynamic_grain_loss(loss_map, grain, 0.3, 0.7)
            == pytest.approx(torch.stack(expected).mean().item()))
    halves = [dynamic_grain_loss(loss_map[i], grain[i], 0.3, 0.7)
              for i in (slice(0, 2), slice(2, 4))]
    four = dynamic_grain_loss(loss_map[:4], grain[:4], 0.3, 0.7)
    assert four == pytest.approx(((halves[0] + halves[1]) / 2).item())


def test_routing_switch(grain):
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([5, 50, 500]), torch.tensor([0, 1, 2])
    routed = randomised(d2it("tiny", input_size=8, num_classes=3))
    out = routed(x, t, y, grain)
    assert coarse_blocks_constant(out, grain) and not torch.allclose(out, routed(x, t, y, ~grain))
    plain = randomised(d2it("tiny", input_size=8, num_classes=3, routing=False))
    assert not any(hasattr(plain, n) for n in ("coarse_embedder", "grain_embedder", "coarse_layer"))
    assert torch.equal(plain(x, t, y, grain), plain(x, t, y, ~grain))  # the grain map is ignored


def test_refinenet_depth_and_pos_embed_switches():
    for r in (0, 1, 2):
        model = d2it("tiny", input_size=8, num_classes=3, refine_depth=r)
        assert len(model.blocks) == 4 - r and len(model.refine_blocks) == r
    assert d2it("tiny", input_size=8, num_classes=3).pos_embed.requires_grad
    fixed = d2it("tiny", input_size=8, num_classes=3, learnable_pos=False)
    assert not fixed.pos_embed.requires_grad
    with pytest.raises(ValueError, match="refine_depth 5 outside"):
        d2it("tiny", input_size=8, num_classes=3, refine_depth=5)


def test_refinenet_only_changes_fine_predictions(grain):
    """The coarse head reads the backbone; RefineNet's correction reaches the fine head only."""
    model = randomised(d2it("tiny", input_size=8, num_classes=3, refine_depth=1))
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([5, 50, 500]), torch.tensor([0, 1, 2])
    before = model(x, t, y, grain)
    with torch.no_grad():
        model.refine_blocks[0].mlp.fc2.bias.add_(1.0)
    after = model(x, t, y, grain)
    fine = expand(grain)[:, None].expand_as(before)
    assert (torch.equal(before[~fine], after[~fine])
            and not torch.allclose(before[fine], after[fine]))


def test_tiny_models_have_equal_budgets():
    d = sum(p.numel() for p in d2it("tiny", input_size=16, num_classes=10).parameters())
    b = sum(p.numel() for p in dit("tiny/2", input_size=16, num_classes=10).parameters())
    assert abs(d / b - 1) < 0.05
