"""A log as a data lake holds it: a partitioned dataset (Spark's `df.write.partitionBy(...)`,
pyarrow's `write_to_dataset(partition_cols=...)`), gzipped text parts, JSON-lines event exports
with nested fields, a job's in-progress files beside the finished ones, and table formats whose
folders are not plain datasets. The rows must be those of the same log written as one CSV file;
a partition column comes back from the folder names, a nested field by its dotted name."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError
from tasks.data import ingest, ingest_target, prepare, source_settings
from tasks.readers.parts import interaction_parts, partition_values
from tests.data.test_malformed import GOOD_INTER, GOOD_ITEMS

COLUMNS = {"user_id": "user", "item_id": "item", "timestamp": "ts"}


def _log() -> pd.DataFrame:
    rows = [line.split(",") for line in GOOD_INTER.splitlines()[1:]]
    df = pd.DataFrame(rows, columns=["user", "item", "ts", "rating"])
    return df.astype({"ts": "int64", "rating": "float64"})


def _cfg(root: Path, path: Path, columns: dict = COLUMNS, items_columns: dict | None = None) -> DataConfig:
    root.mkdir(parents=True, exist_ok=True)
    (root / "items.csv").write_text(GOOD_ITEMS)
    return DataConfig(name="lake", data_root=root, input_roots=[path.parent], k_core=0, source=SourceConfig(
        format="generic", path=str(path), items_path=str(root / "items.csv"), columns=columns,
        items_columns=items_columns or {}))


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
    (lake / "c.txt.gz").write_bytes(gzip.compress(b"notes"))  # no table: not a part
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


def _events(rows: list[list[str]], number_ids: bool) -> str:
    """GOOD_INTER's rows as a tracker exports them: one JSON object a line, the item nested."""
    return "".join(json.dumps({"user": int(u[1:]) if number_ids else u, "ts": int(ts), "rating": float(r),
                               "context": {"page": {"item": i}, "tags": ["web"]}, "event": "rated"}) + "\n"
                   for u, i, ts, r in rows)


@pytest.mark.parametrize("number_ids", [False, True], ids=["typed fields", "a field number and text"])
def test_a_json_lines_export_with_nested_fields_ingests_the_rows_of_the_csv(tmp_path, number_ids):
    """Spark's df.write.json leaves gzipped JSON-lines parts. With one type a field pyarrow reads
    them; with user ids that are numbers on some lines and text on others the file is read again
    line by line, as text: the same rows either way."""
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "log.csv").write_text(GOOD_INTER.replace("u1,", "1,").replace("u3,", "3,") if number_ids else GOOD_INTER)
    rows = [line.split(",") for line in GOOD_INTER.splitlines()[1:]]
    mixed = [[u[1:] if number_ids and u in ("u1", "u3") else u, *rest] for u, *rest in rows]
    lake = tmp_path / "lake"
    lake.mkdir()
    text = _events(mixed, number_ids=False)
    if number_ids:  # "1" -> 1: a number on some lines, "u0" text on others
        text = text.replace('"user": "1"', '"user": 1').replace('"user": "3"', '"user": 3')
    lines = text.splitlines(keepends=True)
    (lake / "part-00000.json.gz").write_bytes(gzip.compress("".join(lines[:9]).encode()))
    (lake / "part-00001.json.gz").write_bytes(gzip.compress("".join(lines[9:]).encode()))
    columns = {"user_id": "user", "item_id": "context.page.item", "timestamp": "ts", "rating": "rating"}
    expected = _ingested(_cfg(tmp_path / "a", flat / "log.csv", {**COLUMNS, "rating": "rating"}))
    cfg = _cfg(tmp_path / "b", lake, columns, items_columns={"item_id": "item"})  # (GOOD_ITEMS' name)
    pd.testing.assert_frame_equal(_ingested(cfg), expected)


