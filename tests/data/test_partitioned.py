"""A log as a data lake holds it: a partitioned dataset (Spark's `df.write.partitionBy(...)`,
pyarrow's `write_to_dataset(partition_cols=...)`), gzipped text parts, a job's in-progress files
beside the finished ones, and table formats whose folders are not plain datasets. The rows must
be those of the same log written as one file; a partition column comes back from the folder names."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError
from tasks.data import ingest, ingest_target, prepare
from tasks.readers import interaction_parts, partition_values
from tests.data.test_malformed import GOOD_INTER, GOOD_ITEMS

COLUMNS = {"user_id": "user", "item_id": "item", "timestamp": "ts"}


def _log() -> pd.DataFrame:
    rows = [line.split(",") for line in GOOD_INTER.splitlines()[1:]]
    df = pd.DataFrame(rows, columns=["user", "item", "ts", "rating"])
    return df.astype({"ts": "int64", "rating": "float64"})


def _cfg(root: Path, path: Path, columns: dict = COLUMNS) -> DataConfig:
    root.mkdir(parents=True, exist_ok=True)
    (root / "items.csv").write_text(GOOD_ITEMS)
    return DataConfig(name="lake", data_root=root, input_roots=[path.parent], k_core=0, source=SourceConfig(
        format="generic", path=str(path), items_path=str(root / "items.csv"), columns=columns))


def _ingested(cfg: DataConfig) -> pd.DataFrame:
    rows = pd.read_parquet(ingest(cfg).path / "interactions.parquet")
    return rows.sort_values(["user_id", "timestamp"], ignore_index=True)


def test_a_partitioned_parquet_dataset_ingests_the_rows_of_the_flat_file(tmp_path):
    """pyarrow's write_to_dataset moves the partition columns into the folder names
    (`day=.../user=.../<uuid>-0.parquet`); the user column, mapped, comes back from them."""
    flat = tmp_path / "flat"
    flat.mkdir()
    _log().to_csv(flat / "log.csv", index=False)
    log = _log().assign(day=lambda d: pd.to_datetime(d["ts"], unit="s").dt.strftime("%Y-%m-%d"))
    lake = tmp_path / "lake" / "events"
    pq.write_to_dataset(pa.Table.from_pandas(log, preserve_index=False), lake, partition_cols=["day", "user"])
    assert "user" not in pq.read_schema(next(lake.rglob("*.parquet"))).names  # only in the folder names
    (lake / "_SUCCESS").write_text("")

    expected = _ingested(_cfg(tmp_path / "a", flat / "log.csv"))
    got = _ingested(_cfg(tmp_path / "b", lake))
    pd.testing.assert_frame_equal(got, expected)
    assert len(interaction_parts(lake)) == len(log.groupby(["day", "user"]))


def test_a_mapped_column_may_be_a_partition_and_its_values_are_decoded(tmp_path):
    """Spark escapes ':' in a folder name ("10%3A00"); the timestamp lives only in the folder names."""
    lake = tmp_path / "lake"
    for when, user in [("2026-12-01 10%3A00%3A00", "u1"), ("2026-12-02 08%3A30%3A00", "u2")]:
        part = lake / f"at={when}" / "part-00000.csv"
        part.parent.mkdir(parents=True)
        part.write_text(f"user,item\n{user},i1\n{user},i2\n")
    cfg = _cfg(tmp_path, lake, {"user_id": "user", "item_id": "item", "timestamp": "at"})
    got = _ingested(cfg)
    stamp = {"u1": pd.Timestamp("2026-12-01 10:00:00", tz="UTC").timestamp(),
             "u2": pd.Timestamp("2026-12-02 08:30:00", tz="UTC").timestamp()}
    assert got["timestamp"].tolist() == [stamp["u1"]] * 2 + [stamp["u2"]] * 2
    assert partition_values(lake / "a=1" / "2026" / "b=x%2Fy" / "f.csv", lake) == {"a": "1", "b": "x/y"}


def test_a_column_in_the_file_keeps_its_values_over_the_folder_name(tmp_path):
    lake = tmp_path / "lake"
    part = lake / "user=u9" / "part-0.csv"
    part.parent.mkdir(parents=True)
    part.write_text(GOOD_INTER)
    got = _ingested(_cfg(tmp_path, lake))
    assert sorted(got["user_id"].unique()) == ["u0", "u1", "u2", "u3"]


def test_a_jobs_files_in_progress_are_not_read_and_parts_are_found_at_any_depth(tmp_path):
    lake = tmp_path / "lake"
    rows = GOOD_INTER.splitlines()
    finished = {"y=2001/m=09/part-0.csv": rows[:11], "y=2001/m=09/d=09/part-1.csv.gz": rows[:1] + rows[11:]}
    for name, lines in finished.items():
        (lake / name).parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(lines) + "\n"
        (lake / name).write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    broken = "user,item,ts\nu0,i1,not a time\n"  # would fail the read if it were read
    for name in ["_temporary/0/_temporary/attempt_1/y=2001/part-9.csv", ".spark-staging-1/part-9.csv",
                 "y=2001/.part-2.csv", "y=2001/_part-3.csv", "y=2001/m=09/part-0.csv.crc", "notes.txt"]:
        (lake / name).parent.mkdir(parents=True, exist_ok=True)
        (lake / name).write_text(broken)
    assert [p.relative_to(lake).as_posix() for p in interaction_parts(lake)] == sorted(finished, key=lambda n: n.split("/"))
    got = _ingested(_cfg(tmp_path, lake))
    assert len(got) == len(rows) - 1 and set(got.columns) >= {"user_id", "item_id", "timestamp"}


def test_gzipped_text_parts_are_read_with_the_separator_of_their_inner_suffix(tmp_path):
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / "a.tsv.gz").write_bytes(gzip.compress(GOOD_INTER.replace(",", "\t").encode()))
    (lake / "b.csv.gz").write_bytes(gzip.compress(GOOD_INTER.replace(",1", ",2").replace("user,item,ts,rating", "user,item,ts,rating").encode()))
    (lake / "c.json.gz").write_bytes(gzip.compress(b"{}"))  # no table: not a part
    assert [p.name for p in interaction_parts(lake)] == ["a.tsv.gz", "b.csv.gz"]
    assert len(_ingested(_cfg(tmp_path, lake))) == 2 * len(_log())


def test_a_part_moved_to_another_partition_is_a_new_ingest(tmp_path):
    """The same bytes under `day=2` are other rows than under `day=1`: the key names the path."""
    lake = tmp_path / "lake"
    part = lake / "user=u7" / "part-0.csv"
    part.parent.mkdir(parents=True)
    part.write_text("item,ts\ni1,1000000000\ni2,1000000100\n")
    cfg = _cfg(tmp_path, lake)
    before, fp_before, _ = ingest_target(cfg)
    shutil.move(lake / "user=u7", lake / "user=u8")
    after, fp_after, _ = ingest_target(cfg)
    assert fp_before != fp_after
    assert _ingested(cfg)["user_id"].unique().tolist() == ["u8"]


def test_a_null_partition_of_a_mapped_column_is_named_with_its_part(tmp_path):
    lake = tmp_path / "lake"
    part = lake / "user=__HIVE_DEFAULT_PARTITION__" / "part-0.csv"
    part.parent.mkdir(parents=True)
    part.write_text("item,ts\ni1,1000000000\n")
    with pytest.raises(DataError, match=r"part-0.csv: 1 row\(s\) without a value in \['user', 'item', 'ts'\]"):
        prepare(_cfg(tmp_path, lake))


@pytest.mark.parametrize(("mark", "what"), [("_delta_log/00000000000000000000.json", "a Delta Lake table"),
                                            ("metadata/v1.metadata.json", "an Apache Iceberg table"),
                                            (".hoodie/hoodie.properties", "an Apache Hudi table")])
def test_a_table_format_folder_is_refused_before_anything_is_written(tmp_path, mark, what):
    """Their folders keep the files of removed rows next to the current ones: reading every
    Parquet file there would bring deleted rows back."""
    table = tmp_path / "table"
    (table / mark).parent.mkdir(parents=True)
    (table / mark).write_text("{}")
    _log().to_parquet(table / "part-0.parquet")
    with pytest.raises(DataError, match=f"table: {what} .* export the table's current version as Parquet"):
        prepare(_cfg(tmp_path, table))
    assert not (tmp_path / "ingested").exists()


def test_a_folder_named_metadata_without_iceberg_metadata_is_read_as_parts(tmp_path):
    lake = tmp_path / "lake"
    (lake / "metadata").mkdir(parents=True)
    (lake / "metadata" / "part-0.csv").write_text(GOOD_INTER)
    assert len(_ingested(_cfg(tmp_path, lake))) == len(_log())
