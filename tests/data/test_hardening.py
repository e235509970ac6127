"""A user's own data as it comes: timestamps in any unit, ambiguous headers and ids, links out of
the allowed folders, titles with invisible characters. Each mistake fails with a message naming
the file, column, rows or items, and leaves nothing half-written."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError, DataValidationError
from tasks.data import ingest, prepare, source_settings
from tests.data.stage_content import check_pinned, write_purchase_log
from tests.data.test_malformed import GOOD_INTER, GOOD_ITEMS, _stage_dirs, _write

SECONDS = [int(line.split(",")[2]) for line in GOOD_INTER.splitlines()[1:]]


def _with_timestamps(values) -> str:
    rows = GOOD_INTER.splitlines()
    out = [rows[0]]
    for row, value in zip(rows[1:], values, strict=True):
        user, item, _, rating = row.split(",")
        out.append(f'{user},{item},"{value}",{rating}')
    return "\n".join(out) + "\n"


def _ingested(cfg) -> pd.DataFrame:
    return pq.read_table(ingest(cfg).path / "interactions.parquet").to_pandas()


@pytest.mark.parametrize(("unit", "spell"), [
    ("ms", lambda s: s * 1000),
    ("us", lambda s: s * 1_000_000),
    ("ns", lambda s: s * 1_000_000_000),
    ("iso", lambda s: pd.Timestamp(s, unit="s", tz="UTC").isoformat()),  # 2001-09-09T01:46:40+00:00
    ("iso", lambda s: pd.Timestamp(s, unit="s").strftime("%Y-%m-%d %H:%M:%S")),  # naive: UTC
])
def test_every_timestamp_spelling_ingests_to_the_same_seconds(tmp_path, unit, spell):
    expected = _ingested(_write(tmp_path / "s"))
    cfg = _write(tmp_path / unit, inter=_with_timestamps([spell(s) for s in SECONDS]))
    got = _ingested(cfg)
    pd.testing.assert_frame_equal(got, expected)
    manifest = json.loads((ingest(cfg).path / "manifest.json").read_text())
    assert manifest["timestamp"]["unit"] == unit and manifest["timestamp"]["column"] == "ts"


def test_mixed_iso_forms_in_one_column(tmp_path):
    spellings = [pd.Timestamp(s, unit="s", tz="UTC").isoformat() if i % 2 else
                 pd.Timestamp(s, unit="s").strftime("%Y-%m-%d %H:%M:%S") for i, s in enumerate(SECONDS)]
    got = _ingested(_write(tmp_path / "mixed", inter=_with_timestamps(spellings)))
    assert got["timestamp"].tolist() == SECONDS


def test_parts_are_read_each_in_its_own_unit_and_errors_name_the_part_and_its_rows(tmp_path):
    """A folder of parts written by different jobs: unix seconds in one, ISO text in another."""
    header, *rows = GOOD_INTER.splitlines()
    parts = tmp_path / "raw" / "parts"
    parts.mkdir(parents=True)
    (parts / "a.csv").write_text("\n".join([header, *rows[:10]]) + "\n")
    iso = _with_timestamps([pd.Timestamp(t, unit="s", tz="UTC").isoformat() for t in SECONDS]).splitlines()
    (parts / "b.csv").write_text("\n".join([header, *iso[11:]]) + "\n")  # the last ten rows, as ISO text
    (tmp_path / "raw" / "items.csv").write_text(GOOD_ITEMS)
    cfg = DataConfig(name="parts", data_root=tmp_path, k_core=0, source=SourceConfig(
        format="generic", path=str(parts), items_path=str(tmp_path / "raw" / "items.csv"),
        columns={"user_id": "user", "item_id": "item", "timestamp": "ts"}))
    out = ingest(cfg)
    assert list(pq.read_table(out.path / "interactions.parquet").to_pandas()["timestamp"]) == SECONDS
    assert json.loads((out.path / "manifest.json").read_text())["timestamp"]["unit"] == "a.csv: s, b.csv: iso"
    (parts / "c.csv").write_text(f"{header}\nu0,i1,1000000700,3\nu1,i2,soon,3\n")  # its second data row
    with pytest.raises(DataError, match=r"parts/c.csv: column 'ts' has 1 value\(s\) that are not timestamps "
                                        r"\(read as s\), e.g. lines \[3\]: \['soon'\]"):
        ingest(cfg)


def _parts(tmp_path, **parts: str) -> DataConfig:
    """A folder of CSV parts (name -> text) beside GOOD_ITEMS."""
    folder = tmp_path / "raw" / "parts"
    folder.mkdir(parents=True)
    for name, text in parts.items():
        (folder / name).write_text(text)
    (tmp_path / "raw" / "items.csv").write_text(GOOD_ITEMS)
    return DataConfig(name="parts", data_root=tmp_path, k_core=0, source=SourceConfig(
        format="generic", path=str(folder), items_path=str(tmp_path / "raw" / "items.csv"),
        columns={"user_id": "user", "item_id": "item", "timestamp": "ts"}))


def test_rows_an_overlapping_export_repeats_are_an_error_or_the_last_read_is_kept(tmp_path, caplog):
    """Part b re-exports the last four rows of part a and corrects one rating: error shows the
    repeated rows and names the setting; drop keeps b's copies (read after a's)."""
    header, *rows = GOOD_INTER.splitlines()
    corrected = rows[8].rsplit(",", 1)[0] + ",1"  # rows[8] is rated 5 in part a
    assert rows[8].endswith(",5")
    cfg = _parts(tmp_path, **{"a.csv": "\n".join([header, *rows[:12]]) + "\n",
                              "b.csv": "\n".join([header, corrected, *rows[9:]]) + "\n"})
    with pytest.raises(DataValidationError) as failed:
        prepare(cfg)
    assert "expect_compound_columns_to_be_unique failed: 8 of 24 rows" in str(failed.value)
    assert "set data.duplicate_interactions: drop to keep the last of each" in str(failed.value)

    dropping = cfg.model_copy(update={"duplicate_interactions": "drop"})
    with caplog.at_level(logging.WARNING):
        ingested, _, manifest = prepare(dropping)
    assert ("parts: dropping 4 repeated interaction(s): the same user, item and timestamp as a row read after them, "
            "which is kept; 1 of them with another rating than the kept row") in caplog.text
    expected = _ingested(_write(tmp_path / "good"))
    expected.loc[8, "rating"] = 1.0
    pd.testing.assert_frame_equal(_ingested(dropping), expected)
    assert json.loads((ingested.path / "manifest.json").read_text())["dropped"] == {
        "duplicate_interactions": {"interactions": 4, "other_rating": 1}}
    assert ingest(cfg).path != ingested.path  # back to `error`: checked again, not the rows drop left


def test_a_row_without_user_item_or_time_is_named_with_its_part_line_and_values(tmp_path):
    """A part's last line cut short (a file still being copied in) is named as such; the same gap
    elsewhere is named without the guess; a part under a hidden name is not read yet."""
    header, *rows = GOOD_INTER.splitlines()
    a = "\n".join([header, *rows[:10]]) + "\n"
    cfg = _parts(tmp_path, **{"a.csv": a, "b.csv": "\n".join([header, *rows[10:], "u3,i"])})
    with pytest.raises(DataError, match=r"parts/b.csv: 1 row\(s\) without a value in \['user', 'item', 'ts'\], "
                                        r"e.g. lines \[12\]; the first: \{'user': 'u3', 'item': 'i', 'ts': None\} "
                                        r"\(the file's last row: is it still being written\?"):
        prepare(cfg)
    assert _stage_dirs(tmp_path) == []

    parts = tmp_path / "raw" / "parts"
    (parts / "b.csv").write_text("\n".join([header, *rows[10:12], ",i1,1000000800,3", *rows[12:]]) + "\n")
    with pytest.raises(DataError, match=r"b.csv: 1 row\(s\) .* e.g. lines \[4\]; the first: \{'user': None, "
                                        r"'item': 'i1', 'ts': '1000000800'\}$"):
        prepare(cfg)
    (parts / "b.csv").rename(parts / ".b.csv")  # how a writer copies a part in: a hidden name, renamed when complete
    assert len(_ingested(cfg)) == 10


def test_a_file_in_another_encoding_is_named_and_read_as_data_source_encoding_says(tmp_path):
    """An items file Excel saved on Windows (cp1252): the error names the byte, line and the
    setting; with the setting, the titles read as written, through pyarrow and through pandas
    (a short row sends a file there) alike, and the folder is named apart from UTF-8's."""
    items = "item,title\n" + "".join(f"i{i},Caf\u00e9 \u201c{i}\u201d\n" for i in range(6))
    cfg = _write(tmp_path, items=items.encode("cp1252"))
    with pytest.raises(DataError, match=r"items.csv: not valid utf-8 text at byte 17 \(line 2\): .*; save it as "
                                        r"UTF-8, or set data.source.encoding"):
        prepare(cfg)
    cp1252 = cfg.model_copy(update={"source": cfg.source.model_copy(update={"encoding": "cp1252"})})
    titles = pq.read_table(ingest(cp1252).path / "items.parquet").to_pandas()["title"].tolist()
    assert titles == [f"Caf\u00e9 \u201c{i}\u201d" for i in range(6)]
    short = _write(tmp_path / "short", items=(items + "i6\n").encode("cp1252"))
    short = short.model_copy(update={"source": short.source.model_copy(update={"encoding": "cp1252"})})
    assert pq.read_table(ingest(short).path / "items.parquet").to_pandas()["title"].tolist()[:6] == titles
    assert ingest(cp1252).path.name != ingest(_write(tmp_path / "utf8", items=items)).path.name
    with pytest.raises(ValueError, match="encoding 'klingon' is no text encoding Python knows"):
        SourceConfig(format="generic", path="x.csv", encoding="klingon")


