"""A shop's log as a spreadsheet keeps it: an Excel workbook (.xlsx), read by openpyxl. The rows
must be those of the same log as CSV; cells keep Excel's types (dates as dates, on
`data.source.timezone`'s clock); errors name the rows as Excel numbers them. Until 2026-12-06 a
workbook was read as CSV text and refused as "not valid utf-8 ... set data.source.encoding"."""

from __future__ import annotations

import io
import logging
import zipfile

import openpyxl
import pandas as pd
import pyarrow.parquet as pq
import pytest

from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError
from tasks.data import ingest, source_settings
from tasks.readers import interaction_parts
from tests.data.test_malformed import GOOD_INTER, GOOD_ITEMS

COLUMNS = {"user_id": "user", "item_id": "item", "timestamp": "ts"}


def _log() -> pd.DataFrame:
    return pd.read_csv(io.StringIO(GOOD_INTER))


def _cfg(tmp_path, path, items="items.csv", **source) -> DataConfig:
    (tmp_path / "items.csv").write_text(GOOD_ITEMS)
    return DataConfig(name="book", data_root=tmp_path / "data", input_roots=[tmp_path], k_core=0, source=SourceConfig(
        format="generic", path=str(path), items_path=str(tmp_path / items), columns=COLUMNS, **source))


def _rows(cfg) -> pd.DataFrame:
    return pq.read_table(ingest(cfg).path / "interactions.parquet").to_pandas()


def _sheet(path, rows: list[list], title="Orders", more: dict | None = None) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = title
    for row in rows:
        sheet.append(row)
    for name, extra in (more or {}).items():
        book.create_sheet(name).append(extra)
    book.save(path)


def test_a_workbook_ingests_the_rows_of_the_csv(tmp_path):
    (tmp_path / "log.csv").write_text(GOOD_INTER)
    log = _log()
    _sheet(tmp_path / "log.xlsx", [list(log.columns), *log.values.tolist()])
    pd.testing.assert_frame_equal(_rows(_cfg(tmp_path, tmp_path / "log.xlsx")), _rows(_cfg(tmp_path, tmp_path / "log.csv")))


def test_an_items_workbook_gives_the_titles_of_the_csv(tmp_path):
    log = _log()
    _sheet(tmp_path / "log.xlsx", [list(log.columns), *log.values.tolist()])
    items = pd.read_csv(io.StringIO(GOOD_ITEMS))
    _sheet(tmp_path / "items.xlsx", [list(items.columns), *items.values.tolist()])
    by_csv = pd.read_parquet(ingest(_cfg(tmp_path, tmp_path / "log.xlsx")).path / "items.parquet")
    by_workbook = pd.read_parquet(ingest(_cfg(tmp_path, tmp_path / "log.xlsx", items="items.xlsx")).path / "items.parquet")
    pd.testing.assert_frame_equal(by_workbook, by_csv)


def test_excel_dates_are_read_on_the_timezones_clock(tmp_path):
    log = _log()
    when = pd.to_datetime(log["ts"], unit="s")  # (naive: as a spreadsheet keeps a date)
    _sheet(tmp_path / "log.xlsx", [list(log.columns), *[[u, i, t.to_pydatetime(), r] for u, i, t, r in
                                                       zip(log["user"], log["item"], when, log["rating"], strict=True)]])
    utc = _rows(_cfg(tmp_path, tmp_path / "log.xlsx"))
    assert utc["timestamp"].tolist() == log["ts"].tolist()
    tokyo = _rows(_cfg(tmp_path, tmp_path / "log.xlsx", timezone="Asia/Tokyo"))
    assert tokyo["timestamp"].tolist() == (log["ts"] - 9 * 3600).tolist()  # 09:00 in Tokyo is 00:00 UTC


def test_rows_are_named_as_excel_numbers_them_and_blank_rows_are_skipped(tmp_path):
    log = _log().astype(object)
    rows = [list(log.columns), *log.values.tolist()]
    rows.insert(3, [None, None, None, None])  # a blank row: sheet row 4
    rows[7][0] = None  # sheet row 8: no user
    _sheet(tmp_path / "log.xlsx", rows)
    with pytest.raises(DataError, match=r"log.xlsx: 1 row\(s\) without a value in \['user', 'item', 'ts'\], e.g. "
                                        r"lines \[8\]; the first: \{'user': None"):
        ingest(_cfg(tmp_path, tmp_path / "log.xlsx"))


def test_other_sheets_are_named_and_left_out(tmp_path, caplog):
    log = _log()
    _sheet(tmp_path / "log.xlsx", [list(log.columns), *log.values.tolist()], more={"Products": ["item", "title"]})
    with caplog.at_level(logging.WARNING):
        assert len(_rows(_cfg(tmp_path, tmp_path / "log.xlsx"))) == len(log)
    assert "read its first sheet, 'Orders'; 1 other sheet(s) left out: ['Products'] (data.source.sheet" in caplog.text


