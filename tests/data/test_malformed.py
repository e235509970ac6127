"""Malformed inputs: each fails with a message naming the problem and leaves no partial output.

Read errors leave nothing at all under the data root's stage folders; validation failures leave
the ingested tables and their validation.json report, and no sequences.
"""

import gzip
import json
import pickle

import pytest

from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError, DataValidationError
from tasks.data import prepare
from tasks.readers.amazon import clean_amazon_title

GOOD_INTER = "user,item,ts,rating\n" + "".join(
    f"u{u},i{(u + k) % 6},{1_000_000_000 + 1000 * k + u},{1 + (u + k) % 5}\n" for u in range(4) for k in range(5)
)
GOOD_ITEMS = "item,title\n" + "".join(f"i{i},Title {i}\n" for i in range(6))


def _write(root, inter: str | bytes = GOOD_INTER, items: str | bytes = GOOD_ITEMS, inter_name="inter.csv"):
    src = root / "raw"
    src.mkdir(parents=True, exist_ok=True)
    for name, content in ((inter_name, inter), ("items.csv", items)):
        (src / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return DataConfig(
        name="bad", data_root=root, k_core=0,
        source=SourceConfig(format="generic", path=str(src / inter_name), items_path=str(src / "items.csv"),
                            columns={"user_id": "user", "item_id": "item", "timestamp": "ts"}),
    )


def test_a_mapped_rating_column_must_exist(tmp_path):
    # Ratings are optional, but a rating column the mapping names is meant: a misspelt name used to
    # be read as "no ratings", silently skipping the rating range check.
    cfg = _write(tmp_path)
    cfg = cfg.model_copy(update={"source": cfg.source.model_copy(
        update={"columns": {**cfg.source.columns, "rating": "stars"}})})
    with pytest.raises(DataError, match=r"inter.csv: missing column\(s\) \['stars'\] \(data.source.columns maps rating"):
        prepare(cfg)
    assert _stage_dirs(tmp_path) == []


def _stage_dirs(root):
    return sorted(p.relative_to(root).as_posix() for d in ("ingested", "sequences") for p in (root / d).glob("*"))


def test_the_base_dataset_is_good(tmp_path):
    _, seq, manifest = prepare(_write(tmp_path))
    assert manifest["stats"]["interactions"] == 20 and (seq.path / "train.parquet").is_file()


READ_ERRORS = {
    "missing column": (dict(inter=GOOD_INTER.replace(",ts,", ",when,")), r"missing column\(s\) \['ts'\]"),
    "timestamp not a number": (dict(inter=GOOD_INTER.replace("1000000000,", "yesterday,", 1)), r"column 'ts' has 1 value\(s\) that are not timestamps"),
    "rating not a number": (dict(inter=GOOD_INTER.replace(",1\n", ",five\n", 1)), r"column 'rating' has 1 non-numeric"),
    "non-UTF-8 bytes": (dict(inter=GOOD_INTER.encode().replace(b"u1,", b"u\xff\xfe,", 1)), r"not valid utf-8 text at byte \d+ \(line \d+\)"),
    "empty file": (dict(inter=""), r"inter.csv: file is empty"),
    "header-only file": (dict(inter="user,item,ts,rating\n"), r"has a header but no rows"),
    "items file missing its title column": (dict(items="item,name\ni0,x\n"), r"items.csv: missing column\(s\) \['title'\]"),
    "truncated gzip": (dict(inter=gzip.compress(GOOD_INTER.encode())[:40], inter_name="inter.csv.gz"), r"corrupt or truncated gzip"),
    "pickle file": (dict(inter=pickle.dumps({"a": 1}), inter_name="inter.csv"), r"looks like a pickle"),
    "corrupt parquet": (dict(inter=b"PAR1 not really", inter_name="inter.parquet"), r"not a readable Parquet file"),
    "null user id": (dict(inter=GOOD_INTER.replace("u2,i2,", ",i2,", 1)),  # u2's first row: after u0's and u1's five
                     r"inter.csv: 1 row\(s\) without a value in \['user', 'item', 'ts'\], e.g. lines \[12\]; "
                     r"the first: \{'user': None, 'item': 'i2', 'ts': '1000000002'\}$"),
}


@pytest.mark.parametrize("case", sorted(READ_ERRORS))
def test_read_errors(tmp_path, case):
    kwargs, pattern = READ_ERRORS[case]
    cfg = _write(tmp_path, **kwargs)
    with pytest.raises(DataError, match=pattern):
        prepare(cfg)
    assert _stage_dirs(tmp_path) == [], "no output folder after a read error"
    assert not list(tmp_path.rglob(".tmp-*")), "no temporary leftovers"


def _rows(*extra: str, drop_first: bool = False) -> str:
    lines = GOOD_INTER.splitlines()
    return "\n".join(lines[:1] + lines[2 if drop_first else 1 :] + list(extra)) + "\n"


VALIDATION_ERRORS = {
    "null title": (dict(items=GOOD_ITEMS.replace("Title 3", "")), "items.title: expect_column_values_to_not_be_null"),
    "absurdly long title": (dict(items=GOOD_ITEMS.replace("Title 3", "x" * 600)), "items.title: expect_column_value_lengths_to_be_between"),
    "duplicate item ids": (dict(items=GOOD_ITEMS + "i2,Other\n"), "items.item_id: expect_column_values_to_be_unique"),
    "unknown item id": (dict(inter=_rows("u0,i99,1000000500,3")), "interactions.item_id_not_in_items: expect_column_values_to_be_null failed: 1 of 21 rows; e.g. ['i99']"),
    "negative timestamp": (dict(inter=_rows("u0,i1,-5,3")), "interactions.timestamp: expect_column_values_to_be_between"),
    "future timestamp": (dict(inter=_rows("u0,i1,4102444800,3")), "interactions.timestamp: expect_column_values_to_be_between"),
    "rating out of range": (dict(inter=_rows("u0,i1,1000000700,7")), "interactions.rating: expect_column_values_to_be_between"),
    "duplicate rows": (dict(inter=_rows(GOOD_INTER.splitlines()[1])), "interactions.['user_id', 'item_id', 'timestamp']: expect_compound_columns_to_be_unique"),
}


@pytest.mark.parametrize("case", sorted(VALIDATION_ERRORS))
def test_validation_errors(tmp_path, case):
    kwargs, expected = VALIDATION_ERRORS[case]
    cfg = _write(tmp_path, **kwargs)
    with pytest.raises(DataValidationError) as err:
        prepare(cfg)
    msg = str(err.value)
    assert expected in msg and "failed" in msg
    # counts and the report location are in the message; the report is on disk, nothing downstream
    assert "rows" in msg or "observed" in msg
    report = json.loads(err.value.report_path.read_text())
    assert not report["success"] and report["failures"]
    assert all(d.startswith("ingested/") for d in _stage_dirs(tmp_path)), "no sequences after a failed validation"


def test_too_little_data_for_the_splits_is_named_before_anything_is_built(tmp_path):
    """Two users with two interactions each: two samples, which a 0.8/0.1/0.1 chronological split
    cannot give a validation split (it went to validation as a table of no rows before)."""
    two_each = "user,item,ts,rating\n" + "".join(f"u{u},i{k},{1_000_000_000 + 1000 * k + u},3\n"
                                                  for u in range(2) for k in range(2))
    with pytest.raises(DataError, match=r"bad: cannot build sequences: the valid split\(s\) have no samples: "
                                        r"4 interactions of 2 users give 2 samples, too few for the chronological "
                                        r"split \(0.8, 0.1, 0.1\)$"):
        prepare(_write(tmp_path, inter=two_each))
    assert [d.split("/")[0] for d in _stage_dirs(tmp_path)] == ["ingested"]
    with pytest.raises(DataError, match=r"no interactions left after the time window and 6-core filtering"):
        prepare(_write(tmp_path).model_copy(update={"k_core": 6}))  # every user has five


def test_path_outside_the_data_root(tmp_path):
    outside = tmp_path / "elsewhere"
    cfg = _write(outside)
    cfg = cfg.model_copy(update={"data_root": tmp_path / "root"})
    with pytest.raises(DataError, match="outside the data root"):
        prepare(cfg)
    assert not (tmp_path / "root" / "ingested").exists()


def test_d3_list_column_is_parsed_safely(tmp_path):
    d3 = tmp_path / "d3"
    (d3 / "test").mkdir(parents=True)
    (d3 / "info").mkdir()
    (d3 / "info" / "x.txt").write_text("Title A\t0\nTitle B\t1\n")
    (d3 / "test" / "x.csv").write_text('user_id,history_item_id,item_id\nu1,"[0, __import__(\'os\')]",1\n')
    cfg = DataConfig(name="d3", data_root=tmp_path, source=SourceConfig(format="d3_csv", path=str(d3)), k_core=0)
    with pytest.raises(DataError, match=r"line 2, column 'history_item_id' is not a Python list literal"):
        prepare(cfg)


@pytest.mark.parametrize(("rows", "message"), [
    ('u1,"[0, 1]",2,"[1500000000, 1500000001]",1500000009\nu2,"[0]",1,"[1500000000]",\n',
     r"x.csv: line 3, column 'timestamp' holds '', not a unix time"),
    ('u1,"[0, 1]",2,"[1500000000, soon]",1500000009\n',
     r"x.csv: line 2, column 'history_timestamp' is not a Python list literal"),
    ('u1,"[0, 1]",2,"[1500000000, \'soon\']",1500000009\n',
     r"x.csv: line 2, column 'history_timestamp' holds 'soon', not a unix time"),
    ('u1,"[0, 1]",2,"[1500000000]",1500000009\n',
     r"x.csv: line 2: history_timestamp holds 1 time\(s\) for the 2 item\(s\) of history_item_id"),
])
def test_d3_times_that_are_not_times_are_named_by_line(tmp_path, rows, message):
    """A D3 CSV with time columns (the reference's own layout): an empty or wordy time, and a
    history whose times do not match its items, are named by file and line (they were a
    ValueError and an IndexError traceback)."""
    d3 = tmp_path / "d3"
    (d3 / "test").mkdir(parents=True)
    (d3 / "info").mkdir()
    (d3 / "info" / "x.txt").write_text("Title A\t0\nTitle B\t1\nTitle C\t2\n")
    (d3 / "test" / "x.csv").write_text("user_id,history_item_id,item_id,history_timestamp,timestamp\n" + rows)
    cfg = DataConfig(name="d3", data_root=tmp_path, source=SourceConfig(format="d3_csv", path=str(d3)), k_core=0)
    with pytest.raises(DataError, match=message):
        prepare(cfg)


def test_a_parquet_column_of_lists_where_an_id_belongs_is_named(tmp_path):
    """Item ids as one-element lists (an export that kept a nested type) were a TypeError traceback
    from pandas; a list column the profile does not read (tags) is fine."""
    import pandas as pd

    rows = {"user_id": ["a", "a", "b", "b"], "item_id": [["i"], ["j"], ["i"], ["j"]],
            "timestamp": [1_600_000_000 + t for t in range(4)], "title": ["I", "J", "I", "J"], "tags": [["x"]] * 4}
    pd.DataFrame(rows).to_parquet(tmp_path / "log.parquet")
    cfg = DataConfig(name="p", data_root=tmp_path, k_core=0,
                     source=SourceConfig(format="generic", path=str(tmp_path / "log.parquet")))
    with pytest.raises(DataError, match=r"log.parquet: column\(s\) \['item_id'\] hold lists or records \(e.g. \['i'\]\), "
                                        r"where one value per row belongs"):
        prepare(cfg)
    pd.DataFrame({**rows, "item_id": ["i", "j", "i", "j"]}).to_parquet(tmp_path / "log.parquet")
    from tasks.data import ingest

    assert (ingest(cfg).path / "interactions.parquet").is_file()  # (the tags column is not read)


def test_amazon_bad_json_line(tmp_path):
    raw = tmp_path / "amazon"
    raw.mkdir()
    (raw / "reviews.json").write_text('{"reviewerID": "a", "asin": "x", "unixReviewTime": 1500000000}\n{oops\n')
    (raw / "meta.json").write_text('{"asin": "x", "title": "Thing"}\n')
    cfg = DataConfig(name="amz", data_root=tmp_path, source=SourceConfig(format="amazon_raw", path=str(raw / "reviews.json"), meta_path=str(raw / "meta.json")))
    with pytest.raises(DataError, match=r"reviews.json: line 2 is not valid JSON"):
        prepare(cfg)


def test_an_amazon_review_whose_id_is_a_list_is_named_by_line(tmp_path):
    """It was read as the user "['a']": a user no other review has, made up from a malformed line."""
    raw = tmp_path / "amazon"
    raw.mkdir()
    (raw / "reviews.json").write_text('{"reviewerID": "a", "asin": "x", "unixReviewTime": 1500000000, "overall": 5}\n'
                                      '{"reviewerID": ["a"], "asin": "x", "unixReviewTime": 1500000001, "overall": 4}\n')
    (raw / "meta.json").write_text('{"asin": "x", "title": "Thing"}\n')
    cfg = DataConfig(name="amz", data_root=tmp_path, source=SourceConfig(format="amazon_raw", path=str(raw / "reviews.json"), meta_path=str(raw / "meta.json")))
    with pytest.raises(DataError, match=r"reviews.json: line 2: field 'reviewerID' holds a JSON list \(\[\"a\"\]\), where one "
                                        r"value belongs"):
        prepare(cfg)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("  &quot;Widget Pro&quot; ", "Widget Pro"), ('&quot;Big&quot; Box', 'Big" Box'), ("Tom &amp; Jerry", "Tom & Jerry"), ("x", None), ("", None),
     (" ".join(["w"] * 21), None), ('<span class="a">Nice</span>', None), (None, None)],
)
def test_amazon_title_cleaning(raw, clean):
    assert clean_amazon_title(raw) == clean


