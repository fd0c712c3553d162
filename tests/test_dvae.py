"""DVAE: neighbour copying, de-duplicated KL, the fixed-rate special case, losses."""
import pytest
import torch
import torchvision
from torch.distributions import Normal, kl_divergence

from d2it.models.dvae import DVAE
from d2it.errors import D2itError
from d2it.grain import expand
from d2it.metrics.effnet import EffNetPerceptual
from d2it.models.patchgan import adaptive_weight
from d2it.nn.posembed import sincos_2d
from d2it.perceptual import LPIPS


@pytest.fixture(scope="module")
def dual():
    torch.manual_seed(0)
    return DVAE("tiny", 32, dual=True)


def test_neighbour_copying(dual):
    x, grain = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 8, 8) < 0.5
    posterior = dual.encode(x, grain)
    z = posterior.latent()
    assert z.shape == (3, 4, 16, 16)
    fine_mean, coarse_mean = posterior.fine[:, :4], posterior.coarse[:, :4]
    fine_at = expand(grain)[:, None].expand_as(z)
    assert torch.equal(z[fine_at], fine_mean[fine_at])
    assert torch.equal(z[~fine_at], expand(coarse_mean)[~fine_at])
    # sampled latents keep the copy structure: each coarse region is one code, copied 2x2
    sampled = posterior.latent(torch.randn)
    coarse_blocks = sampled.reshape(3, 4, 8, 2, 8, 2)
    same = (coarse_blocks == coarse_blocks[:, :, :, :1, :, :1]).all(3).all(4).all(1)
    assert same[~grain].all() and not same[grain].all()


def test_kl_counts_each_used_code_once(dual):
    x, grain = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 8, 8) < 0.3
    posterior = dual.encode(x, grain)

    def kl(moments):
        mean, logvar = moments.chunk(2, 1)
        return kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)

    expected = ((kl(posterior.fine) * expand(grain)).flatten(1).sum(1)
                + (kl(posterior.coarse) * ~grain).flatten(1).sum(1))
    torch.testing.assert_close(posterior.kl(), expected, rtol=1e-5, atol=1e-4)


def test_coarse_head_gets_no_gradient_from_all_fine_maps(dual):
    dual.zero_grad()
    recon, posterior = dual(torch.rand(2, 3, 32, 32), torch.ones(2, 8, 8, dtype=torch.bool),
                            torch.randn)
    (recon.square().mean() + posterior.kl().mean()).backward()
    assert all(p.grad is None or not p.grad.any() for p in dual.encoder.coarse_head.parameters())
    assert any(p.grad is not None and p.grad.any() for p in dual.encoder.fine_head.parameters())


def test_fine_ratio_one_is_a_plain_fixed_rate_vae():
    torch.manual_seed(0)
    plain = DVAE("tiny", 32, dual=False)
    assert (plain.encoder.coarse_head is None
            and not any("coarse" in n for n, _ in plain.named_parameters()))
    assert len(plain.encoder.levels) == 2  # stops at the fine grid: nothing is computed at 2f
    x = torch.rand(2, 3, 32, 32)
    z = plain.encode(x, torch.ones(2, 8, 8, dtype=torch.bool)).latent()
    torch.testing.assert_close(z, plain.encoder(x)[0][:, :4])


def test_paper_preset_shapes():
    model = DVAE("paper", 64, dual=True)
    fine, coarse = model.encoder(torch.zeros(1, 3, 64, 64))
    # f = 8 / 16, 4 channels x 2 moments
    assert fine.shape == (1, 8, 8, 8) and coarse.shape == (1, 8, 4, 4)
    # DQ-VAE's branches: the fine head taps 256 channels at 32 px of 256, the coarse head 512 at
    # 16 px
    assert model.encoder.fine_head[0][0].body[2].in_channels == 256
    assert model.encoder.coarse_head[0][0].body[2].in_channels == 512


def test_decoder_positional_embedding_is_learnable_sincos(dual):
    pos = dual.decoder.pos_embed
    assert pos.requires_grad
    torch.testing.assert_close(pos[0].flatten(1).T, sincos_2d(pos.shape[1], 16, 16))


def test_effnet_perceptual_distance():
    perceptual = EffNetPerceptual()
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(perceptual(a, a), torch.zeros(2), atol=1e-6)
    assert (perceptual(a, b) > 0.1).all()
    assert (perceptual(a, a + 0.05 * torch.randn_like(a)) < perceptual(a, b)).all()


def test_lpips_absent_weights_are_one_clear_error(tmp_path):
    with pytest.raises(D2itError, match=r"metrics\.lpips_weights .*metrics\.vgg16_weights "
                                        r".*dvae\.perceptual: effnet"):
        LPIPS(None, str(tmp_path / "missing.pth"))


def test_lpips_reads_given_files_without_network(tmp_path):
    """Random weights with the real layout (not meaningful values): the files are read, nothing
    fetched."""
    torch.save(torchvision.models.vgg16().state_dict(), tmp_path / "vgg.pth")
    widths = [64, 128, 256, 512, 512]
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(widths)},
               tmp_path / "lin.pth")
    lpips = LPIPS(str(tmp_path / "lin.pth"), str(tmp_path / "vgg.pth"))
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    d = lpips(a, torch.rand(2, 3, 32, 32) * 2 - 1)
    assert d.shape == (2,) and (d > 0).all() and torch.allclose(lpips(a, a), torch.zeros(2))


def test_adaptive_weight_is_gradient_norm_ratio():
    w = torch.randn(3, 3, requires_grad=True)
    x = torch.randn(5, 3)
    rec, g = (x @ w).abs().mean(), -(x @ w).sum() * 0.01
    expected = torch.autograd.grad(rec, w, retain_graph=True)[0].norm() / \
        (torch.autograd.grad(g, w, retain_graph=True)[0].norm() + 1e-4)
    torch.testing.assert_close(adaptive_weight(rec, g, w, 1e4), expected)
    assert adaptive_weight(rec, g * 1e-6, w, 0.75) == 0.75
