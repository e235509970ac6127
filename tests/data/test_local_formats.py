"""A shop's export as a spreadsheet writes it outside ISO-8601: dates in the local order
(06.12.2026 14:30 in Germany, 12/06/2026 02:30 PM in the US), times on the shop's clock without
an offset, ratings with a decimal comma. `data.source.timestamp_format`, `timezone` and `decimal`
read them; without them the errors name the setting. Expected instants are written out by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.readers.generic as generic
from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError
from tasks.data import ingest, source_settings
from tasks.readers.values import to_float, to_int_timestamps

P = Path("orders.csv")


def _utc(text: str) -> int:
    return int(pd.Timestamp(text).timestamp())


def test_a_local_date_format_is_read_by_timestamp_format():
    values = pd.Series(["06.12.2026 14:30", "07.12.2026 09:05"], dtype="string")
    seconds, unit = to_int_timestamps(values, P, "zeit", fmt="%d.%m.%Y %H:%M")
    assert seconds.tolist() == [_utc("2026-12-06T14:30Z"), _utc("2026-12-07T09:05Z")] and unit == "%d.%m.%Y %H:%M"
    us = pd.Series(["12/06/2026 02:30 PM"], dtype="string")
    assert to_int_timestamps(us, P, "t", fmt="%m/%d/%Y %I:%M %p")[0].tolist() == [_utc("2026-12-06T14:30Z")]
    with pytest.raises(DataError, match=r"1 value\(s\) that are not timestamps \(read as %d.%m.%Y %H:%M\), e.g. lines "
                                        r"\[3\]: \['2026-12-07 09:05'\]"):
        to_int_timestamps(pd.Series(["06.12.2026 14:30", "2026-12-07 09:05"]), P, "zeit", first_line=2,
                          fmt="%d.%m.%Y %H:%M")


def test_without_it_a_local_date_is_named_with_the_setting():
    with pytest.raises(DataError, match=r"not timestamps \(read as iso\), e.g. lines \[2\]: \['06.12.2026 14:30'\]; "
                                        r"dates written otherwise than ISO-8601 are read by data.source.timestamp_format"):
        to_int_timestamps(pd.Series(["06.12.2026 14:30"], dtype="string"), P, "zeit", first_line=2)
    with pytest.raises(DataError, match=r"\(read as iso\), e.g. lines \[2\]: \['soon'\]$"):  # (no hint for no date)
        to_int_timestamps(pd.Series(["soon"], dtype="string"), P, "t", first_line=2)


@pytest.mark.parametrize(("written", "instant"), [
    ("2026-12-06T14:30:00", "2026-12-06T13:30Z"),  # CET: UTC+1
    ("2026-07-06 14:30", "2026-07-06T12:30Z"),  # CEST: UTC+2
    ("2026-12-06", "2026-12-05T23:00Z"),  # a date alone: its midnight there ("-06" is no offset)
    ("2026-12-06T14:30:00+05:00", "2026-12-06T09:30Z"),  # an offset written: the instant it says
    ("2026-12-06T14:30Z", "2026-12-06T14:30Z"),
    ("2026-03-29T02:30", "2026-03-29T01:00Z"),  # skipped by the clock (02:00 -> 03:00): moved to 03:00 CEST
    ("2026-10-25T02:30", "2026-10-25T00:30Z"),  # repeated (03:00 -> 02:00): the first, CEST
])
def test_times_without_an_offset_are_the_timezones(written, instant):
    values = pd.Series([written, "2026-01-01T00:00+00:00"], dtype="string")
    seconds, unit = to_int_timestamps(values, P, "t", timezone="Europe/Berlin")
    assert seconds.tolist() == [_utc(instant), _utc("2026-01-01T00:00Z")] and unit == "iso"


def test_times_without_an_offset_are_utc_by_default_as_before():
    values = pd.Series(["2026-12-06T14:30", "2026-12-06", "2026-12-06T14:30+05:00"], dtype="string")
    assert to_int_timestamps(values, P, "t")[0].tolist() == [
        _utc("2026-12-06T14:30Z"), _utc("2026-12-06T00:00Z"), _utc("2026-12-06T09:30Z")]


def test_naive_parquet_timestamps_are_the_timezones_and_unix_times_are_instants():
    naive = pd.Series(pd.to_datetime(["2026-12-06 14:30"]))
    assert to_int_timestamps(naive, P, "t", timezone="America/New_York")[0].tolist() == [_utc("2026-12-06T19:30Z")]
    aware = pd.Series(pd.to_datetime(["2026-12-06 14:30"]).tz_localize("Asia/Tokyo"))
    assert to_int_timestamps(aware, P, "t", timezone="America/New_York")[0].tolist() == [_utc("2026-12-06T05:30Z")]
    unix = pd.Series([_utc("2026-12-06T14:30Z")])
    assert to_int_timestamps(unix, P, "t", timezone="America/New_York")[0].tolist() == unix.tolist()


def test_a_decimal_comma_is_read_by_decimal_and_named_without_it():
    ratings = pd.Series(["4,5", "3", " 2,0 "], dtype="string")
    assert to_float(ratings, P, "sterne", decimal=",").tolist() == [4.5, 3.0, 2.0]
    with pytest.raises(DataError, match=r"'sterne' has 2 non-numeric value\(s\), e.g. lines \[2, 4\]: \['4,5', ' 2,0 '\]; "
                                        r"a decimal comma \(4,5\) is read with data.source.decimal: ','"):
        to_float(ratings, P, "sterne", first_line=2)
    assert to_float(pd.Series([4.5, 3.0]), P, "r", decimal=",").tolist() == [4.5, 3.0]  # (numbers stay numbers)


def _cfg(tmp_path: Path, **source) -> DataConfig:
    return DataConfig(name="shop", data_root=tmp_path / "data", input_roots=[tmp_path], k_core=0, source=SourceConfig(
        format="generic", path=str(tmp_path / "orders.csv"), delimiter=";",
        columns={"user_id": "kunde", "item_id": "artikel", "timestamp": "zeit", "rating": "sterne", "title": "name"},
        **source))


def test_a_german_excel_export_ingests_with_the_three_settings(tmp_path):
    (tmp_path / "orders.csv").write_text("kunde;artikel;zeit;sterne;name\nk1;a1;06.12.2026 14:30;4,5;K\u00e4se\n"
                                         "k1;a2;07.12.2026 09:00;3;Brot\n", encoding="cp1252")
    german = _cfg(tmp_path, encoding="cp1252", timestamp_format="%d.%m.%Y %H:%M", timezone="Europe/Berlin", decimal=",")
    rows = pd.read_parquet(ingest(german).path / "interactions.parquet")
    assert rows["timestamp"].tolist() == [_utc("2026-12-06T13:30Z"), _utc("2026-12-07T08:00Z")]
    assert rows["rating"].tolist() == [4.5, 3.0]
    plain = _cfg(tmp_path)
    assert not {"timestamp_format", "timezone", "decimal"} & set(source_settings(plain))  # (keys as before)
    assert source_settings(german)["timezone"] == "Europe/Berlin"


def test_the_settings_are_checked():
    with pytest.raises(ValueError, match="timezone 'Berlin' is no time zone name"):
        SourceConfig(format="generic", path="x.csv", timezone="Berlin")
    with pytest.raises(ValueError, match="timestamp_format 'dd.mm.yyyy' has no % directive"):
        SourceConfig(format="generic", path="x.csv", timestamp_format="dd.mm.yyyy")


def test_parts_in_a_local_format_are_read_together_as_one_by_one(tmp_path, monkeypatch):
    lake = tmp_path / "lake"
    lake.mkdir()
    for day in range(1, 21):
        (lake / f"part-{day:02d}.csv").write_text(f"kunde;artikel;zeit;name\nk{day};a{day};{day:02d}.11.2026 10:00;X\n"
                                                  f"k{day};b{day};{day:02d}.11.2026 11:00;Y\n")
    cfg = DataConfig(name="shop", data_root=tmp_path / "data", input_roots=[tmp_path], k_core=0, source=SourceConfig(
        format="generic", path=str(lake), delimiter=";", timestamp_format="%d.%m.%Y %H:%M", timezone="Europe/Berlin",
        columns={"user_id": "kunde", "item_id": "artikel", "timestamp": "zeit", "title": "name"}))
    calls = []
    real = generic._part_rows
    monkeypatch.setattr(generic, "_part_rows", lambda df, *a: calls.append(len(df)) or real(df, *a))
    parts = generic.interaction_parts(lake)
    frames, units, _, _ = generic._interaction_rows(cfg, parts, lake, titled=True)
    assert calls == [40] and set(units.values()) == {"%d.%m.%Y %H:%M"}
    reference = generic._interaction_rows(cfg, parts, lake, titled=True, batched=False)[0]
    pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), pd.concat(reference, ignore_index=True))
    assert frames[0]["timestamp"].iloc[0] == _utc("2026-11-01T09:00Z")


def test_a_parquet_part_with_naive_times_and_a_timezone(tmp_path):
    lake = tmp_path / "lake"
    lake.mkdir()
    pq.write_table(pa.table({"kunde": ["k1"], "artikel": ["a1"], "zeit": pa.array(pd.to_datetime(["2026-12-06 14:30"])),
                             "name": ["A"]}), lake / "part-0.parquet")
    cfg = DataConfig(name="shop", data_root=tmp_path / "data", input_roots=[tmp_path], k_core=0, source=SourceConfig(
        format="generic", path=str(lake), timezone="Europe/Berlin",
        columns={"user_id": "kunde", "item_id": "artikel", "timestamp": "zeit", "title": "name"}))
    assert pd.read_parquet(ingest(cfg).path / "interactions.parquet")["timestamp"].tolist() == [_utc("2026-12-06T13:30Z")]