def test_a_semicolon_separated_csv_is_named_and_read_as_data_source_delimiter_says(tmp_path):
    """Excel's CSV in most European locales: ';' between fields. The error says so and names the
    setting; with it, the rows read as the ','-separated files do, in a folder of their own; a
    profile that does not set it keeps its folder's name."""
    cfg = _write(tmp_path, inter=GOOD_INTER.replace(",", ";"), items=GOOD_ITEMS.replace(",", ";"))
    with pytest.raises(DataError, match=r"inter.csv: its header reads as one column, 'user;item;ts;rating': the file "
                                        r"seems separated by ';', not ','; set data.source.delimiter: \";\""):
        prepare(cfg)
    semicolon = cfg.model_copy(update={"source": cfg.source.model_copy(update={"delimiter": ";"})})
    plain = _write(tmp_path / "comma")
    pd.testing.assert_frame_equal(_ingested(semicolon), _ingested(plain))
    assert ingest(semicolon).path.name != ingest(plain).path.name
    assert "delimiter" not in source_settings(plain)
    with pytest.raises(ValueError, match="delimiter ';;' must be one character"):
        SourceConfig(format="generic", path="x.csv", delimiter=";;")


def test_native_parquet_timestamps(tmp_path):
    expected = _ingested(_write(tmp_path / "s"))
    frame = pd.read_csv(pd.io.common.StringIO(GOOD_INTER))
    frame["ts"] = pd.to_datetime(frame["ts"], unit="s").astype("datetime64[ms]")
    cfg = _write(tmp_path / "pq", inter=b"", inter_name="inter.parquet")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "pq" / "raw" / "inter.parquet")
    pd.testing.assert_frame_equal(_ingested(cfg), expected)