def test_records_frame_is_the_suite_columns_computed_row_by_row():
    """`records_frame` (Arrow and numpy) equals the suite's columns computed per record in Python,
    on a split of several record batches with history and target ids the catalogue lacks."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from schemas import tables
    from tasks.data import records_frame

    rng = np.random.default_rng(0)
    catalogue = pd.Series(range(10))  # ids 10..12 are unknown
    rows = [{"user_id": f"u{r}", "history_item_ids": rng.integers(0, 13, rng.integers(1, 6)).tolist(),
             "history_titles": [], "target_item_id": int(rng.integers(0, 13)), "target_title": f"T{r}",
             "timestamp": 100 + r} for r in range(60)]
    table = pa.Table.from_batches([pa.RecordBatch.from_pylist(rows[a:b], schema=tables.RECORDS)
                                   for a, b in ((0, 25), (25, 26), (26, 60))])
    frame = records_frame(table, catalogue)
    known = set(catalogue)
    assert frame["history_len"].tolist() == [len(r["history_item_ids"]) for r in rows]
    assert frame["history_in_catalogue"].tolist() == [all(i in known for i in r["history_item_ids"]) for r in rows]
    assert not frame["history_in_catalogue"].all() and frame["history_in_catalogue"].any()
    assert [None if pd.isna(v) else v for v in frame["target_item_id_not_in_catalogue"]] == [
        None if r["target_item_id"] in known else r["target_item_id"] for r in rows]
    assert frame["target_title"].tolist() == [r["target_title"] for r in rows]
    assert frame["timestamp"].tolist() == [r["timestamp"] for r in rows]


def test_records_whose_target_the_catalogue_lacks_are_named(tmp_path):
    """The built records' own check (our invariant, not the user's input): a target outside the
    catalogue fails the records suite with the target's id; nothing else fails."""
    import pandas as pd
    import pyarrow as pa

    from schemas import tables
    from tasks.data import records_frame, validate_records

    cfg = _write(tmp_path)
    catalogue = pd.DataFrame({"item_id": [0, 1, 2], "title": ["A", "B", "C"]})

    def split(target: int, ts: int) -> pa.Table:
        row = {"user_id": "u", "history_item_ids": [0, 1], "history_titles": ["A", "B"], "target_item_id": target,
               "target_title": "X", "timestamp": ts}
        return pa.Table.from_pylist([row], schema=tables.RECORDS)

    splits = {"train": split(2, 1), "valid": split(99, 2), "test": split(1, 3)}
    with pytest.raises(DataValidationError) as err:
        validate_records({n: records_frame(t, catalogue["item_id"]) for n, t in splits.items()}, cfg, tmp_path / "report.json")
    assert [f["column"] for f in err.value.report["failures"]] == ["target_item_id_not_in_catalogue"]
    assert "valid records" in str(err.value) and "e.g. ['99']" in str(err.value)