def test_a_json_lines_items_file_and_errors_that_name_the_line(tmp_path):
    lake = tmp_path / "lake"
    lake.mkdir()
    rows = [line.split(",") for line in GOOD_INTER.splitlines()[1:]]
    (lake / "events.jsonl").write_text(_events(rows, number_ids=False))
    (tmp_path / "items.jsonl").write_text("".join(json.dumps({"item": {"id": line.split(",")[0]},
                                                              "name": line.split(",")[1]}) + "\n"
                                                  for line in GOOD_ITEMS.splitlines()[1:]))
    columns = {"user_id": "user", "item_id": "context.page.item", "timestamp": "ts"}
    cfg = DataConfig(name="lake", data_root=tmp_path, k_core=0, source=SourceConfig(
        format="generic", path=str(lake), items_path=str(tmp_path / "items.jsonl"),
        columns={**columns, "title": "name"}))
    with pytest.raises(DataError, match=r"items.jsonl: missing column\(s\) \['context.page.item'\] \(data.source.columns"):
        prepare(cfg)  # the items file names the item otherwise
    assert not (tmp_path / "ingested").exists()
    cfg = DataConfig.model_validate(cfg.model_dump() | {"source": cfg.source.model_dump() | {
        "items_columns": {"item_id": "item.id"}}})  # (its title is "name", columns' title)
    got = pd.read_parquet(ingest(cfg).path / "items.parquet")
    assert dict(zip(got["item_id"], got["title"], strict=True)) == {f"i{i}": f"Title {i}" for i in range(6)}

    (lake / "events.jsonl").write_text(_events(rows[:3], number_ids=False) + '{"user": "u9", "ts": 1}\n{"user": \n')
    cfg = _cfg(tmp_path / "c", lake, columns)
    with pytest.raises(DataError, match=r"events.jsonl: line 5 is not valid JSON \(Expecting value\)$"):
        prepare(cfg)
    (lake / "events.jsonl").write_text('[{"user": "u0", "ts": 1}]\n')
    with pytest.raises(DataError, match=r"line 1 is a JSON list, not an object \(the file seems to be one JSON document"):
        prepare(cfg)
    (lake / "events.jsonl").write_text(_events(rows, number_ids=False))
    with pytest.raises(DataError, match=r"column\(s\) \['context.tags'\] hold lists or records \(e.g. \['web'\]\)"):
        prepare(_cfg(tmp_path / "d", lake, {**columns, "item_id": "context.tags"}))


def test_column_mappings_name_only_our_columns_and_items_columns_joins_the_key_only_when_set(tmp_path):
    with pytest.raises(ValueError, match=r"columns maps \['product'\], which are not ours: it maps our names \(user_id, "):
        SourceConfig(format="generic", path="x.csv", columns={"product": "item_id"})  # (the wrong way round)
    with pytest.raises(ValueError, match=r"items_columns maps \['user_id'\], which are not ours"):
        SourceConfig(format="generic", path="x.csv", items_path="i.csv", items_columns={"user_id": "u"})
    with pytest.raises(ValueError, match="items_columns names the items file's columns, and there is no items_path"):
        SourceConfig(format="generic", path="x.csv", items_columns={"item_id": "sku"})
    (tmp_path / "log.csv").write_text(GOOD_INTER)
    plain = _cfg(tmp_path, tmp_path / "log.csv")
    assert "items_columns" not in source_settings(plain)  # (a profile without it keeps its ingest key)
    renamed = _cfg(tmp_path, tmp_path / "log.csv", items_columns={"item_id": "item"})
    assert source_settings(renamed)["items_columns"] == {"item_id": "item"}
    assert ingest_target(renamed)[1] != ingest_target(plain)[1]


def test_a_csv_part_written_without_a_header_line_is_said_to_be_one(tmp_path):
    """Spark's df.write.csv writes no header unless asked: the first row is then read as names."""
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / "part-00000.csv").write_text("".join(GOOD_INTER.splitlines(keepends=True)[1:]))
    with pytest.raises(DataError, match=r"part-00000.csv: missing column\(s\) \['user', 'item', 'ts'\] .*; its first "
                                        r"line reads as data \('1000000000' is a column name\): a file written without"):
        prepare(_cfg(tmp_path, lake))
    (lake / "part-00000.csv").write_text("user,item,when\nu0,i1,1000000000\n")  # a real header: no such guess
    with pytest.raises(DataError, match=r"missing column\(s\) \['ts'\] \(data.source.columns maps .*\); found"):
        prepare(_cfg(tmp_path, lake))


def test_parts_that_type_an_id_differently_make_one_item_with_one_title(tmp_path):
    """An old export wrote ids as numbers, a new one as text: item 10 is one item, and titles
    taken from the interactions give it one row in the items table."""
    lake = tmp_path / "lake"
    lake.mkdir()
    pq.write_table(pa.table({"user": pa.array([1, 2]), "item": pa.array([10, 20], pa.int32()),
                             "ts": pa.array([1_000_000_000, 1_000_000_001]), "title": ["Heat", "Fargo"]}), lake / "a.parquet")
    (lake / "b.csv").write_text("user,item,ts,title\nu3,10,1000000002,Heat (1995)\n")
    cfg = _cfg(tmp_path, lake, COLUMNS)
    cfg = DataConfig.model_validate(cfg.model_dump() | {"source": cfg.source.model_dump() | {"items_path": None}})
    items = pd.read_parquet(ingest(cfg).path / "items.parquet").sort_values("item_id", ignore_index=True)
    assert items.to_dict("list") == {"item_id": ["10", "20"], "title": ["Heat (1995)", "Fargo"]}


