"""`tasks.batch.latest_histories`: each user's newest items, worked out by hand on a tiny
ingested interactions file."""

from __future__ import annotations

import pandas as pd

from tasks.batch import latest_histories


def _interactions(path, rows):
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(rating=None).to_parquet(path)
    return path


def test_each_users_newest_items_in_the_window(tmp_path):
    path = _interactions(tmp_path / "interactions.parquet", [
        # a: five items, in file order other than time order; the newest three are wanted
        ("a", "sku-5", 50), ("a", "sku-1", 10), ("a", "sku-3", 30), ("a", "sku-2", 20), ("a", "sku-4", 40),
        ("b", "sku-9", 15),                                   # b: one interaction (k-core does not apply)
        ("c", "sku-8", 30), ("c", "sku-6", 30), ("c", "sku-7", 5),  # c: a tie at 30, broken by item id
        ("d", "sku-1", 99),                                   # d: only after the window's end
        ("e", "sku-2", 1),                                    # e: only before the window's start
    ])
    got = latest_histories(path, (5, 60), max_history=3)
    assert got["user_id"].tolist() == ["a", "b", "c"]
    assert got["history_item_ids"].tolist() == [["sku-3", "sku-4", "sku-5"], ["sku-9"], ["sku-7", "sku-6", "sku-8"]]


def test_an_open_window_and_a_window_that_cuts_a_users_newest_items(tmp_path):
    path = _interactions(tmp_path / "interactions.parquet", [
        ("u1", "i1", 100), ("u1", "i2", 200), ("u1", "i3", 300), ("u2", "i3", 150)])
    everything = latest_histories(path, (None, None), max_history=10)
    assert everything["history_item_ids"].tolist() == [["i1", "i2", "i3"], ["i3"]]
    # The window ends at 300 (exclusive): u1's newest item is not yet seen, as of then.
    assert latest_histories(path, (None, 300), max_history=10)["history_item_ids"].tolist() == [["i1", "i2"], ["i3"]]
    assert latest_histories(path, (160, None), max_history=10)["user_id"].tolist() == ["u1"]


def test_seen_items_are_each_users_items_once_sorted(tmp_path):
    path = _interactions(tmp_path / "interactions.parquet", [
        ("u1", "i9", 10), ("u1", "i10", 20), ("u1", "i9", 30), ("u2", "i2", 5), ("u1", "i1", 99)])
    got = latest_histories(path, (None, 50), max_history=2)
    assert got["history_item_ids"].tolist() == [["i10", "i9"], ["i2"]]
    assert got["seen_item_ids"].tolist() == [["i10", "i9"], ["i2"]]  # i9 once; "i10" < "i9" as text; i1 after the window
    empty = latest_histories(path, (1000, None), max_history=2)
    assert list(empty.columns) == ["user_id", "history_item_ids", "seen_item_ids"] and empty.empty


def test_histories_equal_a_loop_per_user(tmp_path):
    """Random users, items and times with ties and repeats: each user's newest items (ties by item
    id) and seen items, as a loop over each user's rows writes them."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = [(f"u{rng.integers(30)}", f"i{rng.integers(25)}", int(rng.integers(40))) for _ in range(700)]
    path = _interactions(tmp_path / "interactions.parquet", rows)
    got = latest_histories(path, (5, 35), max_history=4)
    expected = {}
    for user, item, ts in rows:
        if 5 <= ts < 35:
            expected.setdefault(user, []).append((ts, item))
    assert got["user_id"].tolist() == sorted(expected)
    assert got["history_item_ids"].tolist() == [[i for _, i in sorted(expected[u])[-4:]] for u in sorted(expected)]
    assert got["seen_item_ids"].tolist() == [sorted({i for _, i in expected[u]}) for u in sorted(expected)]
