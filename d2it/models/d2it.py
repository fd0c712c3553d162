"""The Dynamic Content Transformer: D²iT's noise predictor over the multi-grained latent.

One token per grain region (a 2x2 block of the fine latent grid, as DiT /2). The routing module
embeds a coarse region from its single code and a fine region from its 2x2 codes, adds a grain
embedding, and predicts with grain-specific heads: the coarse head's output is copied 2x2, the fine
head's is unpatchified. N - R DiT blocks make the rough prediction read by the coarse head; R
RefineNet blocks then correct it for the fine head. Each ablation of the paper is a switch.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from d2it.grain import block_mean, merge
from d2it.models.dit import DiT
from d2it.nn.transformer import DiTBlock, FinalLayer, init_dit_weights


class DynamicContentTransformer(DiT):
    def __init__(self, input_size=32, in_channels=4, hidden_size=1152, depth=28, refine_depth=2,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000,
                 learn_sigma=True, routing=True, learnable_pos=True):
        if not 0 <= refine_depth <= depth:
            raise ValueError(f"refine_depth {refine_depth} outside [0, depth={depth}]")
        super().__init__(input_size=input_size, patch_size=2, in_channels=in_channels,
                         hidden_size=hidden_size, depth=depth - refine_depth, num_heads=num_heads,
                         mlp_ratio=mlp_ratio, class_dropout_prob=class_dropout_prob,
                         num_classes=num_classes, learn_sigma=learn_sigma)
        self.routing = routing
        self.pos_embed.requires_grad_(learnable_pos)  # initialised from sin-cos either way
        self.refine_blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio)
                                            for _ in range(refine_depth)])
        if routing:
            self.coarse_embedder = nn.Linear(in_channels, hidden_size)
            self.grain_embedder = nn.Embedding(2, hidden_size)
            self.coarse_layer = FinalLayer(hidden_size, self.out_channels)
        init_dit_weights(self)
        if routing:
            nn.init.normal_(self.grain_embedder.weight, std=0.02)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, grain: torch.Tensor,
                force_drop_ids=None) -> torch.Tensor:
        """x: B x C x H x W on the fine grid; grain: bool B x H/2 x W/2 (True = fine)."""
        tokens = self.x_embedder(x)
        if self.routing:
            g = grain.flatten(1)[..., None]
            coarse = self.coarse_embedder(block_mean(x).flatten(2).transpose(1, 2))
            tokens = torch.where(g, tokens, coarse) + self.grain_embedder(g[..., 0].long())
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop_ids)
        h = tokens + self.pos_embed
        for block in self.blocks:
            h = block(h, c)
        refined = h
        for block in self.refine_blocks:
            refined = block(refined, c)
        fine = self.unpatchify(self.final_layer(refined, c))
        if not self.routing:
            return fine
        side = grain.shape[-1]
        coarse = self.coarse_layer(h, c).transpose(1, 2)
        coarse = coarse.reshape(len(x), self.out_channels, -1, side)
        return merge(fine, coarse, grain)


SIZES = {  # depth (DiT + RefineNet), RefineNet depth, hidden, heads
    "XL": (28, 2, 1152, 16),
    "L": (24, 2, 1024, 16),
    "B": (12, 2, 768, 12),
    # the CPU study: 124 wide, so that it and its 2 x 32 grain model total DiT-tiny's 1.29M
    "tiny": (4, 1, 124, 4),
}


def d2it(size: str, **kwargs) -> DynamicContentTransformer:
    """A size of SIZES; `depth` / `refine_depth` override its block counts (Table 4)."""
    depth, refine, hidden, heads = SIZES[size]
    return DynamicContentTransformer(depth=kwargs.pop("depth", depth),
                                     refine_depth=kwargs.pop("refine_depth", refine),
                                     hidden_size=hidden, num_heads=heads, **kwargs)
