"""Random generators keyed by what a draw is for, so a number never depends on how work is split."""
from __future__ import annotations

import hashlib

import torch


def generator(*key) -> torch.Generator:
    """A CPU generator seeded by the sha256 of the key's parts, e.g. (seed, "noise", i)."""
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
