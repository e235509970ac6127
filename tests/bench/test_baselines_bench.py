"""benchmarks/baselines.py: the baselines' metrics on a split, checked on rows computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.baselines import split_metrics
from cft_core.ranking import Transitions


def test_split_metrics_by_hand(tmp_path):
    """Four items; popularity order 2, 0, 1, 3. In training 1 was followed by 3. Row 0 (newest 1,
    target 3): markov rank 0, popularity rank 3. Row 1 (newest 0, target 2): no transitions from
    0, so both rank 2 first."""
    titles = ["Anvil", "Bolt", "Crane", "Drill"]
    pd.DataFrame({"item_id": range(4), "title": titles}).to_parquet(tmp_path / "catalogue.parquet")
    pd.DataFrame({"history_item_ids": [[1], [0]], "target_title": ["Drill", "Crane"]}).to_parquet(
        tmp_path / "valid.parquet")
    counts = np.array([3, 2, 5, 0])
    got = split_metrics(tmp_path, "valid", counts, Transitions.count([1], [3], 4))
    assert got["rows"] == 2
    assert got["metrics"]["markov"]["NDCG@10"] == pytest.approx(1.0)
    assert got["metrics"]["most_popular"]["NDCG@10"] == pytest.approx((1 / math.log2(3 + 2) + 1.0) / 2)
    assert got["metrics"]["most_popular"]["HR@5"] == 1.0
    diff, low, high = got["markov_minus_popular_ndcg10"]
    assert diff == pytest.approx((1 - 1 / math.log2(5)) / 2) and low <= diff <= high