def test_a_failed_range_check_names_the_unit_read_and_raw_values(tmp_path):
    cfg = _write(tmp_path, inter=_with_timestamps([s * 1000 for s in SECONDS]))
    cfg = cfg.model_copy(update={"source": cfg.source.model_copy(update={"timestamp_unit": "s"})})
    with pytest.raises(DataValidationError) as err:
        prepare(cfg)
    msg = str(err.value)
    assert "interactions.timestamp: expect_column_values_to_be_between" in msg
    assert "column 'ts' was read as s (data.source.timestamp_unit=s)" in msg and "1000000000000" in msg
    assert all(d.startswith("ingested/") for d in _stage_dirs(tmp_path))


def test_a_repeated_column_name_is_refused(tmp_path):
    inter = GOOD_INTER.replace("user,item,ts,rating", "user,user,ts,rating", 1)
    with pytest.raises(DataError, match=r"inter.csv: column name\(s\) \['user'\] appear more than once"):
        prepare(_write(tmp_path, inter=inter))
    assert _stage_dirs(tmp_path) == []


def test_ids_spelled_two_ways_are_refused(tmp_path):
    inter = GOOD_INTER.replace("u1,", "1,").replace("u2,", "1.0,")
    with pytest.raises(DataError, match=r"inter.csv: column 'user': 1 id\(s\) spelled two ways, e.g. \[\['1', '1.0'\]\]"):
        prepare(_write(tmp_path, inter=inter))
    assert _stage_dirs(tmp_path) == []


