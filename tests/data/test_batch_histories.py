"""`tasks.batch.latest_histories`: each user's newest items, worked out by hand on a tiny
sequences folder."""

from __future__ import annotations

import pandas as pd

from tasks.batch import latest_histories


def _split(path, rows):
    pd.DataFrame(rows, columns=["user_id", "history_item_ids", "target_item_id", "timestamp"]).to_parquet(path)


def test_each_users_newest_items_from_their_last_sample(tmp_path):
    _split(tmp_path / "train.parquet", [
        ("a", [1], 2, 10), ("a", [1, 2], 3, 20),
        ("b", [7], 8, 15),                       # b's only sample
        ("c", [5], 6, 30),                       # c: the same time as its valid row...
    ])
    _split(tmp_path / "valid.parquet", [("a", [1, 2, 3], 4, 40), ("c", [5, 6], 9, 30)])  # ...which is later in order
    _split(tmp_path / "test.parquet", [("a", [1, 2, 3, 4], 5, 50)])
    # The folder's dense ids are its own shuffle; the histories come back in the source's ids.
    source = {d: f"sku-{(7 * d) % 10}" for d in range(10)}
    pd.DataFrame({"item_id": list(source), "title": [f"t{d}" for d in source],
                  "source_item_id": list(source.values())}).sample(frac=1, random_state=0).to_parquet(
        tmp_path / "catalogue.parquet")
    got = latest_histories(tmp_path, max_history=3)
    assert got["user_id"].tolist() == ["a", "b", "c"]
    dense = [[3, 4, 5], [7, 8], [5, 6, 9]]  # a: the last 3 of 1..5
    assert got["history_item_ids"].tolist() == [[source[d] for d in h] for h in dense]
