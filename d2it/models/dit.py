"""The DiT architecture (Peebles & Xie, 2023): patch embedding, fixed sin-cos positions, adaLN-Zero
blocks, learned-sigma output. The DiT baseline, the Dynamic Grain Transformer and (by subclassing)
the Dynamic Content Transformer are all built on it; names follow facebookresearch/DiT."""
from __future__ import annotations

import torch
import torch.nn as nn

from d2it.nn.posembed import sincos_2d
from d2it.nn.transformer import (DiTBlock, FinalLayer, LabelEmbedder, PatchEmbed, TimestepEmbedder,
                                  init_dit_weights)

SIZES = {  # depth, hidden, heads (DiT's models.py); tiny is the CPU study's
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
    "tiny": (4, 128, 4),  # ~1.3M parameters at 64 tokens
}


class DiT(nn.Module):
    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000,
                 learn_sigma=True):
        super().__init__()
        self.in_channels, self.patch_size = in_channels, patch_size
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_classes = num_classes
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        grid = input_size // patch_size
        # Fixed sin-cos table, kept as a frozen parameter so the official state dicts load as they
        # are.
        self.pos_embed = nn.Parameter(sincos_2d(hidden_size, grid, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio)
                                     for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size * patch_size * self.out_channels)
        init_dit_weights(self)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, c = self.patch_size, self.out_channels
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                force_drop_ids=None) -> torch.Tensor:
        """x: B x C x H x W latents, t: B timesteps, y: B labels -> B x out_channels x H x W."""
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop_ids)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))