def test_a_parquet_parts_other_columns_are_not_read_and_an_error_names_them_all(tmp_path, monkeypatch):
    """An event table holds dozens of columns; the four mapped are the ones read."""
    lake = tmp_path / "lake"
    lake.mkdir()
    log = _log().assign(session="s", url="/x", device="phone")
    log.to_parquet(lake / "part-0.parquet", index=False)
    read = []
    real = pq.ParquetFile.read
    monkeypatch.setattr(pq.ParquetFile, "read", lambda self, columns=None, **kw: read.append(columns) or real(self, columns=columns, **kw))
    assert len(_ingested(_cfg(tmp_path, lake))) == len(log)
    assert read[0] == ["user", "item", "ts", "rating"]  # (the file's order; rating by its default name)
    with pytest.raises(DataError, match=r"missing column\(s\) \['when'\] .*; found \['user', 'item', 'ts', 'rating', "
                                        r"'session', 'url', 'device'\]"):
        prepare(_cfg(tmp_path / "again", lake, {**COLUMNS, "timestamp": "when"}))


@pytest.mark.parametrize("number_ids", [False, True], ids=["pyarrow", "line by line"])
def test_a_json_lines_parts_unmapped_fields_are_left_out_and_an_error_names_them_all(tmp_path, number_ids):
    from tasks.readers.tables import read_table

    rows = [line.split(",") for line in GOOD_INTER.splitlines()[1:]]
    text = _events(rows, number_ids=False)
    if number_ids:  # one user id a number: pyarrow refuses the file, which is then read line by line
        text = text.replace('"user": "u1"', '"user": 1', 1)
    (tmp_path / "events.jsonl").write_text(text)
    df = read_table(tmp_path / "events.jsonl", "utf-8", columns={"user", "ts", "context.page.item"})
    assert list(df.columns) == ["user", "ts", "context.page.item"] and len(df) == len(rows)
    assert df.attrs["columns"] == ["user", "ts", "rating", "context.page.item", "context.tags", "event"]
    (tmp_path / "lake").mkdir()
    (tmp_path / "events.jsonl").rename(tmp_path / "lake" / "events.jsonl")
    with pytest.raises(DataError, match=r"missing column\(s\) \['context.page.sku'\] .*; found \['user', 'ts', 'rating', "
                                        r"'context.page.item', 'context.tags', 'event'\]"):
        prepare(_cfg(tmp_path, tmp_path / "lake", {"user_id": "user", "item_id": "context.page.sku", "timestamp": "ts"}))


def test_an_items_file_in_the_folder_of_parts_is_not_read_as_a_part(tmp_path):
    folder = tmp_path / "my-data"
    folder.mkdir()
    rows = GOOD_INTER.splitlines(keepends=True)
    (folder / "orders-1.csv").write_text("".join(rows[:11]))
    (folder / "orders-2.csv").write_text("".join(rows[:1] + rows[11:]))
    (folder / "products.csv").write_text(GOOD_ITEMS)
    cfg = DataConfig(name="shop", data_root=tmp_path, k_core=0, source=SourceConfig(
        format="generic", path=str(folder), items_path=str(folder / "products.csv"), columns=COLUMNS))
    assert [f.name for f in ingest_target(cfg)[2]] == ["orders-1.csv", "orders-2.csv", "products.csv"]
    assert len(_ingested(cfg)) == len(rows) - 1


def test_an_unchanged_source_is_not_read_again_for_its_key_and_a_rewritten_one_is(tmp_path, monkeypatch):
    """The ingest key's digests come from a cache by size, mtime, ctime and inode: a scheduled run
    on an unchanged lake stats its files instead of reading them. A part rewritten with its old
    size and mtime put back (`cp -p`, `rsync -t`) changes its ctime, so it is read again."""
    import os

    from tasks import storage

    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / "a.csv").write_text(GOOD_INTER)
    (lake / "b.csv").write_text("user,item,ts\nu9,i1,1000000000\n")
    cfg = _cfg(tmp_path, lake)
    hashed = []
    real = storage.file_digest
    monkeypatch.setattr(storage, "file_digest", lambda path, *a: hashed.append(path.name) or real(path, *a))
    _, first, _ = ingest_target(cfg)
    assert sorted(hashed) == ["a.csv", "b.csv", "items.csv"]
    hashed.clear()
    assert ingest_target(cfg)[1] == first and hashed == []  # unchanged: no file read

    before = (lake / "b.csv").stat()
    (lake / "b.csv").write_text("user,item,ts\nu8,i1,1000000000\n")  # same size, another user
    os.utime(lake / "b.csv", ns=(before.st_atime_ns, before.st_mtime_ns))  # the old mtime put back
    assert (lake / "b.csv").stat().st_size == before.st_size
    _, second, _ = ingest_target(cfg)
    assert hashed == ["b.csv"] and second != first

    (tmp_path / "cache" / "source-digests.json").write_text("{not json")  # a cache that does not read: ignored
    hashed.clear()
    assert ingest_target(cfg)[1] == second and sorted(hashed) == ["a.csv", "b.csv", "items.csv"]


