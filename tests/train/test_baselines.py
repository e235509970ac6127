"""What the simple baselines count from a window's training split (tasks/baselines.py), against a
loop over the records, and the cache that counts them once per window."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks import baselines


def _by_loop(sequences):
    """(counts [I], {(newest history item, target): times}) from the records, one at a time."""
    records = pq.read_table(sequences / "train.parquet", columns=["history_item_ids", "target_item_id"]).to_pylist()
    size = pq.read_metadata(sequences / "catalogue.parquet").num_rows
    counts = np.zeros(size, dtype=np.int64)
    for r in records:
        counts[r["target_item_id"]] += 1
    return counts, Counter((r["history_item_ids"][-1], r["target_item_id"]) for r in records)


def _pairs(transitions, size):
    return {(i, int(j)): int(t) for i in range(size) for j, t in zip(*transitions.of(i), strict=True)}


@pytest.fixture
def window(small_sequences, tmp_path):
    """A private copy of the session's sequences folder (the cache writes into it)."""
    return shutil.copytree(small_sequences[0], tmp_path / small_sequences[0].name,
                           ignore=shutil.ignore_patterns("baselines"))


def test_window_counts_equal_a_loop_over_the_records_and_are_counted_once(window, monkeypatch):
    counts, transitions = baselines.window_counts(window)
    expected_counts, expected_pairs = _by_loop(window)
    assert counts.tolist() == expected_counts.tolist() and counts.sum() > 0
    assert _pairs(transitions, len(counts)) == dict(expected_pairs)
    assert len(list((window / "baselines").iterdir())) == 1  # kept, in one folder

    def recount(_):
        raise AssertionError("counted again")

    monkeypatch.setattr(baselines, "train_counts", recount)
    monkeypatch.setattr(baselines, "train_transitions", recount)
    again_counts, again = baselines.window_counts(window)  # read from the folder
    assert again_counts.tolist() == counts.tolist()
    assert _pairs(again, len(counts)) == dict(expected_pairs)


def test_a_rewritten_training_split_is_counted_again(window):
    first, _ = baselines.window_counts(window)
    train = pq.read_table(window / "train.parquet")
    pq.write_table(train.slice(0, train.num_rows // 2), window / "train.parquet")
    halved, transitions = baselines.window_counts(window)
    expected_counts, expected_pairs = _by_loop(window)
    assert halved.tolist() == expected_counts.tolist() and halved.sum() < first.sum()
    assert _pairs(transitions, len(halved)) == dict(expected_pairs)


def test_a_folder_that_cannot_be_written_still_gets_its_counts(window, monkeypatch, caplog):
    def read_only(_):
        raise PermissionError(13, "Permission denied", str(window / "baselines"))

    monkeypatch.setattr(baselines, "atomic_dir", read_only)
    counts, _ = baselines.window_counts(window)
    assert counts.tolist() == _by_loop(window)[0].tolist()
    assert not (window / "baselines").exists()
    assert "are not kept" in caplog.text and "Permission denied" in caplog.text
