"""benchmarks/split_sample.py times two ways of reading the same sample: the old whole-table read
it keeps as the reference must return what `read_records` returns, or the ratio would compare
different work."""

from __future__ import annotations

from benchmarks import split_sample as bench
from benchmarks.training_records import write_split
from tasks import training


def test_the_whole_table_read_returns_the_records_read_a_batch_at_a_time(tmp_path, monkeypatch):
    path = tmp_path / "test.parquet"
    write_split(path, 3_000)  # 120 records a user: occurrences above 0 (popular targets repeat)
    monkeypatch.setattr(training, "READ_BATCH_ROWS", 256)  # several batches
    for limit, seed in [(40, 0), (40, 1), (2_999, 2)]:
        whole, batches = bench.read_whole(path, limit, seed), training.read_records(path, limit, seed)
        assert len(whole) == limit and whole == batches
    assert max(r["occurrence"] for r in whole) > 0