def test_a_mapped_column_that_is_missing_names_the_mapping(tmp_path):
    inter = GOOD_INTER.replace("user,item,ts,rating", "uid,item,ts,rating", 1)
    with pytest.raises(DataError, match=r"missing column\(s\) \['user'\] \(data.source.columns maps .*'user_id': 'user'"):
        prepare(_write(tmp_path, inter=inter))


def test_a_folder_member_linking_outside_the_roots_is_not_read(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t1000000000\n")
    folder = tmp_path / "root" / "ml"
    folder.mkdir(parents=True)
    (folder / "ml.item").write_text("item_id:token\tmovie_title:token_seq\n2\tA Film\n")
    (folder / "ml.inter").symlink_to(outside / "secret.inter")
    cfg = DataConfig(name="linked", data_root=tmp_path / "root", source=SourceConfig(format="recbole", path=str(folder)))
    with pytest.raises(DataError, match=r"ml.inter in the source folder links to .*secret.inter, outside the data root"):
        prepare(cfg)
    assert not (tmp_path / "root" / "ingested").exists()


def test_titles_are_normalised_before_validation(tmp_path):
    items = GOOD_ITEMS.replace("Title 1", '"Title\u200b 1\nPart\u00a0Two"').replace("Title 2", "ＴＩＴＬＥ 2")
    cfg = _write(tmp_path, items=items)
    titles = pq.read_table(ingest(cfg).path / "items.parquet").to_pandas().set_index("item_id")["title"]
    assert titles["i1"] == "Title 1 Part Two"  # zero-width removed, line break and NBSP -> one space
    assert titles["i2"] == "ＴＩＴＬＥ 2"  # full-width letters as written (NFC; NFKC made them "TITLE 2" until 2026-12-07)


def test_titles_keep_what_they_show_and_ingests_of_the_old_rule_are_not_reused(tmp_path, monkeypatch):
    """Until 2026-12-07 ingest applied NFKC and removed the joiners: "E=mc²" became "E=mc2" and
    Persian's "می‌خواهم" lost its non-joiner. A data root ingested so must not be reused, so the
    rule's change (tasks.data.INGEST_VERSION) names the ingested folder anew."""
    import tasks.data

    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    cfg = _write(tmp_path, items=GOOD_ITEMS.replace("Title 1", "E=mc\u00b2").replace("Title 2", persian))
    current = ingest(cfg)
    titles = pq.read_table(current.path / "items.parquet").to_pandas().set_index("item_id")["title"]
    assert titles["i1"] == "E=mc\u00b2" and titles["i2"] == persian
    monkeypatch.setattr(tasks.data, "INGEST_VERSION", 1)
    assert ingest(cfg).path != current.path  # (the folder the old rule wrote has another name)


def test_titles_in_the_interactions_file_are_each_items_newest(tmp_path, caplog):
    """No items file: an item renamed in the log gets the title of its newest interaction (file
    order deciding between equal times; a row without a title hides none), with a warning."""
    inter = ("user,item,ts,title\n"
             "u1,i1,100,Widget\n"
             "u0,i1,300,Widget Pro\n"   # i1's newest, neither its first row nor its last
             "u2,i1,200,Widget Plus\n"
             "u3,i1,250,\n"            # no title: not one of the names the warning shows
             "u0,i2,100,Gadget\n"
             "u1,i2,100,Gadget II\n"   # the same time: the later row
             "u0,i3,100,Gizmo\n"
             "u1,i3,400,\n")           # i3's newest row has no title
    src = tmp_path / "raw"
    src.mkdir()
    (src / "inter.csv").write_text(inter)
    cfg = DataConfig(name="titles", data_root=tmp_path, k_core=0, source=SourceConfig(
        format="generic", path=str(src / "inter.csv"), columns={"user_id": "user", "item_id": "item", "timestamp": "ts"},
        timestamp_unit="s"))
    with caplog.at_level(logging.WARNING):
        out = ingest(cfg)
    titles = pq.read_table(out.path / "items.parquet").to_pandas().set_index("item_id")["title"].to_dict()
    assert titles == {"i1": "Widget Pro", "i2": "Gadget II", "i3": "Gizmo"}
    assert "inter.csv: 2 item(s) have more than one title; each gets the title of its newest interaction, " \
           "e.g. item i1: 'Widget' -> 'Widget Plus' -> 'Widget Pro'" in caplog.text


def test_generic_stage_output_is_what_its_reader_version_names(tmp_path):
    """A generic log with titles in it, one item renamed along the way: what ingest and build
    write is pinned per reader version (tests/data/stage_content.py)."""
    src = tmp_path / "raw"
    src.mkdir()
    write_purchase_log(src / "inter.csv", users=8, renamed_from_day=25)
    cfg = DataConfig(name="pinned", data_root=tmp_path, k_core=0, source=SourceConfig(
        format="generic", path=str(src / "inter.csv"), columns={"user_id": "user", "item_id": "item", "timestamp": "ts"},
        timestamp_unit="s"))
    ingested, sequences, _ = prepare(cfg)
    titles = pq.read_table(ingested.path / "items.parquet").to_pandas().set_index("item_id")["title"]
    assert titles["i3"] == "Item 3 Deluxe"  # the newest title (reader version 2)
    check_pinned("generic", ingested.path, sequences.path)


def test_a_title_empty_after_normalising_is_an_error_or_dropped(tmp_path, caplog):
    items = GOOD_ITEMS.replace("Title 3", "\u200b\u200d")
    with pytest.raises(DataError, match=r"1 item\(s\) have no title .* item ids \['i3'\]; .*data.empty_titles: drop"):
        prepare(_write(tmp_path / "a", items=items))
    assert _stage_dirs(tmp_path / "a") == []
    cfg = _write(tmp_path / "b", items=items).model_copy(update={"empty_titles": "drop"})
    with caplog.at_level(logging.WARNING):
        _, _, manifest = prepare(cfg)
    assert "dropping 1 item(s)" in caplog.text
    assert manifest["stats"]["interactions"] < 20  # i3's interactions went with it


def test_interactions_with_items_the_items_file_lacks_are_an_error_or_dropped(tmp_path, caplog):
    delisted = "u0,i98,1000000500,3\nu1,i99,1000000600,4\nu2,i98,1000000700,5\n"  # i98, i99: not in items.csv
    cfg = _write(tmp_path, inter=GOOD_INTER + delisted)
    with pytest.raises(DataValidationError) as failed:
        prepare(cfg)
    assert "3 of 23 rows; e.g. ['i98', 'i99', 'i98']" in str(failed.value)
    assert "set data.unknown_items: drop" in str(failed.value)
    assert [d.split("/")[0] for d in _stage_dirs(tmp_path)] == ["ingested"]  # the source as read; nothing built

    dropping = cfg.model_copy(update={"unknown_items": "drop"})
    with caplog.at_level(logging.WARNING):
        ingested, _, manifest = prepare(dropping)
    assert "dropping 3 interaction(s) with 2 item(s) the items table lacks, e.g. ['i98', 'i99']" in caplog.text
    assert manifest["stats"]["interactions"] == 20
    pd.testing.assert_frame_equal(_ingested(dropping), _ingested(_write(tmp_path / "good")))
    stored = json.loads((ingested.path / "manifest.json").read_text())
    assert stored["dropped"] == {"unknown_items": {"items": 2, "interactions": 3}}
    # Same files, same data root: the setting names its own folder, so going back to `error` fails
    # again instead of reusing the rows `drop` left.
    assert ingest(cfg).path != ingested.path
    with pytest.raises(DataValidationError):
        prepare(cfg)


def test_dropping_empty_titles_leaves_unknown_items_to_their_own_setting(tmp_path):
    """empty_titles: drop removes the interactions of the untitled items only: an item the items
    file lacks still fails validation (unknown_items: error), and each drop counts its own rows."""
    cfg = _write(tmp_path, inter=GOOD_INTER + "u0,i98,1000000500,3\n", items=GOOD_ITEMS.replace("Title 3", "\u200b"))
    cfg = cfg.model_copy(update={"empty_titles": "drop"})
    with pytest.raises(DataValidationError, match=r"item_id_not_in_items.*\['i98'\]"):
        prepare(cfg)
    ingested, _, _ = prepare(cfg.model_copy(update={"unknown_items": "drop"}))
    dropped = json.loads((ingested.path / "manifest.json").read_text())["dropped"]
    i3 = sum(line.split(",")[1] == "i3" for line in GOOD_INTER.splitlines()[1:])
    assert dropped == {"empty_titles": {"items": 1, "interactions": i3}, "unknown_items": {"items": 1, "interactions": 1}}


def test_empty_titles_drop_does_not_share_its_folder_with_error(tmp_path):
    cfg = _write(tmp_path, items=GOOD_ITEMS.replace("Title 3", "\u200b"))
    prepare(cfg.model_copy(update={"empty_titles": "drop"}))
    with pytest.raises(DataError, match="data.empty_titles: drop"):
        prepare(cfg)


def test_a_placeholder_title_is_a_warning_and_never_recommended(tmp_path):
    from cft_core.ranking import Catalogue, popularity_ranking

    items = GOOD_ITEMS.replace("Title 4", "unknown")
    ingested = ingest(_write(tmp_path, items=items))
    _, seq, _ = prepare(_write(tmp_path, items=items))
    report = json.loads((ingested.path / "validation.json").read_text())
    assert report["success"] and any(w["expectation"] == "expect_column_values_to_not_match_regex" for w in report["warnings"])
    catalogue = pd.read_parquet(seq.path / "catalogue.parquet").sort_values("item_id")
    cat = Catalogue(catalogue["item_id"].tolist(), catalogue["title"].tolist())
    placeholder = catalogue["title"].tolist().index("unknown")
    assert cat.never == [placeholder] and cat.resolve(["unknown"]).rows == [placeholder]  # still a history item
    ranked = popularity_ranking([100] * len(catalogue), 1, len(catalogue), never=cat.never).rows[0]
    assert placeholder not in ranked.tolist()


def test_repeat_interactions_first_keeps_each_users_first_interaction_with_an_item(tmp_path):
    """Part a: u1 bought i1 twice and i2 once; u2 bought i1 once. Part b, read after a, holds u1's
    earliest i2 (its time, not the read order, decides) and a copy of u2's i1 row with another
    rating: a duplicate, which `duplicate_interactions` decides (error: validation names it; drop:
    b's copy), never `first`. `first` keeps the three first ones, in a folder of its own, the
    manifest counting what it left out."""
    cfg = _parts(tmp_path, **{"a.csv": "user,item,ts,rating\nu1,i1,1000000100,5\nu1,i1,1000000300,4\n"
                                       "u1,i2,1000000400,3\nu2,i1,1000000200,2\n",
                              "b.csv": "user,item,ts,rating\nu1,i2,1000000050,1\nu2,i1,1000000200,1\n"})
    kept = pd.read_parquet(ingest(cfg.model_copy(update={"duplicate_interactions": "drop"})).path / "interactions.parquet")
    assert len(kept) == 5  # (the tie at u2's i1 time is a duplicate, which drop resolves first: b's copy)
    first = cfg.model_copy(update={"duplicate_interactions": "drop", "repeat_interactions": "first"})
    out = ingest(first)
    rows = pd.read_parquet(out.path / "interactions.parquet")
    assert sorted(zip(rows["user_id"], rows["item_id"], rows["timestamp"], rows["rating"], strict=True)) == [
        ("u1", "i1", 1000000100, 5.0), ("u1", "i2", 1000000050, 1.0), ("u2", "i1", 1000000200, 1.0)]
    assert json.loads((out.path / "manifest.json").read_text())["dropped"] == {
        "duplicate_interactions": {"interactions": 1, "other_rating": 1}, "repeat_interactions": {"interactions": 2}}
    assert out.path != ingest(cfg.model_copy(update={"duplicate_interactions": "drop"})).path
    with pytest.raises(DataValidationError, match="expect_compound_columns_to_be_unique failed: 2 of 4 rows"):
        prepare(cfg.model_copy(update={"repeat_interactions": "first"}))
