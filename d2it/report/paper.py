"""The paper's numbers (paper.yaml): each table's rows with the budget they came from, the claims
a study judges and the notes its verdict quotes."""
from __future__ import annotations

from pathlib import Path

import yaml

PAPER = yaml.safe_load(Path(__file__).with_name("paper.yaml").read_text(encoding="utf-8"))


def paper_method(table: str, row_id: str) -> str | None:
    """The paper's name of a row (None for a table or row the paper does not have)."""
    row = PAPER.get(table, {}).get("rows", {}).get(row_id)
    return row["method"] if row else None
