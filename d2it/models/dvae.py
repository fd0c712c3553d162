"""Stage 1: the Dynamic VAE (KL-regularised, two grains).

A hierarchical encoder gives posterior moments at the fine factor f and the coarse factor 2f; the
grain map picks one per region and coarse codes are copied 2x2 into the fine grid (neighbour
copying). A learned positional embedding (sin-cos init) is added to the decoder's input features
so it can tell the four copies of a coarse code apart. With fine_ratio = 1 no coarse head is built:
a plain fixed-rate VAE at factor f, the DiT baseline's autoencoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from d2it.grain import expand, merge
from d2it.nn.conv import Downsample, Upsample, mid_block, norm, stage
from d2it.nn.posembed import sincos_2d

# Architecture presets. ch_mult has one entry per level at factors 1, 2, 4, ..., 2f (the coarse
# grid); attention runs at the listed downsampling factors.
PRESETS = {
    # CPU study: 32 px -> 16x16x4 latent (64 DiT/2 tokens), ~0.17 s per batch-32 step on 2 cores.
    "tiny": dict(fine_factor=2, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, attn_factors=(),
                 latent_channels=4),
    # DQ-VAE's dual-grain encoder (ch 128, mult [1,1,2,2,4], attention at 16 and 32 px of 256).
    "paper": dict(fine_factor=8, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                  attn_factors=(8, 16), latent_channels=4),
}


def head(cin: int, cout: int) -> nn.Sequential:
    """Mid block then GroupNorm, SiLU, 3x3 conv to the posterior moments (mean, log-variance)."""
    return nn.Sequential(mid_block(cin), norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))


class Encoder(nn.Module):
    def __init__(self, *, fine_factor, ch, ch_mult, num_res_blocks, attn_factors, latent_channels,
                 dual):
        super().__init__()
        if 2 ** (len(ch_mult) - 1) != 2 * fine_factor:
            raise ValueError(f"ch_mult needs {int(math.log2(fine_factor)) + 2} levels "
                             f"for fine factor {fine_factor}")
        self.fine_level = int(math.log2(fine_factor))
        # a fixed-rate VAE stops at the fine grid
        last = len(ch_mult) - 1 if dual else self.fine_level
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.levels = nn.ModuleList()
        cin = ch
        for i in range(last + 1):
            self.levels.append(nn.Sequential(stage(cin, widths[i], num_res_blocks,
                                                   2**i in attn_factors),
                                             Downsample(widths[i]) if i < last else nn.Identity()))
            cin = widths[i]
        self.fine_head = head(widths[self.fine_level], 2 * latent_channels)
        self.coarse_head = head(widths[-1], 2 * latent_channels) if dual else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, fine = self.conv_in(x), None
        for i, level in enumerate(self.levels):
            h = level[0](h)
            if i == self.fine_level:
                fine = self.fine_head(h)
            h = level[1](h)
        return fine, self.coarse_head(h) if self.coarse_head is not None else None


class Decoder(nn.Module):
    def __init__(self, *, fine_factor, ch, ch_mult, num_res_blocks, attn_factors, latent_channels,
                 latent_size):
        super().__init__()
        fine_level = int(math.log2(fine_factor))
        widths = [ch * m for m in ch_mult[:fine_level + 1]]
        self.conv_in = nn.Conv2d(latent_channels, widths[-1], 3, padding=1)
        pos = sincos_2d(widths[-1], latent_size, latent_size).T.reshape(1, widths[-1], latent_size,
                                                                        latent_size)
        self.pos_embed = nn.Parameter(pos)
        self.mid = mid_block(widths[-1])
        layers, cin = [], widths[-1]
        for i in reversed(range(fine_level + 1)):
            layers.append(stage(cin, widths[i], num_res_blocks + 1, 2**i in attn_factors))
            layers.append(Upsample(widths[i]) if i > 0 else nn.Identity())
            cin = widths[i]
        self.up = nn.Sequential(*layers)
        self.conv_out = nn.Sequential(norm(cin), nn.SiLU(), nn.Conv2d(cin, 3, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.up(self.mid(self.conv_in(z) + self.pos_embed)))


@dataclass
class Posterior:
    """Diagonal Gaussians at both grains; the grain map decides which one each region uses."""
    fine: torch.Tensor  # B x 2C x h x w (mean, log-variance)
    coarse: torch.Tensor | None  # B x 2C x h/2 x w/2, None for a fixed-rate VAE
    grain: torch.Tensor  # bool B x h/2 x w/2, True = fine

    @staticmethod
    def _split(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    def _draw(self, moments: torch.Tensor, randn) -> torch.Tensor:
        mean, logvar = self._split(moments)
        return mean if randn is None else mean + torch.exp(0.5 * logvar) * randn(mean.shape)

    def latent(self, randn=None) -> torch.Tensor:
        """Merged fine-grid latent: the posterior mean, or a sample with noise from randn(shape).
        Coarse codes are drawn on the coarse grid, then copied 2x2."""
        fine = self._draw(self.fine, randn)
        if self.coarse is None:
            return fine
        return merge(fine, self._draw(self.coarse, randn), self.grain)

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) per image, summed over the latents actually used, each coarse code once."""
        def kl_map(moments):
            mean, logvar = self._split(moments)
            return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(1)

        fine_used = expand(self.grain).float()
        total = (kl_map(self.fine) * fine_used).flatten(1).sum(1)
        if self.coarse is not None:
            total = total + (kl_map(self.coarse) * (~self.grain).float()).flatten(1).sum(1)
        return total


class DVAE(nn.Module):
    def __init__(self, preset: str, resolution: int, dual: bool):
        super().__init__()
        arch = PRESETS[preset]
        self.fine_factor = arch["fine_factor"]
        self.latent_channels = arch["latent_channels"]
        self.dual = dual
        common = {k: arch[k] for k in ("fine_factor", "ch", "ch_mult", "num_res_blocks",
                                       "attn_factors", "latent_channels")}
        self.encoder = Encoder(**common, dual=dual)
        self.decoder = Decoder(**common, latent_size=resolution // self.fine_factor)

    def encode(self, x: torch.Tensor, grain: torch.Tensor) -> Posterior:
        fine, coarse = self.encoder(x)
        return Posterior(fine, coarse, grain)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, grain: torch.Tensor, randn=None):
        """Reconstruction from a posterior sample (noise from randn(shape)) or, without randn, the
        mean."""
        posterior = self.encode(x, grain)
        return self.decode(posterior.latent(randn)), posterior

    def last_layer(self) -> torch.Tensor:
        """Weight the adaptive GAN weight differentiates against."""
        return self.decoder.conv_out[-1].weight