def test_the_digest_cache_can_be_turned_off_and_the_key_is_the_same(tmp_path, monkeypatch):
    """`data.digest_cache: false`, for a filesystem that does not keep ctime: every file is read for
    the key every time, nothing is cached, and the key is the one the cache gives."""
    from tasks import storage

    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / "a.csv").write_text(GOOD_INTER)
    cached = _cfg(tmp_path, lake)
    key = ingest_target(cached)[1]
    (tmp_path / "cache" / "source-digests.json").unlink()
    uncached = cached.model_copy(update={"digest_cache": False})
    hashed = []
    real = storage.file_digest
    monkeypatch.setattr(storage, "file_digest", lambda path, *a: hashed.append(path.name) or real(path, *a))
    assert ingest_target(uncached)[1] == key and ingest_target(uncached)[1] == key
    assert sorted(hashed) == ["a.csv", "a.csv", "items.csv", "items.csv"]
    assert not (tmp_path / "cache" / "source-digests.json").exists()


def _event_lines(n: int, change_at: int, change: dict) -> str:
    """n events of an export, nested fields and fields no mapping names among them; from line
    `change_at` on (past pyarrow's first 1 MB block) each event also has `change`'s fields."""
    return "".join(json.dumps({"user": f"u{k % 97}", "ctx": {"page": {"item": f"i{k % 13}"}, "ref": "/home"},
                               "ts": 1_700_000_000 + k, "agent": "Mozilla/5.0", "n": k % 7,
                               **(change if k >= change_at else {})}) + "\n" for k in range(n))


@pytest.mark.parametrize("change", [
    {},
    {"ts": 1_700_000_000.5},                 # a mapped integer field gets a fraction: double, as the whole file's
    {"title": "Widget"},                      # a mapped field the first block lacks, then has
    {"rating": 4.5},                          # an optional one (the generic reader asks for it) likewise
    {"rating": None},                         # ... only ever null: read as absent (the one difference)
    {"n": "seven"},                           # a field no mapping names turns to text
    {"ctx": {"page": {"item": 5}}},           # a mapped nested field turns from text to number (line by line)
], ids=["same types", "int then float", "mapped field late", "optional field late", "optional field null late",
        "unmapped turns text", "mapped turns number"])
def test_json_lines_parse_only_the_mapped_fields_and_read_what_parsing_every_field_reads(tmp_path, monkeypatch, change):
    """Only the mapped fields are parsed where the file's first block types them
    (`_json_fields_typed_by_first_block`; one it lacks, as nulls); the columns are those parsing
    every field gives, and so are their types, except where only an unmapped field varies: that
    file, which parsing every field sent to the line-by-line read (every value text), is now read
    typed; and a field first met after the first block, only ever null, is read as absent."""
    from tasks.readers import tables

    monkeypatch.setattr(tables, "MAPPED_ONLY_FROM_BYTES", 0)  # (a file this small is parsed whole otherwise)
    path = tmp_path / "events.json.gz"
    path.write_bytes(gzip.compress(_event_lines(12_000, 10_000, change).encode()))  # (1.4 MB: 10,000 lines past 1 MB)
    mapped = ["user", "ctx.page.item", "ts", "rating", "title"]  # (as the generic reader asks: all it may map)
    got = tables.read_source_table(path, "utf-8", columns=mapped).to_pandas()
    monkeypatch.setattr(tables, "_json_fields_typed_by_first_block", lambda path, columns: None)
    every_field = tables.read_source_table(path, "utf-8", columns=mapped).to_pandas()
    late = [c for c in ("rating", "title") if change.get(c) is not None]  # (the others are in every line)
    assert len(got) == 12_000 and list(got.columns) == ["user", "ctx.page.item", "ts", *late]
    if "n" in change:
        assert every_field["ts"].dtype == "string" and got["ts"].dtype == "int64"  # (typed now)
        assert got["ts"].astype(str).tolist() == every_field["ts"].tolist()
    elif change == {"rating": None}:
        assert every_field["rating"].isna().all()
        pd.testing.assert_frame_equal(got, every_field.drop(columns="rating"))
    else:
        pd.testing.assert_frame_equal(got, every_field)
    assert got.attrs["columns"][:5] == ["user", "ctx.page.item", "ctx.ref", "ts", "agent"]