def test_sequences_are_written_a_batch_at_a_time_and_a_failed_check_leaves_no_folder(tmp_path, monkeypatch):
    """The split files are written as their record batches are made (a large split's titles are
    never all in memory), with the same records as one batch; the records are checked after
    writing, inside the folder's temporary name, so a failure still leaves no sequences."""
    import pyarrow.parquet as pq

    import cft_core.sequences as sequences
    import tasks.data as data

    whole = prepare(_write(tmp_path / "whole"))[1].path
    monkeypatch.setattr(sequences, "MAX_BATCH_TITLE_BYTES", 40)
    batched = prepare(_write(tmp_path / "batched"))[1].path
    for name in ("train", "valid", "test"):
        assert pq.read_table(batched / f"{name}.parquet").equals(pq.read_table(whole / f"{name}.parquet"))
    assert pq.ParquetFile(batched / "train.parquet").metadata.num_row_groups > 3  # one per batch

    def fail(frames, cfg, report_path):
        raise DataValidationError("records failed", {"failures": []}, report_path)
    monkeypatch.setattr(data, "validate_records", fail)
    cfg = _write(tmp_path / "failed")
    with pytest.raises(DataValidationError):
        prepare(cfg)
    assert not (cfg.data_root / "sequences").exists() or not list((cfg.data_root / "sequences").iterdir())
