"""Paper tables: the paper's values verbatim beside ours, ours only under protocol-named columns."""
import json

import numpy as np
import pytest
import torch

from baselines.dit import dit
from d2it.errors import D2itError
from d2it.metrics.evaluate import metric_key
from d2it.metrics.extractors import Extractor
from d2it.report.tables import PAPER, paper_table, sample_sets


EFFNET = Extractor("effnet-lite0", "effnet", ("pool", "logits"), None, None, False)
INCEPTION = Extractor("inception-v3-compat", "inception", ("2048", "logits_unbiased"), None, None, True)


def write_metrics(folder, name, fd, extractor=EFFNET, n=1000):
    keys = {m: metric_key(m, extractor, n) for m in ("fd", "is", "kid", "precision", "recall")}
    data = {keys["fd"]: fd, keys["fd"] + "_ci95": [fd - 1, fd + 1], keys["is"]: 2.0, keys["kid"]: 0.1,
            keys["precision"]: 0.5, keys["recall"]: 0.4, "keys": keys, "protocol": "test protocol",
            "sampling": {"params_M": 1.5, "cfg_scale": 1.0, "grain_source": None}}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_table_puts_paper_values_and_ours_in_separate_named_columns(tmp_path):
    files = {name: write_metrics(tmp_path, name, 100.0 + i) for i, name in enumerate(sample_sets("table2"))}
    table = paper_table("table2", files)
    assert list(table["method"]) == [row["method"] for row in PAPER["table2"]["rows"]]
    assert list(table["paper FID-50K"]) == [9.62, 5.74, 2.27, 1.73]  # the paper's, verbatim
    assert list(table["fd_effnet_1k"]) == [100.0, 101.0, 102.0, 103.0]
    assert list(table["fd_effnet_1k_ci95_low"]) == [99.0, 100.0, 101.0, 102.0]
    assert "fid50k" not in table.columns  # an EfficientNet FD never goes under an FID name


def test_inception_at_the_paper_count_gets_the_paper_metric_name(tmp_path):
    files = {name: write_metrics(tmp_path, name, 5.0, INCEPTION, 50_000) for name in sample_sets("table2")}
    assert list(paper_table("table2", files)["fid50k"]) == [5.0] * 4


def test_missing_sample_set_is_named(tmp_path):
    files = {name: write_metrics(tmp_path, name, 1.0) for name in sample_sets("table5")[1:]}
    with pytest.raises(D2itError, match="no metrics for sample set 'd2it_random'"):
        paper_table("table5", files)
    with pytest.raises(D2itError, match="no paper table 'table9'"):
        paper_table("table9", files)


def test_paper_dit_sizes_match_the_official_parameter_count():
    """The paper's DiT-XL 675 M is DiT-XL/2 as the official code builds it (675,129,632)."""
    with torch.device("meta"):  # shapes only
        xl = sum(p.numel() for p in dit("XL/2").parameters())
    for row in PAPER["table2"]["rows"]:
        if row["method"].startswith("DiT-XL"):
            assert row["params_M"] == round(xl / 1e6)


def test_class_rows_take_each_class_in_turn():
    from d2it.report.figures import class_rows

    labels = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2])
    images = np.arange(9)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    picked, grains = class_rows(images, np.zeros((9, 2, 2), bool), labels, per_class=2)
    assert list(labels[picked[:, 0, 0, 0]]) == [0, 0, 1, 1, 2, 2] and len(grains) == 6
    assert list(picked[:, 0, 0, 0]) == [1, 3, 2, 5, 0, 4]  # the first of each class, in sample order
    with pytest.raises(D2itError, match=r"classes \[0, 1, 2\] have fewer than 4 samples"):
        class_rows(images, np.zeros((9, 2, 2), bool), labels, per_class=4)