@pytest.mark.parametrize(("rows", "error"), [
    ([["user", "user", "ts"], ["u1", "i1", 1]], r"column name\(s\) \['user'\] appear more than once"),
    ([["user", "item", "ts"]], r"its sheet 'Orders' has a header but no rows"),
    ([], r"its sheet 'Orders' is empty"),
])
def test_a_sheet_that_is_no_table_is_named(tmp_path, rows, error):
    _sheet(tmp_path / "log.xlsx", rows)
    with pytest.raises(DataError, match=error):
        ingest(_cfg(tmp_path, tmp_path / "log.xlsx"))


def test_a_file_that_is_no_workbook_and_an_old_one_are_named(tmp_path):
    (tmp_path / "log.xlsx").write_text("user,item,ts\n")
    with pytest.raises(DataError, match=r"log.xlsx: not a readable Excel workbook \(BadZipFile"):
        ingest(_cfg(tmp_path, tmp_path / "log.xlsx"))
    (tmp_path / "log.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")  # (an OLE2 file's first bytes)
    with pytest.raises(DataError, match=r"log.xls: an Excel 97-2003 workbook \(.xls\), which is not read: save it as "
                                        r".xlsx or as CSV"):
        ingest(_cfg(tmp_path, tmp_path / "log.xls"))


def test_a_folder_of_workbooks_leaves_out_the_file_excel_keeps_beside_an_open_one(tmp_path):
    folder = tmp_path / "orders"
    folder.mkdir()
    log = _log()
    for half, rows in (("a", log.iloc[:10]), ("b", log.iloc[10:])):
        _sheet(folder / f"orders-{half}.XLSX", [list(log.columns), *rows.values.tolist()])
    (folder / "~$orders-b.XLSX").write_bytes(b"\x05owner")  # Excel's lock file while orders-b is open
    assert [p.name for p in interaction_parts(folder)] == ["orders-a.XLSX", "orders-b.XLSX"]
    assert len(_rows(_cfg(tmp_path, folder))) == len(log)


def test_a_sheet_with_xml_entities_is_refused_not_expanded(tmp_path):
    """openpyxl parses the sheet's XML with defusedxml: an entity (the "billion laughs" kind, one
    level here) is refused, where without defusedxml openpyxl expands it (checked by hand: the user
    then reads "lol")."""
    _sheet(tmp_path / "ok.xlsx", [["user", "item", "ts"], ["u1", "i1", 1_000_000_000]])
    with zipfile.ZipFile(tmp_path / "ok.xlsx") as src, zipfile.ZipFile(tmp_path / "log.xlsx", "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":  # (openpyxl writes text in the cells)
                assert b">u1<" in data
                data = b'<!DOCTYPE worksheet [<!ENTITY lol "lol">]>' + data.replace(b">u1<", b">&lol;<", 1)
            out.writestr(item, data)
    with pytest.raises(DataError, match=r"log.xlsx: not a readable Excel workbook \(EntitiesForbidden"):
        ingest(_cfg(tmp_path, tmp_path / "log.xlsx"))


def test_one_workbook_with_an_orders_sheet_and_an_items_sheet(tmp_path):
    """A small shop keeps both tables in one workbook: `sheet` and `items_sheet` name them, and
    items_path is the same file. The rows and titles are those of the two CSV files."""
    (tmp_path / "log.csv").write_text(GOOD_INTER)
    log, items = _log(), pd.read_csv(io.StringIO(GOOD_ITEMS))
    _sheet(tmp_path / "shop.xlsx", [["notes"], ["exported 2026-12-06"]], title="Readme",
           more={"Orders": list(log.columns), "Items": list(items.columns)})
    book = openpyxl.load_workbook(tmp_path / "shop.xlsx")
    for row in log.values.tolist():
        book["Orders"].append(row)
    for row in items.values.tolist():
        book["Items"].append(row)
    book.save(tmp_path / "shop.xlsx")
    cfg = _cfg(tmp_path, tmp_path / "shop.xlsx", items="shop.xlsx", sheet="Orders", items_sheet="Items")
    pd.testing.assert_frame_equal(_rows(cfg), _rows(_cfg(tmp_path, tmp_path / "log.csv")))
    by_csv = pd.read_parquet(ingest(_cfg(tmp_path, tmp_path / "log.csv")).path / "items.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(ingest(cfg).path / "items.parquet"), by_csv)
    assert {"sheet", "items_sheet"} <= set(source_settings(cfg)) and "sheet" not in source_settings(
        _cfg(tmp_path, tmp_path / "log.csv"))
    with pytest.raises(DataError, match=r"shop.xlsx: has no sheet 'Order'; its sheets: \['Readme', 'Orders', 'Items'\]"):
        ingest(_cfg(tmp_path, tmp_path / "shop.xlsx", items="shop.xlsx", sheet="Order", items_sheet="Items"))
